"""The runs list: every run under a runs folder with its stage, state, elapsed time and numbers."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from sf_mlx.metrics import metric
from sf_mlx.rundir import RunDir, list_runs
from tui.base import WorkerScreen
from tui.watch import Snapshot, fmt_seconds

STATE_STYLES = {
    "running": "bold green",
    "done": "blue",
    "failed": "bold red",
    "stopped": "yellow",
    "pending": "dim",
}
COLUMNS = ("run", "recipe", "stage", "state", "step", "elapsed", "numbers")


def state_text(state: str) -> Text:
    return Text(state, STATE_STYLES.get(state, ""))


def key_numbers(snap: Snapshot) -> str:
    """The headline numbers: the evaluation's once it is done, else GRPO reward/accuracy of the
    last arm logged, else the SFT loss."""
    if snap.headline:
        return snap.headline
    grpo = [s for s in snap.series if s.startswith("grpo/")]  # in the order they started
    if grpo:
        current = (snap.status or {}).get("stage")
        stage = current if current in grpo else grpo[-1]
        parts = [stage.removeprefix("grpo/")]
        for name in ("grpo/reward", "grpo/accuracy"):
            value = snap.last(stage, name)
            if value is not None:
                parts.append(f"{metric(name).label} {metric(name).format(value)}")
        return " ".join(parts)
    loss = snap.last("sft", "sft/train_loss")
    if loss is not None:
        return f"sft loss {metric('sft/train_loss').format(loss)}"
    return ""


class RunsScreen(WorkerScreen):
    """A table of runs; enter opens the selected run's live view."""

    BINDINGS = [Binding("enter", "open", "Open run")]
    POLL_SECONDS = 2.0

    def __init__(self, path: Path, single_run: bool = False) -> None:
        super().__init__()
        self.path = path
        self.single_run = single_run  # `path` is one run, whether or not it has files yet
        self.snapshots: list[Snapshot] = []
        self.loaded = False
        self._shown: list[tuple[str, tuple[str, ...]]] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"runs in {self.path}", id="runs-where")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        for name in COLUMNS:
            table.add_column(name, key=name)
        yield table
        yield Footer(compact=True, show_command_palette=False)  # ^p: in the help

    def on_mount(self) -> None:
        self.sub_title = "runs"
        self.start_polling()

    def fetch(self) -> list[Snapshot]:
        single = RunDir(self.path)
        runs = [single] if self.single_run or single.is_run() else list_runs(self.path)
        return [self.app.run_watch(run).poll() for run in runs]  # type: ignore[attr-defined]

    def apply(self, snapshots: list[Snapshot]) -> None:
        self.snapshots = snapshots
        self.loaded = True
        for snap in snapshots:
            self.report(snap.errors)
        rows = [(str(snap.path), self.row(snap)) for snap in snapshots]
        shown = [(key, tuple(str(c) for c in cells)) for key, cells in rows]  # styles follow text
        if shown == self._shown:  # nothing changed: keep the table (cursor, scroll) as it is
            return
        self._shown = shown
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if snapshots:
            table.move_cursor(row=min(row, len(snapshots) - 1))
        where = self.query_one("#runs-where", Static)
        if snapshots:
            where.update(f"{len(snapshots)} run(s) in {self.path} · enter opens one")
        else:
            where.update(f"no runs in {self.path} yet (a run has recipe.yaml or status.json)")

    @staticmethod
    def row(snap: Snapshot) -> tuple[Text | str, ...]:
        """One table row: run, recipe, stage, state, step, elapsed, numbers."""
        status = snap.status or {}
        step = status.get("step")
        return (
            Text(snap.name, "bold"),
            snap.recipe.name,
            str(status.get("stage") or "-"),
            state_text(snap.state),
            "-" if step is None else str(step),
            fmt_seconds(snap.elapsed),
            key_numbers(snap),
        )

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if self.snapshots and table.cursor_row < len(self.snapshots):
            snap = self.snapshots[table.cursor_row]
            self.app.open_run(RunDir(snap.path), "live")  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()
