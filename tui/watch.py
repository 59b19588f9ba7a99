"""Live state of one run, read incrementally from status.json, events.jsonl and done markers.

No Textual here: a `RunWatch` is polled from a worker thread and returns a frozen `Snapshot`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sf_mlx.metrics import add_point, is_metric, metric
from sf_mlx.rundir import JsonlTail, RunDir

# The pipeline's stage order (sf_mlx.pipeline.STAGES, which the TUI may not import).
STAGE_ORDER = (
    "problems",
    "base",
    "sample",
    "reflect",
    "rearrange",
    "sft",
    "star",
    "grpo/sft_grpo",
    "grpo/rl_only",
    "grpo/star_grpo",
    "evaluate",
    "report",
)
ARM_STAGES = {"star": "star_grpo", "grpo/sft_grpo": "sft_grpo", "grpo/rl_only": "rl_only"}
ARM_STAGES["grpo/star_grpo"] = "star_grpo"
LOG_TAIL = 400  # event lines kept for the log panel
_localtime = time.localtime  # log clock times; tests pin it to gmtime
_NON_METRIC = ("time", "kind", "stage", "step")


@dataclass(frozen=True)
class RecipeInfo:
    """What the runs list shows about a run's recipe."""

    name: str
    description: str = ""
    model: str = ""
    arms: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageView:
    """One pipeline stage as the live screen shows it."""

    name: str
    state: str  # pending | running | done | failed | stopped
    seconds: float | None = None  # duration when done, elapsed so far when running
    done: int | None = None
    total: int | None = None
    eta: float | None = None  # seconds left, from the rate of recent progress events


@dataclass(frozen=True)
class Snapshot:
    """Everything the runs list and the live screen show about one run at one moment."""

    name: str
    path: Path
    recipe: RecipeInfo
    status: dict[str, Any] | None
    alive: bool  # status says running and its process exists
    stages: tuple[StageView, ...]
    series: dict[str, dict[str, tuple[tuple[int, float], ...]]]  # stage -> metric -> (step, v)
    log_tail: tuple[str, ...]
    log_total: int  # event lines seen so far (the tail holds the last LOG_TAIL of them)
    first_time: float | None
    last_time: float | None
    hints: tuple[str, ...]
    errors: tuple[str, ...] = ()
    now: float = 0.0
    headline: str = ""  # the evaluation's headline numbers once `evaluate` is done
    run_eta: float | None = None  # seconds left in the whole run (see `run_eta`)
    unestimated: tuple[str, ...] = ()  # stages still to run whose time has no estimate yet

    @property
    def state(self) -> str:
        if not self.status:
            return "pending"
        state = str(self.status.get("state", "?"))
        return "stopped" if state == "running" and not self.alive else state

    @property
    def elapsed(self) -> float | None:
        if self.first_time is None:
            return None
        end = self.now if self.state == "running" else (self.last_time or self.first_time)
        return max(0.0, end - self.first_time)

    def last(self, stage: str, name: str) -> float | None:
        points = self.series.get(stage, {}).get(name)
        return points[-1][1] if points else None


def fmt_seconds(seconds: float | None) -> str:
    """'1h02m', '3m05s', '12s' or '-'."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def read_recipe_info(run: RunDir) -> RecipeInfo:
    """Name, description, model and arms of the resolved recipe (ValueError if unreadable)."""
    import yaml  # a core dependency; read here so importing tui stays cheap

    if not run.recipe.exists():
        return RecipeInfo(name="?")
    text = run.recipe.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{run.recipe}: invalid YAML ({' '.join(str(e).split())})") from e
    source = ""
    for line in text.splitlines():
        if line.startswith("# resolved from "):
            source = Path(line.removeprefix("# resolved from ").strip()).stem
    section = data.get("run") or {}
    arms = tuple((data.get("evaluate") or {}).get("arms") or ())
    return RecipeInfo(
        name=source or section.get("name") or run.name,
        description=str(section.get("description") or ""),
        model=str(section.get("model") or ""),
        arms=arms,
    )


def stage_plan(recipe: RecipeInfo, seen: list[str]) -> list[str]:
    """Stages to show: the pipeline's, minus arms the recipe skips, plus any stage seen."""
    plan = [
        s
        for s in STAGE_ORDER
        if s not in ARM_STAGES or not recipe.arms or ARM_STAGES[s] in recipe.arms
    ]
    return plan + [s for s in seen if s not in plan]


def format_event(row: dict[str, Any]) -> str:
    """One event row as a log line: 'HH:MM:SS kind stage details'."""
    when = time.strftime("%H:%M:%S", _localtime(float(row.get("time", 0))))
    kind, stage = row.get("kind", "?"), row.get("stage", "")
    if kind == "metric":
        parts = []
        for k, v in row.items():
            if k in _NON_METRIC:
                continue
            if is_metric(k) and isinstance(v, (int, float)):
                parts.append(f"{metric(k).label}={metric(k).format(v)}")
            else:
                parts.append(f"{k}={v}")
        return f"{when} metric {stage} step {row.get('step')}: " + ", ".join(parts)
    if kind == "progress":
        return f"{when} progress {stage} {row.get('done')}/{row.get('total')}"
    if kind == "stage_end":
        return f"{when} end {stage} after {fmt_seconds(row.get('seconds'))}"
    if kind == "stage_start":
        return f"{when} start {stage}"
    if kind == "message":
        level = row.get("level", "info")
        return f"{when} {level} {stage}: {row.get('text', '')}"
    return f"{when} {kind} {stage}"


# The arms whose SFT data taught reflection: only for them is "no reflections" a problem.
REFLECTING_ARMS = ("grpo/sft_grpo",)


def health_hints(
    series: dict[str, dict[str, tuple[tuple[int, float], ...]]],
    status: dict[str, Any] | None,
    alive: bool,
    now: float,
) -> list[str]:
    """Plain-words warnings about the running stage's latest metrics and the run's process.

    Metric hints are about the stage status.json says is running (or was, when its process is
    gone): a finished arm's last numbers are history, not a problem to act on."""
    hints: list[str] = []
    active = status.get("stage") if status and status.get("state") == "running" else None
    for stage, metrics in series.items():
        if stage != active:
            continue

        def last(name: str, metrics: dict = metrics) -> float | None:
            points = metrics.get(name)
            return points[-1][1] if points else None

        zero_std = last("grpo/frac_reward_zero_std")
        if zero_std is not None and zero_std >= 0.5:
            hints.append(
                f"{stage}: {zero_std:.0%} of groups had zero reward std: no learning signal"
            )
        trunc = last("grpo/truncation_rate")
        if trunc is not None and trunc >= 0.2:
            hints.append(f"{stage}: {trunc:.0%} of responses truncated: raise grpo.max_tokens")
        acc = metrics.get("grpo/accuracy", ())
        if len(acc) >= 3 and all(v == 0 for _, v in acc[-3:]):
            hints.append(f"{stage}: accuracy 0 for the last {len(acc[-3:])} steps: no reward")
        refl = last("grpo/reflections_per_response")
        if refl is not None and refl < 0.05 and stage in REFLECTING_ARMS:
            hints.append(f"{stage}: {refl:.2f} reflections per response: the skill is not used")
        for name in ("sft/train_loss", "grpo/loss"):
            value = last(name)
            if value is not None and value != value:  # NaN
                hints.append(f"{stage}: {name} is NaN")
    if status and status.get("state") == "running" and not alive:
        hints.append(f"status says running but process {status.get('pid')} is gone: run stopped")
    elif status and status.get("state") == "failed":
        hints.append(f"stage {status.get('stage')} failed: see the log and the run's output")
    elif status and alive and isinstance(status.get("updated"), (int, float)):
        if now - status["updated"] > 600:
            hints.append(f"no status update for {fmt_seconds(now - status['updated'])}")
    return hints


def stage_eta(started: float | None, points: list[tuple[float, int]], total: int) -> float | None:
    """Seconds left: at the rate of the recent progress points when they span a second or more,
    else (one point, or a burst logged at one moment, as `evaluate` reports finished cells) at
    the rate since the stage started, when its first point came after the start."""
    (t0, d0), (t1, d1) = points[0], points[-1]
    if t1 - t0 >= 1.0 and d1 > d0:
        return (total - d1) * (t1 - t0) / (d1 - d0)
    if started is not None and t0 - started > 2.0 and d1 > 0:
        return (total - d1) * (t1 - started) / d1
    return None


QUICK_STAGES = ("problems", "base", "rearrange", "report")  # seconds each


def run_eta(stages: list[StageView]) -> tuple[float | None, list[str]]:
    """(seconds left in the whole run, stages left out of that sum for lack of an estimate).

    The running stage counts with its own ETA; a GRPO arm still to run counts with the mean
    time of the arms already done (every arm runs the same steps); any other stage still to run
    has no estimate until it starts, except the few-second ones (QUICK_STAGES), counted as 0.
    None when nothing is left."""
    arms_done = [s.seconds for s in stages if s.name.startswith("grpo/") and s.state == "done"]
    arm_time = sum(t for t in arms_done if t) / len(arms_done) if arms_done else None
    total, unknown, left = 0.0, [], False
    for s in stages:
        if s.state == "running":
            left = True
            if s.eta is None:
                unknown.append(s.name)
            else:
                total += s.eta
        elif s.state in ("pending", "stopped"):
            left = True
            if s.name.startswith("grpo/") and arm_time is not None:
                total += arm_time
            elif s.name not in QUICK_STAGES:
                unknown.append(s.name)
    return (total if left else None), unknown


@dataclass
class _StageAcc:
    started: float | None = None
    seconds: float | None = None
    ended: bool = False
    progress: deque = field(default_factory=lambda: deque(maxlen=20))  # (time, done)
    total: int | None = None


class RunWatch:
    """Polls one run directory; only the rows appended since the last poll are parsed."""

    def __init__(self, run: RunDir, clock: Callable[[], float] = time.time) -> None:
        self.run = run
        self.clock = clock
        self._lock = threading.Lock()
        self._tail = JsonlTail(run.events)
        self._recipe: RecipeInfo | None = None
        self._recipe_mtime: float | None = None
        self._headline = ("", None)  # (text, summary.json mtime)
        self._clear()

    def _clear(self) -> None:
        self._stages: dict[str, _StageAcc] = {}
        self._series: dict[str, dict[str, list[tuple[int, float]]]] = {}
        self._log: deque[str] = deque(maxlen=LOG_TAIL)
        self._log_total = 0
        self._first: float | None = None
        self._last: float | None = None

    def poll(self) -> Snapshot:
        """Read what changed and return the whole state (thread-safe; errors are reported)."""
        with self._lock:
            errors: list[str] = []
            try:
                rows = self._tail.read_new()
            except ValueError as e:  # a corrupt line: say so; the next poll reads on after it
                rows = []
                errors.append(str(e))
            if self._tail.restarted:
                self._clear()
            for row in rows:
                try:
                    self._add(row)
                except (TypeError, ValueError) as e:  # a row of the wrong shape: say so, go on
                    errors.append(f"{self.run.events}: bad event {str(row)[:120]} ({e})")
            recipe = self._read_recipe(errors)
            status = self._read_status(errors)
            return self._snapshot(recipe, status, errors)

    def _read_recipe(self, errors: list[str]) -> RecipeInfo:
        try:
            mtime = self.run.recipe.stat().st_mtime if self.run.recipe.exists() else None
            if self._recipe is None or mtime != self._recipe_mtime:
                self._recipe, self._recipe_mtime = read_recipe_info(self.run), mtime
        except (OSError, ValueError) as e:
            errors.append(str(e))
            self._recipe = RecipeInfo(name=self.run.name)
        return self._recipe

    def _read_status(self, errors: list[str]) -> dict[str, Any] | None:
        try:
            return self.run.read_status()
        except (OSError, ValueError) as e:
            errors.append(str(e))
            return None

    def _add(self, row: dict[str, Any]) -> None:
        t = float(row.get("time") or 0.0)
        self._first = t if self._first is None else min(self._first, t)
        self._last = t if self._last is None else max(self._last, t)
        kind, stage = row.get("kind"), str(row.get("stage", ""))
        acc = self._stages.setdefault(stage, _StageAcc())
        if kind == "stage_start":
            acc.started, acc.ended, acc.seconds, acc.total = t, False, None, None
            acc.progress.clear()
        elif kind == "stage_end":
            seconds = row.get("seconds")
            acc.ended, acc.seconds = True, None if seconds is None else float(seconds)
        elif kind == "progress":
            acc.progress.append((t, int(row.get("done") or 0)))
            acc.total = None if row.get("total") is None else int(row["total"])
        elif kind == "metric":
            step = int(row.get("step") or 0)
            per_stage = self._series.setdefault(stage, {})
            for k, v in row.items():
                if k not in _NON_METRIC and isinstance(v, (int, float)) and not isinstance(v, bool):
                    add_point(per_stage.setdefault(k, []), step, float(v))
        if kind != "progress":
            self._log.append(format_event(row))
            self._log_total += 1

    def _done_stages(self) -> set[str]:
        root = self.run.done_dir
        if not root.is_dir():
            return set()
        return {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json")}

    def _snapshot(
        self, recipe: RecipeInfo, status: dict[str, Any] | None, errors: list[str]
    ) -> Snapshot:
        now = self.clock()
        alive = self.run.is_running() if status and status.get("state") == "running" else False
        done = self._done_stages()
        current = status.get("stage") if status else None
        seen = [s for s in self._stages if s] + sorted(done)
        stages = []
        for name in stage_plan(recipe, seen):
            acc = self._stages.get(name, _StageAcc())
            stages.append(self._stage_view(name, acc, name in done, current, status, alive, now))
        series = {s: {k: tuple(v) for k, v in m.items()} for s, m in self._series.items()}
        eta, unestimated = run_eta(stages) if alive else (None, [])
        return Snapshot(
            name=self.run.name,
            path=self.run.path,
            recipe=recipe,
            status=status,
            alive=alive,
            stages=tuple(stages),
            series=series,
            log_tail=tuple(self._log),
            log_total=self._log_total,
            first_time=self._first,
            last_time=self._last,
            hints=tuple(health_hints(series, status, alive, now)),
            errors=tuple(errors),
            now=now,
            headline=self._read_headline(errors) if "evaluate" in done else "",
            run_eta=eta,
            unestimated=tuple(unestimated),
        )

    def _read_headline(self, errors: list[str]) -> str:
        from tui.load import headline, read_summary

        path = self.run.eval_dir / "summary.json"
        try:
            mtime = path.stat().st_mtime_ns
            if mtime != self._headline[1]:
                summary = read_summary(self.run)
                self._headline = (headline(summary, self.run) if summary else "", mtime)
        except (OSError, ValueError) as e:
            errors.append(str(e))
        return self._headline[0]

    @staticmethod
    def _stage_view(
        name: str,
        acc: _StageAcc,
        done: bool,
        current: str | None,
        status: dict[str, Any] | None,
        alive: bool,
        now: float,
    ) -> StageView:
        progress = acc.progress
        last_done = progress[-1][1] if progress else None
        if done:
            state = "done"
        elif name == current and status:
            state = str(status.get("state"))
            state = "stopped" if state == "running" and not alive else state
        elif acc.started is not None and not acc.ended:
            state = "stopped"
        else:
            state = "pending"
        if state == "running" and acc.started is not None:
            seconds = now - acc.started
        else:
            seconds = acc.seconds
        eta = None
        if state == "running" and progress and acc.total:
            eta = stage_eta(acc.started, list(progress), acc.total)
        return StageView(name, state, seconds, last_done, acc.total, eta)
