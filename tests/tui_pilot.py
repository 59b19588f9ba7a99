"""Shared by the TUI's pilot tests: the fixture runs, an app on them with a fixed clock, and
waits until reads and drawing have settled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from tui import watch
from tui.app import SfMlxApp

RUNS = Path(__file__).parent / "fixtures" / "runs"
NOW = 1_735_689_600.0 + 3000  # fixture times are 2025-01-01 00:00 UTC + offsets
SIZE = (110, 32)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def utc_log(monkeypatch):
    monkeypatch.setattr(watch, "_localtime", time.gmtime)


def make_app(path: Path | str, poll_scale: float = 1.0) -> SfMlxApp:
    return SfMlxApp(path, clock=lambda: NOW, poll_scale=poll_scale)


async def settle(pilot) -> None:
    """Wait until no worker runs and no screen waits on a read (loads chain: files, then rows)."""
    app = pilot.app
    for _ in range(50):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(getattr(s, "busy", False) for s in app.screen_stack) and not tables_pending(app):
            await pilot.pause()
            return
    raise AssertionError("workers did not settle")


def tables_pending(app) -> bool:
    """A DataTable measures new rows' column widths on its next idle (Textual internals, read
    defensively): until then it draws every column at its label's width."""
    return any(
        getattr(t, "_require_update_dimensions", False) or getattr(t, "_updated_cells", None)
        for t in app.screen.query(DataTable)
    )


async def steady_screen(pilot, tries: int = 40) -> str:
    """The screenshot once two taken 50 ms apart agree (drawing has caught up with the data)."""
    last = pilot.app.export_screenshot()
    for _ in range(tries):
        await pilot.pause(0.05)
        now = pilot.app.export_screenshot()
        if now == last:
            return now
        last = now
    raise AssertionError("the screen kept changing")


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def plain(widget: Static) -> str:
    content = widget.content
    if hasattr(content, "plain"):
        return content.plain
    if hasattr(content, "renderables"):  # a rich Group: render it as the terminal would
        import io

        from rich.console import Console

        console = Console(width=300, record=True, file=io.StringIO())
        console.print(content)
        return console.export_text()
    return str(content)
