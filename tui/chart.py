"""A line chart drawn in braille dots: y axis with ticks, step on x, several series overlaid.

Each character cell holds 2 x 4 dots, so a 40 x 6 plot area has 80 x 24 points of resolution.
Every series of one chart shares its x range (steps) and y range, so arms of different lengths
are drawn to scale. A flat series is drawn as a line in the middle of a small range around its
value, never as an empty plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widget import Widget

Points = Sequence[tuple[int, float]]  # (step, value)
PALETTE = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white")
# dot (column, row) -> its bit in the braille cell U+2800 + bits
_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def _clean(points: Points) -> list[tuple[int, float]]:
    return [(x, y) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)]


def y_range(values: Sequence[float]) -> tuple[float, float]:
    """(low, high) of the values; a single value gets a band of +-10% (or +-0.5 at 0)."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Dots of a straight segment (Bresenham), both ends included."""
    dots, dx, dy = [], abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
    err = dx + dy
    while True:
        dots.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return dots
        e2 = 2 * err
        if e2 >= dy:
            err, x0 = err + dy, x0 + sx
        if e2 <= dx:
            err, y0 = err + dx, y0 + sy


def render_chart(
    series: Sequence[tuple[str, Points]],
    width: int,
    height: int,
    fmt: Callable[[float], str] = lambda v: f"{v:.3g}",
    colors: Sequence[str] = PALETTE,
    cursor: int | None = None,
) -> Text:
    """The chart of `series` [(name, points)] in `width` x `height` cells: `height - 2` rows of
    plot with y ticks at the top, middle and bottom, then the x axis and its step labels;
    `cursor`: a step whose column is highlighted (see `values_at`)."""
    lines = [(name, _clean(points)) for name, points in series]
    lines = [(name, pts) for name, pts in lines if pts]
    if not lines:
        return Text("no points yet", "dim")
    lo, hi = y_range([y for _, pts in lines for _, y in pts])
    xs = [x for _, pts in lines for x, _ in pts]
    x_lo, x_hi = min(xs), max(xs)
    ticks = {0: fmt(hi), None: fmt((lo + hi) / 2), -1: fmt(lo)}
    label_w = max(len(t) for t in ticks.values())
    rows = max(1, height - 2)
    cols = max(2, width - label_w - 1)
    cells = [[0] * cols for _ in range(rows)]
    owner: list[list[int | None]] = [[None] * cols for _ in range(rows)]

    def dot(x: float, y: float) -> tuple[int, int]:
        fx = 0.5 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)
        return round(fx * (2 * cols - 1)), round((hi - y) / (hi - lo) * (4 * rows - 1))

    for i, (_, pts) in enumerate(lines):
        dots = [dot(x, y) for x, y in pts]
        path = dots[:1] if len(dots) == 1 else []
        for a, b in zip(dots, dots[1:], strict=False):
            path += _line(*a, *b)
        for dx, dy in path:
            r, c = dy // 4, dx // 2
            cells[r][c] |= _BITS[dx % 2][dy % 4]
            owner[r][c] = i
    cursor_col = dot(cursor, lo)[0] // 2 if cursor is not None else None
    mid = rows // 2 if rows > 2 else None
    out = Text(no_wrap=True, overflow="crop")
    for r in range(rows):
        key = 0 if r == 0 else -1 if r == rows - 1 else None if r == mid else "none"
        tick = ticks.get(key, "") if key != "none" else ""
        out.append(f"{tick:>{label_w}}", "dim")
        out.append("┤" if tick else "│", "dim")
        for c in range(cols):
            i = owner[r][c]
            style = colors[i % len(colors)] if i is not None else ""
            if c == cursor_col:
                style = f"{style} on grey30".strip()
            out.append(chr(0x2800 + cells[r][c]), style)
        out.append("\n")
    out.append(" " * label_w + "└" + "─" * cols + "\n", "dim")
    out.append(" " * (label_w + 1) + x_labels(x_lo, x_hi, cols), "dim")
    return out


def values_at(series: Sequence[tuple[str, Points]], step: int) -> list[tuple[str, float | None]]:
    """Each series' value at `step`: its last point at or before that step (None before its
    first)."""
    out = []
    for name, points in series:
        before = [y for x, y in _clean(points) if x <= step]
        out.append((name, before[-1] if before else None))
    return out


def steps_of(series: Sequence[tuple[str, Points]]) -> list[int]:
    """Every step some series logged, sorted."""
    return sorted({x for _, points in series for x, _ in _clean(points)})


def smoothed(series: Sequence[tuple[str, Points]], weight: float) -> list[tuple[str, Points]]:
    """Each series with `metrics.smooth` applied to its values (weight 0: unchanged)."""
    from sf_mlx.metrics import smooth

    out = []
    for name, points in series:
        pts = _clean(points)
        ys = smooth([y for _, y in pts], weight)
        out.append((name, [(x, y) for (x, _), y in zip(pts, ys, strict=True)]))
    return out


def x_labels(x_lo: int, x_hi: int, cols: int) -> str:
    """'1        step        20' across `cols` cells (the first and last step at the ends)."""
    if x_lo == x_hi:
        return f"{'step ' + str(x_lo):^{cols}}"
    left, right = str(x_lo), str(x_hi)
    gap = cols - len(left) - len(right)
    middle = f"{'step':^{gap}}" if gap >= 6 else " " * max(gap, 1)
    return (left + middle + right)[:cols]


class LineChart(Widget):
    """`render_chart` at the widget's own size, redrawn when its series change or it resizes."""

    DEFAULT_CSS = "LineChart { height: 7; }"

    def __init__(self, fmt: Callable[[float], str] = lambda v: f"{v:.3g}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.fmt = fmt
        self.series: list[tuple[str, Points]] = []
        self.cursor: int | None = None

    def set_series(self, series: Sequence[tuple[str, Points]], cursor: int | None = None) -> None:
        self.series, self.cursor = list(series), cursor
        self.refresh()

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        return render_chart(self.series, w, h, self.fmt, cursor=self.cursor)
