"""Comparing runs of one recipe over several seeds: `sf-mlx compare RUN...`.

One seed and a few dozen questions cannot resolve effects of a few points: the spread between
seeds (data, sampling and training all change) is as large as the spread between questions. For
each arm and evaluated cell this gives the mean accuracy over seeds with a 95% interval from a
two-level bootstrap (seeds resampled, then each chosen seed's questions), and the paired
difference SkillFactory -> GRPO minus RL-only on the mean of Countdown 4-6: within a seed both
arms answer the same questions, so questions are resampled jointly for the two arms.

Read from each run's saved generations (`eval/<arm>/<cell>.jsonl`, standard decoding only), so
the numbers are recomputed, never copied from a summary. `compare_plots` draws the accuracy
ladder with those intervals as error bars, and each arm's GRPO curves (smoothed per seed, then
averaged over the seeds, the band spanning the seeds) overlaid on one axis per metric.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from sf_mlx.metrics import smooth
from sf_mlx.records import EvalResult
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.stages.report import ARM_LABELS, _metric_series

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
    # Countdown by size, their mean 4-6, then the out-of-domain tasks
    columns.sort(
        key=lambda c: (
            (0, c) if c.startswith("countdown-") else (1, "") if c == "mean 4-6" else (2, c)
        )
    )
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


CURVE_KEYS = (
    "grpo/reward",
    "grpo/frac_reward_zero_std",
    "grpo/mean_length",
    "grpo/reflections_per_response",
)


def grpo_curves(run_paths: list[Path], key: str, weight: float = 0.6) -> dict[str, dict]:
    """{arm: {"steps", "mean", "low", "high"}}: metric `key` of each GRPO arm, smoothed within
    each run, then the mean and the min..max band over the runs at every step all of them
    logged."""
    per_arm: dict[str, list[dict[int, float]]] = defaultdict(list)
    for path in run_paths:
        for stage, metrics in _metric_series(RunDir(Path(path))).items():
            if stage.startswith("grpo/") and key in metrics:
                steps, ys = zip(*metrics[key], strict=True)
                per_arm[stage.split("/", 1)[1]].append(
                    dict(zip(steps, smooth(list(ys), weight), strict=True))
                )
    out = {}
    for arm, runs in per_arm.items():
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        out[arm] = {
            "steps": steps,
            "mean": [_mean(r[s] for r in runs) for s in steps],
            "low": [min(r[s] for r in runs) for s in steps],
            "high": [max(r[s] for r in runs) for s in steps],
            "runs": len(runs),
        }
    return out


def compare_plots(result: dict, out_dir: Path, weight: float = 0.6) -> list[str]:
    """`accuracy_ladder.png` (mean over seeds, 95% seed-and-question intervals as error bars)
    and `grpo_curves.png` (per metric, the arms overlaid) into `out_dir`; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, (arm, cells) in enumerate(result["cells"].items()):
        ladder = sorted(
            (int(c.split("-")[1]), v) for c, v in cells.items() if c.startswith("countdown-")
        )
        if not ladder:
            continue
        xs = [x + 0.06 * (k - 2) for x, _ in ladder]  # arms side by side, bars readable
        ys = [100 * v["mean"] for _, v in ladder]
        err = [
            [100 * (v["mean"] - v["low"]) for _, v in ladder],
            [100 * (v["high"] - v["mean"]) for _, v in ladder],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=ARM_LABELS.get(arm, arm))
    ax.set_xlabel("numbers in the Countdown problem")
    ax.set_ylabel("accuracy % (95% interval)")
    ax.set_title(f"over {len(result['runs'])} seed(s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_ladder.png")
    plt.close(fig)
    names.append("accuracy_ladder.png")
    curves = {key: grpo_curves(result["runs"], key, weight) for key in CURVE_KEYS}
    if any(curves.values()):
        fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.2))
        for ax, key in zip(axes, CURVE_KEYS, strict=True):
            for arm, c in sorted(curves[key].items()):
                (line,) = ax.plot(c["steps"], c["mean"], label=ARM_LABELS.get(arm, arm))
                ax.fill_between(c["steps"], c["low"], c["high"], alpha=0.2, color=line.get_color())
            ax.set_title(f"{key.split('/', 1)[1]} (smoothed {weight})")
            ax.set_xlabel("GRPO step")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "grpo_curves.png")
        plt.close(fig)
        names.append("grpo_curves.png")
    return names
