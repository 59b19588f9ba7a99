"""The sf-mlx Textual app: `run(path)` opens a runs folder (or one run) and watches its files.
It only reads what the pipeline writes: training never runs here and MLX is never imported.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from sf_mlx.rundir import RunDir
from tui.base import RunScreen
from tui.browser import BrowserScreen
from tui.compare import CompareScreen
from tui.groups import GroupScreen
from tui.help import HelpScreen, KeySection
from tui.live import LiveScreen
from tui.reader import RecordReader
from tui.runs import RunsScreen
from tui.watch import RunWatch

SCREENS: dict[str, type[RunScreen]] = {
    "live": LiveScreen,
    "traces": BrowserScreen,
    "groups": GroupScreen,
    "compare": CompareScreen,
}

LIST_KEYS = [
    Binding(
        "up,down,pageup,pagedown,home,end",
        "move",
        "move the cursor",
        key_display="arrows, pgup/pgdn",
    ),
    Binding("tab,shift+tab", "focus", "next / previous widget", key_display="tab, shift+tab"),
    Binding("ctrl+p", "command_palette", "command palette (themes, screenshots)", key_display="^p"),
    Binding("enter", "select", "open the run / choose", key_display="enter"),
]


class SfMlxApp(App):
    """Runs list -> one run's live / traces / groups / compare views; `?` for help."""

    CSS_PATH = "app.tcss"
    TITLE = "sf-mlx"
    # screen classes by terminal size: app.tcss lays screens out again below 120 x 36
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        path: str | os.PathLike[str] = "runs",
        clock: Callable[[], float] = time.time,
        poll_scale: float = 1.0,
        reader: RecordReader | None = None,
        single_run: bool = False,
    ) -> None:
        """`single_run`: `path` is one run even before it holds any file (a run being started);
        `clock` and `poll_scale` (multiplies every poll interval) are for tests; `reader`
        reads the trace browser's records (default: in a child process)."""
        super().__init__()
        self.single_run = single_run
        self.reader = reader or RecordReader()
        self.path = Path(path)
        self.clock = clock
        self.poll_scale = poll_scale
        self._watches: dict[Path, RunWatch] = {}
        self._watches_lock = threading.Lock()  # workers of several screens ask at once

    def on_unmount(self) -> None:
        self.reader.close()

    def on_mount(self) -> None:
        self.push_screen(RunsScreen(self.path, self.single_run))
        if self.single_run or RunDir(self.path).is_run():
            self.open_run(RunDir(self.path), "live")

    def run_watch(self, run: RunDir) -> RunWatch:
        """The one RunWatch of `run`, shared by the screens that show it (thread-safe polls)."""
        key = run.path.resolve()
        with self._watches_lock:
            if key not in self._watches:
                self._watches[key] = RunWatch(run, self.clock)
            return self._watches[key]

    def open_run(self, run: RunDir, view: str) -> RunScreen:
        """Show `view` (live, traces, groups, compare) of `run`; screens are kept per run."""
        if view not in SCREENS:
            raise ValueError(f"view {view!r}; expected one of {list(SCREENS)}")
        name = f"{view}:{run.path.resolve()}"
        if not self.is_screen_installed(name):
            self.install_screen(SCREENS[view](run), name)
        if isinstance(self.screen, RunScreen):
            self.switch_screen(name)
        else:
            self.push_screen(name)
        return self.get_screen(name)  # type: ignore[return-value]

    def show_runs(self) -> None:
        if isinstance(self.screen, RunScreen):
            self.pop_screen()

    def key_sections(self) -> list[KeySection]:
        sections: list[tuple[str, type[App] | type[Screen]]] = [
            ("everywhere", SfMlxApp),
            ("runs", RunsScreen),
            ("any run view", RunScreen),
            ("live", LiveScreen),
            ("traces", BrowserScreen),
            ("groups", GroupScreen),
            ("compare", CompareScreen),
        ]
        out = [(where, list(cls.__dict__.get("BINDINGS", []))) for where, cls in sections]
        return [("lists", LIST_KEYS), *out]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.key_sections()))


def run(path: str | os.PathLike[str] = "runs", single_run: bool = False) -> None:
    """Start the TUI on a runs folder or a single run directory (blocks until quit);
    `single_run`: `path` is a run even if its process has not written a file yet."""
    SfMlxApp(path, single_run=single_run).run()
