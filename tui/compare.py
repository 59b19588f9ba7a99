"""The compare view: arms x tasks from eval/summary.json (accuracy with its interval, pass@k, skill
usage, verdict F1, budget-forcing gain); `p` cycles through the measures the summary holds."""

from __future__ import annotations

from typing import Any, NamedTuple

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from sf_mlx.rundir import RunDir
from tui.base import RunScreen
from tui.load import partial_summary, read_summary, summary_tasks

Summary = dict[str, dict[str, dict[str, Any]]]
BAR = 3  # cells of the bar behind a fraction: six task columns fit 160 columns


class Measure(NamedTuple):
    key: str  # field of a summary cell
    label: str
    fraction: bool = False  # in [0, 1]: drawn with a bar
    higher_better: bool = True


MEASURES = (
    Measure("accuracy", "accuracy % [95% interval]", fraction=True),
    Measure("pass_at_k", "pass@k %", fraction=True),
    Measure("answers_per_response", "answers per response"),
    Measure("reflections_per_response", "reflections per response"),
    Measure("verdict_f1", "verdict F1 (correct / incorrect)"),
    Measure("budget_gain", "budget-forcing gain (forced - unforced accuracy, points)"),
    Measure("mean_tokens", "mean tokens per response", higher_better=False),
)


def bar(value: float) -> str:
    """A small horizontal bar for a fraction in [0, 1] (eighths of a cell)."""
    eighths = round(max(0.0, min(1.0, value)) * BAR * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_value(entry: dict[str, Any] | None, m: Measure) -> float | None:
    """The number a cell is ranked by (a verdict F1 pair by its mean)."""
    value = (entry or {}).get(m.key)
    if isinstance(value, dict):
        parts = [v for v in value.values() if _num(v)]
        return sum(parts) / len(parts) if parts else None
    return float(value) if _num(value) else None


def cell(entry: dict[str, Any] | None, m: Measure, best: bool) -> Text:
    """'42.0 [38.0,46.0] █▍' (fractions in %), '1.25', 'C 0.81 / I 0.62', ...; '-' when
    missing."""
    value = (entry or {}).get(m.key)
    style = "bold green" if best else "bold"
    if isinstance(value, dict):
        parts = [
            f"{k[:1].upper()} {v:.2f}" if _num(v) else f"{k[:1].upper()} -"
            for k, v in value.items()
        ]
        return Text(" / ".join(parts), style)
    if not _num(value):
        return Text("-", "dim")
    if m.fraction:
        out = Text(f"{100 * value:.1f}", style)
    elif m.key == "budget_gain":  # a difference of accuracies: in points
        out = Text(f"{100 * value:+.1f}", style)
    else:
        out = Text(f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}", style)
    low, high = (entry or {}).get("ci_low"), (entry or {}).get("ci_high")
    if m.key == "accuracy" and _num(low) and _num(high):
        out.append(f" [{100 * low:.1f},{100 * high:.1f}]", "dim")
    if m.fraction:
        out.append(f" {bar(value):<{BAR}}", "green" if best else "cyan")
    return out


def size_label(summary: Summary, task: str) -> str:
    """' (50q x 4)': questions x samples per question, when every arm has the same."""
    sizes = {
        (e.get("n_questions"), e.get("n"))
        for per in summary.values()
        if (e := per.get(task)) is not None
    }
    if len(sizes) != 1:
        return ""
    questions, n = sizes.pop()
    if not _num(questions) or not _num(n) or not questions:
        return f" (n={n})" if _num(n) else ""
    per = n / questions
    return f" ({questions}q x {per:g})"


class CompareScreen(RunScreen):
    """`p` cycles through the measures present in the summary."""

    VIEW = "compare"
    POLL_SECONDS = 2.0
    BINDINGS = [
        Binding("p", "measure", "Next measure", tooltip="accuracy, pass@k, skill usage ...")
    ]

    def __init__(self, run: RunDir) -> None:
        super().__init__(run)
        self.summary: Summary | None = None
        self.partial = False  # the summary holds only the cells written so far
        self.measure = MEASURES[0]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-note")
        # the arm column stays in view when the table scrolls sideways
        yield DataTable(id="compare", cursor_type="row", zebra_stripes=True, fixed_columns=1)
        yield Footer(compact=True, show_command_palette=False)  # ^p: in the help

    def on_mount(self) -> None:
        self.start_polling()

    def fetch(self) -> tuple[Summary | None, bool]:
        """(summary, partial): eval/summary.json, else the cells `evaluate` has written so far."""
        summary = read_summary(self.run)
        if summary is not None:
            return summary, False
        return partial_summary(self.run), True

    def apply(self, result: tuple[Summary | None, bool]) -> None:
        summary, partial = result
        if (
            summary != self.summary
            or partial != self.partial
            or not self.query_one(DataTable).columns
        ):
            self.summary, self.partial = summary, partial
            self.render_table()

    def measures(self) -> list[Measure]:
        """The measures some cell of the summary holds."""
        cells = [e for per in (self.summary or {}).values() for e in per.values()]
        return [m for m in MEASURES if any(m.key in e for e in cells)] or [MEASURES[0]]

    def render_table(self) -> None:
        table = self.query_one("#compare", DataTable)
        note = self.query_one("#compare-note", Static)
        table.clear(columns=True)
        table.display = self.summary is not None
        if not self.summary:
            note.update(
                "no evaluation yet: eval/summary.json is written when the evaluate stage ends"
            )
            return
        m = self.measure
        if self.partial:
            m = self.measure = MEASURES[0]
        note.update(
            Text.assemble(
                ("PARTIAL: evaluate is running; cells appear as they finish · ", "bold yellow")
                if self.partial
                else "",
                ("arms x tasks: ", "dim"),
                (m.label, "bold"),
                (" · green: best · 50q x 4: questions x samples each", "dim"),
                (" · p: next measure", "dim"),
            )
        )
        tasks = summary_tasks(self.summary)
        table.add_column("arm", key="arm")
        for task in tasks:
            table.add_column(f"{task}{size_label(self.summary, task)}", key=task)
        best = {}
        for task in tasks:
            values = [sort_value(per.get(task), m) for per in self.summary.values()]
            values = [v for v in values if v is not None]
            # a tie of every arm (all 0 on a task nobody solves) has no best
            distinct = len(set(values)) > 1
            best[task] = (max if m.higher_better else min)(values) if distinct else None
        for arm, per in self.summary.items():
            cells = []
            for task in tasks:
                value = sort_value(per.get(task), m)
                cells.append(cell(per.get(task), m, value is not None and value == best[task]))
            table.add_row(Text(arm, "bold"), *cells, key=arm)

    def action_measure(self) -> None:
        present = self.measures()
        i = present.index(self.measure) + 1 if self.measure in present else 0
        self.measure = present[i % len(present)]
        self.render_table()
