"""The trace browser's record reader: parsing and filtering run in a child process.

Parsing 100k rollouts is seconds of pure-Python work. In a thread it holds the GIL for most of
that time, and Textual's event loop waits for it: a key pressed during the read took 2.3 s to be
handled (`sf-mlx bench tui`). Here a child process reads the record files, keeps them,
and filters them; the app receives only the page its table shows (at most `limit` items, with the
problems and source records those items link to), which unpickles in milliseconds.

`RecordReader.page` blocks until the page is ready: call it from a worker thread. Waiting on the
child releases the GIL, so the UI stays responsive.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path

from sf_mlx.rundir import RunDir
from tui.load import Loaded, Page, load_items, page_of


class RecordStore:
    """Loaded records per (run, kind), read once and filtered on demand."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], Loaded] = {}

    def page(
        self,
        run_path: str,
        kind: str,
        grade: str = "all",
        facets: dict[str, str] | None = None,
        query: str = "",
        limit: int = 1000,
        reload: bool = False,
    ) -> Page:
        """The first `limit` records of `kind` in the run at `run_path` passing the grade, facet
        and search filters; `reload` reads every kind of that run from its files again."""
        if reload:
            for key in [k for k in self._loaded if k[0] == run_path]:
                del self._loaded[key]
        key = (run_path, kind)
        if key not in self._loaded:
            self._loaded[key] = load_items(RunDir(run_path), kind)
        return page_of(self._loaded[key], grade, facets, query, limit)


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other side closed the pipe")
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe")
    return pickle.loads(data)  # only ever the app's own child (or the app) on the other side


def serve() -> None:
    """The child process: answer page requests on stdin until the app closes it."""
    store = RecordStore()
    while True:
        try:
            args, kwargs = _recv(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply = ("ok", store.page(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - sent back to the app as one line
            reply = ("error", f"{type(e).__name__}: {e}")
        _send(sys.stdout.buffer, reply)


class RecordReader:
    """Pages of a run's records, read in one child process (`processes=False`: in this process,
    for callers that have no use for a second one)."""

    def __init__(self, processes: bool = True) -> None:
        self.processes = processes
        self._store = RecordStore()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request at a time: screens' workers ask at once
        self._closed = False

    def _start(self) -> subprocess.Popen:
        # A plain `python -c` child, not multiprocessing: that would re-import the caller's
        # __main__ and pass on stderr's file descriptor, which Textual has replaced.
        root = str(Path(__file__).resolve().parent.parent)
        code = f"import sys; sys.path.insert(0, {root!r}); from tui.reader import serve; serve()"
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # never onto the app's screen; errors come back as replies
        )

    def page(self, *args, **kwargs) -> Page:
        """`RecordStore.page` (same arguments), answered by the child process; blocks, so call
        it from a worker."""
        with self._lock:
            if not self.processes:
                return self._store.page(*args, **kwargs)
            if self._closed:
                raise RuntimeError("the record reader is closed")
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                _send(proc.stdin, (args, kwargs))
                status, value = _recv(proc.stdout)  # waits without holding the GIL
            except (EOFError, OSError, pickle.UnpicklingError):
                self._stop()
                raise RuntimeError(
                    "the record reader process stopped; press r to read again"
                ) from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the child process, even in the middle of a read (whose worker then gets an
        error); later requests are refused."""
        self._closed = True
        proc = self._proc
        if proc is not None:
            proc.kill()
        if self._lock.acquire(timeout=5):
            try:
                self._stop()
            finally:
                self._lock.release()
