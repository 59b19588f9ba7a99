"""The `?` help screen: every key per screen and the meaning of every metric (sf_mlx.metrics)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from sf_mlx.metrics import METRICS

KeySection = tuple[str, list[Binding]]
_NAMES = {"escape": "esc", "question_mark": "?", "slash": "/"}


def keys_table(sections: list[KeySection]) -> Table:
    table = Table(title="Keys", title_justify="left", expand=True, show_edge=False)
    table.add_column("where", style="dim", no_wrap=True)
    table.add_column("key", style="bold cyan", max_width=18)
    table.add_column("does", ratio=1)
    for where, bindings in sections:
        for b in bindings:
            keys = b.key_display or ", ".join(_NAMES.get(k, k) for k in b.key.split(","))
            table.add_row(where, keys, b.tooltip or b.description or b.action)
            where = ""
    return table


def metrics_table() -> Table:
    table = Table(title="Metrics", title_justify="left", expand=True, show_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("label", style="cyan", no_wrap=True)
    table.add_column("meaning", ratio=1)
    for m in METRICS:
        table.add_row(m.name, m.label, m.meaning)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys and metric meanings; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", key_display="esc")]

    def __init__(self, sections: list[KeySection]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(
                "[b]sf-mlx tui[/b]: watches run directories written by the pipeline; "
                "it never trains and never imports MLX. Files are polled every second.",
                id="help-intro",
            )
            yield Static(keys_table(self.sections), id="help-keys")
            yield Static(metrics_table(), id="help-metrics")

    def action_dismiss(self) -> None:
        self.dismiss(None)
