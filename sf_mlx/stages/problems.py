"""The `problems` stage (PAPER.md stage 1): disjoint problem pools for SFT, RL and evaluation.

SFT and RL questions come from the training part of the problem space and never share a problem
(same numbers and target); evaluation questions come from the held-out part
(`sf_mlx.tasks.heldout`), which the built-in base model never saw either.
"""

from __future__ import annotations

from dataclasses import replace

from sf_mlx.config import Recipe
from sf_mlx.records import Problem
from sf_mlx.rundir import RunDir, read_jsonl, write_jsonl_atomic
from sf_mlx.tasks import get_task, heldout, heldout_problems, parse_task_spec, spec_label

STAGE = "problems"


def read_pool(run: RunDir, split: str) -> list[Problem]:
    """The problems of one pool of `run`: "sft" (sampled for silver traces) or "rl" (GRPO)."""
    return [p for p in read_jsonl(run.problems, Problem, complete=True) if p.split == split]


def _key(p: Problem) -> str:
    d = p.data
    return f"{sorted(d['numbers'])}|{d['target']}" if "numbers" in d else p.question


def training_pools(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    """(sft, rl): distinct problems outside the held-out space, drawn from one seeded stream."""
    cfg = recipe.problems
    params = {}
    if cfg.task == "countdown":
        params = dict(
            num_args=cfg.num_args,
            min_number=cfg.min_number,
            max_number=cfg.max_number,
            min_target=cfg.min_target,
            max_target=cfg.max_target,
            require_all=cfg.require_all,
        )
    want = cfg.n_sft + cfg.n_rl
    seen: set[str] = set()
    pool: list[Problem] = []
    for batch in range(50):
        for p in get_task(cfg.task).make_problems(
            2 * want, recipe.run.seed + 100_003 * batch, **params
        ):
            if not heldout(p) and _key(p) not in seen:
                seen.add(_key(p))
                pool.append(p)
        if len(pool) >= want:
            break
    if len(pool) < want:
        raise ValueError(
            f"only {len(pool)} distinct training problems exist for {params}, "
            f"but n_sft + n_rl = {want}; widen the number/target ranges or lower the pools"
        )
    sft = [replace(p, split="sft") for p in pool[: cfg.n_sft]]
    rl = [replace(p, split="rl") for p in pool[cfg.n_sft : want]]
    return sft, rl


def distinct_heldout(task: str, n: int, seed: int, **params) -> list[Problem]:
    """`n` held-out problems with no two alike (Countdown: the same numbers in any order and
    the same target), in the order of the seeded stream."""
    for m in (n, 2 * n, 4 * n, 8 * n):
        seen: set[str] = set()
        out = []
        for p in heldout_problems(task, m, seed, **params):
            if _key(p) not in seen:
                seen.add(_key(p))
                out.append(p)
        if len(out) >= n:
            return out[:n]
    raise ValueError(
        f"only {len(out)} distinct held-out {task} problems exist for {params}, but n_eval = {n}"
    )


def eval_pools(recipe: Recipe) -> list[Problem]:
    """Held-out problems per evaluated variant: countdown-N for each N, then the OOD tasks;
    no question appears twice in a pool."""
    cfg = recipe.problems
    out: list[Problem] = []
    for k in cfg.eval_num_args:
        made = distinct_heldout(
            "countdown",
            cfg.n_eval,
            recipe.run.seed + 1000 + k,
            num_args=k,
            min_number=cfg.min_number,
            max_number=cfg.max_number,
            min_target=cfg.min_target,
            max_target=cfg.max_target,
            require_all=cfg.require_all,
        )
        out += [replace(p, split=f"eval/countdown-{k}") for p in made]
    for spec in cfg.ood_tasks:
        task, params = parse_task_spec(spec)
        n = cfg.n_eval_ood or cfg.n_eval
        made = distinct_heldout(task, n, recipe.run.seed + 2000, **params)
        out += [replace(p, split=f"eval/{spec_label(spec)}") for p in made]
    return out


def run_problems(run: RunDir, recipe: Recipe) -> dict:
    sft, rl = training_pools(recipe)
    evals = eval_pools(recipe)
    write_jsonl_atomic(run.problems, sft + rl + evals)
    counts: dict[str, int] = {}
    for p in sft + rl + evals:
        counts[p.split] = counts.get(p.split, 0) + 1
    run.mark_done(STAGE, {"counts": counts})
    return counts
