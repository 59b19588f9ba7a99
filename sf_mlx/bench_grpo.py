"""`sf-mlx bench grpo`: a GRPO step's rollout and update, the current path against the plain
reference path it replaced, on the same batches, with the gradient difference between them.

The reference path is kept here only, as the measure: it decodes with mlx-lm's repetition-penalty
processor installed at 1.0 (which changes nothing), and updates by padding each whole mini-batch,
running a separate forward for logp_old, then a forward/backward over every row (zero-advantage
rows included) with a full log-softmax and the entropy in the gradient pass.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from sf_mlx.stages import grpo
from sf_mlx.stages import grpo_objective as objective


@contextmanager
def _penalty_processor_at_one():
    """Decode as the reference did: mlx-lm's repetition-penalty processor installed at 1.0."""
    import mlx_lm.sample_utils as su

    original = su.make_logits_processors

    def installing(*args, repetition_penalty=None, **kwargs):
        return original(*args, repetition_penalty=repetition_penalty or 1.0, **kwargs)

    su.make_logits_processors = installing
    try:
        yield
    finally:
        su.make_logits_processors = original


def _reference_logprobs(model, tokens, temperature):
    """The reference's log-probs and entropy: a full (N, T-1, V) log-softmax at every position."""
    logits = model(tokens[:, :-1]).astype(mx.float32) / temperature  # (N, T-1, V)
    logp_all = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (N, T-1, V)
    logp = mx.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]  # (N, T-1)
    entropy = -(mx.exp(logp_all) * logp_all).sum(axis=-1)  # (N, T-1)
    return logp, entropy


def _reference_minibatches(model, batch: grpo.RolloutBatch, pad_id: int, cfg) -> list[tuple]:
    """Each mini-batch padded whole, with its separately computed logp_old (and reference)."""
    adv = batch.advantages.reshape(-1)
    out = []
    n_groups = len(batch.problem_idx)
    for rows in grpo.minibatch_rows(n_groups, cfg.group_size, cfg.minibatch_prompts):
        tokens, mask = grpo.pad_sequences(
            [batch.prompts[r] for r in rows], [batch.completions[r] for r in rows], pad_id
        )
        keep = mx.array([0.0 if cfg.overlong_filter and batch.truncated[r] else 1.0 for r in rows])
        mask = mask * keep[:, None]
        old = mx.stop_gradient(_reference_logprobs(model, tokens, cfg.temperature)[0])
        ref = None
        if cfg.beta:
            with objective.adapters_disabled(model):
                ref = mx.stop_gradient(_reference_logprobs(model, tokens, cfg.temperature)[0])
        mx.eval(old, *([ref] if ref is not None else []))
        out.append((tokens, mask, old, ref, mx.array(adv[rows], mx.float32), keep))
    return out


def _reference_loss(model, tokens, mask, old, ref, adv, keep, cfg):
    variant = objective.VARIANTS[cfg.variant]
    logp, entropy = _reference_logprobs(model, tokens, cfg.temperature)
    per_token, clipped = objective.clipped_objective(
        logp, old, adv, cfg.epsilon_low, cfg.epsilon_high
    )
    kl = objective.k3_kl(logp, ref) if ref is not None else mx.zeros_like(logp)
    if cfg.beta:
        per_token = per_token + cfg.beta * kl
    rows, n_tok = keep.sum().item(), mask.sum().item()
    norm = max(1, variant.normaliser(int(rows), int(n_tok), cfg.max_tokens))
    n = mx.maximum(mask.sum(), 1)
    stats = ((clipped * mask).sum() / n, (kl * mask).sum() / n, (entropy * mask).sum() / n)
    return variant.row_loss(per_token, mask).sum() / norm, stats


def reference_update(model, optimizer, batch: grpo.RolloutBatch, pad_id: int, cfg) -> None:
    """The reference path's whole update (mu passes, one optimizer update per mini-batch)."""
    from mlx.optimizers import clip_grad_norm

    prepared = _reference_minibatches(model, batch, pad_id, cfg)
    grad_fn = nn.value_and_grad(model, lambda m, *a: _reference_loss(m, *a, cfg))
    for _ in range(cfg.mu):
        for tokens, mask, old, ref, adv, keep in prepared:
            (loss, stats), grads = grad_fn(model, tokens, mask, old, ref, adv, keep)
            grads, norm = clip_grad_norm(grads, 1.0)
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state, loss, stats, norm)


def reference_gradient(model, batch: grpo.RolloutBatch, pad_id: int, cfg) -> dict:
    """The reference path's (unclipped) gradient of the first mini-batch."""
    tokens, mask, old, ref, adv, keep = _reference_minibatches(model, batch, pad_id, cfg)[0]
    grad_fn = nn.value_and_grad(model, lambda m, *a: _reference_loss(m, *a, cfg))
    grads = grad_fn(model, tokens, mask, old, ref, adv, keep)[1]
    mx.eval(grads)
    return grads


@dataclass
class Round:
    step: int
    rollout_s: dict[str, float]
    update_s: dict[str, float]
    same_tokens: bool
    grad_diff: float
    grad_max: float
    rows_in_gradient: int
    rows: int
    mean_length: float
    truncated: float


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def bench_round(model, tok, problems, reward_fn, cfg, seed: int, step: int, first: str) -> Round:
    """One batch: rollouts by both paths (same seed), then updates by both from the same weights."""
    import mlx.optimizers as optim

    idx = grpo.batch_problem_indices(len(problems), cfg.prompts_per_step, step, seed)

    def rollouts():
        return grpo.collect_rollouts(
            model, tok, problems, lambda p: p.question, reward_fn, idx, cfg, seed, step
        )

    def ref_rollouts():
        with _penalty_processor_at_one():
            return rollouts()

    out: dict[str, grpo.RolloutBatch] = {}
    roll_s = {}
    order = ("new", "reference") if first == "new" else ("reference", "new")
    for name in order:
        fn = rollouts if name == "new" else ref_rollouts
        roll_s[name] = _timed(lambda fn=fn, name=name: out.__setitem__(name, fn()))
    batch = out["new"]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    start = tree_map(lambda x: x, model.trainable_parameters())
    upd_s = {}
    for name in order:
        model.update(start)
        opt = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=0.0)
        if name == "new":
            upd_s[name] = _timed(lambda opt=opt: grpo.policy_update(model, opt, batch, pad_id, cfg))
        else:
            upd_s[name] = _timed(lambda opt=opt: reference_update(model, opt, batch, pad_id, cfg))
    model.update(start)
    want = dict(tree_flatten(reference_gradient(model, batch, pad_id, cfg)))
    plan = grpo.plan_update(model, batch, pad_id, cfg)
    got = dict(tree_flatten(grpo.minibatch_gradient(model, plan[0], cfg)[0]))
    diff = max(float(mx.abs(got[k] - want[k]).max()) for k in want)
    gmax = max(float(mx.abs(want[k]).max()) for k in want)
    lengths = [len(c) for c in batch.completions]
    return Round(
        step=step,
        rollout_s=roll_s,
        update_s=upd_s,
        same_tokens=out["new"].completions == out["reference"].completions,
        grad_diff=diff,
        grad_max=gmax,
        rows_in_gradient=sum(len(mb.rows) for mini in plan for mb in mini.micro),
        rows=len(batch.completions),
        mean_length=float(np.mean(lengths)),
        truncated=float(np.mean(batch.truncated)),
    )


def _pair(seconds: dict[str, float]) -> str:
    ref, new = seconds["reference"], seconds["new"]
    return f"{ref:.2f} -> {new:.2f} ({ref / new:.1f}x)"


def bench_grpo(
    run_dir=None, model: str = "builtin:small", rounds: int = 3, seed: int = 0, sets=()
) -> list[Round]:
    """Time the current GRPO step against the reference path on `rounds` batches.

    With `run_dir` (a run past its `sft` stage): the SkillFactory arm's starting model, RL pool
    and GRPO config of that run. Without: `model` on countdown-small's problems and GRPO config."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from sf_mlx import model as model_io
    from sf_mlx.config import apply_overrides
    from sf_mlx.lora import attach_lora
    from sf_mlx.recipe_files import load_recipe
    from sf_mlx.tasks import grade

    console = Console()
    if run_dir is not None:
        from sf_mlx.rundir import RunDir
        from sf_mlx.stages.arms import starting_model
        from sf_mlx.stages.problems import read_pool

        run = RunDir(Path(run_dir))
        if not run.recipe.exists():
            raise ValueError(f"{run_dir} has no recipe.yaml; pass a run directory")
        recipe = apply_overrides(load_recipe(str(run.recipe)), sets)
        if not run.is_done("sft"):
            raise ValueError(
                f"{run_dir}: the sft stage has not finished; the bench needs its model"
            )
        model = starting_model(run, recipe, "sft_grpo")
        problems = read_pool(run, "rl")
        shape = f"the SkillFactory arm of {run_dir}"
    else:
        from sf_mlx.stages.problems import training_pools

        recipe = apply_overrides(load_recipe("countdown-small"), [f"run.model={model}", *sets])
        problems = training_pools(recipe)[1]
        shape = f"{model} on countdown-small's RL pool (pass --run RUN for the SkillFactory arm)"
    cfg = recipe.grpo
    m, tok = model_io.load(model)
    mx.random.seed(recipe.run.seed)
    attach_lora(m, cfg.lora_rank, cfg.lora_scale, 0.0, -1)

    def reward(p, text):
        return float(grade(p, text)[1])

    console.print(
        f"GRPO step, {shape}: {cfg.prompts_per_step} prompts x {cfg.group_size} completions x "
        f"<= {cfg.max_tokens} tokens, T={cfg.temperature}, {cfg.variant}, beta={cfg.beta}, "
        f"mu={cfg.mu}, {cfg.minibatch_prompts} prompts per mini-batch, "
        f"{cfg.microbatch_tokens} tokens per micro-batch",
        highlight=False,
    )
    warm_up = replace(cfg, max_tokens=16)
    bench_round(m, tok, problems, reward, warm_up, seed, 10_000, "new")
    results = [
        bench_round(m, tok, problems, reward, cfg, seed, step, "new" if step % 2 else "reference")
        for step in range(rounds)
    ]
    table = Table(title="GRPO step, reference -> current (seconds, ratio)")
    for col in ("batch", "mean len", "trunc", "grad rows", "rollout", "update", "max |dgrad|"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r.step),
            f"{r.mean_length:.0f}",
            f"{r.truncated:.2f}",
            f"{r.rows_in_gradient}/{r.rows}",
            _pair(r.rollout_s),
            _pair(r.update_s),
            f"{r.grad_diff:.1e} of {r.grad_max:.1e}",
        )
    console.print(table)
    roll = sum(r.rollout_s["reference"] for r in results) / sum(r.rollout_s["new"] for r in results)
    upd = sum(r.update_s["reference"] for r in results) / sum(r.update_s["new"] for r in results)
    console.print(
        f"over {rounds} batches: rollout {roll:.2f}x, update {upd:.2f}x faster than the reference "
        f"({'identical' if all(r.same_tokens for r in results) else 'DIFFERENT'} tokens); "
        f"max |gradient difference| {max(r.grad_diff for r in results):.1e} "
        f"(max |gradient| {max(r.grad_max for r in results):.1e})",
        highlight=False,
    )
    return results
