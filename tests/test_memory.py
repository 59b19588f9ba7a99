"""Memory planning (`sf_mlx.memory`): model shapes, checkpointed layers, and the settings search
that `sf-mlx bench memory --plan` prints."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sf_mlx.config import SftConfig
from sf_mlx.memory import (
    QWEN25_1_5B,
    Coefficients,
    Shapes,
    activations,
    checkpointed_layers,
    fit,
    phases,
)
from sf_mlx.recipe_files import load_recipe

# inputs for the search logic (of the order `sf-mlx bench memory --plan` measures)
COEF = Coefficients(28.5, 10.2, 5.0, 22.0, 36.0, 6.6, 8.0, 20.0, 12.0, 130.0)


def _qwen2(tied: bool, layers=2, hidden=64, inter=160, heads=4, vocab=300):
    from sf_mlx.bench_memory import stand_in

    model = stand_in(vocab, hidden, layers, intermediate=inter, heads=heads, tied=tied)
    return model, model.args


@pytest.mark.parametrize("tied", [True, False])
def test_shapes_count_the_weights_of_a_real_model(tied):
    model, args = _qwen2(tied)
    s = Shapes.from_config(vars(args))
    real = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert s.params <= real < 1.02 * s.params  # biases and norms aside
    assert s.kv_bytes_per_token(2) == 2 * 2 * 2 * 16 * 2
    assert 1.5e9 < QWEN25_1_5B.params < 1.6e9
    assert QWEN25_1_5B.kv_bytes_per_token(2) == 28_672  # Qwen2.5-1.5B: 28 KB per token
    with pytest.raises(ValueError, match="no 'num_hidden_layers'"):
        Shapes.from_config({"num_attention_heads": 2})


def test_checkpointed_layers_keep_the_gradients_lower_the_peak_and_put_the_class_back():
    model, _ = _qwen2(True, layers=6, hidden=64, inter=256, vocab=64)
    tokens = mx.random.randint(0, 64, (1, 513), key=mx.random.key(1))

    def loss(m, t):
        logits = m(t[:, :-1])
        return nn.losses.cross_entropy(logits, t[:, 1:]).mean()

    layer_call = type(model.layers[0]).__call__

    def run(checkpoint: bool):
        mx.synchronize()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        with checkpointed_layers(model, checkpoint):
            value, grads = nn.value_and_grad(model, loss)(model, tokens)
            mx.eval(value, grads)
        return value.item(), dict(tree_flatten(grads)), mx.get_peak_memory() - before

    plain_loss, plain, plain_peak = run(False)
    ck_loss, ck, ck_peak = run(True)
    assert type(model.layers[0]).__call__ is layer_call
    assert ck_loss == pytest.approx(plain_loss, abs=1e-6)
    assert max(float(mx.abs(plain[k] - ck[k]).max()) for k in plain) < 1e-5
    assert ck_peak < 0.6 * plain_peak


def test_sft_with_checkpointed_layers_trains_the_same_weights(tiny_model_dir):
    from sf_mlx import model as model_io
    from sf_mlx.stages.sft import encode_chat, make_batches, train

    rows = [("Make 12 from 3 and 4.", "<answer>3 * 4</answer>")] * 8
    out = []
    for checkpoint in (False, True):
        model, tok = model_io.load(str(tiny_model_dir))
        msgs = [
            [{"role": "user", "content": u}, {"role": "assistant", "content": a}] for u, a in rows
        ]
        batches = make_batches([encode_chat(tok, m) for m in msgs], 4, 0)
        cfg = SftConfig(method="full", learning_rate=1e-3, iters=3, batch_size=4, warmup=0)
        train(model, batches, [], replace(cfg, grad_checkpoint=checkpoint), seed=0)
        out.append({k: np.array(v) for k, v in tree_flatten(model.parameters())})
    assert max(float(np.abs(out[0][k] - out[1][k]).max()) for k in out[0]) < 1e-5


def test_activations_grow_with_the_square_of_the_length_unless_layers_are_checkpointed():
    s = QWEN25_1_5B
    one, two = (activations(s, COEF, 1, t, False) for t in (2048, 4096))
    assert 2.5 < two / one < 4.0  # more than linear: the T^2 attention term
    ck = activations(s, COEF, 1, 4096, True)
    assert ck < two / 5


def test_the_plan_finds_settings_under_which_every_phase_fits():
    recipe = load_recipe("countdown-paper", ["sft.grad_checkpoint=false", "grpo.grad_checkpoint=0"])
    own = {ph.stage: ph.gb for ph in phases(recipe, QWEN25_1_5B, COEF)}
    assert own["sft"] > 60 and own["grpo update"] > 60  # full FT at 4k tokens, unchecked
    sets, fitted = fit(recipe, QWEN25_1_5B, COEF, 80)
    assert sets == ["sft.grad_checkpoint=true", "grpo.grad_checkpoint=true"]
    assert max(ph.gb for ph in fitted) <= 0.75 * 80
    assert fit(load_recipe("countdown-paper"), QWEN25_1_5B, COEF, 80)[0] == []  # as it is
    sets, fitted = fit(recipe, QWEN25_1_5B, COEF, 32)  # full FT's 20 B/param cannot fit
    assert "sft.method=lora" in sets and "grpo.method=lora" in sets
    assert max(ph.gb for ph in fitted) <= 24
    small, _ = fit(recipe, QWEN25_1_5B, COEF, 16)
    assert any(s.startswith("grpo.rollout_batch=") for s in small)
    assert fit(recipe, QWEN25_1_5B, COEF, 2)[0] is None  # 3 GB of weights alone


def test_a_grpo_update_with_checkpointed_layers_moves_the_adapter_the_same_way(tiny_model_dir):
    import mlx.optimizers as optim

    from sf_mlx import model as model_io
    from sf_mlx.config import GrpoConfig
    from sf_mlx.lora import attach_lora
    from sf_mlx.stages import grpo
    from sf_mlx.tasks import extract_answer, get_task

    problems = get_task("countdown").make_problems(4, 0, num_args=2, max_number=10)
    cfg = replace(
        GrpoConfig(),
        prompts_per_step=4,
        group_size=4,
        minibatch_prompts=4,
        max_tokens=24,
        learning_rate=1e-3,
        temperature=1.0,
    )
    out = []
    for checkpoint in (False, True):
        mx.random.seed(0)
        m, tok = model_io.load(str(tiny_model_dir))
        attach_lora(m, rank=8, scale=20.0, dropout=0.0, num_layers=-1)
        batch = grpo.collect_rollouts(
            m,
            tok,
            problems,
            lambda p: p.question,
            lambda p, text: float(extract_answer(text) is not None) + 0.1 * len(text) / 100,
            [0, 1, 2, 3],
            cfg,
            seed=0,
            step=1,
        )
        c = replace(cfg, grad_checkpoint=checkpoint)
        grpo.policy_update(m, optim.Adam(learning_rate=1e-3), batch, tok.pad_token_id or 0, c)
        out.append({k: np.array(v) for k, v in tree_flatten(m.trainable_parameters())})
    assert any(np.abs(v).max() > 0 for k, v in out[0].items() if "lora_b" in k)  # it moved
    assert max(float(np.abs(out[0][k] - out[1][k]).max()) for k in out[0]) < 1e-5


def test_a_kl_reference_costs_one_float32_copy_under_full_grpo():
    recipe = load_recipe("countdown-paper")
    with_kl = replace(recipe, grpo=replace(recipe.grpo, beta=0.04))
    a = {ph.stage: ph.gb for ph in phases(recipe, QWEN25_1_5B, COEF)}
    b = {ph.stage: ph.gb for ph in phases(with_kl, QWEN25_1_5B, COEF)}
    for stage in ("grpo rollouts", "grpo update"):
        assert b[stage] - a[stage] == pytest.approx(4 * QWEN25_1_5B.params / 1e9)
    assert b["sft"] == a["sft"]
