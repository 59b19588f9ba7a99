"""Screen bases: reads in thread workers (a worker only reads files and returns plain data, which
the screen shows when the worker's state message arrives), the keys between a run's views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from sf_mlx.rundir import RunDir

VIEWS = ("live", "traces", "groups", "compare")


class WorkerScreen(Screen):
    """Runs reads in thread workers: `poll()` repeats on a timer, `load()` runs once."""

    POLL_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._busy: set[str] = set()
        self._reported: set[str] = set()
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._pending: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}

    def fetch(self) -> Any:
        """Read what the screen shows (runs in a thread; touch no widget here)."""
        return None

    def apply(self, data: Any) -> None:
        """Show what `fetch` returned (UI thread)."""

    def start_polling(self) -> None:
        self.poll()
        seconds = self.POLL_SECONDS * getattr(self.app, "poll_scale", 1.0)
        self.set_interval(seconds, self._tick)

    def _tick(self) -> None:
        if self.is_current:
            self.poll()

    def poll(self) -> None:
        if "poll" not in self._busy:  # a slow poll is not queued behind: the next tick retries
            self.load("poll", self.fetch, self.apply)

    def load(self, group: str, fetch: Callable[[], Any], apply: Callable[[Any], None]) -> None:
        """Run `fetch` in a thread worker, then `apply` its result; one worker per group, and a
        request made while one runs replaces any earlier waiting request (the latest wins)."""
        if group in self._busy:
            self._pending[group] = (fetch, apply)
            return
        self._busy.add(group)
        self._handlers[group] = apply
        self.run_worker(fetch, name=group, group=group, thread=True, exit_on_error=False)

    @property
    def busy(self) -> bool:
        return bool(self._busy)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group not in self._handlers:
            return
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        group = worker.group
        self._busy.discard(group)
        if group in self._pending:  # this result is already stale
            self.load(group, *self._pending.pop(group))
        elif event.state == WorkerState.SUCCESS and self.is_attached:
            # a result that arrives once the app exits is dropped (is_attached is False from
            # App.exit on): its screen's widgets are being removed, and mounting there raises
            self._handlers[group](worker.result)
        if worker.error is not None:
            self.report([f"{type(worker.error).__name__}: {worker.error}"])

    def report(self, errors: Iterable[str]) -> None:
        """Notify each error once (a corrupt line, an unreadable file)."""
        for e in errors:
            if e not in self._reported:
                self._reported.add(e)
                self.notify(e, title="read error", severity="error", timeout=10)


class RunScreen(WorkerScreen):
    """A screen about one run; `l t g c` switch views, `escape` goes back to the runs list."""

    BINDINGS = [
        Binding(
            "l", "view('live')", "Live", tooltip="live view: stage progress, plots, hints, log"
        ),
        Binding(
            "t", "view('traces')", "Traces", tooltip="browse samples, reflections, traces, rollouts"
        ),
        Binding("g", "view('groups')", "Groups", tooltip="GRPO group inspector"),
        Binding("c", "view('compare')", "Compare", tooltip="arms x tasks evaluation table"),
        Binding("escape", "runs", "Runs", tooltip="back to the runs list"),
    ]
    VIEW = ""

    def __init__(self, run: RunDir) -> None:
        super().__init__()
        self.run = run
        self.sub_title = f"{run.name} · {self.VIEW}"

    def action_view(self, view: str) -> None:
        if view != self.VIEW:
            self.app.open_run(self.run, view)  # type: ignore[attr-defined]

    def action_runs(self) -> None:
        self.app.show_runs()  # type: ignore[attr-defined]
