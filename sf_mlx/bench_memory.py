"""`sf-mlx bench memory`: peak memory of the log-prob pass and of a GRPO update with a
Qwen-sized vocabulary, on a stand-in with Qwen2.5-1.5B's vocabulary and tied embeddings and a
scaled-down body (random weights; memory depends on shapes, not on values).

1. The chosen-token log-prob pass, forward and backward, at rows x T tokens: plain (every
   logit at once) against chunked (`sf_mlx.logprobs`), with the head frozen (LoRA, and GRPO's
   adapters) and trainable (full fine-tuning); the largest log-prob difference between them.
2. A GRPO update's gradient (`grpo.plan_update` + `grpo.minibatch_gradient`) on synthetic
   rollouts whose rows x tokens grow 16x at a fixed `grpo.microbatch_tokens`: the peak follows
   the micro-batch, not the batch.
Peaks are MLX's own accounting (`mx.get_peak_memory`) above the memory held before the pass.
"""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from sf_mlx.logprobs import LOGITS_BUDGET, token_logprobs

QWEN_VOCAB = 151_936


def stand_in(
    vocab: int = QWEN_VOCAB,
    hidden: int = 128,
    layers: int = 2,
    seed: int = 0,
    intermediate: int | None = None,
    heads: int = 4,
    tied: bool = True,
):
    """A qwen2 model with random weights: by default Qwen2.5-1.5B's vocabulary and tied
    embeddings with a small body (intermediate 2 x hidden, 4 heads, half as many KV heads)."""
    from mlx_lm.models import qwen2

    args = qwen2.ModelArgs(
        "qwen2",
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate or 2 * hidden,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        rms_norm_eps=1e-6,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    mx.random.seed(seed)
    model = qwen2.Model(args)
    mx.eval(model.parameters())
    return model


def _train_head(model, trainable: bool) -> None:
    """Every weight trainable, or (as under LoRA) the body only, the vocabulary rows frozen."""
    model.unfreeze()
    if not trainable:
        model.freeze()
        for layer in model.model.layers:
            layer.unfreeze()


def _peak(fn) -> float:
    """GB above the memory active before `fn()` runs, at its peak."""
    mx.synchronize()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(fn())
    return (mx.get_peak_memory() - before) / 1e9


def logprob_pass(model, tokens: mx.array, budget: int) -> float:
    def loss(m, t):
        return token_logprobs(m, t, budget_bytes=budget).sum()

    return _peak(lambda: nn.value_and_grad(model, loss)(model, tokens))


def _synthetic_batch(rows: int, length: int, group: int, vocab: int, seed: int):
    from sf_mlx.stages import grpo
    from sf_mlx.stages.grpo_objective import grpo_advantages

    rng = np.random.default_rng(seed)
    prompt = max(1, length // 4)
    prompts = [rng.integers(0, vocab, prompt).tolist() for _ in range(rows)]
    completions = [rng.integers(0, vocab, length - prompt).tolist() for _ in range(rows)]
    rewards = rng.integers(0, 2, (rows // group, group)).astype(np.float64)
    rewards[:, 0], rewards[:, 1] = 0.0, 1.0  # every group carries signal
    return grpo.RolloutBatch(
        problem_idx=list(range(rows // group)),
        prompts=prompts,
        completions=completions,
        texts=[""] * rows,
        sampler_logprobs=[[0.0] * len(c) for c in completions],
        entropies=[0.0] * rows,
        truncated=[False] * rows,
        rewards=rewards,
        advantages=grpo_advantages(rewards),
    )


def update_peak(model, rows: int, length: int, microbatch_tokens: int, seed: int = 0) -> float:
    """Peak GB of one GRPO mini-batch gradient over `rows` rollouts of `length` tokens."""
    from sf_mlx.config import GrpoConfig
    from sf_mlx.stages import grpo

    group = 8
    cfg = replace(
        GrpoConfig(),
        group_size=group,
        prompts_per_step=rows // group,
        minibatch_prompts=rows // group,
        microbatch_tokens=microbatch_tokens,
        max_tokens=length,
    )
    batch = _synthetic_batch(rows, length, group, model.args.vocab_size, seed)

    def gradient():
        (mini,) = grpo.plan_update(model, batch, 0, cfg)
        grads, sums, _ = grpo.minibatch_gradient(model, mini, cfg)
        return grads, sums

    return _peak(gradient)


def bench_memory(rows: int = 8, length: int = 256, hidden: int = 128, log=print) -> dict:
    model = stand_in(hidden=hidden)
    tokens = mx.random.randint(0, QWEN_VOCAB, (rows, length + 1), key=mx.random.key(1))
    logits_gb = rows * length * QWEN_VOCAB * 4 / 1e9
    log(
        f"stand-in: qwen2, vocabulary {QWEN_VOCAB:,}, hidden {hidden}, tied embeddings; "
        f"{rows} x {length} tokens ({logits_gb:.2f} GB of float32 logits)"
    )
    out: dict = {"rows": rows, "length": length, "logits_gb": logits_gb}
    plain = token_logprobs(model, tokens, budget_bytes=10**15)
    chunked = token_logprobs(model, tokens)
    out["max_logprob_difference"] = float(mx.abs(plain - chunked).max())
    log(f"largest log-prob difference, chunked vs plain: {out['max_logprob_difference']:.2e}")
    log(f"{'head':<10} {'plain GB':>9} {'chunked GB':>11} {'ratio':>6}")
    for head in ("frozen", "trainable"):
        _train_head(model, head == "trainable")
        a = logprob_pass(model, tokens, 10**15)
        b = logprob_pass(model, tokens, LOGITS_BUDGET)
        out[head] = {"plain_gb": a, "chunked_gb": b, "ratio": a / b}
        log(f"{head:<10} {a:>9.2f} {b:>11.2f} {a / b:>5.1f}x")
    _train_head(model, False)
    log("GRPO mini-batch gradient, grpo.microbatch_tokens = 1024, head frozen:")
    out["update"] = []
    for n, t in ((8, 128), (16, 256), (32, 512)):
        gb = update_peak(model, n, t, 1024)
        out["update"].append({"rows": n, "length": t, "peak_gb": gb})
        log(f"  {n:>3} rows x {t:>4} tokens ({n * t:>6} tokens): peak {gb:.2f} GB")
    peaks = [u["peak_gb"] for u in out["update"]]
    log(f"rows x tokens grew 16x; the peak changed {max(peaks) / min(peaks):.2f}x")
    return out
