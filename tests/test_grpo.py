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
from sf_mlx.stages import grpo_objective as objective


def test_equal_rewards_give_zero_advantage_in_both_variants():
    rewards = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    for variant in objective.VARIANTS.values():
        adv = variant.advantages(rewards)
        assert np.all(adv[0] == 0) and np.all(adv[2] == 0)
        assert adv[1, 1] > 0 > adv[1, 0]
    np.testing.assert_allclose(objective.grpo_advantages(rewards)[1], [-1, 1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(objective.dr_grpo_advantages(rewards)[1], [-0.5, 0.5, -0.5, 0.5])


def test_clip_bounds_are_honoured():
    old = mx.zeros((1, 4))
    logp = mx.log(mx.array([[0.5, 0.9, 1.1, 2.0]]))  # ratios 0.5, 0.9, 1.1, 2.0
    for a, expect in (
        (1.0, [-0.5, -0.9, -1.1, -1.28]),  # A > 0: ratio capped at 1 + eps_high
        (-1.0, [0.8, 0.9, 1.1, 2.0]),  # A < 0: ratio floored at 1 - eps_low
    ):
        loss, clipped = objective.clipped_objective(logp, old, mx.array([a]), 0.2, 0.28)
        np.testing.assert_allclose(np.array(loss)[0], expect, rtol=1e-5)
        assert np.array(clipped)[0].tolist() == ([0, 0, 0, 1] if a > 0 else [1, 0, 0, 0])


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
    a = mx.array([[-1.0, -2.0]])
    assert np.allclose(np.array(objective.k3_kl(a, a)), 0)
    assert np.all(np.array(objective.k3_kl(a, a - 0.5)) > 0)


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


@pytest.mark.parametrize("name", sorted(objective.VARIANTS))
def test_first_pass_ratio_is_one_and_zero_advantage_gives_zero_gradient(name):
    model, tokens, mask = _toy_batch()
    old = mx.stop_gradient(objective.sequence_logprobs(model, tokens))
    logp = objective.sequence_logprobs(model, tokens)
    assert np.array_equal(np.array(mx.exp(logp - old)), np.ones(logp.shape, dtype=np.float32))
    variant = objective.VARIANTS[name]

    def loss_fn(m, adv):
        return objective.grpo_loss(
            m, tokens, mask, old, None, adv, 0.2, 0.28, 0.0, 1.0, variant.row_loss, 4
        )[0]

    zero = nn.value_and_grad(model, loss_fn)(model, mx.zeros((4,)))[1]
    assert all(np.all(np.array(g) == 0) for _, g in _leaves(zero))
    some = nn.value_and_grad(model, loss_fn)(model, mx.array([1.0, -1.0, 0.5, -0.5]))[1]
    assert any(np.any(np.array(g) != 0) for _, g in _leaves(some))


def test_sequence_logprobs_equal_a_full_log_softmax_from_any_start():
    model, tokens, _ = _toy_batch()
    logits = model(tokens[:, :-1])
    full = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    want = np.take_along_axis(np.array(full), np.array(tokens)[:, 1:, None], axis=-1)[..., 0]
    for start in (0, 1, 3):
        got = np.array(objective.sequence_logprobs(model, tokens, 1.0, start))
        np.testing.assert_allclose(got, want[:, start:], atol=1e-5)


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
    with objective.adapters_disabled(m):
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

    settings = {
        "prompts_per_step": 4,
        "group_size": 8,
        "minibatch_prompts": 2,
        "max_tokens": 24,
        "learning_rate": 5e-4,
        "temperature": 1.0,
        "checkpoint_every": 2,
    }
    cfg = replace(GrpoConfig(), **{**settings, **overrides})
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


# --------------------------------------------------------------------------- the update's plan


def test_microbatches_are_length_sorted_within_budget_and_cover_every_row():
    lengths = [300, 40, 41, 120, 90, 39, 500]
    parts = grpo.plan_microbatches(lengths, budget=260, pad_to=32)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    flat = [lengths[i] for p in parts for i in p]
    assert flat == sorted(flat)
    for p in parts:  # rows x width within budget, unless a row alone is longer
        width = max(1 + 32 * -(-(lengths[i] - 1) // 32) for i in p)
        assert len(p) * width <= 260 or len(p) == 1


def _hand_batch(advantages, truncated):
    """Two groups of three completions of different lengths, with given advantages."""
    prompts = [[1, 2]] * 3 + [[3, 4, 5]] * 3
    completions = [[4, 5, 0], [6, 0], [7, 8, 9, 6, 5], [5, 0], [7, 7, 7, 7, 0], [9, 8]]
    return grpo.RolloutBatch(
        problem_idx=[0, 1],
        prompts=prompts,
        completions=completions,
        texts=[""] * 6,
        sampler_logprobs=[[0.0] * len(c) for c in completions],
        entropies=[0.0] * 6,
        truncated=truncated,
        rewards=np.zeros((2, 3)),
        advantages=np.array(advantages, dtype=np.float64),
    )


def _reference_loss(m, batch, cfg, old, ref):
    """The plain definition: every row of the mini-batch padded together, a full log-softmax."""
    tokens, mask = grpo.pad_sequences(batch.prompts, batch.completions, pad_id=10)
    logits = m(tokens[:, :-1]) / cfg.temperature
    logp_all = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    logp = mx.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
    keep = mx.array([0.0 if cfg.overlong_filter and t else 1.0 for t in batch.truncated])
    mask = mask * keep[:, None]
    adv = mx.array(batch.advantages.reshape(-1), mx.float32)[:, None]
    ratio = mx.exp(logp - (mx.stop_gradient(logp) if old is None else old))
    per_token = -mx.minimum(ratio * adv, mx.clip(ratio, 1 - 0.2, 1 + 0.28) * adv)
    if cfg.beta:
        per_token = per_token + cfg.beta * objective.k3_kl(logp, ref)
    sums, counts = (per_token * mask).sum(axis=1), mask.sum(axis=1)
    rows = keep.sum()
    if cfg.variant == "grpo":
        return (sums / mx.maximum(counts, 1)).sum() / rows
    if cfg.variant == "dapo":
        return sums.sum() / counts.sum()
    return sums.sum() / (rows * cfg.max_tokens)


@pytest.mark.parametrize("variant", sorted(objective.VARIANTS))
@pytest.mark.parametrize("overlong_filter", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_skipping_and_micro_batches_give_the_plain_full_batch_gradient(
    variant, overlong_filter, beta
):
    model, _, _ = _toy_batch()
    batch = _hand_batch([[0.0, 0.0, 0.0], [1.2, -0.7, -0.5]], [False, False, True] * 2)
    cfg = replace(
        GrpoConfig(),
        prompts_per_step=2,
        group_size=3,
        minibatch_prompts=2,
        max_tokens=8,
        variant=variant,
        overlong_filter=overlong_filter,
        beta=beta,
        microbatch_tokens=20,  # forces several micro-batches
        temperature=0.8,
    )
    (mini,) = grpo.plan_update(model, batch, pad_id=10, cfg=cfg)
    assert len(mini.micro) > 1
    used = sorted(r for mb in mini.micro for r in mb.rows)
    expect = [r for r in range(6) if not (overlong_filter and batch.truncated[r])]
    assert used == (expect if beta else [r for r in expect if r >= 3])  # group 0 has A = 0
    grads, stats, _ = grpo.minibatch_gradient(model, mini, cfg)

    ref = mx.stop_gradient(
        objective.sequence_logprobs(
            model, *grpo.pad_sequences(batch.prompts, batch.completions, 10)[:1], cfg.temperature
        )
    )
    want_loss, want = nn.value_and_grad(model, _reference_loss)(model, batch, cfg, None, ref)
    np.testing.assert_allclose(stats["loss"].item(), want_loss.item(), rtol=1e-4, atol=1e-7)
    flat_got, flat_want = dict(_leaves(grads)), dict(_leaves(want))
    assert flat_got.keys() == flat_want.keys()
    assert any(np.any(np.array(g) != 0) for g in flat_want.values())
    for k in flat_want:
        np.testing.assert_allclose(np.array(flat_got[k]), np.array(flat_want[k]), atol=1e-6)


def test_several_mini_batches_compute_the_old_log_probs_once_before_any_update():
    model, _, _ = _toy_batch()
    batch = _hand_batch([[1.0, -1.0, 0.0], [1.2, -0.7, -0.5]], [False] * 6)
    one = replace(GrpoConfig(), prompts_per_step=2, group_size=3, minibatch_prompts=2)
    two = replace(one, minibatch_prompts=1)
    assert all(
        mb.old_logp is None for m in grpo.plan_update(model, batch, 10, one) for mb in m.micro
    )
    plan = grpo.plan_update(model, batch, 10, two)
    assert len(plan) == 2 and all(mb.old_logp is not None for m in plan for mb in m.micro)
    assert all(
        mb.old_logp is not None
        for m in grpo.plan_update(model, batch, 10, replace(one, mu=2))
        for mb in m.micro
    )


def test_a_non_finite_loss_is_never_applied(tiny_model_dir):
    from mlx.utils import tree_flatten

    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir)
    batch = grpo.collect_rollouts(
        m, tok, problems, lambda p: p.question, reward, [0, 1, 2, 3], cfg, seed=0, step=0
    )
    batch = replace(batch, advantages=np.full(batch.advantages.shape, np.nan))
    opt = optim.AdamW(learning_rate=1e-2)
    before = {k: np.array(v) for k, v in tree_flatten(m.trainable_parameters())}
    with pytest.raises(FloatingPointError):
        grpo.policy_update(m, opt, batch, tok.pad_token_id or 0, cfg)
    after = dict(tree_flatten(m.trainable_parameters()))
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before)
    assert int(np.array(opt.state["step"])) == 0


def test_a_stopped_completion_trains_the_eos_token_it_sampled(tiny_model_dir):
    """With several EOS ids (Qwen: <|im_end|> and <|endoftext|>), the EOS that ends a trained
    completion is the one the policy sampled, and its log-prob matches the sampler's."""
    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir)
    end = tok.eos_token_id
    tok.eos_token_ids = {0, end}  # 0 is <|endoftext|>, which this model never writes
    batch = grpo.collect_rollouts(
        m, tok, problems, lambda p: p.question, reward, [0, 1, 2, 3], cfg, seed=0, step=0
    )
    stopped = [c for c, t in zip(batch.completions, batch.truncated, strict=True) if not t]
    assert stopped, "no completion stopped: the test needs some"
    assert all(c[-1] == end for c in stopped)
    assert all(
        len(lp) == len(c) for lp, c in zip(batch.sampler_logprobs, batch.completions, strict=True)
    )
    upd = grpo.policy_update(m, optim.Adam(learning_rate=0.0), batch, tok.pad_token_id or 0, cfg)
    assert upd["logprob_gap"] < 1e-3  # the EOS position included


@pytest.mark.slow
def test_interrupt_inside_a_step_keeps_the_last_whole_step_and_resumes_exactly(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Ctrl-C after the first of a step's two updates: the checkpoint is the previous whole
    step, and resuming from it gives the run that was never interrupted."""
    from mlx.utils import tree_flatten

    def weights(m):
        return {k: np.array(v) for k, v in tree_flatten(m.trainable_parameters())}

    m1, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=3, checkpoint_every=1)
    one = replace(cfg, steps=1)
    grpo.train_grpo(m1, tok, problems, reward, one, tmp_path / "one", seed=3)
    w_one = weights(m1)
    grpo.train_grpo(m1, tok, problems, reward, cfg, tmp_path / "one", seed=3)
    w_three = weights(m1)

    calls = {"n": 0}

    class Interrupting(optim.AdamW):
        def update(self, model, gradients):
            super().update(model, gradients)
            calls["n"] += 1
            if calls["n"] == 3:  # step 2's first mini-batch has just been applied
                raise KeyboardInterrupt

    m2, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=3, checkpoint_every=1)
    monkeypatch.setattr(optim, "AdamW", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        grpo.train_grpo(m2, tok, problems, reward, cfg, tmp_path / "cut", seed=3)
    monkeypatch.undo()
    state = (tmp_path / "cut" / "state.json").read_text()
    assert '"step": 1' in state
    saved = dict(mx.load(str(tmp_path / "cut" / "adapters.safetensors")))
    assert all(np.array_equal(np.array(saved[k]), w_one[k]) for k in w_one)

    m3, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=3, checkpoint_every=1)
    assert grpo.train_grpo(m3, tok, problems, reward, cfg, tmp_path / "cut", seed=3) == 3
    w_resumed = weights(m3)
    assert all(np.array_equal(w_resumed[k], w_three[k]) for k in w_three)


def test_a_fresh_grpo_adapter_is_a_function_of_the_seed(tiny_model_dir):
    """A GRPO stage restarted before its first checkpoint starts from the same adapter."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    from sf_mlx.recipe_files import load_recipe
    from sf_mlx.stages.arms import load_policy

    cfg = load_recipe("countdown-tiny").grpo

    def adapter(seed: int) -> dict:
        mx.random.normal((7,))  # whatever ran before in the process
        m, _, _ = load_policy(str(tiny_model_dir), cfg, seed)
        return {k: np.array(v) for k, v in tree_flatten(m.trainable_parameters())}

    a, b, c = adapter(0), adapter(0), adapter(1)
    assert a and a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_rollout_batch_bounds_the_sequences_decoded_at_once(tiny_model_dir, monkeypatch):
    """A step's B x G completions with `rollout_batch` 4: the model never sees more than 4 rows
    at once (the KV cache holds at most 4 sequences), and every completion is still made."""
    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, rollout_batch=4)
    rows_seen: list[int] = []
    forward = type(m).__call__

    def counting(self, inputs, *args, **kwargs):
        rows_seen.append(inputs.shape[0])
        return forward(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(m), "__call__", counting)
    batch = grpo.collect_rollouts(
        m, tok, problems, lambda p: p.question, reward, [0, 1, 2, 3], cfg, seed=0, step=0
    )
    assert len(batch.completions) == 4 * cfg.group_size
    assert rows_seen and max(rows_seen) <= 4
    rows_seen.clear()
    whole = replace(cfg, rollout_batch=0)  # the whole step at once
    grpo.collect_rollouts(
        m, tok, problems, lambda p: p.question, reward, [0, 1, 2, 3], whole, seed=0, step=0
    )
    assert max(rows_seen) > 4


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_checkpoint_is_one_line_naming_it(tiny_model_dir, tmp_path, damage):
    m, tok, problems, reward, cfg = _toy_setup(tiny_model_dir, steps=1)
    grpo.train_grpo(m, tok, problems, reward, cfg, tmp_path / "ckpt", seed=0)
    weights = tmp_path / "ckpt" / "adapters.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"garbage" if damage == "garbage" else data[: len(data) // 2])
    m2, tok, problems, reward, cfg2 = _toy_setup(tiny_model_dir, steps=2)
    with pytest.raises(ValueError) as e:
        grpo.train_grpo(m2, tok, problems, reward, cfg2, tmp_path / "ckpt", seed=0)
    assert "unreadable GRPO checkpoint" in str(e.value) and "\n" not in str(e.value)
