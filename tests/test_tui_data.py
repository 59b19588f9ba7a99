"""TUI data layer without Textual: run state and health hints, record filters, group ranking."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_mlx.rundir import RunDir, append_jsonl, write_jsonl_atomic
from tui import watch
from tui.load import Group, filter_items, load_items, next_zero_std, worst_group

RUNS = Path(__file__).parent / "fixtures" / "runs"


def test_health_hints_name_the_problem():
    series = {"grpo/rl_only": {"grpo/frac_reward_zero_std": ((1, 0.6),)}}
    series["grpo/rl_only"]["grpo/truncation_rate"] = ((1, 0.4),)
    running = {"state": "running", "stage": "grpo/rl_only", "updated": 0.0}
    hints = watch.health_hints(series, running, alive=True, now=0.0)
    assert hints == [
        "grpo/rl_only: 60% of groups had zero reward std: no learning signal",
        "grpo/rl_only: 40% of responses truncated: raise grpo.max_tokens",
    ]
    # a finished arm's last numbers raise nothing: not once the next stage runs, nor at the end
    later = {**running, "stage": "evaluate"}
    assert watch.health_hints(series, later, alive=True, now=0.0) == []
    assert watch.health_hints(series, {"state": "done", "stage": "report"}, False, 0.0) == []
    # "no reflections" only for the arm whose SFT taught them
    quiet = {"grpo/reflections_per_response": ((1, 0.0),)}
    for arm, expected in (("grpo/rl_only", 0), ("grpo/star_grpo", 0), ("grpo/sft_grpo", 1)):
        hints = watch.health_hints({arm: quiet}, {**running, "stage": arm}, True, 0.0)
        assert len(hints) == expected, (arm, hints)
    assert watch.health_hints({}, {"state": "running", "pid": 7}, alive=False, now=0.0) == [
        "status says running but process 7 is gone: run stopped"
    ]


def test_filters_narrow_items_and_groups_are_ranked():
    loaded = load_items(RunDir(RUNS / "finished"), "rollouts")
    assert len(loaded.items) == 2 * 3 * 16 and not loaded.errors
    rl = filter_items(loaded.items, facets={"arm": "rl_only", "step": "1"})
    assert len(rl) == 16
    right = filter_items(rl, grade="correct")
    assert right and all(it.record.reward > 0 for it in right)
    assert filter_items(loaded.items, query="NO SUCH TEXT") == []
    groups = [
        Group(g, "p", tuple(it.record for it in rl if it.record.group == g)) for g in range(4)
    ]
    zero = next_zero_std(groups)
    assert zero is not None and groups[zero].zero_std
    assert next_zero_std(groups, zero) != zero
    assert groups[worst_group(groups)].mean_reward == min(g.mean_reward for g in groups)


def test_fmt_seconds():
    assert [watch.fmt_seconds(s) for s in (None, 5, 65, 3725)] == ["-", "5s", "1m05s", "1h02m"]


def test_run_watch_reads_new_rows_only_and_estimates_eta(tmp_path):
    run = RunDir(tmp_path / "run").create()
    run.set_status("sample", "running")  # this process's pid: alive
    start = {"time": 100.0, "kind": "stage_start", "stage": "sample"}
    append_jsonl(run.events, [start, progress(110.0, 10)])
    w = watch.RunWatch(run, clock=lambda: 130.0)
    sample = stage(w.poll(), "sample")
    # one point, 10 s after the start: 10 items in 10 s, 90 left
    assert (sample.state, sample.done, sample.total, sample.eta) == ("running", 10, 100, 90.0)
    append_jsonl(run.events, [progress(120.0, 30)])  # 20 items in 10 s: 70 left take 35 s
    snap = w.poll()
    sample = stage(snap, "sample")
    assert (sample.done, sample.eta, sample.seconds) == (30, 35.0, 30.0)
    assert snap.state == "running" and snap.elapsed == 30.0
    assert [s.state for s in snap.stages[:3]] == ["pending", "pending", "running"]
    write_jsonl_atomic(run.events, [{"time": 200.0, "kind": "message", "stage": "x", "text": "hi"}])
    snap = w.poll()  # a replaced file is read again from the start
    assert snap.log_total == 1 and stage(snap, "sample").done is None


def test_a_burst_of_progress_at_one_moment_gives_the_rate_since_the_start():
    """`evaluate` reports an arm's cells together: the ETA must not read 0 s."""
    points = [(200.0 + 0.001 * k, k) for k in range(1, 7)]  # 6 of 36 cells, 100 s in
    assert watch.stage_eta(100.0, points, 36) == pytest.approx(30 * 100.006 / 6)  # not 0 s
    assert watch.stage_eta(None, points, 36) is None  # no start, no span: no estimate
    assert watch.stage_eta(100.0, [(100.5, 0), (110.0, 10)], 20) == pytest.approx(9.5)


def progress(t: float, done: int) -> dict:
    return {"time": t, "kind": "progress", "stage": "sample", "done": done, "total": 100}


def stage(snap: watch.Snapshot, name: str) -> watch.StageView:
    return next(s for s in snap.stages if s.name == name)


def test_the_record_reader_pages_from_a_child_process(tmp_path):
    """The child process reads and filters; the app gets the first `limit` matches, the facet
    values of the whole kind, the linked sources, and a `reload` that sees appended rows."""
    import os
    import shutil

    from tui.reader import RecordReader

    shutil.copytree(RUNS / "finished", tmp_path / "run")
    run = str(tmp_path / "run")
    reader = RecordReader()
    try:
        page = reader.page(run, "rollouts", facets={"arm": "rl_only"}, limit=5)
        child = reader._proc
        assert child is not None and child.pid != os.getpid() and child.poll() is None
        assert (page.total, page.matches, len(page.items)) == (96, 48, 5)
        assert page.facets["arm"] == ["rl_only", "sft_grpo"]
        assert page.facets["step"] == ["1", "2", "3"]
        assert all(it.record.arm == "rl_only" for it in page.items)
        assert set(page.problems) == {it.problem_id for it in page.items}
        # the same answer as reading in this process
        local = RecordReader(processes=False).page(run, "rollouts", facets={"arm": "rl_only"})
        assert [it.key for it in local.items[:5]] == [it.key for it in page.items]
        traces = reader.page(run, "traces")
        linked = {s.source_id for it in traces.items for s in it.record.segments if s.source_id}
        assert linked and linked == set(traces.sources)
        # a new rollout file shows only after a reload: the child keeps what it read
        rollouts = RunDir(run).grpo_dir("rl_only") / "rollouts"
        shutil.copy(rollouts / "step_3.jsonl", rollouts / "step_4.jsonl")
        assert reader.page(run, "rollouts").total == 96
        assert reader.page(run, "rollouts", reload=True).total == 96 + 16
        try:
            reader.page(run, "nonsense")
        except RuntimeError as e:
            assert "kind 'nonsense'" in str(e)
        else:
            raise AssertionError("an unknown kind was not refused")
    finally:
        reader.close()
    assert reader._proc is None


def test_a_verdict_is_coloured_by_whether_it_is_right_not_by_what_it_says():
    from sf_mlx.records import Problem
    from tui.render import VERDICT_STYLES, answer_check, highlight

    problem = Problem("countdown-3/x/0", "countdown", "q", {"numbers": [2, 3, 4], "target": 20})
    text = (
        "<sample><answer>2 + 3</answer></sample><reflect>2 + 3 = 5. "
        "<verdict>Correct</verdict></reflect>"  # wrong: 5 is not 20
        "<sample><answer>(2 + 3) * 4</answer></sample><reflect>= 20. "
        "<verdict>Correct</verdict></reflect>"  # right
    )

    def styles(out) -> list[str]:
        return [str(span.style) for span in out.spans if "reverse" in str(span.style)]

    assert styles(highlight(text, check=answer_check(problem))) == [
        VERDICT_STYLES[False],
        VERDICT_STYLES[True],
    ]
    assert styles(highlight(text)) == [VERDICT_STYLES[None]] * 2  # no checker: uncoloured
    one = "Recompute: 9. <verdict>Incorrect</verdict>"
    assert styles(highlight(one, verdict_right=True)) == [VERDICT_STYLES[True]]
    assert answer_check(None) is None


def test_run_eta_sums_what_it_can_estimate_and_names_the_rest():
    view = watch.StageView
    stages = [
        view("sample", "done", 100.0),
        view("sft", "done", 50.0),
        view("grpo/sft_grpo", "done", 120.0),
        view("grpo/rl_only", "running", 30.0, 5, 20, eta=90.0),
        view("grpo/star_grpo", "pending"),  # as long as the arm already done
        view("evaluate", "pending"),  # no estimate before it starts
        view("report", "pending"),  # seconds: counted as 0
    ]
    assert watch.run_eta(stages) == (90.0 + 120.0, ["evaluate"])
    assert watch.run_eta([view("report", "done", 1.0)]) == (None, [])


def test_the_headline_is_the_mean_of_countdown_4_to_6_per_arm():
    from tui.load import headline

    cell = {"accuracy": 0.1}
    summary = {
        "base": {"countdown-4": {"accuracy": 0.03}, "countdown-5": cell, "countdown-6": cell},
        "rl_only": {"countdown-4": {"accuracy": 0.2}, "countdown-5": cell, "countdown-6": cell},
        "sft": {"countdown-4": cell, "countdown-5": cell, "countdown-6": cell},
    }
    assert headline(summary) == "mean CD 4-6: rl_only 13.3 · base 7.7"
    one = {"accuracy": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    assert headline({"base": {"acronym": one}}) == "acronym: base 50.0 [25.0,75.0]"


def test_the_headline_interval_resamples_the_questions_of_every_cell(tmp_path):
    from sf_mlx.records import EvalResult
    from tui.load import _mean_interval, headline

    run = RunDir(tmp_path / "run").create()
    summary = {"base": {}}
    for cell, right in (("countdown-4", 10), ("countdown-5", 0), ("countdown-6", 5)):
        rows = [
            EvalResult("base", cell, f"{cell}/{q}", 0, "r", None, q < right, 5, 1, 0, False)
            for q in range(20)
        ]
        write_jsonl_atomic(run.eval_dir / "base" / f"{cell}.jsonl", rows)
        summary["base"][cell] = {"accuracy": right / 20}
    low, high = _mean_interval(run, "base", ["countdown-4", "countdown-5", "countdown-6"])
    assert low < 0.25 < high and high - low < 0.3  # the mean is (0.5 + 0 + 0.25) / 3
    assert headline(summary, run).startswith("mean CD 4-6: base 25.0 [")
