"""Write the TUI's fixture run directories: SYNTHETIC UI FIXTURES, NOT RESULTS (made-up numbers).
`python tests/make_fixture_runs.py` rewrites tests/fixtures/runs/{finished,mid-grpo} (deterministic)
with a few records of every kind, built with sf_mlx's records and run-directory writers."""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
from pathlib import Path

from sf_mlx.config import EvaluateConfig, Recipe, RunConfig
from sf_mlx.recipe_files import dump_recipe
from sf_mlx.records import EvalResult, Problem, Reflection, Rollout, Sample
from sf_mlx.rundir import RunDir, append_jsonl, write_json_atomic, write_jsonl_atomic
from sf_mlx.tasks import grade
from sf_mlx.tasks.countdown import make_problem
from sf_mlx.traces import make_pairs, make_traces

ROOT = Path(__file__).parent / "fixtures" / "runs"
T0 = 1_735_689_600.0  # 2025-01-01 00:00 UTC: every time in the fixtures is T0 + an offset
DEAD_PID = 2**31 - 1  # no such process: a "running" status with it reads as stopped
ARMS = ("sft_grpo", "rl_only")
DATA_STAGES = ("problems", "base", "sample", "reflect", "rearrange")
README = "Synthetic UI fixtures for tests/test_tui.py, not results. Rebuild: python {}\n"


class Clock:
    """Deterministic event times: each call moves on by `step` seconds."""

    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self, step: float = 1.0) -> float:
        self.t += step
        return self.t


def wrong(expr: str) -> str:
    """A plausible wrong attempt: the last operator changed."""
    for a, b in (("+", "-"), ("-", "+"), ("*", "+"), ("/", "*")):
        i = expr.rfind(f" {a} ")
        if i >= 0:
            return expr[:i] + f" {b} " + expr[i + 3 :]
    return expr + " + 1"


def attempt(p: Problem, expr: str) -> str:
    return (
        f"I need {p.data['target']} from {p.data['numbers']}. Try {expr}.\n<answer>{expr}</answer>"
    )


def make_data(rng: random.Random) -> tuple[list, list, list, list]:
    problems = [make_problem(0, i, 3, 1, 20, 10, 60) for i in range(4)]
    problems = [dataclasses.replace(p, split="sft") for p in problems]
    samples, reflections = [], []
    for p in problems:
        for variant in ("original", "plan_and_execute"):
            for k in range(2):
                expr = p.solution if rng.random() < 0.55 else wrong(p.solution)
                text = attempt(p, expr)
                extracted, ok = grade(p, text)
                sid = f"{p.problem_id}/{variant}/{k}"
                samples.append(
                    Sample(sid, p.problem_id, variant, k, text, extracted, ok, 30 + k, "stop", k)
                )
                verdict = ("correct" if ok else "incorrect") if rng.random() < 0.8 else None
                word = (verdict or "unsure").capitalize()
                body = f"Check: {expr} against {p.data['target']}.\n<verdict>{word}</verdict>"
                reflections.append(
                    Reflection(
                        f"{sid}/r0",
                        sid,
                        p.problem_id,
                        0,
                        body,
                        verdict,
                        verdict is not None and (verdict == "correct") == ok,
                        20,
                    )
                )
    pairs = make_pairs(samples, reflections, seed=0)
    traces = []
    for p in problems:
        traces += make_traces(
            p.problem_id, p.question, pairs.get(p.problem_id, []), "*C_full", rng, 3
        )
    return problems, samples, reflections, traces


def rollouts(problems: list[Problem], arm: str, step: int, rng: random.Random) -> list[Rollout]:
    rows = []
    for g in range(4):
        p = problems[(step + g) % len(problems)]
        pattern = (g + step) % 4  # 0: all wrong (zero std), 1: all right (zero std), else mixed
        rewards = [float(pattern == 1 or (pattern > 1 and rng.random() < 0.5)) for _ in range(4)]
        if pattern > 1 and len(set(rewards)) == 1:
            rewards[0] = 1.0 - rewards[0]
        mean = sum(rewards) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 4)
        for i, r in enumerate(rewards):
            expr = p.solution if r else wrong(p.solution)
            text = attempt(p, expr)
            if arm == "sft_grpo":
                verdict = "Correct" if r else "Incorrect"
                check = f"<reflect>\n<verdict>{verdict}</verdict>\n</reflect>"
                text = f"<sample>\n{text}\n</sample>\n{check}"
            truncated = r == 0 and i == 3
            rows.append(
                Rollout(
                    step,
                    g,
                    p.problem_id,
                    i,
                    text,
                    r,
                    (r - mean) / (std + 1e-4),
                    None if truncated else expr,
                    40 + 7 * i + 3 * g,
                    truncated,
                    arm,
                )
            )
    return rows


def grpo_metrics(rows: list[Rollout]) -> dict[str, float]:
    n = len(rows)
    groups: dict[int, set[float]] = {}
    for r in rows:
        groups.setdefault(r.group, set()).add(r.reward)
    return {
        "grpo/reward": sum(r.reward for r in rows) / n,
        "grpo/accuracy": sum(r.reward > 0 for r in rows) / n,
        "grpo/frac_reward_zero_std": sum(len(v) == 1 for v in groups.values()) / len(groups),
        "grpo/mean_length": sum(r.num_tokens for r in rows) / n,
        "grpo/truncation_rate": sum(r.truncated for r in rows) / n,
        "grpo/samples_per_response": sum(r.completion.count("<answer>") for r in rows) / n,
        "grpo/reflections_per_response": sum(r.completion.count("<verdict>") for r in rows) / n,
        "grpo/loss": 0.01 * (rows[0].step % 3),
        "grpo/kl": 0.001 * rows[0].step,
    }


def write_run(name: str, grpo_steps: dict[str, int], finished: bool) -> RunDir:
    """One run: data stages, SFT and `grpo_steps[arm]` steps per arm; eval only when finished."""
    rng = random.Random(f"fixture/{name}")
    run = RunDir(ROOT / name).create()
    desc = f"SYNTHETIC UI FIXTURE ({name}), not a result"
    recipe = Recipe(
        run=RunConfig(name=name, description=desc, model="builtin:tiny"),
        evaluate=EvaluateConfig(arms=("base", "sft", *ARMS)),
    )
    dump_recipe(recipe, run.recipe, header="resolved from countdown-tiny")
    problems, samples, reflections, traces = make_data(rng)
    write_jsonl_atomic(run.problems, problems)
    write_jsonl_atomic(run.samples, samples)
    write_jsonl_atomic(run.reflections, reflections)
    write_jsonl_atomic(run.traces, traces)
    clock, events = Clock(T0), []

    def event(kind: str, dt: float = 1.0, **fields) -> None:
        events.append({"time": clock(dt), "kind": kind, **fields})

    def stage(stage: str, body, done: bool = True) -> None:
        event("stage_start", stage=stage)
        start = clock.t
        body()
        if done:
            event("stage_end", 2.0, stage=stage, seconds=round(clock.t + 2.0 - start, 2))
            write_json_atomic(run.done_dir / f"{stage}.json", {"stage": stage, "time": clock.t})

    for s in DATA_STAGES:
        stage(s, lambda s=s: [event("progress", 5.0, stage=s, done=i, total=4) for i in (2, 4)])

    def sft() -> None:
        for it in range(1, 41):
            loss = 2.5 * math.exp(-it / 15) + 0.3 + 0.05 * rng.random()
            metrics = {"sft/train_loss": loss, "sft/learning_rate": 1e-4}
            if it % 10 == 0:
                metrics["sft/valid_loss"] = loss + 0.1
            event("metric", 3.0, stage="sft", step=it, **metrics)
            event("progress", 0.0, stage="sft", done=it, total=40)

    stage("sft", sft)
    event("message", stage="sft", text="fused adapters into sft/model", level="info")
    total = 3 if finished else 6
    for arm, n_steps in grpo_steps.items():

        def grpo(arm: str = arm, n_steps: int = n_steps) -> None:
            for step in range(1, n_steps + 1):
                rows = rollouts(problems, arm, step, rng)
                write_jsonl_atomic(run.rollouts_path(arm, step), rows)
                event("metric", 40.0, stage=f"grpo/{arm}", step=step, **grpo_metrics(rows))
                event("progress", 0.0, stage=f"grpo/{arm}", done=step, total=total)

        stage(f"grpo/{arm}", grpo, done=finished or n_steps == total)
    if finished:
        stage("evaluate", lambda: write_eval(run))
        stage("report", lambda: None)
        status = {"stage": "report", "state": "done", "step": None}
    else:
        last = list(grpo_steps)[-1]
        status = {"stage": f"grpo/{last}", "state": "running", "step": grpo_steps[last]}
    append_jsonl(run.events, events)
    write_json_atomic(run.status, {**status, "pid": DEAD_PID, "updated": clock.t})
    return run


def write_eval(run: RunDir) -> None:
    """summary.json in the evaluate stage's shape, and a few generations per arm."""
    summary = {}
    for a, arm in enumerate(("base", "sft", *ARMS)):
        summary[arm] = {}
        for t, task in enumerate(("countdown-3", "countdown-4", "multiplication")):
            acc = round(0.12 + 0.11 * a - 0.05 * t, 3)
            cell = {
                "n_questions": 50,
                "n": 200,
                "accuracy": acc,
                "ci_low": round(max(0.0, acc - 0.04), 3),
                "ci_high": round(acc + 0.04, 3),
                "pass_at_k": round(min(1.0, acc * 1.8), 3),
                "answers_per_response": round(1.0 + 0.4 * a, 2),
                "reflections_per_response": round(0.3 * a, 2),
                "mean_tokens": 80.0 + 25 * a,
                "verdicts": 40 * a,
                "verdict_f1": {
                    "correct": None if a == 0 else round(0.5 + 0.1 * a, 2),
                    "incorrect": None if a == 0 else round(0.4 + 0.1 * a, 2),
                },
            }
            if task.startswith("countdown"):
                cell |= {
                    "budget": 256,
                    "budget_accuracy": acc,
                    "budget_forced_accuracy": acc + 0.02 * a,
                }
                cell["budget_gain"] = round(0.02 * a, 3)
            summary[arm][task] = cell
    write_json_atomic(run.eval_dir / "summary.json", summary)
    for arm in ARMS:
        rows = []
        for i in range(3):
            expr = f"{10 + i} + 4 * {i}"
            check = "<reflect>\n<verdict>Correct</verdict>\n</reflect>"
            text = f"<sample>\n<answer>{expr}</answer>\n</sample>\n{check}"
            common = dict(
                model=arm,
                task="countdown-4",
                problem_id=f"countdown-4/s1/{i:05d}",
                response=text,
                extracted=expr,
                num_tokens=30 + i,
                num_answers=1,
                num_reflections=1,
            )
            rows.append(EvalResult(index=0, correct=i % 2 == 0, budget_forced=False, **common))
            rows.append(EvalResult(index=0, correct=True, budget_forced=True, budget=256, **common))
        write_jsonl_atomic(run.eval_dir / arm / "countdown-4.jsonl", rows)


def main() -> None:
    for name in ("finished", "mid-grpo"):
        shutil.rmtree(ROOT / name, ignore_errors=True)
    write_run("finished", {arm: 3 for arm in ARMS}, finished=True)
    write_run("mid-grpo", {"sft_grpo": 6, "rl_only": 2}, finished=False)
    (ROOT / "README.md").write_text(README.format("tests/make_fixture_runs.py"))
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {ROOT} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
