"""The `sft` stage (PAPER.md stage 6): supervised fine-tuning on chat rows, loss on the answer only.

Algorithm (`train_sft`, for any mlx-lm chat JSONL: silver traces, STaR data, ...):
1. Each row `{"messages": [..., {"role": "assistant", "content": A}]}` becomes
   prompt = chat template of the messages before the last, with the generation prompt (the ids
   `model.chat_prompt` gives at sampling time), then the ids of A alone, then the EOS id.
   Mask 1 on A + EOS, 0 on the prompt. Rows over `max_seq_len` tokens are cut from the right
   (counted); a row left with no answer token is dropped (counted).
2. Rows sorted by length are cut into fixed batches of `batch_size` (the last may be smaller);
   each epoch visits every batch once, in the order `default_rng([seed, epoch]).permutation`,
   so step k's batch is a pure function of (seed, k). Batches are right-padded. The run is
   `iters` steps, or, with `epochs` > 0, epochs x batches (rounded up), so a recipe means the
   same amount of training whatever the number of traces.
3. Loss: cross-entropy of each next token, summed over the masked tokens of the batch and
   divided by their count (token-weighted mean). AdamW (weight decay 0), linear warmup from 1% of
   the peak lr over `warmup` steps, then cosine decay to 0 at `iters`; gradient norm clipped to
   1.0; one `mx.compile`d step, one `mx.eval` per step.
4. `lora` (default): the base is frozen and mlx-lm's LoRA layers go on every linear of the top
   `num_layers` blocks; `full`: every parameter trains. With `tag_learning_rate` > 0 (full only)
   the embedding and output rows of the trace tags that are tokens of their own learn at that
   rate with their own AdamW, every other weight at `learning_rate` (`TagRows`): a base that
   never saw the tags gets them learnt without a rate that breaks the rest of the model.
   Validation loss (same token-weighted mean over all of valid.jsonl) every `eval_every` steps
   and at the end.
5. Saved every `save_every` steps and at the end: LoRA -> `adapters.safetensors` +
   `adapter_config.json` (mlx-lm's format); full -> a complete HF folder (weights, config,
   tokenizer). Both load with `mlx_lm.load`; `fuse` merges an adapter into a plain HF folder.

Deviations from the paper: the paper fully fine-tunes with lr 1e-6, batch 1, cosine, 1-2 epochs,
4k context; here LoRA (rank 8, scale 20, lr 1e-4, batch 4, a fixed number of steps, 1k context)
is the default so it fits a laptop; `sft.method=full` is the paper's. The chat template's tokens
after EOS (a newline in ChatML) are not trained. No optimizer checkpoints: a killed SFT restarts.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from sf_mlx.base.pretrain import masked_ce
from sf_mlx.config import Recipe, SftConfig
from sf_mlx.lora import attach_lora, count_params, save_adapters
from sf_mlx.memory import checkpointed_layers
from sf_mlx.rundir import RunDir, read_jsonl, write_json_atomic
from sf_mlx.stages.model_folders import save_model_folder

STAGE = "sft"
GRAD_CLIP = 1.0  # max global gradient norm (the HF Trainer default)
PAD_TO = 32  # batch widths are rounded up to a multiple of this (+1): fewer compiled shapes

Example = tuple[list[int], list[float]]  # token ids, loss mask (1 on answer + EOS)
LogMetrics = Callable[[int, dict[str, float]], None]  # (step, {metric name: value})
Progress = Callable[[int, int, float], None]  # (done steps, total steps, tokens per second)


# --- data ----------------------------------------------------------------------------------------


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> Example:
    """(ids, mask) of one chat: the last message is the trained answer, the rest the prompt."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a chat row must end with an assistant message")
    prompt = list(
        tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
    )
    # the answer is encoded alone, so the prompt/answer boundary is exact (no merge across it)
    answer = list(tokenizer.encode(messages[-1]["content"], add_special_tokens=False))
    answer.append(tokenizer.eos_token_id)
    return prompt + answer, [0.0] * len(prompt) + [1.0] * len(answer)


def load_examples(
    tokenizer: Any, path: str | os.PathLike[str], max_seq_len: int
) -> tuple[list[Example], int, int]:
    """(examples, rows truncated, rows dropped for having no answer token left) of a chat JSONL."""
    examples: list[Example] = []
    truncated = dropped = 0
    for i, row in enumerate(read_jsonl(path), start=1):
        try:
            ids, mask = encode_chat(tokenizer, row["messages"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{i}: not an mlx-lm chat row ({e})") from e
        if len(ids) > max_seq_len:
            truncated += 1
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if sum(mask[1:]) == 0:  # the first token is never a target
            dropped += 1
            continue
        examples.append((ids, mask))
    return examples, truncated, dropped


def make_batches(examples: list[Example], batch_size: int, pad_id: int) -> list[tuple]:
    """Length-sorted fixed batches as numpy (tokens (B, T) int32, mask (B, T) float32)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [examples[i] for i in order[start : start + batch_size]]
        longest = max(len(ids) for ids, _ in rows)
        width = max(longest, 1 + PAD_TO * math.ceil((longest - 1) / PAD_TO))
        tokens = np.full((len(rows), width), pad_id, dtype=np.int32)  # (B, T)
        mask = np.zeros((len(rows), width), dtype=np.float32)  # (B, T)
        for r, (ids, m) in enumerate(rows):
            tokens[r, : len(ids)] = ids
            mask[r, : len(m)] = m
        batches.append((tokens, mask))
    return batches


def sized(cfg: SftConfig, n_batches: int) -> SftConfig:
    """`cfg` with `iters` set from `epochs` when the run is sized in epochs."""
    if cfg.epochs <= 0:
        return cfg
    return replace(cfg, iters=max(1, math.ceil(cfg.epochs * n_batches)))


def batch_for_step(n_batches: int, step: int, seed: int) -> int:
    """Index of step `step`'s batch (0-based): one seeded permutation of the batches per epoch."""
    epoch, k = divmod(step, n_batches)
    return int(np.random.default_rng([seed, epoch]).permutation(n_batches)[k])


def rank_rows(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of a batch (rows k, k + N, ... on rank k of N); a rank left without a
    row gets the first one with no target, so it adds nothing to the loss or the gradient."""
    from sf_mlx import distributed as dist

    if dist.size() == 1:
        return tokens, mask
    rows = dist.my_share(len(tokens))
    if not rows:
        return tokens[:1], np.zeros_like(mask[:1])
    return tokens[rows], mask[rows]


# --- training ------------------------------------------------------------------------------------


def make_optimizer(cfg: SftConfig, peak: float | None = None) -> optim.Optimizer:
    """AdamW; linear warmup from 1% of the peak lr (`cfg.learning_rate` unless `peak` is given),
    then cosine decay to 0 at `cfg.iters`."""
    lr = cfg.learning_rate if peak is None else peak
    decay = optim.cosine_decay(lr, max(1, cfg.iters - cfg.warmup), 0.0)
    if cfg.warmup > 0:
        warm = optim.linear_schedule(0.01 * lr, lr, cfg.warmup)
        decay = optim.join_schedules([warm, decay], [cfg.warmup])
    return optim.AdamW(learning_rate=decay, weight_decay=0.0)


def tag_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the trace tags that the tokenizer keeps as one token each (sorted, unique).

    A tag split into several ordinary tokens (`<`, `think`, `>` in most Hub tokenizers) reuses
    trained rows and is not listed."""
    from sf_mlx.base.tokenizer import TRACE_TAGS

    ids = {tuple(tokenizer.encode(tag, add_special_tokens=False)) for tag in TRACE_TAGS}
    return sorted(i[0] for i in ids if len(i) == 1)


def vocab_row_params(model: nn.Module) -> list[str]:
    """Names of the parameters with one row per token: the input embedding and, when it is not
    tied to it, the output head (a linear layer with as many outputs as the embedding has rows)."""
    embeds = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embeds:
        return []
    vocab = embeds[0][1].weight.shape[0]
    heads = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and "weight" in m and m.weight.shape[0] == vocab
    ]
    return [f"{n}.weight" for n, _ in embeds] + [f"{n}.weight" for n in heads]


class TagRows:
    """A second optimizer, at `tag_learning_rate`, for the tag tokens' rows of the embedding and
    output head; the main optimizer sees those rows' gradients as zero and so (Adam, no weight
    decay) never moves them, and the tag optimizer sees every other row as zero."""

    def __init__(self, model: nn.Module, cfg: SftConfig, ids: list[int]) -> None:
        from mlx.utils import tree_flatten

        self.names = vocab_row_params(model)
        if not self.names or not ids:
            raise ValueError("sft.tag_learning_rate: the model has no tag rows to train")
        vocab = dict(tree_flatten(model.parameters()))[self.names[0]].shape[0]
        rows = np.zeros((vocab, 1), dtype=np.float32)
        rows[ids] = 1.0
        self.rows = mx.array(rows)  # (V, 1): 1 on the tag tokens
        self.opt = make_optimizer(cfg, cfg.tag_learning_rate)
        self.opt.init(self._subset(model.parameters()))

    def _subset(self, tree: Any) -> Any:
        from mlx.utils import tree_flatten, tree_unflatten

        flat = dict(tree_flatten(tree))
        return tree_unflatten([(n, flat[n]) for n in self.names])

    def split(self, grads: Any) -> tuple[Any, Any]:
        """(grads without the tag rows, the tag rows' grads of the vocabulary parameters)."""
        from mlx.utils import tree_map_with_path

        keep = 1.0 - self.rows
        rest = tree_map_with_path(lambda p, g: g * keep if p in self.names else g, grads)
        tags = tree_map_with_path(lambda p, g: g * self.rows, self._subset(grads))
        return rest, tags

    def update(self, model: nn.Module, tag_grads: Any) -> None:
        model.update(self.opt.apply_gradients(tag_grads, self._subset(model.parameters())))


def fp32_master(model: nn.Module) -> bool:
    """Cast a half-precision model to float32 for full fine-tuning; True if it was cast.

    At full-fine-tuning rates (the paper's 1e-6) most updates are below bfloat16's resolution
    and vanish when added to bfloat16 weights; float32 weights keep them. (On a CPU `model.load`
    already gives float32.)"""
    from mlx.utils import tree_flatten

    half = (mx.bfloat16, mx.float16)
    if not any(v.dtype in half for _, v in tree_flatten(model.parameters())):
        return False
    model.set_dtype(mx.float32)
    return True


def evaluate(model: nn.Module, batches: list[tuple]) -> float:
    """Token-weighted mean cross-entropy over the answer tokens of all `batches`."""
    model.eval()
    total = count = 0.0
    for tokens, mask in batches:
        loss, n = masked_ce(model, mx.array(tokens), mx.array(mask))
        mx.eval(loss, n)
        total += loss.item() * n.item()
        count += n.item()
    model.train()
    return total / max(count, 1.0)


def train(
    model: nn.Module,
    train_batches: list[tuple],
    valid_batches: list[tuple],
    cfg: SftConfig,
    seed: int,
    log_metrics: LogMetrics | None = None,
    progress: Progress | None = None,
    save: Callable[[int], None] | None = None,
    tag_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Train the trainable parameters of `model` in place for `cfg.iters` steps; returns stats.

    With `cfg.tag_learning_rate` > 0 the rows of `tag_ids` in the embedding and output head
    learn at that rate instead (`TagRows`)."""
    if not train_batches:
        raise ValueError("no training batches: the training file has no usable rows")
    from mlx.utils import tree_map

    from sf_mlx import distributed as dist

    n_ranks = dist.size()
    log = log_metrics or (lambda step, metrics: None)
    mx.random.seed(seed)  # dropout
    opt = make_optimizer(cfg)
    opt.init(model.trainable_parameters())
    tags = TagRows(model, cfg, tag_ids or []) if cfg.tag_learning_rate > 0 else None
    loss_and_grad = nn.value_and_grad(model, masked_ce)
    state = [model.state, opt.state, mx.random.state]
    if tags:
        state.append(tags.opt.state)

    def step_fn(tokens: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        (loss, n), grads = loss_and_grad(model, tokens, mask)  # scalar, scalar
        if n_ranks > 1:  # this rank's rows: the token-weighted mean over every rank's tokens
            total = dist.all_sum(n)
            weight = n / mx.maximum(total, 1)
            grads = dist.sum_gradients(tree_map(lambda g: g * weight, grads))
            loss = dist.all_sum(loss * weight)
            n = total
        grads, _ = optim.clip_grad_norm(grads, GRAD_CLIP)
        if tags:
            grads, tag_grads = tags.split(grads)
            opt.update(model, grads)
            tags.update(model, tag_grads)
        else:
            opt.update(model, grads)
        return loss, n

    compiled = mx.compile(step_fn, inputs=state, outputs=state)
    with checkpointed_layers(model, cfg.grad_checkpoint):
        return _train_loop(
            model,
            compiled,
            state,
            opt,
            train_batches,
            valid_batches,
            cfg,
            seed,
            log,
            progress,
            save,
        )


def _train_loop(
    model, compiled, state, opt, train_batches, valid_batches, cfg, seed, log, progress, save
) -> dict[str, Any]:
    model.train()
    losses: list[float] = []
    valid_loss = None
    train_tokens, train_secs = 0, 0.0
    for step in range(1, cfg.iters + 1):
        tokens, mask = rank_rows(*train_batches[batch_for_step(len(train_batches), step - 1, seed)])
        tic = time.perf_counter()
        loss, n = compiled(mx.array(tokens), mx.array(mask))  # (B, T) each in
        mx.eval(state, loss, n)
        secs = time.perf_counter() - tic
        loss_f, n_tok = loss.item(), int(n.item())
        if not math.isfinite(loss_f):
            raise FloatingPointError(f"SFT loss is {loss_f} at step {step}")
        losses.append(loss_f)
        train_tokens, train_secs = train_tokens + n_tok, train_secs + secs
        tps = n_tok / max(secs, 1e-9)
        metrics = {
            "sft/train_loss": loss_f,
            "sft/learning_rate": opt.learning_rate.item(),
            "sft/tokens_per_sec": tps,
        }
        if valid_batches and (step % cfg.eval_every == 0 or step == cfg.iters):
            valid_loss = evaluate(model, valid_batches)
            metrics["sft/valid_loss"] = valid_loss
        log(step, metrics)
        if save and (step % cfg.save_every == 0 or step == cfg.iters):
            save(step)
        if progress:
            progress(step, cfg.iters, tps)
    return {
        "steps": cfg.iters,
        "epochs": cfg.iters / len(train_batches),
        "train_loss_first": losses[0],
        "train_loss": losses[-1],
        "valid_loss": valid_loss,
        "tokens_per_sec": train_tokens / max(train_secs, 1e-9),
    }


# --- entry points --------------------------------------------------------------------------------


def train_sft(
    model_path: str,
    train_path: str | os.PathLike[str],
    valid_path: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    cfg: SftConfig,
    seed: int,
    log_metrics: LogMetrics | None = None,
    progress: Progress | None = None,
    writer: bool = True,
) -> dict[str, Any]:
    """Fine-tune `model_path` on a chat JSONL; saves the adapter (or full model) in `out_dir`
    (`writer=False`: a rank of a distributed run that leaves saving to another)."""
    from sf_mlx import model as model_io

    tic = time.perf_counter()
    model, tokenizer = model_io.load(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_ex, truncated, dropped = load_examples(tokenizer, train_path, cfg.max_seq_len)
    valid_ex: list[Example] = []
    if valid_path is not None and Path(valid_path).exists():
        valid_ex, v_trunc, v_drop = load_examples(tokenizer, valid_path, cfg.max_seq_len)
        truncated, dropped = truncated + v_trunc, dropped + v_drop
    if not train_ex:
        raise ValueError(
            f"{train_path}: no row with an answer token within max_seq_len={cfg.max_seq_len} "
            f"({dropped} cut before their answer)"
        )

    mx.random.seed(seed)  # LoRA initialisation
    out = Path(out_dir)
    master = False
    if cfg.method == "lora":
        adapter_cfg = attach_lora(model, cfg.rank, cfg.scale, cfg.dropout, cfg.num_layers)

        def save(step: int) -> None:
            save_adapters(model, out, adapter_cfg)
    else:
        model.unfreeze()
        master = fp32_master(model)

        def save(step: int) -> None:
            save_model_folder(model, tokenizer, model_path, out, float32=master)

    trainable, total = count_params(model)
    train_batches = make_batches(train_ex, cfg.batch_size, pad_id)
    cfg = sized(cfg, len(train_batches))
    stats = train(
        model,
        train_batches,
        make_batches(valid_ex, cfg.batch_size, pad_id),
        cfg,
        seed,
        log_metrics,
        progress,
        save if writer else None,
        tag_ids=tag_token_ids(tokenizer),
    )
    return {
        "method": cfg.method,
        "model": model_path,
        "out_dir": str(out),
        **stats,
        "train_rows": len(train_ex),
        "valid_rows": len(valid_ex),
        "truncated": truncated,
        "dropped": dropped,
        "trainable_params": trainable,
        "total_params": total,
        "fp32_master": master,  # a half-precision model trained (and saved) in float32
        "seconds": time.perf_counter() - tic,
    }


def run_sft(run: RunDir, recipe: Recipe, progress: Progress | None = None) -> dict[str, Any]:
    """SFT of the recipe's model on `sft/train.jsonl`; output in `sft/adapters` (or `sft/model`)."""
    train_path = run.sft_dir / "train.jsonl"
    if not train_path.exists():
        raise ValueError(f"{train_path} does not exist; run the rearrange stage first")
    cfg = recipe.sft
    out_dir = run.sft_dir / ("adapters" if cfg.method == "lora" else "model")

    def on_progress(done: int, total: int, tps: float) -> None:
        run.log_progress(STAGE, done, total)
        if progress:
            progress(done, total, tps)

    stats = train_sft(
        recipe.run.model,
        train_path,
        run.sft_dir / "valid.jsonl",
        out_dir,
        cfg,
        recipe.run.seed,
        log_metrics=lambda step, metrics: run.log_metrics(STAGE, step, metrics),
        progress=on_progress,
        writer=run.writer,
    )
    if run.writer:
        write_json_atomic(run.sft_dir / "sft_stats.json", stats)
    run.mark_done(STAGE, stats)
    return stats
