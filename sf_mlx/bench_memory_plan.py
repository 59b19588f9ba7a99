"""`sf-mlx bench memory --plan`: measure the coefficients of `sf_mlx.memory` on qwen2 stand-ins
(random weights; memory depends on shapes, not values), check them on a stand-in they were not
fitted on, then print what each phase of a recipe needs on a real model's shapes and the
settings under which it fits 16, 32, 64 and 80 GB.

Activations: the body trains (norms only, so gradients are negligible) over rows x T tokens with
a 16-token vocabulary (the head's share is `memory.HEAD_BLOCKS` logits blocks, subtracted), for
shapes that vary layers, hidden and intermediate sizes, heads, T and rows; a least-squares fit
gives bytes per token, layer and hidden / intermediate unit, and per row, layer, head and T^2.
Full-parameter updates: GRPO's own gradient path and SFT's compiled step with AdamW, per
parameter. Decoding: `sf_mlx.model.generate` at two batch sizes, above its exact KV cache.
"""

from __future__ import annotations

import gc
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sf_mlx.bench_memory import _peak, _synthetic_batch, stand_in
from sf_mlx.logprobs import token_logprobs
from sf_mlx.memory import HEAD_BLOCKS, Coefficients, Shapes, activation_terms, activations

# (layers, hidden, intermediate, heads, T, rows): each size varied with the others held
FIT_SHAPES = [
    (2, 64, 256, 4, 256, 4),
    (4, 64, 256, 4, 256, 4),
    (2, 128, 256, 4, 256, 4),
    (2, 64, 768, 4, 256, 4),
    (2, 64, 256, 4, 1024, 1),
    (4, 64, 256, 4, 1024, 1),
    (2, 64, 256, 8, 1024, 1),
    (2, 128, 512, 4, 512, 2),
    (4, 128, 512, 4, 512, 2),
    (3, 96, 384, 6, 768, 1),
    (6, 64, 256, 4, 512, 1),
    (2, 192, 768, 4, 128, 8),
]
# predicted from the fit, then measured
HELD_OUT = [(4, 192, 768, 6, 1024, 2), (8, 128, 512, 4, 1024, 1), (6, 256, 1024, 8, 512, 2)]
# checkpointed layers: the cost of a layer from the first two, the third predicted
CHECKPOINTED = [(4, 128, 512, 4, 1024, 1), (8, 128, 512, 4, 1024, 1), (6, 192, 768, 6, 512, 2)]
CALIBRATION_VOCAB = 16


def _model(layers: int, hidden: int, intermediate: int, heads: int, vocab: int):
    return stand_in(vocab, hidden, layers, intermediate=intermediate, heads=heads)


def shapes_of(model) -> Shapes:
    a = model.args
    return Shapes(
        a.num_hidden_layers,
        a.hidden_size,
        a.intermediate_size,
        a.num_attention_heads,
        a.num_key_value_heads,
        a.hidden_size // a.num_attention_heads,
        a.vocab_size,
        True,
    )


def activation_bytes(shape: tuple, checkpoint: bool = False) -> float:
    """Measured bytes of a forward and backward through the body, the head's share removed."""
    from sf_mlx.memory import checkpointed_layers

    layers, hidden, inter, heads, length, rows = shape
    model = _model(layers, hidden, inter, heads, CALIBRATION_VOCAB)
    model.freeze()
    for layer in model.layers:
        layer.input_layernorm.unfreeze()  # the whole body backpropagates, gradients are tiny
    tokens = mx.random.randint(0, CALIBRATION_VOCAB, (rows, length + 1), key=mx.random.key(2))

    def loss(m, t):
        return token_logprobs(m, t).sum()

    with checkpointed_layers(model, checkpoint):
        peak = _peak(lambda: nn.value_and_grad(model, loss)(model, tokens))
    head = HEAD_BLOCKS * rows * length * CALIBRATION_VOCAB * 4
    return peak * 1e9 - head


def _shapes(shape: tuple) -> Shapes:
    layers, hidden, inter, heads, _, _ = shape
    return Shapes(
        layers, hidden, inter, heads, max(1, heads // 2), hidden // heads, CALIBRATION_VOCAB, True
    )


def _columns(shape: tuple) -> list[float]:
    layers, *_, length, rows = shape
    terms = activation_terms(_shapes(shape), rows, length)
    return [layers * t for t in terms] + list(terms)


def fit_activations(log=print) -> tuple[list[float], list[dict]]:
    """Saved (per layer) and working (once) bytes per term, by least squares."""
    measured = []
    for shape in FIT_SHAPES:
        measured.append(activation_bytes(shape))
        log(f"  {shape}: {measured[-1] / 1e6:8.1f} MB")
    x = np.array([_columns(s) for s in FIT_SHAPES], float)
    coef, *_ = np.linalg.lstsq(x, np.array(measured), rcond=None)
    worst = max(abs(f / m - 1) for f, m in zip(x @ coef, measured, strict=True))
    log(
        "  per layer: {:.1f} B x token x hidden, {:.1f} x token x intermediate, {:.2f} x row x "
        "head x T^2; once: {:.1f}, {:.1f}, {:.2f}; largest error on these shapes {:.0%}".format(
            *coef, worst
        )
    )
    points = [{"shape": s, "bytes": m} for s, m in zip(FIT_SHAPES, measured, strict=True)]
    return [float(v) for v in coef], points


def checkpointed_coefficient(log=print) -> float:
    """Bytes per token, layer and hidden unit kept under checkpointed layers: the slope between
    two stand-ins that differ only in their number of layers."""
    (l1, *_, t, r), (l2, hidden, *_) = CHECKPOINTED[:2]
    a, b = (activation_bytes(s, checkpoint=True) for s in CHECKPOINTED[:2])
    value = (b - a) / ((l2 - l1) * r * t * hidden)
    log(f"  checkpointed layers keep {value:.1f} B per token x layer x hidden")
    return value


def _gradient(kind: str, model) -> dict:
    """A GRPO mini-batch gradient (its micro-batch accumulation included) or an SFT one."""
    from dataclasses import replace

    from sf_mlx.base.pretrain import masked_ce
    from sf_mlx.config import GrpoConfig
    from sf_mlx.stages import grpo

    vocab = model.args.vocab_size
    if kind == "grpo":
        cfg = replace(
            GrpoConfig(),
            group_size=2,
            prompts_per_step=1,
            minibatch_prompts=1,
            microbatch_tokens=64,
            max_tokens=8,
        )
        (mini,) = grpo.plan_update(model, _synthetic_batch(2, 8, 2, vocab, 0), 0, cfg)
        return grpo.minibatch_gradient(model, mini, cfg)[0]
    tokens = mx.random.randint(0, vocab, (1, 9), key=mx.random.key(3))
    return nn.value_and_grad(model, masked_ce)(model, tokens, mx.ones((1, 9)))[1]


def full_update_bytes(log=print) -> tuple[float, float]:
    """(peak, resident) bytes per parameter of full-parameter training with AdamW: the larger of
    a GRPO mini-batch update and an SFT step; resident: between updates."""
    import mlx.optimizers as optim

    peaks, resident = [], []
    for kind in ("grpo", "sft"):
        gc.collect()
        mx.synchronize()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        model = _model(4, 256, 1024, 4, 4096)
        params = sum(v.size for _, v in tree_flatten(model.parameters()))
        opt = optim.AdamW(learning_rate=1e-6)
        grads, _ = optim.clip_grad_norm(_gradient(kind, model), 1.0)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        del grads
        gc.collect()
        peaks.append((mx.get_peak_memory() - before) / params)
        resident.append((mx.get_active_memory() - before) / params)
        log(
            f"  full-parameter {kind} update: peak {peaks[-1]:.1f} B per parameter, "
            f"{resident[-1]:.1f} between updates ({params / 1e6:.1f}M parameters)"
        )
        del model, opt
    return max(peaks), max(resident)


class _Ids:
    """What `model.generate` reads from a tokenizer, for a stand-in without one."""

    def __init__(self, vocab: int) -> None:
        self.eos_token_ids = [vocab - 1]

    def decode(self, tokens) -> str:
        return ""


def decode_bytes(model, rows: int, length: int) -> float:
    from sf_mlx.model import SamplingParams, generate

    ids = _Ids(model.args.vocab_size)
    prompts = [[1 + i, 2, 3, 4] for i in range(rows)]
    params = SamplingParams(
        max_tokens=length, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0
    )
    gc.collect()
    mx.synchronize()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    generate(model, ids, prompts, params, seed=0, batch_size=rows)
    return float(mx.get_peak_memory() - before)


def decode_coefficient(log=print) -> float:
    model = stand_in(hidden=64, layers=2)
    s = shapes_of(model)
    values = []
    for rows in (4, 16):
        length = 4 + 128
        kv = rows * (math.ceil(length / 256) * 256) * s.kv_bytes_per_token(4)
        values.append((decode_bytes(model, rows, 128) - kv) / (rows * s.vocab))
        log(
            f"  decoding {rows} rows: {values[-1]:.1f} B per row x vocabulary entry "
            "above the KV cache"
        )
    return max(values)


def _predicted(coef: Coefficients, shape: tuple, checkpoint: bool) -> float:
    *_, length, rows = shape
    s = _shapes(shape)
    head = HEAD_BLOCKS * rows * length * CALIBRATION_VOCAB * 4
    return activations(s, coef, rows, length, checkpoint) - head


def calibrate(log=print) -> tuple[Coefficients, dict]:
    log("activations of a forward and backward (float32, MB above what was held before):")
    fitted, points = fit_activations(log)
    e = checkpointed_coefficient(log)
    full, resident = full_update_bytes(log)
    dec = decode_coefficient(log)
    coef = Coefficients(*fitted, e, full, resident, dec)
    checks = []
    for shape, checkpoint in [(s, False) for s in HELD_OUT] + [(CHECKPOINTED[2], True)]:
        predicted, measured = (
            _predicted(coef, shape, checkpoint),
            activation_bytes(shape, checkpoint),
        )
        checks.append(
            {
                "shape": shape,
                "checkpointed": checkpoint,
                "predicted": predicted,
                "measured": measured,
            }
        )
        log(
            f"held out {shape}{' checkpointed' if checkpoint else ''}: predicted "
            f"{predicted / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB "
            f"({predicted / measured - 1:+.1%})"
        )
    return coef, {"fit": points, "held_out": checks}


MACHINES = (16, 32, 64, 80)  # GB: Macs with 16, 32 and 64 GB, one 80 GB GPU


def plan(recipe_name: str, s: Shapes, coef: Coefficients, model_name: str, log=print) -> dict:
    """Each phase of the recipe on a model of shapes `s` (bfloat16 weights), then the settings
    under which it fits each machine in `MACHINES` (three quarters of the memory usable)."""
    from sf_mlx.memory import fit, phases
    from sf_mlx.recipe_files import load_recipe

    recipe = load_recipe(recipe_name)
    log(f"{recipe_name} on {model_name} ({s.params / 1e9:.2f}B parameters, bfloat16):")
    own = phases(recipe, s, coef)
    for ph in own:
        log(f"  {ph.stage:<14} {ph.gb:7.1f} GB  {ph.what}")
    out: dict = {"phases": [vars(ph) for ph in own], "machines": {}, "work": work(recipe)}
    log(
        "work, at most (tokens; every generation at its limit): "
        + ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in out["work"].items())
    )
    for gb in MACHINES:
        overrides, fitted = fit(recipe, s, coef, gb)
        peak = max(ph.gb for ph in fitted)
        if overrides is None:
            log(f"{gb} GB: does not fit (cheapest settings tried peak at {peak:.1f} GB)")
        else:
            sets = " ".join(f"--set {o}" for o in overrides) or "the recipe as it is"
            log(f"{gb} GB: {sets} (peak {peak:.1f} GB)")
        out["machines"][gb] = {"overrides": overrides, "peak_gb": peak}
    return out


def work(recipe) -> dict[str, int]:
    """Upper bounds on the tokens a run decodes and trains on (every generation at its limit):
    the work its time scales with, on any machine."""
    pr, sa, rf, sft, g, ev = (
        recipe.problems,
        recipe.sample,
        recipe.reflect,
        recipe.sft,
        recipe.grpo,
        recipe.evaluate,
    )
    attempts = pr.n_sft * len(sa.variants) * sa.n_samples
    grpo_arms = sum(a.endswith("grpo") or a == "rl_only" for a in ev.arms)
    sft_runs = sum(a in ("sft", "star") for a in ev.arms) + (grpo_arms and "sft" not in ev.arms)
    rollouts = grpo_arms * g.steps * g.prompts_per_step * g.group_size
    cells = len(ev.arms) * (len(pr.eval_num_args) + len(pr.ood_tasks))
    return {
        "sample": attempts * sa.max_tokens,
        "reflect": attempts * rf.n_reflections * rf.max_tokens,
        "grpo rollouts": rollouts * g.max_tokens,
        "evaluate": cells * pr.n_eval * ev.samples_per_question * (ev.max_tokens + ev.budget),
        "sft (trained)": sft_runs * sft.iters * sft.batch_size * sft.max_seq_len,
        "grpo update (trained)": rollouts * g.max_tokens * g.mu,
    }
