"""Records for the trace browser, group inspector and compare screen, read from a run directory.

No Textual here: the screens call these functions from worker threads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sf_mlx.records import EvalResult, Problem, Record, Reflection, Rollout, Sample, Trace
from sf_mlx.rundir import RunDir, iter_jsonl, read_json

KINDS = ("samples", "reflections", "traces", "rollouts", "eval")
COLUMNS: dict[str, tuple[str, ...]] = {
    "samples": ("ok", "variant", "tokens", "answer", "sample"),
    "reflections": ("verdict", "agrees", "tokens", "reflection"),
    "traces": ("ends ok", "format", "attempts", "answer", "trace"),
    "rollouts": ("arm", "step", "group", "#", "reward", "adv", "tokens", "trunc", "answer"),
    "eval": ("ok", "model", "task", "answers", "reflections", "tokens", "#", "problem"),
}
# Fields the browser can filter on, per kind (a select each).
FACETS: dict[str, tuple[str, ...]] = {
    "samples": ("variant",),
    "reflections": ("verdict",),
    "traces": ("format",),
    "rollouts": ("arm", "step"),
    "eval": ("model", "task", "decoding"),
}
_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


def _ok(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


@dataclass(frozen=True, slots=True)
class Item:
    """One browsable record with its table cells, grade and filter values."""

    kind: str
    key: str
    problem_id: str
    correct: bool | None  # samples/eval: graded; reflections: verdict agrees; traces: ends correct
    facets: dict[str, str]
    cells: tuple[str, ...]
    record: Record

    def text(self) -> str:
        """The text a search looks in."""
        r = self.record
        if isinstance(r, Trace):
            body = "\n".join(s.text for s in r.segments)
        else:
            body = getattr(r, "response", None) or getattr(r, "text", None)
            body = body or getattr(r, "completion", "")
        return f"{self.key}\n{self.problem_id}\n{body}"


@dataclass
class Loaded:
    """The items of one kind plus what the detail view links to (problems, sources)."""

    kind: str
    items: list[Item]
    problems: dict[str, Problem] = field(default_factory=dict)
    sources: dict[str, Record] = field(default_factory=dict)  # sample_id / reflection_id
    errors: list[str] = field(default_factory=list)


def _sample_item(s: Sample) -> Item:
    cells = (_ok(s.correct), s.variant, str(s.num_tokens), s.extracted or "-", s.sample_id)
    return Item("samples", s.sample_id, s.problem_id, s.correct, {"variant": s.variant}, cells, s)


def _reflection_item(r: Reflection) -> Item:
    verdict = r.verdict or "none"
    cells = (verdict, _ok(r.agrees), str(r.num_tokens), r.reflection_id)
    return Item(
        "reflections", r.reflection_id, r.problem_id, r.agrees, {"verdict": verdict}, cells, r
    )


def _trace_item(t: Trace) -> Item:
    attempts = [s for s in t.segments if s.kind == "sample"]
    ends = attempts[-1].correct if attempts else None
    cells = (_ok(ends), t.format, str(len(attempts)), t.final_answer, t.trace_id)
    return Item("traces", t.trace_id, t.problem_id, ends, {"format": t.format}, cells, t)


def _rollout_item(r: Rollout) -> Item:
    key = f"{r.arm}/{r.step}/{r.group}/{r.index}"
    cells = (
        r.arm,
        str(r.step),
        str(r.group),
        str(r.index),
        f"{r.reward:.2f}",
        f"{r.advantage:+.2f}",
        str(r.num_tokens),
        "yes" if r.truncated else "",
        r.extracted or "-",
    )
    facets = {"arm": r.arm, "step": str(r.step)}
    return Item("rollouts", key, r.problem_id, r.reward > 0, facets, cells, r)


def _eval_item(e: EvalResult) -> Item:
    key = f"{e.model}/{e.task}/{e.problem_id}/{e.index}"
    cells = (
        _ok(e.correct),
        e.model,
        e.task,
        str(e.num_answers),
        str(e.num_reflections),
        str(e.num_tokens),
        str(e.index),
        e.problem_id,
    )
    budget = getattr(e, "budget", 0)
    decoding = f"budget {budget}" + (" forced" if e.budget_forced else "") if budget else "standard"
    facets = {"model": e.model, "task": e.task, "decoding": decoding}
    return Item("eval", key, e.problem_id, e.correct, facets, cells, e)


def rollout_files(run: RunDir) -> dict[str, list[tuple[int, Path]]]:
    """GRPO rollout files per arm, sorted by step."""
    root = run.path / "grpo"
    out: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return out
    for arm_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        steps = []
        for p in (arm_dir / "rollouts").glob("step_*.jsonl"):
            m = _STEP_FILE.match(p.name)
            if m:
                steps.append((int(m[1]), p))
        if steps:
            out[arm_dir.name] = sorted(steps)
    return out


def eval_files(run: RunDir) -> list[Path]:
    """Evaluation generation files (every *.jsonl under eval/)."""
    return sorted(run.eval_dir.rglob("*.jsonl")) if run.eval_dir.is_dir() else []


def kind_files(run: RunDir, kind: str) -> list[Path]:
    """The files `load_items(run, kind)` reads its records from (present or not)."""
    files = {
        "samples": [run.samples],
        "reflections": [run.reflections],
        "traces": [run.traces],
        "rollouts": [p for steps in rollout_files(run).values() for _, p in steps],
        "eval": eval_files(run),
    }
    return files[kind]


def files_signature(run: RunDir, kind: str) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of each existing file of `kind`: it changes when a record is added."""
    out = []
    for path in kind_files(run, kind):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _read(path: Path, record_type: type[Record], errors: list[str]) -> Iterable[Any]:
    """Rows of `path`; a bad file is reported in `errors` and skipped from the bad line on."""
    if not path.exists():
        return []
    out = []
    try:
        for row in iter_jsonl(path, record_type):
            out.append(row)
    except (OSError, ValueError) as e:
        errors.append(str(e))
    return out


def load_problems(run: RunDir) -> dict[str, Problem]:
    """The run's problems by id (empty when problems.jsonl is missing or unreadable)."""
    return {p.problem_id: p for p in _read(run.problems, Problem, [])}


def load_items(run: RunDir, kind: str) -> Loaded:
    """All records of `kind` (one of KINDS) with the problems and sources they link to."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}; expected one of {list(KINDS)}")
    errors: list[str] = []
    problems = {p.problem_id: p for p in _read(run.problems, Problem, errors)}
    sources: dict[str, Record] = {}
    items: list[Item] = []
    if kind in ("samples", "reflections", "traces"):
        samples = _read(run.samples, Sample, errors)
        sources.update((s.sample_id, s) for s in samples)
        if kind == "samples":
            items = [_sample_item(s) for s in samples]
    if kind in ("reflections", "traces"):
        reflections = _read(run.reflections, Reflection, errors)
        sources.update((r.reflection_id, r) for r in reflections)
        if kind == "reflections":
            items = [_reflection_item(r) for r in reflections]
    if kind == "traces":
        items = [_trace_item(t) for t in _read(run.traces, Trace, errors)]
    elif kind == "rollouts":
        for steps in rollout_files(run).values():
            for _, path in steps:
                items.extend(_rollout_item(r) for r in _read(path, Rollout, errors))
    elif kind == "eval":
        for path in eval_files(run):
            items.extend(_eval_item(e) for e in _read(path, EvalResult, errors))
    return Loaded(kind, items, problems, sources, errors)


def facet_values(items: Iterable[Item], name: str) -> list[str]:
    """Distinct values of one facet, numbers in numeric order."""
    values = {it.facets[name] for it in items if name in it.facets}
    return sorted(values, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))


def filter_items(
    items: Iterable[Item], grade: str = "all", facets: dict[str, str] | None = None, query: str = ""
) -> list[Item]:
    """Items matching grade ("all" | "correct" | "wrong"), every facet and every query word."""
    if grade not in ("all", "correct", "wrong"):
        raise ValueError(f"grade {grade!r}; expected all, correct or wrong")
    wanted = {k: v for k, v in (facets or {}).items() if v}
    words = query.lower().split()
    out = []
    for it in items:
        if grade != "all" and it.correct is not (grade == "correct"):
            continue
        if any(it.facets.get(k) != v for k, v in wanted.items()):
            continue
        if words:
            text = it.text().lower()
            if not all(w in text for w in words):
                continue
        out.append(it)
    return out


@dataclass
class Page:
    """What the browser's table shows of one kind: the first `limit` matches of the filters, with
    the problems and source records those items link to, and the facet values of the whole kind."""

    kind: str
    total: int  # records of this kind
    matches: int  # records passing the filters
    items: list[Item]
    facets: dict[str, list[str]]
    problems: dict[str, Problem] = field(default_factory=dict)
    sources: dict[str, Record] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    grade: str = "all"  # the filters this page was made with
    query: str = ""


def page_of(
    loaded: Loaded,
    grade: str = "all",
    facets: dict[str, str] | None = None,
    query: str = "",
    limit: int = 1000,
) -> Page:
    """Filter `loaded` and keep the first `limit` matches with what they link to."""
    matched = filter_items(loaded.items, grade, facets, query)
    items = matched[:limit]
    linked: set[str] = set()
    for it in items:
        r = it.record
        if isinstance(r, Trace):
            linked.update(s.source_id for s in r.segments if s.source_id)
        elif isinstance(r, Reflection):
            linked.add(r.sample_id)
    return Page(
        kind=loaded.kind,
        total=len(loaded.items),
        matches=len(matched),
        items=items,
        facets={name: facet_values(loaded.items, name) for name in FACETS[loaded.kind]},
        problems={
            it.problem_id: loaded.problems[it.problem_id]
            for it in items
            if it.problem_id in loaded.problems
        },
        sources={k: loaded.sources[k] for k in linked if k in loaded.sources},
        errors=list(loaded.errors),
        grade=grade,
        query=query,
    )


# --- GRPO groups ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """The G completions of one prompt at one GRPO step."""

    group: int
    problem_id: str
    rollouts: tuple[Rollout, ...]

    @property
    def mean_reward(self) -> float:
        return sum(r.reward for r in self.rollouts) / len(self.rollouts)

    @property
    def reward_std(self) -> float:
        m = self.mean_reward
        return math.sqrt(sum((r.reward - m) ** 2 for r in self.rollouts) / len(self.rollouts))

    @property
    def zero_std(self) -> bool:
        return len({r.reward for r in self.rollouts}) == 1

    @property
    def mean_tokens(self) -> float:
        return sum(r.num_tokens for r in self.rollouts) / len(self.rollouts)

    @property
    def truncated(self) -> int:
        return sum(r.truncated for r in self.rollouts)


def load_groups(path: Path) -> list[Group]:
    """The groups of one rollouts/step_N.jsonl file, in group order."""
    by_group: dict[int, list[Rollout]] = {}
    for r in iter_jsonl(path, Rollout):
        by_group.setdefault(r.group, []).append(r)
    return [
        Group(g, rows[0].problem_id, tuple(sorted(rows, key=lambda r: r.index)))
        for g, rows in sorted(by_group.items())
    ]


def worst_group(groups: list[Group]) -> int | None:
    """Position of the group with the lowest mean reward (the first on ties)."""
    if not groups:
        return None
    return min(range(len(groups)), key=lambda i: groups[i].mean_reward)


def next_zero_std(groups: list[Group], after: int = -1) -> int | None:
    """Position of the next zero-std group after `after`, wrapping around; None if there is none."""
    n = len(groups)
    for k in range(1, n + 1):
        i = (after + k) % n
        if groups[i].zero_std:
            return i
    return None


# --- evaluation summary ---------------------------------------------------------------------------


def read_summary(run: RunDir) -> dict[str, dict[str, dict[str, Any]]] | None:
    """eval/summary.json ({arm: {task: {accuracy, ci_low, ci_high, pass_at_k, n}}}) or None."""
    path = run.eval_dir / "summary.json"
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{arm: {{task: {{accuracy, ...}}}}}}")
    return data


def summary_tasks(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Tasks in first-seen order across arms."""
    tasks: list[str] = []
    for per_task in summary.values():
        tasks.extend(t for t in per_task if t not in tasks)
    return tasks


def partial_summary(run: RunDir) -> dict[str, dict[str, dict[str, Any]]] | None:
    """While `evaluate` runs: {arm: {task: {n, n_questions, accuracy}}} of the cells whose
    generations are written (standard decoding only), or None when none is."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in eval_files(run):
        rows = [r for r in _read(path, EvalResult, []) if not getattr(r, "budget", 0)]
        if rows:
            out.setdefault(path.parent.name, {})[path.stem] = {
                "n": len(rows),
                "n_questions": len({r.problem_id for r in rows}),
                "accuracy": sum(r.correct for r in rows) / len(rows),
            }
    return out or None


HARD_CELLS = ("countdown-4", "countdown-5", "countdown-6")
HEADLINE_ARMS = ("sft_grpo", "rl_only", "star_grpo", "base")


def headline(summary: dict[str, dict[str, dict[str, Any]]], run: RunDir | None = None) -> str:
    """'mean CD 4-6: sft_grpo 4.4 [2.9,6.0] · rl_only 2.8 [...] · base 1.0 [...]' (accuracy %,
    the paper's headline cells; with `run`, a 95% interval from resampling each cell's
    questions in its saved generations), or the first task's accuracy per arm and its interval
    when the run has no 4-6 cells."""
    arms = [a for a in HEADLINE_ARMS if a in summary] or list(summary)
    cells = [c for c in HARD_CELLS if all(c in summary[a] for a in arms)]
    label = "mean CD 4-6" if len(cells) == 3 else " + ".join(cells)
    if not cells:
        tasks = summary_tasks(summary)
        if not tasks:
            return ""
        cells, label = tasks[:1], tasks[0]
    parts = []
    for arm in arms:
        values = [summary[arm][c].get("accuracy") for c in cells]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        text = f"{arm} {100 * sum(values) / len(values):.1f}"
        interval = _mean_interval(run, arm, cells) if run is not None else None
        if interval is None and len(cells) == 1:
            c = summary[arm][cells[0]]
            low, high = c.get("ci_low"), c.get("ci_high")
            if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                interval = (low, high)
        if interval is not None:
            text += f" [{100 * interval[0]:.1f},{100 * interval[1]:.1f}]"
        parts.append(text)
    return f"{label}: " + " · ".join(parts) if parts else ""


def _mean_interval(
    run: RunDir, arm: str, cells: list[str], draws: int = 400
) -> tuple[float, float] | None:
    """95% interval of the mean over `cells` of each cell's question accuracy, resampling the
    questions of every cell (standard decoding rows of eval/<arm>/<cell>.jsonl)."""
    import random

    per_cell = []
    for cell in cells:
        by_q: dict[str, list[bool]] = {}
        for r in _read(run.eval_dir / arm / f"{cell}.jsonl", EvalResult, []):
            if not getattr(r, "budget", 0):
                by_q.setdefault(r.problem_id, []).append(r.correct)
        if not by_q:
            return None
        per_cell.append([sum(v) / len(v) for v in by_q.values()])
    rng = random.Random(0)
    means = sorted(
        sum(sum(rng.choices(qs, k=len(qs))) / len(qs) for qs in per_cell) / len(per_cell)
        for _ in range(draws)
    )
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]
