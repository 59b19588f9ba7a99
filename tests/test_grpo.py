"""GRPO: the math on hand-made tensors, then the loop on a tiny model (learning, exact resume)."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from sf_mlx.config import GrpoConfig
from sf_mlx.stages import grpo


def test_equal_rewards_give_zero_advantage_in_both_variants():
    rewards = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    for variant in grpo.VARIANTS.values():
        adv = variant.advantages(rewards)
        assert np.all(adv[0] == 0) and np.all(adv[2] == 0)
        assert adv[1, 1] > 0 > adv[1, 0]
    np.testing.assert_allclose(grpo.grpo_advantages(rewards)[1], [-1, 1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(grpo.dr_grpo_advantages(rewards)[1], [-0.5, 0.5, -0.5, 0.5])


def test_clip_bounds_are_honoured():
    old = mx.zeros((1, 4))
    logp = mx.log(mx.array([[0.5, 0.9, 1.1, 2.0]]))  # ratios 0.5, 0.9, 1.1, 2.0
    for a, expect in (
        (1.0, [-0.5, -0.9, -1.1, -1.28]),  # A > 0: ratio capped at 1 + eps_high
        (-1.0, [0.8, 0.9, 1.1, 2.0]),  # A < 0: ratio floored at 1 - eps_low
    ):
        loss, clipped = grpo.clipped_objective(logp, old, mx.array([a]), 0.2, 0.28)
        np.testing.assert_allclose(np.array(loss)[0], expect, rtol=1e-5)
        assert np.array(clipped)[0].tolist() == ([0, 0, 0, 1] if a > 0 else [1, 0, 0, 0])


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
    a = mx.array([[-1.0, -2.0]])
    assert np.allclose(np.array(grpo.k3_kl(a, a)), 0)
    assert np.all(np.array(grpo.k3_kl(a, a - 0.5)) > 0)


class Toy(nn.Module):
    """A bigram "language model": enough to test log-probs and gradients exactly."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.out = nn.Linear(8, vocab)

    def __call__(self, x):
        return self.out(self.emb(x))


def _toy_batch():
    mx.random.seed(0)
    model = Toy()
    prompts = [[1, 2], [1, 2], [3], [3]]
    completions = [[4, 5, 0], [6, 0], [7, 8, 9, 0], [5, 0]]
    tokens, mask = grpo.pad_sequences(prompts, completions, pad_id=10)
    return model, tokens, mask


def test_completion_mask_covers_completion_tokens_only():
    _, tokens, mask = _toy_batch()
    assert tokens.tolist()[0] == [1, 2, 4, 5, 0]
    assert mask.tolist()[0] == [0, 1, 1, 1]  # targets 4, 5, 0 (prompt token 2 is not a target)
    assert mask.tolist()[2] == [1, 1, 1, 1]
    assert mask.tolist()[3][:2] == [1, 1] and sum(mask.tolist()[3]) == 2


@pytest.mark.parametrize("name", sorted(grpo.VARIANTS))
def test_first_pass_ratio_is_one_and_zero_advantage_gives_zero_gradient(name):
    model, tokens, mask = _toy_batch()
    old = mx.stop_gradient(grpo.sequence_logprobs(model, tokens)[0])
    logp, _ = grpo.sequence_logprobs(model, tokens)
    assert np.array_equal(np.array(mx.exp(logp - old)), np.ones(logp.shape, dtype=np.float32))

    def loss_fn(m, adv):
        return grpo.grpo_loss(
            m, tokens, mask, old, None, adv, 0.2, 0.28, 0.0, 1.0, 8, grpo.VARIANTS[name].aggregate
        )[0]

    zero = nn.value_and_grad(model, loss_fn)(model, mx.zeros((4,)))[1]
    assert all(np.all(np.array(g) == 0) for _, g in _leaves(zero))
    some = nn.value_and_grad(model, loss_fn)(model, mx.array([1.0, -1.0, 0.5, -0.5]))[1]
    assert any(np.any(np.array(g) != 0) for _, g in _leaves(some))


def _leaves(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def test_adapters_disabled_gives_the_base_model(tiny_model_dir):
    from sf_mlx import model as model_io
    from sf_mlx.lora import attach_lora

    m, _ = model_io.load(str(tiny_model_dir))
    x = mx.array([[1, 2, 3, 4]])
    base = np.array(m(x))
    attach_lora(m, rank=4, scale=20.0, dropout=0.0, num_layers=-1)
    for _, mod in m.named_modules():  # move the adapters off zero so they change the output
        if hasattr(mod, "lora_b"):
            mod.lora_b = mx.ones_like(mod.lora_b) * 0.01
    assert not np.allclose(np.array(m(x)), base, atol=1e-5)
    with grpo.adapters_disabled(m):
        np.testing.assert_allclose(np.array(m(x)), base, atol=1e-5)
    assert not np.allclose(np.array(m(x)), base, atol=1e-5)  # restored afterwards


# --------------------------------------------------------------------------- loop on a tiny model


def _toy_setup(tiny_model_dir, **overrides):
    """Countdown prompts; a verifiable format reward: 1 for a completion that closes an
    `<answer>` block and stops within `max_tokens` (the weak tiny model mostly rambles on)."""
    from sf_mlx import model as model_io
    from sf_mlx.lora import attach_lora
    from sf_mlx.tasks import extract_answer, get_task

    mx.random.seed(0)
    m, tok = model_io.load(str(tiny_model_dir))
    attach_lora(m, rank=8, scale=20.0, dropout=0.0, num_layers=-1)
    problems = get_task("countdown").make_problems(
        16, 0, num_args=2, max_number=10, min_target=10, max_target=30
    )

    def reward(problem, text):  # truncated completions never reach here: they get 0
        return float(extract_answer(text) is not None)

    cfg = replace(
        GrpoConfig(),
        prompts_per_step=4,
        group_size=8,
        minibatch_prompts=2,
        max_tokens=24,
        learning_rate=5e-4,
        temperature=1.0,
        checkpoint_every=2,
        **overrides,
    )
    return m, tok, problems, reward, cfg


@pytest.mark.slow
def test_grpo_learns_a_toy_verifiable_reward(tiny_model_dir, tmp_path):
    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=20)
    history = []
    grpo.train_grpo(
        m,
        tok,
        problems,
        reward,
        cfg,
        tmp_path / "ckpt",
        seed=0,
        on_step=lambda s, met, b: history.append(met["grpo/reward"]),
    )
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last > first + 0.25, f"mean reward did not rise: first 5 steps {first}, last 5 {last}"


def test_sampler_and_training_log_probs_agree_at_the_rollout_temperature(tiny_model_dir):
    """The rollout's recorded log-probs are those of the distribution it sampled from, so the
    training forward pass reproduces them up to float error at any temperature."""
    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir)
    cfg = replace(cfg, temperature=0.7)
    batch = grpo.collect_rollouts(
        m, tok, problems, lambda p: p.question, reward, [0, 1, 2, 3], cfg, seed=0, step=1
    )
    opt = optim.Adam(learning_rate=0.0)
    gap = grpo.policy_update(m, opt, batch, tok.pad_token_id or 0, cfg)["logprob_gap"]
    assert 0.0 <= gap < 1e-3, f"sampler and training log-probs differ by {gap}"


@pytest.mark.slow
def test_resume_equals_no_stop(tiny_model_dir, tmp_path):
    from mlx.utils import tree_flatten

    m1, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=4)
    grpo.train_grpo(m1, tok, problems, reward, cfg, tmp_path / "straight", seed=3)

    m2, tok, problems, reward, cfg2 = _toy_setup(tiny_model_dir, steps=4)
    stop_after = replace(cfg2, steps=2)
    assert grpo.train_grpo(m2, tok, problems, reward, stop_after, tmp_path / "split", seed=3) == 2
    m3, tok, problems, reward, cfg3 = _toy_setup(tiny_model_dir, steps=4)  # a fresh process
    assert grpo.train_grpo(m3, tok, problems, reward, cfg3, tmp_path / "split", seed=3) == 4

    a = dict(tree_flatten(m1.trainable_parameters()))
    b = dict(tree_flatten(m3.trainable_parameters()))
    assert a.keys() == b.keys() and a
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k
