"""The braille line chart: axes with ticks, one scale for overlaid series, flat series drawn."""

from __future__ import annotations

from tui.chart import render_chart, x_labels, y_range


def _rows(text) -> list[str]:
    return text.plain.split("\n")


def _dots(row: str) -> int:
    """Braille cells with at least one dot set in a chart row."""
    return sum(1 for ch in row if 0x2800 < ord(ch) <= 0x28FF)


def test_axes_carry_the_value_range_and_the_steps():
    rows = _rows(render_chart([("r", [(1, 0.0), (10, 1.0)])], 40, 8, fmt=lambda v: f"{v:.2f}"))
    assert len(rows) == 8
    assert rows[0].startswith("1.00┤") and rows[5].startswith("0.00┤")
    assert rows[3].startswith("0.50┤")  # the middle tick
    assert rows[6].startswith("    └─")
    assert rows[7].split() == ["1", "step", "10"]
    # a rising line: a dot at the bottom left and the top right
    assert rows[5][5] != "\u2800" and rows[0][-1] != "\u2800"


def test_a_flat_series_is_a_line_in_the_middle_not_an_empty_plot():
    rows = _rows(render_chart([("r", [(s, 0.031) for s in range(1, 21)])], 40, 7))
    plot = rows[:5]
    width = len(plot[2]) - plot[2].index("┤") - 1
    assert [_dots(r) for r in plot] == [0, 0, width, 0, 0]  # every column of the middle row
    assert plot[2].lstrip().startswith("0.031┤")
    assert y_range([0.0, 0.0]) == (-0.5, 0.5)


def test_overlaid_series_share_one_x_scale_and_keep_their_colours():
    short = [(s, 1.0) for s in range(1, 8)]  # a 7-step arm
    long = [(s, 0.0) for s in range(1, 21)]  # beside a 20-step one
    text = render_chart([("a", short), ("b", long)], 43, 7)
    rows = _rows(text)
    top, bottom = rows[0], rows[4]
    width = len(bottom) - bottom.index("┤") - 1
    assert _dots(bottom) == width  # the long arm spans the plot
    assert 0.25 * width < _dots(top) < 0.4 * width  # the short one a third of it
    styles = {span.style for span in text.spans}
    assert {"cyan", "magenta"} <= styles


def test_no_points_and_bad_values_are_shown_not_raised():
    assert render_chart([("a", [])], 30, 5).plain == "no points yet"
    rows = _rows(render_chart([("a", [(1, float("nan")), (2, 0.5), (3, float("inf"))])], 30, 5))
    assert "step 2" in rows[-1]
    assert x_labels(1, 20, 4) == "1 20"  # too narrow for the word: only the ends


def test_values_at_a_step_and_the_cursor_column():
    from tui.chart import smoothed, steps_of, values_at

    series = [("a", [(1, 0.1), (2, 0.2), (4, 0.4)]), ("b", [(3, 3.0)])]
    assert steps_of(series) == [1, 2, 3, 4]
    assert values_at(series, 3) == [("a", 0.2), ("b", 3.0)]  # a's last value at or before 3
    assert values_at(series, 1) == [("a", 0.1), ("b", None)]  # b has not started
    text = render_chart(series, 30, 6, cursor=4)
    marked = {span.start for span in text.spans if "on grey30" in str(span.style)}
    assert len(marked) == 4  # one cell per plot row, in the last column
    assert smoothed([("a", [(1, 0.0), (2, 1.0)])], 0.0) == [("a", [(1, 0.0), (2, 1.0)])]
