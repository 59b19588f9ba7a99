"""The run directory: atomic JSON/JSONL files, append-only event rows, done markers, status.

Stdlib only (the TUI imports it). Writers replace whole files atomically or append whole lines;
readers parse only up to the last newline, so a half-written trailing line is never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sf_mlx.records import Record

EVENT_KINDS = ("stage_start", "stage_end", "progress", "metric", "message")
STATES = ("pending", "running", "done", "failed", "stopped")
_RESERVED = ("time", "kind", "stage", "step")  # event keys a metric name may not take
_STAGE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")


# --- files ---------------------------------------------------------------------------------------


def _row(row: dict[str, Any] | Record) -> dict[str, Any]:
    return row.to_dict() if isinstance(row, Record) else row


def _line(row: dict[str, Any] | Record) -> bytes:
    return (json.dumps(_row(row), ensure_ascii=False) + "\n").encode("utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temp file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: dict[str, Any] | Record) -> None:
    write_text_atomic(path, json.dumps(_row(obj), ensure_ascii=False, indent=2) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def write_jsonl_atomic(
    path: str | os.PathLike[str], rows: Iterable[dict[str, Any] | Record]
) -> int:
    """Replace `path` with one JSON object per row; returns the number of rows."""
    lines = [_line(r) for r in rows]
    write_bytes_atomic(path, b"".join(lines))
    return len(lines)


def _trim_partial_tail(fd: int) -> None:
    """Cut a trailing line without its newline (left by a killed writer) so appends stay valid."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, chunk = size, 4096
    while end > 0:
        start = max(0, end - chunk)
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any] | Record]) -> int:
    """Append whole lines (one write() call, then fsync); returns the number of rows.

    Assumes one writer per file: a partial trailing line left by a killed writer is dropped first.
    """
    data = [_line(r) for r in rows]
    if not data:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _trim_partial_tail(fd)
        buf = memoryview(b"".join(data))
        while buf:  # a regular file takes it in one call; the loop only guards short writes
            buf = buf[os.write(fd, buf) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def _parse(path: Path, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON line ({e})") from e
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def iter_jsonl(
    path: str | os.PathLike[str], record_type: type[Record] | None = None, complete: bool = False
) -> Iterator[Any]:
    """Yield each complete line of `path` as a dict (or `record_type`); skips a partial tail,
    which `complete=True` (a finished file: another stage's output) reports instead. Records
    with an `ID_FIELD` must not repeat an id."""
    path = Path(path)
    id_field = record_type.ID_FIELD if record_type is not None else None
    seen: dict[Any, int] = {}
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                if complete:
                    raise ValueError(
                        f"{path}:{lineno}: the last line is cut off (no newline): the file was "
                        "damaged after it was written; restore it or rerun the stage that wrote it"
                    )
                return  # a trailing line still being written
            if not line.strip():
                continue
            row = _parse(path, lineno, line)
            if record_type is None:
                yield row
                continue
            if id_field is not None and isinstance(row, dict) and id_field in row:
                first = seen.setdefault(row[id_field], lineno)
                if first != lineno:
                    raise ValueError(
                        f"{path}:{lineno}: {id_field} {row[id_field]!r} is also on line {first}: "
                        "the file holds a record twice"
                    )
            try:
                yield record_type.from_dict(row)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: not a {record_type.__name__} ({e})") from e


def read_jsonl(
    path: str | os.PathLike[str],
    record_type: type[Record] | None = None,
    missing_ok: bool = False,
    complete: bool = False,
) -> list[Any]:
    """All complete rows of `path`; `missing_ok` turns a missing file into []; `complete`: see
    `iter_jsonl`."""
    if missing_ok and not Path(path).exists():
        return []
    return list(iter_jsonl(path, record_type, complete))


class JsonlTail:
    """Incremental reader of a JSONL file another process appends to (the TUI polls with it).

    Remembers its byte offset and returns only lines completed since the last call. A file that
    was replaced (new inode) or shrank is read again from the start, and `restarted` is True
    after that call, so a caller that accumulates rows knows to drop what it had.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.lineno = 0
        self._ident: tuple[int, int] | None = None
        self._pending: list[dict[str, Any]] = []
        self.restarted = False

    def reset(self) -> None:
        self.offset, self.lineno, self._ident = 0, 0, None

    def read_new(self) -> list[dict[str, Any]]:
        """Rows completed since the last call; [] while the file does not exist.

        A corrupt complete line raises ValueError (file:line); the rows before it are returned
        by the next call and reading goes on after it.
        """
        rows, self._pending = self._pending, []
        self.restarted = False
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            self.reset()
            return rows
        with f:
            st = os.fstat(f.fileno())
            if self._ident != (st.st_dev, st.st_ino) or st.st_size < self.offset:
                self.restarted = self._ident is not None
                self.reset()
                self._ident = (st.st_dev, st.st_ino)
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return rows
        pos = 0
        for line in data[:end].split(b"\n"):
            pos += len(line) + 1
            self.lineno += 1
            if not line.strip():
                continue
            try:
                rows.append(_parse(self.path, self.lineno, line))
            except ValueError:
                self._pending, self.offset = rows, self.offset + pos
                raise
        self.offset += pos
        return rows


# --- the run directory ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunDirBusy(ValueError):
    """Another live process holds the run directory."""


_HELD: dict[Path, object] = {}  # run dirs this process holds: path -> its open lock file
_LAST_BEAT: dict[Path, float] = {}  # run dir -> when this process last refreshed its status


@contextlib.contextmanager
def _run_lock(path: Path):
    """Hold `path/.lock` (an advisory `flock`, released by the OS when the process dies, even
    by kill -9) for the duration; nested use in one process is free."""
    key = path.resolve()
    if key in _HELD:  # the outer holder in this process releases it
        yield
        return
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    f = open(path / ".lock", "a+")  # noqa: SIM115 - held open while the lock is held
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise RunDirBusy(
            f"run directory {path} is in use by another sf-mlx process (pid {holder}); "
            "wait for it to finish or stop it first"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD[key] = f
    try:
        yield
    finally:
        _HELD.pop(key)
        f.close()  # closing releases the lock


def _at(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"<run>/{name}")


@dataclass(frozen=True)
class RunDir:
    """A run directory `runs/<name>/`: named paths plus done markers, events and status.

    `writer=False`: a rank of a distributed run that reads what another rank writes; its
    done markers, events, status and lock are left to that rank (sf_mlx/distributed.py)."""

    path: Path
    writer: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def create(self, exist_ok: bool = True) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=exist_ok)
        return self

    def lock(self):
        """Context manager: this process alone writes the run directory while it is held
        (`RunDirBusy` when another live process holds it)."""
        return _run_lock(self.path) if self.writer else contextlib.nullcontext()

    def is_run(self) -> bool:
        return self.recipe.exists() or self.status.exists()

    # named paths (DESIGN.md "Stages and the run directory")
    recipe = _at("recipe.yaml")
    status = _at("status.json")
    events = _at("events.jsonl")
    base_dir = _at("base")
    problems = _at("problems.jsonl")
    samples = _at("samples.jsonl")
    reflections = _at("reflections.jsonl")
    traces = _at("traces.jsonl")
    sft_dir = _at("sft")
    eval_dir = _at("eval")
    report = _at("report.md")
    plots_dir = _at("plots")
    done_dir = _at("done")

    def grpo_dir(self, arm: str) -> Path:
        _check_name("arm", arm, allow_slash=False)
        return self.path / "grpo" / arm

    def rollouts_path(self, arm: str, step: int) -> Path:
        return self.grpo_dir(arm) / "rollouts" / f"step_{step}.jsonl"

    # done markers: written last, so a stage with a marker finished writing all its outputs
    def _done_path(self, stage: str) -> Path:
        _check_name("stage", stage, allow_slash=True)
        return self.done_dir / f"{stage}.json"

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        if not self.writer:
            return
        write_json_atomic(
            self._done_path(stage), {"stage": stage, "time": time.time(), **(info or {})}
        )

    def is_done(self, stage: str) -> bool:
        return self._done_path(stage).exists()

    def done_info(self, stage: str) -> dict[str, Any] | None:
        path = self._done_path(stage)
        return read_json(path) if path.exists() else None

    def clear_done(self, stage: str) -> None:
        if self.writer:
            self._done_path(stage).unlink(missing_ok=True)

    # events.jsonl: append-only rows {"time", "kind", ...}
    def log_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r}; expected one of {list(EVENT_KINDS)}")
        row = {"time": time.time(), "kind": kind, **fields}
        if self.writer:
            append_jsonl(self.events, [row])
        return row

    def log_metrics(self, stage: str, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(metrics) & set(_RESERVED))
        if clash:
            raise ValueError(f"metric name(s) {clash} clash with event keys {list(_RESERVED)}")
        row = self.log_event(
            "metric", stage=stage, step=step, **{k: _scalar(v) for k, v in metrics.items()}
        )
        self.heartbeat(stage, step)
        return row

    def log_progress(self, stage: str, done: int, total: int) -> dict[str, Any]:
        row = self.log_event("progress", stage=stage, done=done, total=total)
        self.heartbeat(stage, done)
        return row

    def heartbeat(self, stage: str, step: int, every: float = 2.0) -> None:
        """Refresh status.json's `step` and `updated` for the running stage, at most once per
        `every` seconds, so a reader can tell a working stage from a hung one."""
        now = time.time()
        if not self.writer or now - _LAST_BEAT.get(self.path, 0.0) < every:
            return
        status = self.read_status()
        if not status or status.get("stage") != stage or status.get("state") != "running":
            return
        _LAST_BEAT[self.path] = now
        write_json_atomic(self.status, {**status, "step": step, "updated": now})

    def log_message(self, stage: str, text: str, level: str = "info") -> dict[str, Any]:
        return self.log_event("message", stage=stage, text=text, level=level)

    def read_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = read_jsonl(self.events, missing_ok=True)
        return rows if kind is None else [r for r in rows if r.get("kind") == kind]

    # status.json: what the run is doing now
    def set_status(self, stage: str, state: str, step: int | None = None, **extra: Any) -> None:
        if state not in STATES:
            raise ValueError(f"status state {state!r}; expected one of {list(STATES)}")
        row = {"stage": stage, "state": state, "step": step, **extra}
        if not self.writer:
            return
        write_json_atomic(self.status, {**row, "pid": os.getpid(), "updated": time.time()})

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.status) if self.status.exists() else None

    def is_running(self) -> bool:
        """status says running and its process is still alive (a killed run reads False)."""
        status = self.read_status()
        if not status or status.get("state") != "running":
            return False
        pid = status.get("pid")
        return isinstance(pid, int) and _pid_alive(pid)


def _check_name(what: str, name: str, allow_slash: bool) -> None:
    parts = name.split("/") if allow_slash else [name]
    if not all(_STAGE_PART.match(p) for p in parts):
        raise ValueError(f"{what} name {name!r}: use letters, digits, _ . : - only")


def _scalar(v: Any) -> Any:
    """Metric values as JSON scalars: numpy / mlx scalars become float."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "__float__"):
        return float(v)
    raise ValueError(f"metric value {v!r} ({type(v).__name__}) is not a number")


def list_runs(runs_dir: str | os.PathLike[str]) -> list[RunDir]:
    """Run directories directly under `runs_dir` (those with recipe.yaml or status.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and RunDir(p).is_run()]
