"""TUI: the runs and live screens, the app's start and quit, narrow terminals, the check that
MLX is never imported, and snapshots, over the fixture runs (tests/make_fixture_runs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, RichLog, Static, TabbedContent
from tui_pilot import (  # noqa: F401 - anyio_backend and utc_log are fixtures
    NOW,
    RUNS,
    SIZE,
    anyio_backend,
    make_app,
    plain,
    rows,
    settle,
    steady_screen,
    utc_log,
)

from sf_mlx.rundir import RunDir, append_jsonl
from tui.app import SfMlxApp
from tui.live import LiveScreen
from tui.runs import RunsScreen

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
        # with each arm's 95% interval, resampled from its saved generations where it has them
        assert numbers.startswith("countdown-4: sft_grpo 29.0 [")
        assert "rl_only 40.0 [" in numbers and "base 7.0 [3.0,11.0]" in numbers
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
