"""The `report` stage: report.md and plots, recomputed from the run directory's saved files.

Tables like the paper's: arms x Countdown variants (before and after RL), out-of-domain tasks,
skill usage, budget forcing, stage timings; PNG plots of SFT loss, GRPO curves per arm and the
accuracy ladder across 3-6 numbers. The comparison of arms is stated plainly, with intervals.
"""

from __future__ import annotations

from collections import defaultdict

from sf_mlx.config import Recipe
from sf_mlx.metrics import add_point
from sf_mlx.rundir import RunDir, write_text_atomic
from sf_mlx.stages.evaluate import load_summary

STAGE = "report"
ARM_LABELS = {
    "base": "base model",
    "sft": "SkillFactory SFT",
    "star": "STaR SFT",
    "sft_grpo": "SkillFactory -> GRPO",
    "rl_only": "RL-only (GRPO from base)",
    "star_grpo": "STaR -> GRPO",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{_pct(c['accuracy'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"


def accuracy_table(summary: dict, tasks: list[str]) -> str:
    hard = [t for t in tasks if t in ("countdown-4", "countdown-5", "countdown-6")]
    head = "| arm | " + " | ".join(tasks) + (" | mean 4-6 |" if hard else " |")
    lines = [head, "|" + "---|" * (len(tasks) + 1 + bool(hard))]
    for arm, cells in summary.items():
        row = [_cell(cells.get(t)) for t in tasks]
        if hard:
            vals = [cells[t]["accuracy"] for t in hard if t in cells]
            row.append(_pct(sum(vals) / len(vals)) if vals else "-")
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def skill_table(summary: dict, tasks: list[str]) -> str:
    lines = [
        "| arm | task | #Ans | #Ref | verdicts | F1 correct | F1 incorrect | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, cells in summary.items():
        for t in tasks:
            c = cells.get(t)
            if not c:
                continue
            f1 = c["verdict_f1"]
            lines.append(
                f"| {ARM_LABELS.get(arm, arm)} | {t} | {c['answers_per_response']:.2f} | "
                f"{c['reflections_per_response']:.2f} | {c['verdicts']} | "
                f"{_pct(f1['correct'])} | {_pct(f1['incorrect'])} | {c['mean_tokens']:.0f} |"
            )
    return "\n".join(lines)


def budget_table(summary: dict) -> str:
    lines = ["| arm | task | budget | at budget | forced | gain |", "|---|---|---|---|---|---|"]
    for arm, cells in summary.items():
        for t, c in cells.items():
            if "budget_gain" in c:
                lines.append(
                    f"| {ARM_LABELS.get(arm, arm)} | {t} | {c['budget']} | "
                    f"{_pct(c['budget_accuracy'])} | {_pct(c['budget_forced_accuracy'])} | "
                    f"{100 * c['budget_gain']:+.1f} |"
                )
    return "\n".join(lines)


def timing_table(run: RunDir) -> str:
    """Seconds per stage; a stage run more than once (`sf-mlx stage NAME`) counts its last run."""
    last = {e["stage"]: e for e in run.read_events("stage_end")}
    ends = list(last.values())
    total = sum(e.get("seconds", 0.0) for e in ends)
    lines = ["| stage | seconds | share |", "|---|---|---|"]
    for e in ends:
        share = e["seconds"] / total if total else 0.0
        lines.append(f"| {e['stage']} | {e['seconds']:.1f} | {100 * share:.0f}% |")
    lines.append(f"| total | {total:.1f} | |")
    return "\n".join(lines)


def verdict_sentence(summary: dict) -> str:
    """The headline comparison, stated plainly whatever it shows."""
    hard = ("countdown-4", "countdown-5", "countdown-6")
    a, b = summary.get("sft_grpo", {}), summary.get("rl_only", {})
    common = [t for t in hard if t in a and t in b]
    if not common:
        return "The run has no SkillFactory -> GRPO vs RL-only comparison on 4-6 numbers."
    parts = []
    for t in common:
        x, y = a[t], b[t]
        overlap = not (x["ci_low"] > y["ci_high"] or y["ci_low"] > x["ci_high"])
        rel = "higher than" if x["accuracy"] > y["accuracy"] else "not higher than"
        parts.append(
            f"{t}: SkillFactory -> GRPO {_pct(x['accuracy'])}% is {rel} RL-only "
            f"{_pct(y['accuracy'])}% ({'intervals overlap' if overlap else 'intervals separate'})"
        )
    return "; ".join(parts) + "."


def _metric_series(run: RunDir) -> dict[str, dict[str, list[tuple[int, float]]]]:
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in run.read_events("metric"):
        for k, v in e.items():
            if "/" in k and isinstance(v, (int, float)):
                add_point(series[e["stage"]][k], e["step"], float(v))
    return series


def make_plots(run: RunDir, summary: dict, tasks: list[str]) -> list[str]:
    """PNG plots into run/plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.plots_dir.mkdir(parents=True, exist_ok=True)
    series, names = _metric_series(run), []
    if "sft" in series and "sft/train_loss" in series["sft"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in ("sft/train_loss", "sft/valid_loss"):
            if key in series["sft"]:
                xs, ys = zip(*series["sft"][key], strict=True)
                ax.plot(xs, ys, label=key.split("/")[1])
        ax.set_xlabel("step")
        ax.set_title("SFT loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run.plots_dir / "sft_loss.png")
        plt.close(fig)
        names.append("sft_loss.png")
    grpo = {s: v for s, v in series.items() if s.startswith("grpo/")}
    keys = ("grpo/reward", "grpo/accuracy", "grpo/mean_length", "grpo/reflections_per_response")
    if grpo:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
        for ax, key in zip(axes, keys, strict=True):
            for stage, m in sorted(grpo.items()):
                if key in m:
                    xs, ys = zip(*m[key], strict=True)
                    ax.plot(xs, ys, label=stage.split("/", 1)[1])
            ax.set_title(key.split("/", 1)[1])
            ax.set_xlabel("step")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(run.plots_dir / "grpo_curves.png")
        plt.close(fig)
        names.append("grpo_curves.png")
    ladder = [t for t in tasks if t.startswith("countdown-")]
    if summary and ladder:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [int(t.split("-")[1]) for t in ladder]
        for arm, cells in summary.items():
            ys = [100 * cells[t]["accuracy"] if t in cells else float("nan") for t in ladder]
            ax.plot(xs, ys, marker="o", label=ARM_LABELS.get(arm, arm))
        ax.set_xlabel("numbers in the Countdown problem")
        ax.set_ylabel("accuracy %")
        ax.set_xticks(xs)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run.plots_dir / "accuracy_ladder.png")
        plt.close(fig)
        names.append("accuracy_ladder.png")
    return names


def run_report(run: RunDir, recipe: Recipe, progress=None) -> dict:
    summary = load_summary(run)
    tasks = sorted({t for cells in summary.values() for t in cells})
    cd = [t for t in tasks if t.startswith("countdown")]
    ood = [t for t in tasks if not t.startswith("countdown")]
    plots = make_plots(run, summary, tasks)
    ev = recipe.evaluate
    text = f"""# sf-mlx report: {recipe.run.name or run.name}

Model `{recipe.run.model}`; {recipe.problems.n_sft} SFT and {recipe.problems.n_rl} RL problems
(Countdown-{recipe.problems.num_args}), {recipe.problems.n_eval} held-out problems per Countdown
variant ({recipe.problems.n_eval_ood or recipe.problems.n_eval} per out-of-domain task);
{ev.samples_per_question} samples per question at temperature {ev.temperature}. Accuracy in %,
95% bootstrap interval over questions in brackets. Every number below is recomputed from the
generations saved in `eval/` (`sf-mlx stage report` rebuilds this file).

## Countdown accuracy, before and after RL

{accuracy_table(summary, cd)}

**What the arms show.** {verdict_sentence(summary)}

## Out of domain

{accuracy_table(summary, ood) if ood else "(no out-of-domain tasks in this recipe)"}

## Skill usage

#Ans = answer tags per response, #Ref = reflect blocks per response; verdict F1 is each
reflection's verdict against the checker's grade of the sample it follows.

{skill_table(summary, tasks)}

## Budget forcing

{budget_table(summary) or "(budget forcing off)"}

## Stage timings

{timing_table(run)}

## Plots

{chr(10).join(f"![{p}](plots/{p})" for p in plots)}
"""
    write_text_atomic(run.report, text)
    run.mark_done(STAGE, {"plots": plots})
    return {"report": str(run.report), "plots": plots}
