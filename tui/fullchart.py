"""One metric's chart over the whole screen, with a step cursor and the values at that step."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from sf_mlx.metrics import is_metric, metric
from tui.chart import PALETTE, LineChart, Points, smoothed, steps_of, values_at

SMOOTHING = (0.0, 0.6, 0.9)  # `s` cycles through these (TensorBoard-style EMA weights)
Lines = dict[str, Points]  # series name ('' for a stage's own metric, else an arm) -> points


class ChartScreen(Screen):
    """`left`/`right` move the step cursor, `home`/`end` jump, `s` smooths, `escape` closes.
    The series are read again every second from `source`, so a live run keeps drawing."""

    BINDINGS = [
        Binding("left", "move(-1)", "Step -1"),
        Binding("right", "move(1)", "Step +1"),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last step"),
        Binding("s", "smooth", "Smoothing"),
        Binding("escape", "close", "Back"),
    ]

    def __init__(self, name: str, source: Callable[[], Lines], smoothing: float = 0.0) -> None:
        super().__init__()
        self.metric_name = name
        self.source = source
        self.smoothing = smoothing
        self.cursor: int | None = None  # a step; None follows the latest
        self.label, self.fmt = (
            (metric(name).label, metric(name).format) if is_metric(name) else (name, str)
        )

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chart-values")
        yield LineChart(fmt=lambda v: str(self.fmt(v)).strip(), id="chart-full")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = self.label
        self.redraw()
        self.set_interval(1.0, self.redraw)

    def lines(self) -> list[tuple[str, Points]]:
        return [(name or self.label, pts) for name, pts in self.source().items()]

    def redraw(self) -> None:
        raw = self.lines()
        steps = steps_of(raw)
        step = self.cursor if self.cursor in steps else (steps[-1] if steps else None)
        chart = self.query_one("#chart-full", LineChart)
        chart.set_series(smoothed(raw, self.smoothing), cursor=step)
        head = Text.assemble((f"{self.label}", "bold"))
        if self.smoothing:
            head.append(f"  (drawn smoothed {self.smoothing}; values below are raw)", "dim")
        if step is not None:
            head.append(f"\nstep {step}", "bold")
            for i, (name, value) in enumerate(values_at(raw, step)):
                shown = "-" if value is None else str(self.fmt(value)).strip()
                head.append(f"  ━ {name} ", PALETTE[i % len(PALETTE)])
                head.append(shown, "bold")
        self.query_one("#chart-values", Static).update(head)

    def action_move(self, delta: int) -> None:
        steps = steps_of(self.lines())
        if not steps:
            return
        i = steps.index(self.cursor) if self.cursor in steps else len(steps) - 1
        self.cursor = steps[max(0, min(len(steps) - 1, i + delta))]
        self.redraw()

    def action_jump(self, index: int) -> None:
        steps = steps_of(self.lines())
        self.cursor = steps[index] if steps else None
        self.redraw()

    def action_smooth(self) -> None:
        i = SMOOTHING.index(self.smoothing) if self.smoothing in SMOOTHING else 0
        self.smoothing = SMOOTHING[(i + 1) % len(SMOOTHING)]
        self.redraw()

    def action_close(self) -> None:
        self.dismiss()
