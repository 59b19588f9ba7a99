"""TUI: Pilot tests and snapshots over the fixture runs (tests/make_fixture_runs.py), a live
append test on a copy of mid-grpo, pure helper tests, and the check that MLX is never imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, OptionList, RichLog, Select, Static, TabbedContent

from sf_mlx.metrics import METRICS
from sf_mlx.rundir import RunDir, append_jsonl
from tui import watch
from tui.app import SfMlxApp
from tui.browser import BrowserScreen
from tui.compare import CompareScreen
from tui.groups import GroupScreen
from tui.help import HelpScreen
from tui.live import LiveScreen
from tui.runs import RunsScreen

RUNS = Path(__file__).parent / "fixtures" / "runs"
NOW = 1_735_689_600.0 + 3000  # fixture times are 2025-01-01 00:00 UTC + offsets
SIZE = (110, 32)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def utc_log(monkeypatch):
    monkeypatch.setattr(watch, "_localtime", time.gmtime)


def make_app(path: Path | str, poll_scale: float = 1.0) -> SfMlxApp:
    return SfMlxApp(path, clock=lambda: NOW, poll_scale=poll_scale)


async def settle(pilot) -> None:
    """Wait until no worker runs and no screen waits on a read (loads chain: files, then rows)."""
    app = pilot.app
    for _ in range(50):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(getattr(s, "busy", False) for s in app.screen_stack) and not tables_pending(app):
            await pilot.pause()
            return
    raise AssertionError("workers did not settle")


def tables_pending(app) -> bool:
    """A DataTable measures new rows' column widths on its next idle (Textual internals, read
    defensively): until then it draws every column at its label's width."""
    return any(
        getattr(t, "_require_update_dimensions", False) or getattr(t, "_updated_cells", None)
        for t in app.screen.query(DataTable)
    )


async def steady_screen(pilot, tries: int = 40) -> str:
    """The screenshot once two taken 50 ms apart agree (drawing has caught up with the data)."""
    last = pilot.app.export_screenshot()
    for _ in range(tries):
        await pilot.pause(0.05)
        now = pilot.app.export_screenshot()
        if now == last:
            return now
        last = now
    raise AssertionError("the screen kept changing")


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def plain(widget: Static) -> str:
    content = widget.content
    if hasattr(content, "plain"):
        return content.plain
    if hasattr(content, "renderables"):  # a rich Group: render it as the terminal would
        import io

        from rich.console import Console

        console = Console(width=300, record=True, file=io.StringIO())
        console.print(content)
        return console.export_text()
    return str(content)


# --- screens -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_runs_screen_lists_every_run():
    app = make_app(RUNS)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one("#runs", DataTable)
        by_name = {r[0]: r for r in rows(table)}
        assert set(by_name) == {"finished", "mid-grpo"}
        run, recipe, stage, state, step, elapsed, numbers = by_name["finished"]
        assert (recipe, stage, state) == ("countdown-tiny", "report", "done")
        # the evaluation's headline (accuracy %) once evaluate is done
        assert numbers == "countdown-4: sft_grpo 29.0 · rl_only 40.0 · base 7.0"
        # mid-grpo's status says running, but its pid does not exist: shown as stopped
        assert by_name["mid-grpo"][2:5] == ["grpo/rl_only", "stopped", "2"]
        await pilot.press("down", "enter")
        await settle(pilot)
        assert isinstance(app.screen, LiveScreen) and app.screen.run.name == "mid-grpo"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


@pytest.mark.anyio
async def test_runs_screen_keeps_its_table_when_a_poll_finds_nothing_new(tmp_path):
    shutil.copytree(RUNS, tmp_path / "runs")
    app = make_app(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        table = screen.query_one("#runs", DataTable)
        await pilot.press("down")
        cleared = []
        clear = table.clear
        table.clear = lambda *a, **k: (cleared.append(1), clear(*a, **k))[1]
        screen.poll()
        await settle(pilot)
        assert cleared == [] and table.cursor_row == 1
        status = RunDir(tmp_path / "runs" / "mid-grpo").status
        status.write_text(status.read_text().replace('"step": 2', '"step": 3'))
        screen.poll()
        await settle(pilot)
        assert cleared == [1] and table.cursor_row == 1
        assert rows(table)[1][4] == "3"


@pytest.mark.anyio
async def test_a_run_being_started_opens_on_its_live_view_before_it_has_files(tmp_path):
    """`recipe --tui` opens the TUI on a run folder the recipe's process has not written yet."""
    path = tmp_path / "starting"
    path.mkdir()
    app = SfMlxApp(path, clock=lambda: NOW, poll_scale=0.05, single_run=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, LiveScreen) and app.screen.run.path == path
        shutil.copytree(RUNS / "mid-grpo", path, dirs_exist_ok=True)  # the process writes
        for _ in range(40):
            await pilot.pause(0.05)
            await settle(pilot)
            if app.screen.snapshot and app.screen.snapshot.stages[0].state == "done":
                break
        assert app.screen.snapshot.stages[0].state == "done"
        await pilot.press("escape")
        await settle(pilot)
        names = [r[0] for r in rows(app.screen.query_one("#runs", DataTable))]
        assert names == ["starting"]  # the list holds that run, not an empty folder listing


def test_recipe_tui_says_whether_the_recipe_still_runs(tmp_path, monkeypatch):
    """After the TUI quits, `recipe --tui` reports the recipe's process as it is."""
    from typer.testing import CliRunner

    import tui.app
    from sf_mlx.cli import app as cli_app

    real_popen = subprocess.Popen
    for script, expected in (("pass", "recipe finished"), ("import time; time.sleep(30)", "still")):
        procs = []

        def popen(cmd, script=script, procs=procs, **kw):  # the recipe's process, as a stand-in
            procs.append(real_popen([sys.executable, "-c", script], **kw))
            return procs[-1]

        def watch_until_quit(path, single_run, finished=script == "pass", procs=procs):
            assert single_run
            if finished:  # the user quits after the recipe ended
                procs[0].wait(timeout=30)

        monkeypatch.setattr(subprocess, "Popen", popen)
        monkeypatch.setattr(tui.app, "run", watch_until_quit)
        out = CliRunner().invoke(
            cli_app, ["recipe", "countdown-tiny", "--tui", "--run-dir", str(tmp_path / "r")]
        )
        procs[0].kill()
        assert out.exit_code == 0 and expected in out.output, out.output


@pytest.mark.anyio
async def test_live_screen_shows_stages_plots_log_and_hints():
    app = make_app(RUNS / "mid-grpo")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, LiveScreen)
        stages = {r[0]: r for r in rows(screen.query_one("#stages", DataTable))}
        assert stages["sft"][1] == "done" and stages["sft"][2].endswith("40/40")
        assert stages["grpo/rl_only"][1] == "stopped" and stages["grpo/rl_only"][2].endswith("2/6")
        assert stages["evaluate"][1] == "pending"
        assert "grpo/star_grpo" not in stages  # the recipe's arms skip it
        tabs = screen.query_one("#plots", TabbedContent)
        assert [p.id for p in tabs.query("TabPane")] == [
            "plots-sft",
            "plots-grpo-sft_grpo",
            "plots-grpo-rl_only",
            "plots-arms",
        ]
        arms = [plain(label) for label in screen._panels["arms"].query(".metric-title")]
        # one chart per metric, the arms overlaid on one scale, each in the legend with its value
        assert arms[0].startswith("reward") and "━ rl_only" in arms[0] and "━ sft_grpo" in arms[0]
        assert arms[1].startswith("accuracy")
        panel = screen._panels["grpo/rl_only"]
        titles = [plain(label) for label in panel.query(".metric-title")]
        assert titles[0].startswith("reward") and "step 2" in titles[0]
        assert any(t.startswith("reflections/resp") for t in titles)
        hints = plain(screen.query_one("#hints", Static))
        assert "grpo/rl_only: 50% of groups had zero reward std: no learning signal" in hints
        assert "is gone" in hints
        log = "\n".join(line.text for line in screen.query_one("#log", RichLog).lines)
        assert "00:07:12 end grpo/sft_grpo after 4m02s" in log
        assert tabs.active == "plots-grpo-rl_only"  # follows the stage in status.json
        await pilot.press("right_square_bracket")
        assert tabs.active == "plots-arms"
        await pilot.press("right_square_bracket")
        assert tabs.active == "plots-sft"


@pytest.mark.anyio
async def test_a_chart_opens_full_screen_with_a_step_cursor_and_smoothing():
    from tui.fullchart import ChartScreen

    app = make_app(RUNS / "mid-grpo")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        live = app.screen
        await pilot.press("s")  # every chart drawn smoothed; titles keep the raw values
        titles = [plain(t) for t in live._panels["grpo/rl_only"].query(".metric-title")]
        assert titles[0].startswith("reward") and "0.5625" in titles[0] and "~0.6" in titles[0]
        await pilot.press("f")  # no chart focused: the first of the tab shown (rl_only reward)
        await settle(pilot)
        chart = app.screen
        assert isinstance(chart, ChartScreen) and chart.metric_name == "grpo/reward"
        values = plain(chart.query_one("#chart-values", Static))
        assert "smoothed 0.6" in values and "step 2" in values and "0.5625" in values
        await pilot.press("left")
        values = plain(chart.query_one("#chart-values", Static))
        assert "step 1" in values and "0.4375" in values  # the raw value at that step
        await pilot.press("s", "s")  # 0.6 -> 0.9 -> off
        assert "smoothed" not in plain(chart.query_one("#chart-values", Static))
        await pilot.press("escape")
        assert app.screen is live


@pytest.mark.anyio
async def test_live_screen_follows_appended_rows(tmp_path):
    run = RunDir(shutil.copytree(RUNS / "mid-grpo", tmp_path / "mid-grpo"))
    status = json.loads(run.status.read_text())
    run.status.write_text(json.dumps({**status, "pid": os.getpid()}))  # a live process
    app = make_app(run.path, poll_scale=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        stages = {r[0]: r for r in rows(screen.query_one("#stages", DataTable))}
        assert stages["grpo/rl_only"][1] == "running"
        metric = {"grpo/reward": 0.9, "grpo/frac_reward_zero_std": 0.1}
        append_jsonl(
            run.events,
            [
                {"time": NOW - 60, "kind": "metric", "stage": "grpo/rl_only", "step": 3, **metric},
                {
                    "time": NOW - 60,
                    "kind": "progress",
                    "stage": "grpo/rl_only",
                    "done": 3,
                    "total": 6,
                },
            ],
        )
        with run.events.open("a") as f:  # a line still being written is not read
            f.write('{"time": 1, "kind": "mess')
        for _ in range(40):
            await pilot.pause(0.05)
            await settle(pilot)
            stages = {r[0]: r for r in rows(screen.query_one("#stages", DataTable))}
            if stages["grpo/rl_only"][2].endswith("3/6"):
                break
        assert stages["grpo/rl_only"][2].endswith("3/6")
        assert stages["grpo/rl_only"][4] != ""  # an ETA from the progress rate
        title = plain(screen._panels["grpo/rl_only"].query(".metric-title").first())
        assert "0.9000" in title and "step 3" in title
        assert "zero reward std" not in plain(screen.query_one("#hints", Static))
        assert not app._notifications  # the partial line raised no error


@pytest.mark.anyio
async def test_bad_files_are_reported_not_fatal(tmp_path):
    run = RunDir(shutil.copytree(RUNS / "mid-grpo", tmp_path / "mid-grpo"))
    with run.events.open("a") as f:
        f.write("not json\n")
    (run.grpo_dir("rl_only") / "rollouts" / "step_2.jsonl").write_text('{"step": 2}\n')
    app = make_app(tmp_path / "nothing-here")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "no runs in" in plain(app.screen.query_one("#runs-where", Static))
    app = make_app(run.path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        messages = [n.message for n in app._notifications]
        assert any("invalid JSON line" in m for m in messages)
        assert any("step_2.jsonl" in m and "not a Rollout" in m for m in messages)
        assert (app.screen.arm, app.screen.step) == ("rl_only", 2)  # the arm training now


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


# --- import hygiene ------------------------------------------------------------------------------


def test_tui_never_imports_mlx():
    code = f"""
import asyncio, sys
from tui.app import SfMlxApp

async def main():
    app = SfMlxApp({str(RUNS)!r})
    async with app.run_test(size=(100, 30)) as pilot:
        for key in ("enter", "t", "3", "4", "g", "c", "question_mark", "escape"):
            await pilot.press(key)
            await app.workers.wait_for_complete()
            await pilot.pause()

asyncio.run(main())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm", "transformers"))
stages = sorted(m for m in sys.modules if m.startswith(("sf_mlx.stages", "sf_mlx.model")))
assert not heavy and not stages, (heavy, stages)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.anyio
@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_narrow_terminals_keep_the_running_stage_its_eta_column_and_help_in_view(size):
    app = make_app(RUNS / "mid-grpo")
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        screen = app.screen
        table = screen.query_one("#stages", DataTable)
        running = [r[0] for r in rows(table)].index("grpo/rl_only")
        assert table.cursor_row == running  # the cursor follows the stage status.json names
        top = int(table.scroll_y)
        assert top <= running < top + table.size.height - 1
        assert table.virtual_size.width <= table.size.width  # time and ETA columns in view
        lines = screen_text(app.export_screenshot())
        assert "? Help" in lines[-1] and "q Quit" in lines[-1]


# --- snapshots (regenerate: pytest tests/test_tui.py --snapshot-update) ---------------------------


@pytest.fixture
def in_fixtures(monkeypatch):
    """Run from the fixtures folder so screens show the relative path `runs`."""
    monkeypatch.chdir(RUNS.parent)


SNAPSHOTS = {  # screen: (path, keys pressed after the first load[, terminal size])
    "runs": ("runs", ()),
    "live": ("runs/mid-grpo", ()),
    "live-160x45": ("runs/mid-grpo", (), (160, 45)),
    "live-80x24": ("runs/mid-grpo", (), (80, 24)),
    "traces": ("runs/finished", ("t", "3")),
    "groups": ("runs/finished", ("g", "z")),
    "compare": ("runs/finished", ("c",)),
    "help": ("runs/finished", ("question_mark",)),
}


def screen_text(svg: str) -> list[str]:
    """The characters of a Textual SVG screenshot, line by line (for a readable diff)."""
    import html
    import re

    lines: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        lines.setdefault(float(m[2]), []).append((float(m[1]), html.unescape(m[3])))
    return [
        "".join(t for _, t in sorted(ts)).replace("\xa0", " ").rstrip()
        for _, ts in sorted(lines.items())
    ]


@pytest.mark.parametrize("screen", list(SNAPSHOTS))
def test_snapshot(snap_compare, in_fixtures, screen):
    path, keys, *size = SNAPSHOTS[screen]
    seen: list[str] = []

    async def before(pilot):
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        seen.append(await steady_screen(pilot))

    # no timed re-poll during the screenshot: what it shows must not depend on the machine's speed
    app = make_app(path, poll_scale=1000.0)
    if not snap_compare(app, terminal_size=size[0] if size else SIZE, run_before=before):
        stored = (
            Path(__file__).parent / "__snapshots__" / "test_tui" / f"test_snapshot[{screen}].svg"
        )
        expected = screen_text(stored.read_text()) if stored.exists() else []
        import difflib

        diff = "\n".join(
            difflib.unified_diff(expected, screen_text(seen[-1]), "stored", "seen", lineterm="")
        )
        pytest.fail(f"{screen} screen differs from its snapshot:\n{diff or '(styles only)'}")


@pytest.mark.anyio
async def test_a_poll_result_arriving_while_the_app_quits_is_dropped():
    """A worker finishing during shutdown must not mount plots into a closing screen."""
    import dataclasses

    from textual.worker import WorkerState

    app = make_app(RUNS / "mid-grpo")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        snap = screen.snapshot
        late = dataclasses.replace(
            snap, series={**snap.series, "grpo/star_grpo": {"grpo/reward": ((1, 0.5),)}}
        )

        class Done:  # the state message of a poll worker that finished with `late`
            group, result, error = "poll", late, None

        screen._handlers["poll"] = screen.apply
        app.exit()
        event = type("StateChanged", (), {"worker": Done, "state": WorkerState.SUCCESS})
        screen.on_worker_state_changed(event)
        assert "grpo/star_grpo" not in screen._panels
