"""Pretraining of the built-in base model in MLX: packed chat examples, loss on responses only.

AdamW with linear warmup then cosine decay, an `mx.compile`d step, checkpoints that hold the
weights, the optimizer state and the step, so a killed build resumes where it stopped. The data
order is a pure function of (seed, epoch), so resuming needs no saved data iterator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from sf_mlx.logprobs import chunked, token_logprobs


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int  # packed rows per step
    seq_len: int  # tokens per packed row
    learning_rate: float
    warmup: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    checkpoint_every: int = 200
    seed: int = 0
    # The first `lead_rows` packed rows are a lead-in trained before any other row, once each in
    # a seeded order (`lead_rows // batch_size` steps); then seeded epochs over the rest.
    lead_rows: int = 0


def encode_examples(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Chat-encode (prompt, response) pairs: (token ids, number of prompt tokens) each.

    The response ends with the EOS token `<|im_end|>`; loss covers response + EOS only.
    """
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p, _ in pairs
    ]
    eos = tokenizer.eos_token
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r + eos for _, r in pairs], add_special_tokens=False)["input_ids"]
    return [(p + r, len(p)) for p, r in zip(p_ids, r_ids, strict=True)]


def pack(encoded: list[tuple[list[int], int]], seq_len: int, pad_id: int):
    """Greedy packing of whole examples into rows of `seq_len + 1` tokens (inputs + next token).

    Returns (tokens (R, L+1) int32, mask (R, L+1) float32 with 1 on response tokens).
    Examples longer than a row are dropped (counted by the caller via the returned total).
    """
    width = seq_len + 1
    rows_t, rows_m = [], []
    cur_t: list[int] = []
    cur_m: list[float] = []
    for ids, n_prompt in encoded:
        if len(ids) > width:
            continue
        if len(cur_t) + len(ids) > width:
            rows_t.append(cur_t + [pad_id] * (width - len(cur_t)))
            rows_m.append(cur_m + [0.0] * (width - len(cur_m)))
            cur_t, cur_m = [], []
        cur_t += ids
        cur_m += [0.0] * n_prompt + [1.0] * (len(ids) - n_prompt)
    if cur_t:
        rows_t.append(cur_t + [pad_id] * (width - len(cur_t)))
        rows_m.append(cur_m + [0.0] * (width - len(cur_m)))
    return np.array(rows_t, dtype=np.int32), np.array(rows_m, dtype=np.float32)


def batch_indices(
    n_rows: int, batch_size: int, step: int, seed: int, lead_rows: int = 0
) -> np.ndarray:
    """Rows of `step`: epochs are seeded permutations, so any step's batch is recomputable.
    With `lead_rows`, rows [0, lead_rows) come first, each once, then epochs over the rest."""
    lead_steps = lead_rows // batch_size
    if step < lead_steps:
        perm = np.random.default_rng([seed, 2**31]).permutation(lead_rows)
        return perm[step * batch_size : (step + 1) * batch_size]
    rest = n_rows - lead_rows
    per_epoch = rest // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} but only {rest} packed rows")
    epoch, k = divmod(step - lead_steps, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(rest)
    return lead_rows + perm[k * batch_size : (k + 1) * batch_size]


def masked_ce(model: nn.Module, tokens: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    inputs, targets, m = tokens[:, :-1], tokens[:, 1:], mask[:, 1:]  # (B, L)
    if chunked(model, *targets.shape):  # a large vocabulary: bounded memory, float32
        ce = -token_logprobs(model, tokens) * m
    else:
        logits = model(inputs)  # (B, L, V)
        ce = nn.losses.cross_entropy(logits, targets) * m  # (B, L)
    n = m.sum()
    return ce.sum() / mx.maximum(n, 1), n


def make_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    warm = optim.linear_schedule(cfg.learning_rate * 0.01, cfg.learning_rate, cfg.warmup)
    decay = optim.cosine_decay(
        cfg.learning_rate, max(1, cfg.steps - cfg.warmup), cfg.learning_rate * cfg.min_lr_ratio
    )
    schedule = optim.join_schedules([warm, decay], [cfg.warmup])
    return optim.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)


def save_checkpoint(path: Path, model: nn.Module, opt: optim.Optimizer, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(tmp / "weights.safetensors"), dict(tree_flatten(model.parameters())))
    state = dict(tree_flatten(opt.state))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), state)
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    if path.exists():
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(path)


def load_checkpoint(path: Path, model: nn.Module, opt: optim.Optimizer) -> int:
    try:
        model.load_weights(str(path / "weights.safetensors"))
        state = mx.load(str(path / "optimizer.safetensors"))
        opt.state = tree_unflatten(list(state.items()))
        return json.loads((path / "step.json").read_text())["step"]
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: unreadable checkpoint ({' '.join(str(e).split())}); delete that folder "
            "to train from the first step"
        ) from None


def train(
    model: nn.Module,
    tokens: np.ndarray,
    mask: np.ndarray,
    cfg: TrainConfig,
    ckpt_dir: Path | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop_at: int | None = None,
) -> list[float]:
    """Train in place; returns the loss of every step run in this call.

    `on_step(step, loss, tokens_per_sec)` is called after each step (1-based step count).
    Resumes from `ckpt_dir/last` when it exists. `stop_at` ends the run after that step (saving a
    checkpoint) while keeping the learning-rate schedule of `cfg.steps`.
    """
    mx.random.seed(cfg.seed)
    opt = make_optimizer(cfg)
    start = 0
    last = ckpt_dir / "last" if ckpt_dir else None
    if last is not None and (last / "step.json").exists():
        start = load_checkpoint(last, model, opt)
    else:
        opt.init(model.trainable_parameters())

    loss_and_grad = nn.value_and_grad(model, masked_ce)
    state = [model.state, opt.state]

    def step_fn(t, m):
        (loss, n), grads = loss_and_grad(model, t, m)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        return loss, n

    compiled = mx.compile(step_fn, inputs=state, outputs=state)
    losses: list[float] = []
    tic = time.perf_counter()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    for step in range(start, end):
        idx = batch_indices(len(tokens), cfg.batch_size, step, cfg.seed, cfg.lead_rows)
        loss, n = compiled(mx.array(tokens[idx]), mx.array(mask[idx]))
        mx.eval(state, loss, n)
        loss_f = loss.item()
        if not math.isfinite(loss_f):
            raise FloatingPointError(f"loss is {loss_f} at step {step + 1}; last checkpoint kept")
        losses.append(loss_f)
        toc = time.perf_counter()
        tps = cfg.batch_size * cfg.seq_len / max(toc - tic, 1e-9)
        tic = toc
        if on_step:
            on_step(step + 1, loss_f, tps)
        done = step + 1
        stop = should_stop() if should_stop else False
        if last is not None and (done % cfg.checkpoint_every == 0 or done == end or stop):
            save_checkpoint(last, model, opt, done)
        if stop:
            break
    return losses
