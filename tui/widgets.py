"""Widgets shared by the screens: a labelled metric chart and a panel of them per stage."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label

from sf_mlx.metrics import METRICS, is_metric, metric
from tui.chart import PALETTE, LineChart, smoothed

# Plotted first, in this order (the rest of a stage's metrics follow in METRICS order).
KEY_METRICS = (
    "sft/train_loss",
    "sft/valid_loss",
    "grpo/reward",
    "grpo/accuracy",
    "grpo/mean_length",
    "grpo/frac_reward_zero_std",
    "grpo/truncation_rate",
    "grpo/samples_per_response",
    "grpo/reflections_per_response",
)

_ORDER = {m.name: i for i, m in enumerate(METRICS)}
ARM_SEP = "@"  # 'grpo/reward@rl_only': one metric of one arm, in the arms panel


def _split(name: str) -> tuple[str, str]:
    """'grpo/reward@rl_only' -> ('grpo/reward', 'rl_only'); a plain name has no arm."""
    base, _, arm = name.partition(ARM_SEP)
    return base, arm


def plot_order(names: list[str]) -> list[str]:
    """Key metrics first, then the other declared ones in METRICS order, then undeclared names;
    the series of one metric for several arms ('name@arm') stay together."""

    def rank(name: str) -> tuple[int, str, str]:
        base, arm = _split(name)
        if base in KEY_METRICS:
            return KEY_METRICS.index(base), "", arm
        if base in _ORDER:
            return len(KEY_METRICS) + _ORDER[base], "", arm
        return len(KEY_METRICS) + len(_ORDER), base, arm

    return sorted(names, key=rank)


def metric_title(name: str, points: tuple[tuple[int, float], ...]) -> Text:
    """'label  0.4200  step N  range min .. max' for one series ('label arm' for 'name@arm')."""
    base, arm = _split(name)
    label, fmt = _label_fmt(base)
    title = Text(f"{label:<16}", "bold")
    if arm:
        title = Text.assemble(
            (label, "bold"), " ", (f"{arm:<{max(1, 15 - len(label))}}", "magenta")
        )
    if points:
        values = [v for _, v in points]
        title.append(f"{fmt(values[-1]):>8}", "bold cyan")
        title.append(f"  step {points[-1][0]}", "dim")
        title.append(f"  range {fmt(min(values))} .. {fmt(max(values))}", "dim")
    return title


def overlay_title(base: str, lines: dict[str, tuple[tuple[int, float], ...]]) -> Text:
    """'label  ━ rl_only 0.42 @20  ━ sft_grpo 0.31 @7': one legend entry per arm, in its colour."""
    label, fmt = _label_fmt(base)
    title = Text(f"{label:<16}", "bold")
    for i, (arm, points) in enumerate(lines.items()):
        colour = PALETTE[i % len(PALETTE)]
        title.append(f" ━ {arm}", colour)
        if points:
            title.append(f" {fmt(points[-1][1])}", f"bold {colour}")
            title.append(f" @{points[-1][0]}", "dim")
    return title


def _label_fmt(base: str):
    return (metric(base).label, metric(base).format) if is_metric(base) else (base, str)


class MetricPlot(Vertical, can_focus=True):
    """A title line over a line chart with axes: one metric, for one series or for several arms
    overlaid on one scale (series named 'metric@arm'). Focusable: `f` opens it full screen."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(classes="metric-plot", **kwargs)
        self.metric_name = name
        self.lines: dict[str, tuple[tuple[int, float], ...]] = {}
        self.smoothing = 0.0
        self._title = Label(metric_title(name, ()), classes="metric-title")
        fmt = _label_fmt(name)[1]
        self._chart = LineChart(fmt=lambda v: _tick(fmt, v))

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._chart

    def update_lines(
        self, lines: dict[str, tuple[tuple[int, float], ...]], smoothing: float | None = None
    ) -> None:
        """`lines`: {arm (or '' for a single series): points}; the title keeps raw values, the
        chart is drawn with `smoothing` (an EMA weight; None: keep the current one)."""
        self.lines = lines
        if smoothing is not None:
            self.smoothing = smoothing
        if list(lines) == [""]:
            title = metric_title(self.metric_name, lines[""])
        else:
            title = overlay_title(self.metric_name, lines)
        if self.smoothing:
            title.append(f"  ~{self.smoothing}", "dim")
        self._title.update(title)
        self._chart.set_series(smoothed(list(lines.items()), self.smoothing))


def _tick(fmt, value: float) -> str:
    """A y tick label: the metric's own format, without padding."""
    return str(fmt(value)).strip()


class PlotPanel(VerticalScroll):
    """The metric charts of one stage, one per metric ('name@arm' series of one metric share a
    chart); charts for new metric names are added as they appear."""

    def __init__(self, stage: str, **kwargs) -> None:
        super().__init__(classes="plot-panel", **kwargs)
        self.stage = stage
        self._plots: dict[str, MetricPlot] = {}
        self._waiting: dict[str, tuple[tuple[int, float], ...]] | None = None
        self._ready = False
        self.smoothing = 0.0  # EMA weight the charts are drawn with

    def on_mount(self) -> None:
        self._ready = True
        if self._waiting is not None:
            self.update_series(self._waiting)

    def update_series(self, series: dict[str, tuple[tuple[int, float], ...]]) -> None:
        """Show every metric of `series` (kept until mounted when called earlier)."""
        if not self._ready:
            self._waiting = series
            return
        grouped: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {}
        for name in plot_order(list(series)):
            base, arm = _split(name)
            grouped.setdefault(base, {})[arm] = series[name]
        new = [n for n in grouped if n not in self._plots]
        for name in new:
            self._plots[name] = MetricPlot(name)
        order = plot_order(list(self._plots))
        for i, name in enumerate(order):
            if name in new:
                after = next((self._plots[n] for n in order[i + 1 :] if n not in new), None)
                self.mount(self._plots[name], before=after)
        for name, plot in self._plots.items():
            plot.update_lines(grouped.get(name, {"": ()}), self.smoothing)

    def plots(self) -> list[MetricPlot]:
        """The charts in the order shown."""
        return [self._plots[n] for n in plot_order(list(self._plots))]

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = weight
        for plot in self._plots.values():
            plot.update_lines(plot.lines, weight)
