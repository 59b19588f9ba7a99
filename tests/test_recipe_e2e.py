"""`countdown-tiny` end to end on the shipped small base: every stage runs on real data, every
artifact exists and parses, and the report's numbers are recomputed here from the saved
generations (regraded by the checker), never copied from the run's own summary."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from sf_mlx.pipeline import stage_plan
from sf_mlx.records import EvalResult, Problem, Reflection, Rollout, Sample, Trace
from sf_mlx.rundir import read_json, read_jsonl
from sf_mlx.tasks import grade

pytestmark = pytest.mark.slow


def test_every_stage_done_with_real_data(tiny_run):
    from sf_mlx.recipe_files import load_recipe

    recipe = load_recipe(str(tiny_run.recipe))
    for stage in stage_plan(recipe):
        assert tiny_run.is_done(stage), stage
    problems = {p.problem_id: p for p in read_jsonl(tiny_run.problems, Problem)}
    samples = read_jsonl(tiny_run.samples, Sample)
    assert samples and any(s.correct for s in samples) and not all(s.correct for s in samples)
    for s in samples:  # the saved grade is the checker's grade of the saved text
        assert grade(problems[s.problem_id], s.response)[1] == s.correct
    reflections = read_jsonl(tiny_run.reflections, Reflection)
    assert any(r.agrees for r in reflections)
    traces = read_jsonl(tiny_run.traces, Trace)
    assert traces
    train = [json.loads(x) for x in (tiny_run.sft_dir / "train.jsonl").read_text().splitlines()]
    assert train and all(r["messages"][1]["role"] == "assistant" for r in train)
    assert (tiny_run.sft_dir / "adapters" / "adapters.safetensors").exists()


def test_grpo_arms_have_rollouts_with_reward_spread(tiny_run):
    spread = 0
    for arm in ("sft_grpo", "rl_only", "star_grpo"):
        steps = sorted((tiny_run.grpo_dir(arm) / "rollouts").glob("step_*.jsonl"))
        assert steps, arm
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for path in steps:
            for r in read_jsonl(path, Rollout):
                groups[(path.name, r.problem_id)].append(r.reward)
        spread += sum(len(set(v)) > 1 for v in groups.values())
        assert (tiny_run.grpo_dir(arm) / "adapters" / "adapters.safetensors").exists()
    assert spread > 0, "no GRPO group had a reward spread: no learning signal anywhere"


def test_report_numbers_are_recomputed_from_generations(tiny_run):
    from sf_mlx.stages.report import _cell

    problems = {p.problem_id: p for p in read_jsonl(tiny_run.problems, Problem)}
    summary = read_json(tiny_run.eval_dir / "summary.json")
    report = tiny_run.report.read_text()
    assert summary
    assert "star" in summary and "STaR SFT" in report  # the STaR model before RL: the paper's row
    for arm, cells in summary.items():
        for task, cell in cells.items():
            rows = read_jsonl(tiny_run.eval_dir / arm / f"{task}.jsonl", EvalResult)
            plain = [r for r in rows if r.budget == 0]
            regraded = [grade(problems[r.problem_id], r.response)[1] for r in plain]
            assert regraded == [r.correct for r in plain]
            assert cell["n"] == len(plain) > 0
            assert cell["accuracy"] == pytest.approx(sum(regraded) / len(plain))
            by_q = defaultdict(list)
            for r, ok in zip(plain, regraded, strict=True):
                by_q[r.problem_id].append(ok)
            assert cell["pass_at_k"] == pytest.approx(
                sum(any(v) for v in by_q.values()) / len(by_q)
            )
            assert cell["ci_low"] <= cell["accuracy"] <= cell["ci_high"]
            assert _cell(cell) in report
    plots = list((tiny_run.path / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    for p in plots:
        assert f"plots/{p.name}" in report


def test_evaluate_progress_counts_answers_not_cells(tiny_run, monkeypatch):
    """A cell of a large run takes hours: progress moves with its answers, throttled."""
    from sf_mlx.recipe_files import load_recipe
    from sf_mlx.stages import evaluate

    recipe = load_recipe(str(tiny_run.recipe))
    pools = evaluate.eval_pools(tiny_run)
    per_arm = sum(len(qs) for qs in pools.values()) * recipe.evaluate.samples_per_question
    total = len(recipe.evaluate.arms) * per_arm
    events = [e for e in tiny_run.read_events("progress") if e["stage"] == "evaluate"]
    assert events[-1]["done"] == events[-1]["total"] == total
    # redo one cell with throttling off: progress within the cell, one step per answer at most
    cell = tiny_run.eval_dir / "base" / "countdown-3.jsonl"
    cell.unlink()
    monkeypatch.setattr(evaluate, "PROGRESS_SECONDS", 0.0)
    seen: list[int] = []
    evaluate.run_evaluate(tiny_run, recipe, progress=lambda done, n, tps: seen.append(done))
    per_cell = len(pools["countdown-3"]) * recipe.evaluate.samples_per_question
    assert seen[0] == total - per_cell and seen[-1] == total  # the other cells were done
    inside = [d for d in seen if total - per_cell < d < total]
    assert len(inside) >= 2 and inside == sorted(inside)
