"""The records stages exchange through the run directory: frozen dataclasses, stdlib only.

Every record has `to_dict()` / `from_dict()` and is stored as one JSON object per line.
Records link to each other by ids (`problem_id`, `sample_id`, `reflection_id`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """Mixin: dict round trip that ignores nothing silently (unknown keys are an error).
    `ID_FIELD`: the field no two records of one file share (None: no such field)."""

    ID_FIELD: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; expected {sorted(names)}"
            )
        return cls(**d)


def to_dicts(records: list[Record]) -> list[dict[str, Any]]:
    """Records as plain dicts (what JSON and `mx.distributed` gathers carry)."""
    return [r.to_dict() for r in records]


@dataclass(frozen=True)
class Problem(Record):
    """One task instance. `question` is the plain question (the SFT / RL user turn)."""

    ID_FIELD: ClassVar[str | None] = "problem_id"

    problem_id: str  # stable, e.g. "countdown-3/s0/00017"
    task: str  # task name from sf_mlx.tasks, e.g. "countdown", "multiplication"
    question: str
    # task inputs, e.g. {"numbers": [..], "target": 22}
    data: dict[str, Any] = field(default_factory=dict)
    solution: str = ""  # a reference solution (for Countdown an expression that reaches the target)
    # which pool of a run it belongs to: "sft", "rl", or "eval/<variant>" (e.g. "eval/countdown-4")
    split: str = ""


VARIANTS = ("original", "plan_and_execute", "alternatively", "rephrase")
FINISH_REASONS = ("stop", "length")
VERDICTS = ("correct", "incorrect")  # a parsed <verdict>; None when the reflection has none
SEGMENT_KINDS = ("sample", "reflect", "glue", "answer")


def _check_choice(cls: type, name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{cls.__name__}.{name}={value!r}; expected one of {list(allowed)}")


@dataclass(frozen=True)
class Sample(Record):
    """One attempt by the model at a problem under one prompt variant, graded by the checker."""

    ID_FIELD: ClassVar[str | None] = "sample_id"

    sample_id: str  # e.g. "countdown-3/s0/00017/original/0"
    problem_id: str
    variant: str  # prompt variant, one of VARIANTS (not enforced: ablations may add their own)
    index: int  # sample number within problem x variant
    response: str
    extracted: str | None  # the last <answer> content; None when there is none
    correct: bool
    num_tokens: int
    finish_reason: str  # "stop" | "length"
    seed: int

    def __post_init__(self) -> None:
        _check_choice(Sample, "finish_reason", self.finish_reason, FINISH_REASONS)


@dataclass(frozen=True)
class Reflection(Record):
    """The model's check of one sample, ending in <verdict>Correct/Incorrect</verdict>."""

    ID_FIELD: ClassVar[str | None] = "reflection_id"

    reflection_id: str  # e.g. sample_id + "/r0"
    sample_id: str
    problem_id: str
    index: int  # reflection number within the sample
    text: str
    verdict: str | None  # "correct" | "incorrect" | None when unparsed
    agrees: bool  # verdict matches the sample's grade (False when unparsed)
    num_tokens: int

    def __post_init__(self) -> None:
        _check_choice(Reflection, "verdict", self.verdict, (*VERDICTS, None))


@dataclass(frozen=True)
class Segment(Record):
    """One piece of a silver trace, linked to the record it was copied from."""

    kind: str  # one of SEGMENT_KINDS
    text: str
    # sample_id (sample, answer) / reflection_id (reflect); None for glue
    source_id: str | None = None
    correct: bool | None = None  # sample: its grade; glue: the verdict it follows; else None

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"Segment.kind={self.kind!r}; expected one of {list(SEGMENT_KINDS)}")


@dataclass(frozen=True)
class Trace(Record):
    """A silver trace: samples, reflections and glue phrases arranged to end correct."""

    ID_FIELD: ClassVar[str | None] = "trace_id"

    trace_id: str
    problem_id: str
    format: str  # rearrangement format, e.g. "*C_full"
    segments: tuple[Segment, ...]
    final_answer: str
    question: str

    def __post_init__(self) -> None:
        segments = tuple(self.segments)
        for i, s in enumerate(segments):
            if not isinstance(s, Segment):
                raise ValueError(f"Trace {self.trace_id}: segments[{i}] is {type(s).__name__}")
        object.__setattr__(self, "segments", segments)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["segments"] = [s.to_dict() for s in self.segments]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        segments = tuple(
            s if isinstance(s, Segment) else Segment.from_dict(s) for s in d.get("segments", ())
        )
        return super().from_dict({**d, "segments": segments})


@dataclass(frozen=True)
class Rollout(Record):
    """One GRPO completion with its reward and group-normalised advantage."""

    step: int
    group: int  # prompt index within the step
    problem_id: str
    index: int  # completion index within the group
    completion: str
    reward: float
    advantage: float
    extracted: str | None
    num_tokens: int
    truncated: bool
    arm: str  # e.g. "sft_grpo", "rl_only"


@dataclass(frozen=True)
class EvalResult(Record):
    """One evaluation generation of one model (arm) on one problem."""

    model: str  # arm or label, e.g. "base", "sft_grpo"
    task: str  # task variant, e.g. "countdown-4"
    problem_id: str
    index: int  # sample number within the question
    response: str
    extracted: str | None
    correct: bool
    num_tokens: int
    num_answers: int  # <answer> tags in the response (attempts)
    num_reflections: int  # <reflect> blocks in the response
    budget_forced: bool  # the response was extended by budget forcing
    budget: int = 0  # 0: standard decoding; else the budget-forcing comparison's token budget


RECORD_TYPES: dict[str, type[Record]] = {
    c.__name__: c for c in (Problem, Sample, Reflection, Segment, Trace, Rollout, EvalResult)
}
