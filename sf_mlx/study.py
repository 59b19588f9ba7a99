"""Comparing runs of one recipe over several seeds: `sf-mlx compare RUN...`.

One seed and a few dozen questions cannot resolve effects of a few points: the spread between
seeds (data, sampling and training all change) is as large as the spread between questions. For
each arm and evaluated cell this gives the mean accuracy over seeds with a 95% interval from a
two-level bootstrap (seeds resampled, then each chosen seed's questions), and the paired
difference SkillFactory -> GRPO minus RL-only on the mean of Countdown 4-6: within a seed both
arms answer the same questions, so questions are resampled jointly for the two arms.

Read from each run's saved generations (`eval/<arm>/<cell>.jsonl`, standard decoding only), so
the numbers are recomputed, never copied from a summary.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from sf_mlx.records import EvalResult
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.stages.report import ARM_LABELS

HARD_CELLS = ("countdown-4", "countdown-5", "countdown-6")
PAIRED = ("sft_grpo", "rl_only")  # SkillFactory -> GRPO minus RL-only


def per_question(run: RunDir) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {cell: {problem_id: accuracy over its samples}}} from a run's saved generations."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    eval_dir = Path(run.eval_dir)
    if not eval_dir.is_dir():
        raise ValueError(f"{run.path}: no eval/ folder; run its `evaluate` stage first")
    for arm_dir in sorted(p for p in eval_dir.iterdir() if p.is_dir()):
        for cell_file in sorted(arm_dir.glob("*.jsonl")):
            by_q: dict[str, list[bool]] = defaultdict(list)
            for r in read_jsonl(cell_file, EvalResult):
                if r.budget == 0:
                    by_q[r.problem_id].append(r.correct)
            if by_q:
                out.setdefault(arm_dir.name, {})[cell_file.stem] = {
                    q: sum(v) / len(v) for q, v in by_q.items()
                }
    if not out:
        raise ValueError(f"{run.path}: eval/ holds no generations")
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _value(cells: list[list[float]], rng: random.Random | None) -> float:
    """Mean over cells of the mean over a cell's questions (resampled when `rng` is given)."""
    if rng is None:
        return _mean(_mean(qs) for qs in cells)
    return _mean(_mean(rng.choices(qs, k=len(qs))) for qs in cells)


def seed_question_interval(
    per_seed: list[list[list[float]]], n_boot: int, rng: random.Random
) -> tuple[float, float, float]:
    """(mean, 95% low, high) of the mean over seeds of the mean over cells of the mean over
    questions. `per_seed[s][c]` holds cell c's per-question values in seed s. Each bootstrap
    draw resamples the seeds, then within each chosen seed every cell's questions."""
    mean = _mean(_value(cells, None) for cells in per_seed)
    draws = sorted(
        _mean(_value(per_seed[rng.randrange(len(per_seed))], rng) for _ in per_seed)
        for _ in range(n_boot)
    )
    return mean, draws[int(0.025 * n_boot)], draws[min(n_boot - 1, int(0.975 * n_boot))]


def _cell(mean: float, low: float, high: float, per_seed: list[list[list[float]]]) -> dict:
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "per_seed": [_value(cells, None) for cells in per_seed],
        "questions": [sum(len(qs) for qs in cells) for cells in per_seed],
    }


def compare(run_paths: list[Path], n_boot: int = 2000, seed: int = 0) -> dict:
    """The table of `sf-mlx compare`: every arm and cell the runs share, over the runs."""
    if not run_paths:
        raise ValueError("give at least one run directory")
    runs = [RunDir(Path(p)) for p in run_paths]
    for run in runs:
        if not run.path.is_dir():
            raise ValueError(f"{run.path}: no such run directory")
    data = [per_question(run) for run in runs]
    arms = [a for a in data[0] if all(a in d for d in data)]
    if not arms:
        raise ValueError("the runs share no evaluated arm")
    rng = random.Random(seed)
    cells: dict[str, dict[str, dict]] = {}
    for arm in arms:
        names = [c for c in data[0][arm] if all(c in d[arm] for d in data)]
        for name in names:
            per_seed = [[list(d[arm][name].values())] for d in data]
            cells.setdefault(arm, {})[name] = _cell(
                *seed_question_interval(per_seed, n_boot, rng), per_seed
            )
        hard = [c for c in HARD_CELLS if c in names]
        if hard:
            per_seed = [[list(d[arm][c].values()) for c in hard] for d in data]
            cells[arm]["mean 4-6"] = _cell(*seed_question_interval(per_seed, n_boot, rng), per_seed)
    out: dict = {"runs": [str(r.path) for r in runs], "n_boot": n_boot, "cells": cells}
    a, b = PAIRED
    hard = [c for c in HARD_CELLS if c in cells.get(a, {}) and c in cells.get(b, {})]
    if hard:
        # within a seed both arms answer the same questions: the per-question differences carry
        # the pairing, and resampling them resamples the questions for both arms at once
        per_seed = [
            [[d[a][c][q] - d[b][c][q] for q in d[a][c] if q in d[b][c]] for c in hard] for d in data
        ]
        out["paired"] = {"a": a, "b": b, "cells": hard} | _cell(
            *seed_question_interval(per_seed, n_boot, rng), per_seed
        )
    return out


def compare_markdown(result: dict) -> str:
    """One table, accuracy in % as mean [95% interval over seeds and questions]."""
    cells = result["cells"]
    columns: list[str] = []
    for arm_cells in cells.values():
        columns += [c for c in arm_cells if c not in columns]
    n = len(result["runs"])
    lines = [
        f"Accuracy in % over {n} run(s) ({', '.join(result['runs'])}): mean over seeds "
        f"[95% interval, {result['n_boot']} two-level bootstrap draws: seeds, then questions].",
        "",
        "| arm | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm, arm_cells in cells.items():
        row = [
            f"{100 * v['mean']:.1f} [{100 * v['low']:.1f}, {100 * v['high']:.1f}]"
            if (v := arm_cells.get(c))
            else "-"
            for c in columns
        ]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(row) + " |")
    if "paired" in result:
        p = result["paired"]
        lines += [
            "",
            f"Paired difference {ARM_LABELS[p['a']]} minus {ARM_LABELS[p['b']]} on the mean of "
            f"{', '.join(p['cells'])}: {100 * p['mean']:+.1f} points "
            f"[{100 * p['low']:+.1f}, {100 * p['high']:+.1f}].",
        ]
    return "\n".join(lines) + "\n"
