"""The live view of one run: stage progress with ETA, metric plots per stage, hints, event log."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, RichLog, Static, TabbedContent, TabPane

from tui.base import RunScreen
from tui.fullchart import SMOOTHING, ChartScreen
from tui.runs import state_text
from tui.watch import Snapshot, StageView, fmt_seconds
from tui.widgets import ARM_SEP, MetricPlot, PlotPanel

BAR = 10  # progress bar cells
ARMS_TAB = "arms"  # a tab of the key GRPO metrics of every arm, one above the other
ARM_METRICS = (
    "grpo/reward",
    "grpo/accuracy",
    "grpo/mean_length",
    "grpo/frac_reward_zero_std",
    "grpo/truncation_rate",
    "grpo/samples_per_response",
    "grpo/reflections_per_response",
)


def progress_text(stage: StageView, bar: int = BAR) -> Text:
    """'██████░░░░ 12/40' with a `bar`-cell bar (or '-' without progress events)."""
    if stage.done is None or not stage.total:
        return Text("-", "dim")
    if bar == 0:
        return Text(f"{stage.done}/{stage.total}", "green" if stage.state == "done" else "cyan")
    frac = max(0.0, min(1.0, stage.done / stage.total))
    full = round(frac * bar)
    style = "green" if stage.state == "done" else "cyan"
    return Text.assemble(
        ("█" * full, style), ("░" * (bar - full), "dim"), f" {stage.done}/{stage.total}"
    )


def status_line(snap: Snapshot) -> Text:
    """'grpo/rl_only running · step 2 · elapsed 5m · pid 12 · updated 3s ago'."""
    if not snap.status:
        return Text(f"{snap.name}: no status.json yet", "dim")
    s = snap.status
    out = Text.assemble((f"{s.get('stage')} ", "bold"), state_text(snap.state))
    if s.get("step") is not None:
        out.append(f" · step {s['step']}")
    out.append(f" · elapsed {fmt_seconds(snap.elapsed)}")
    if s.get("pid") is not None:
        out.append(f" · pid {s['pid']}" + ("" if snap.alive else " (gone)"), "dim")
    if isinstance(s.get("updated"), (int, float)):
        out.append(f" · updated {fmt_seconds(snap.now - s['updated'])} ago", "dim")
    if snap.run_eta is not None:
        out.append(f" · run ETA {fmt_seconds(snap.run_eta)}", "bold")
        if snap.unestimated:
            out.append(f" + {', '.join(snap.unestimated)} (not yet estimable)", "dim")
    if snap.headline:
        out.append(f"\nresult: {snap.headline} (accuracy %; c: the full table)", "bold green")
    if snap.recipe.description:
        out.append(f"\n{snap.recipe.name}: {snap.recipe.description}", "italic dim")
    return out


def arms_series(snap: Snapshot) -> dict[str, dict[str, tuple[tuple[int, float], ...]]]:
    """{'arms': {'grpo/reward@rl_only': points, ...}} once two GRPO arms have logged metrics."""
    arms = [s for s in snap.series if s.startswith("grpo/")]
    if len(arms) < 2:
        return {}
    return {
        ARMS_TAB: {
            f"{name}{ARM_SEP}{stage.removeprefix('grpo/')}": snap.series[stage][name]
            for stage in arms
            for name in ARM_METRICS
            if name in snap.series[stage]
        }
    }


def pane_id(stage: str) -> str:
    return "plots-" + re.sub(r"[^A-Za-z0-9_-]", "-", stage)


class LiveScreen(RunScreen):
    """Polls the run every second; plots grow as metric rows are appended."""

    VIEW = "live"
    BINDINGS = [
        Binding(
            "right_square_bracket",
            "tab(1)",
            "Next plots",
            key_display="]",
            tooltip="next stage's plots",
            show=False,  # the footer fits 80 columns; every key is in the help (?)
        ),
        Binding(
            "left_square_bracket",
            "tab(-1)",
            "Prev plots",
            key_display="[",
            tooltip="previous stage's plots",
            show=False,  # in the help screen; the footer keeps room for ? Help and q Quit
        ),
        Binding(
            "f", "full_chart", "Full chart", tooltip="the focused (or first) chart full screen"
        ),
        Binding(
            "s", "smooth", "Smooth", tooltip="cycle chart smoothing: off, 0.6, 0.9", show=False
        ),
        Binding(
            "o",
            "groups",
            "Latest step",
            tooltip="groups of the latest step of the arm plotted",
            show=False,
        ),
    ]

    def __init__(self, run) -> None:
        super().__init__(run)
        self.snapshot: Snapshot | None = None
        self._log_seen = 0
        self._panels: dict[str, PlotPanel] = {}
        self._stage_row: int | None = None  # the stage row the table was last moved to
        self.smoothing = 0.0  # EMA weight of every chart (`s`)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="live-status")
        yield Static(id="hints")
        with Horizontal(id="live-main"):
            stages = DataTable(id="stages", cursor_type="row")
            for name in ("stage", "state", "progress", "time", "ETA"):
                stages.add_column(name, key=name)
            yield stages
            with TabbedContent(id="plots"):
                yield TabPane("plots", Static("no metric rows yet", id="no-plots"), id="plots-none")
        yield RichLog(id="log", max_lines=2000, wrap=False, markup=False)
        yield Footer(compact=True, show_command_palette=False)  # ^p: in the help

    def on_mount(self) -> None:
        self.query_one("#log", RichLog).border_title = "events"
        self.query_one("#stages", DataTable).border_title = "stages"
        self.start_polling()

    def fetch(self) -> Snapshot:
        return self.app.run_watch(self.run).poll()  # type: ignore[attr-defined]

    def apply(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.report(snap.errors)
        self.query_one("#live-status", Static).update(status_line(snap))
        hints = self.query_one("#hints", Static)
        hints.update(Text("\n".join(f"! {h}" for h in snap.hints), "bold yellow"))
        hints.display = bool(snap.hints)
        self._update_stages(snap)
        self._update_plots(snap)
        self._update_log(snap)

    def _update_stages(self, snap: Snapshot) -> None:
        """The stage table; below 120 columns its bars shrink so time and ETA stay in view,
        and its cursor follows the stage that runs until the user moves it."""
        table = self.query_one("#stages", DataTable)
        row = table.cursor_row
        following = self._stage_row in (None, row)
        width = self.app.size.width
        bar = BAR if width >= 120 else 3 if width >= 100 else 0
        table.clear()
        for st in snap.stages:
            eta = fmt_seconds(st.eta) if st.eta is not None else ""
            table.add_row(
                st.name,
                state_text(st.state),
                progress_text(st, bar),
                fmt_seconds(st.seconds),
                eta,
                key=st.name,
            )
        current = (snap.status or {}).get("stage")
        names = [st.name for st in snap.stages]
        if following and current in names:
            row = names.index(current)
        table.move_cursor(row=row)
        self._stage_row = row if following else -1  # -1: the user chose a row; keep it

    def _update_plots(self, snap: Snapshot) -> None:
        tabs = self.query_one("#plots", TabbedContent)
        for stage, series in {**snap.series, **arms_series(snap)}.items():
            panel = self._panels.get(stage)
            if panel is None:
                panel = self._panels[stage] = PlotPanel(stage)
                panel.smoothing = self.smoothing
                tabs.add_pane(TabPane(stage, panel, id=pane_id(stage)))
                if len(self._panels) == 1:
                    tabs.remove_pane("plots-none")
                if stage == (snap.status or {}).get("stage"):  # follow the stage that runs
                    self.call_after_refresh(setattr, tabs, "active", pane_id(stage))
            panel.update_series(series)

    def _update_log(self, snap: Snapshot) -> None:
        log = self.query_one("#log", RichLog)
        new = snap.log_total - self._log_seen
        if new < 0 or new > len(snap.log_tail):  # the file was replaced, or we fell behind
            log.clear()
            new = len(snap.log_tail)
        for line in snap.log_tail[len(snap.log_tail) - new :]:
            log.write(Text(line, "red" if " error " in line or " failed" in line else ""))
        self._log_seen = snap.log_total

    def action_tab(self, delta: int) -> None:
        tabs = self.query_one("#plots", TabbedContent)
        ids = [pane.id for pane in tabs.query(TabPane) if pane.id]
        if ids and tabs.active in ids:
            tabs.active = ids[(ids.index(tabs.active) + delta) % len(ids)]

    def _active_panel(self) -> PlotPanel | None:
        tabs = self.query_one("#plots", TabbedContent)
        return next((p for p in self._panels.values() if pane_id(p.stage) == tabs.active), None)

    def action_full_chart(self) -> None:
        """The focused chart (tab moves between them), else the first of the tab shown."""
        focused = self.focused
        panel = self._active_panel()
        plot = focused if isinstance(focused, MetricPlot) else None
        if plot is None and panel is not None and panel.plots():
            plot = panel.plots()[0]
        if plot is None:
            self.notify("no chart yet", timeout=3)
            return
        self.app.push_screen(ChartScreen(plot.metric_name, lambda: plot.lines, plot.smoothing))

    def action_smooth(self) -> None:
        self.smoothing = SMOOTHING[(SMOOTHING.index(self.smoothing) + 1) % len(SMOOTHING)]
        for panel in self._panels.values():
            panel.set_smoothing(self.smoothing)
        self.notify(f"chart smoothing {self.smoothing or 'off'}", timeout=2)

    def action_groups(self) -> None:
        """Open the group inspector at the latest step of the arm shown (or logged last)."""
        tabs = self.query_one("#plots", TabbedContent)
        stage = tabs.active.removeprefix("plots-").replace("grpo-", "", 1)
        screen = self.app.open_run(self.run, "groups")  # type: ignore[attr-defined]
        screen.goto(arm=stage if tabs.active.startswith("plots-grpo-") else None, step=None)
