"""TUI: the trace browser, the group inspector, the compare view and the help screen, driven by
Pilot over the fixture runs (tests/make_fixture_runs.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from textual.widgets import DataTable, Input, OptionList, Select, Static
from tui_pilot import (  # noqa: F401 - anyio_backend and utc_log are fixtures
    NOW,
    RUNS,
    SIZE,
    anyio_backend,
    make_app,
    plain,
    rows,
    settle,
    utc_log,
)

from sf_mlx.metrics import METRICS
from sf_mlx.rundir import RunDir
from tui.app import SfMlxApp
from tui.browser import BrowserScreen
from tui.compare import CompareScreen
from tui.groups import GroupScreen
from tui.help import HelpScreen
from tui.live import LiveScreen


@pytest.mark.anyio
async def test_browser_filters_search_and_segment_sources():
    app = make_app(RUNS / "finished")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, BrowserScreen)
        table = screen.query_one("#items", DataTable)
        assert table.row_count == 16
        await pilot.press("f", "f")  # all -> correct -> wrong
        await settle(pilot)
        wrong = rows(table)
        assert 0 < len(wrong) < 16 and all(r[0] == "no" for r in wrong)
        screen.query_one("#facet-0", Select).value = "original"
        await settle(pilot)
        assert 0 < table.row_count < len(wrong)
        assert all(r[1] == "original" for r in rows(table))
        await pilot.press("f")  # back to all
        screen.query_one("#facet-0", Select).clear()
        await pilot.press("slash")
        await pilot.press(*"00002/plan")
        await settle(pilot)
        assert [r[-1] for r in rows(table)] == [
            "countdown-3/s0/00002/plan_and_execute/0",
            "countdown-3/s0/00002/plan_and_execute/1",
        ]
        assert "00002/plan" in screen.query_one("#search", Input).value
        await pilot.press("escape")  # leaves the search box, stays on the screen
        assert app.screen is screen and table.has_focus
        screen.query_one("#search", Input).value = ""
        await pilot.press("3")
        await settle(pilot)
        assert screen.query_one("#count", Static).content.startswith("12 of 12 traces")
        segments = screen.query_one("#segments", OptionList)
        trace = screen.shown[0].record
        assert segments.option_count == len(trace.segments)
        assert "*C_full" in plain(screen.query_one("#detail-head", Static))
        reflect = next(i for i, s in enumerate(trace.segments) if s.kind == "reflect")
        segments.highlighted = reflect
        await pilot.pause()
        source = plain(screen.query_one("#detail-text", Static))
        assert f"comes from {trace.segments[reflect].source_id}" in source
        assert "verdict correct" in source


@pytest.mark.anyio
async def test_a_list_opened_before_its_file_exists_fills_itself(tmp_path):
    run = shutil.copytree(RUNS / "finished", tmp_path / "finished")
    (run / "traces.jsonl").rename(tmp_path / "traces.jsonl")  # rearrange has not run yet
    app = make_app(run, poll_scale=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "3")
        await settle(pilot)
        screen = app.screen
        count = screen.query_one("#count", Static)
        assert str(count.content).startswith("no traces yet")
        (tmp_path / "traces.jsonl").rename(run / "traces.jsonl")  # the stage writes them
        for _ in range(40):
            await pilot.pause(0.05)
            await settle(pilot)
            if screen.query_one("#items", DataTable).row_count:
                break
        assert screen.query_one("#items", DataTable).row_count == 12  # no `r` pressed
        with (run / "traces.jsonl").open("a") as f:  # more rows while the list is read
            f.write((run / "traces.jsonl").read_text().splitlines()[0] + "\n")
        for _ in range(40):
            await pilot.pause(0.05)
            await settle(pilot)
            if "new rows" in str(count.content):
                break
        assert "new rows: r reloads" in str(count.content)
        assert screen.query_one("#items", DataTable).row_count == 12  # the cursor stays put


@pytest.mark.anyio
async def test_a_filter_chosen_in_its_dropdown_hands_the_keys_back_to_the_list():
    app = make_app(RUNS / "finished")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        screen = app.screen
        table = screen.query_one("#items", DataTable)
        grade = screen.query_one("#grade", Select)
        grade.focus()
        await pilot.press("enter", "down", "enter")  # open, move to "correct", choose it
        await settle(pilot)
        assert grade.value == "correct" and not grade.expanded
        assert table.has_focus
        row = table.cursor_row
        await pilot.press("down")
        assert table.cursor_row == row + 1 and not grade.expanded


@pytest.mark.anyio
async def test_browser_rollout_opens_its_group():
    app = make_app(RUNS / "finished")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "4")
        await settle(pilot)
        screen = app.screen
        screen.query_one("#facet-0", Select).value = "rl_only"
        screen.query_one("#facet-1", Select).value = "2"
        await settle(pilot)
        table = screen.query_one("#items", DataTable)
        assert table.row_count == 16 and {(r[0], r[1]) for r in rows(table)} == {("rl_only", "2")}
        table.move_cursor(row=9)  # group 2, completion 1
        await pilot.press("o")
        await settle(pilot)
        groups = app.screen
        assert isinstance(groups, GroupScreen)
        assert (groups.arm, groups.step) == ("rl_only", 2)
        assert groups.query_one("#groups", DataTable).cursor_row == 2


@pytest.mark.anyio
async def test_a_slow_read_never_blocks_the_keys():
    """Reads are waited on in a thread worker: while one is stuck, keys still switch screens."""
    import threading

    from tui.reader import RecordReader

    gate = threading.Event()

    class SlowReader(RecordReader):
        def page(self, *args, **kwargs):
            assert gate.wait(20), "the test never released the read"
            return super().page(*args, **kwargs)

    app = SfMlxApp(RUNS / "finished", clock=lambda: NOW, reader=SlowReader())
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await pilot.pause()
        browser = app.screen
        assert isinstance(browser, BrowserScreen) and browser.busy
        assert browser.query_one("#count", Static).content == "loading samples ..."
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen) and browser.busy
        gate.set()
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is browser and browser.query_one("#items", DataTable).row_count == 16
    assert app.reader._proc is None  # quitting the app stops its reader process


@pytest.mark.anyio
async def test_group_inspector_jumps_to_zero_std_and_worst_groups():
    app = make_app(RUNS / "finished")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, GroupScreen)
        table = screen.query_one("#groups", DataTable)
        assert (screen.arm, screen.step, table.row_count) == ("sft_grpo", 3, 4)
        await pilot.press("z")
        group = screen.groups[table.cursor_row]
        assert group.zero_std
        assert f"group {group.group}" in str(screen.query_one("#completions").border_title)
        await pilot.press("z")
        assert screen.groups[table.cursor_row].zero_std and screen.groups[table.cursor_row] != group
        await pilot.press("w")
        worst = min(g.mean_reward for g in screen.groups)
        assert screen.groups[table.cursor_row].mean_reward == worst
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert screen.step == 2
        await pilot.press("a")
        await settle(pilot)
        assert (screen.arm, screen.step) == ("rl_only", 2)
        assert "arm rl_only  step 2 (1..3)" in plain(screen.query_one("#groups-bar", Static))
        group = screen.groups[table.cursor_row]
        shown = plain(screen.query_one("#completion-text", Static))
        problem = screen.problems[group.problem_id]
        assert shown.startswith(f"question {problem.question}")  # the question, then the target
        assert f"target {problem.data['target']}" in shown


@pytest.mark.anyio
async def test_compare_screen_table_and_no_evaluation_yet():
    app = make_app(RUNS)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_run(RunDir(RUNS / "finished"), "compare")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        table = screen.query_one("#compare", DataTable)
        got = rows(table)
        assert [r[0] for r in got] == ["base", "sft", "sft_grpo", "rl_only"]
        # 50 questions x 4 samples each, not "n=200"
        assert [str(c.label) for c in table.columns.values()][1] == "countdown-3 (50q x 4)"
        assert got[1][2].startswith("18.0 [14.0,22.0]")
        await pilot.press("p")
        assert rows(table)[1][2].startswith("32.4") and "[" not in rows(table)[1][2]
        await pilot.press("p", "p", "p")  # answers, reflections per response, verdict F1
        assert rows(table)[1][1] == "C 0.60 / I 0.50" and rows(table)[0][1] == "C - / I -"
        await pilot.press("p")  # budget forcing: only the countdown tasks have it
        assert rows(table)[3][1:] == ["+6.0", "+6.0", "-"]
        app.open_run(RunDir(RUNS / "mid-grpo"), "compare")
        await settle(pilot)
        empty = app.screen
        assert "no evaluation yet" in plain(empty.query_one("#compare-note", Static))
        assert not empty.query_one("#compare", DataTable).display


@pytest.mark.anyio
async def test_compare_shows_the_cells_written_while_evaluate_runs(tmp_path):
    run = RunDir(shutil.copytree(RUNS / "finished", tmp_path / "finished"))
    (run.eval_dir / "summary.json").unlink()  # evaluate has not finished
    app = make_app(run.path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.open_run(run, "compare")
        await settle(pilot)
        screen = app.screen
        assert plain(screen.query_one("#compare-note", Static)).startswith("PARTIAL")
        table = screen.query_one("#compare", DataTable)
        got = rows(table)  # the fixture's generations on file: countdown-4 of two arms
        assert [r[0] for r in got] == ["rl_only", "sft_grpo"]
        assert [str(c.label) for c in table.columns.values()][1].startswith("countdown-4 (")
        assert all(r[1] not in ("-", "") for r in got)


@pytest.mark.anyio
async def test_compare_fits_six_tasks_in_160_columns_and_marks_no_best_in_a_full_tie(tmp_path):
    run = RunDir(shutil.copytree(RUNS / "finished", tmp_path / "finished"))
    path = run.eval_dir / "summary.json"
    summary = json.loads(path.read_text())
    first = next(iter(summary.values()))
    tasks = [f"countdown-{k}" for k in (3, 4, 5, 6)] + ["multiplication", "acronym"]
    for per in summary.values():  # every arm: six tasks, nobody solves countdown-6
        for task in tasks:
            cell = dict(per.get(task) or first["countdown-3"])
            if task == "countdown-6":
                cell.update(accuracy=0.0, ci_low=0.0, ci_high=0.0)
            per[task] = cell
    path.write_text(json.dumps(summary))
    app = make_app(run.path)
    async with app.run_test(size=(160, 45)) as pilot:
        await settle(pilot)
        app.open_run(run, "compare")
        await settle(pilot)
        table = app.screen.query_one("#compare", DataTable)
        assert len(table.columns) == 7
        assert table.virtual_size.width <= table.size.width  # nothing off-screen
        assert table.fixed_columns == 1  # and the arm column never scrolls away
        six = [str(c.label) for c in table.columns.values()].index("countdown-6 (50q x 4)")
        styles = [cells[six].style for cells in (table.get_row_at(i) for i in range(4))]
        assert all("green" not in str(style) for style in styles)  # a tie at 0 is not "best"


@pytest.mark.anyio
async def test_help_lists_keys_and_every_metric_meaning():
    app = make_app(RUNS / "finished")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        metrics = app.screen.query_one("#help-metrics", Static).content
        cells = [list(col.cells) for col in metrics.columns]
        assert cells[0] == [m.name for m in METRICS]
        assert cells[2] == [m.meaning for m in METRICS]
        keys = app.screen.query_one("#help-keys", Static).content
        assert {"z", "w", "/", "p"} <= set(keys.columns[1].cells)
        await pilot.press("escape")
        assert isinstance(app.screen, LiveScreen)
