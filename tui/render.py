"""Rich text for records: tags highlighted, trace segments coloured by kind, source records."""

from __future__ import annotations

import re

from rich.text import Text

from sf_mlx.records import EvalResult, Problem, Record, Reflection, Rollout, Sample, Segment, Trace

SEGMENT_STYLES = {"sample": "cyan", "reflect": "magenta", "glue": "yellow", "answer": "bold green"}
_TAG = re.compile(r"</?(think|sample|reflect|answer|verdict)>", re.IGNORECASE)
_VERDICT = re.compile(r"<verdict>\s*(\w+)\s*</verdict>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def grade_mark(correct: bool | None) -> Text:
    if correct is None:
        return Text("")
    return Text("✓ correct", "bold green") if correct else Text("✗ wrong", "bold red")


def highlight(text: str, base: str = "") -> Text:
    """`text` with tags dimmed, verdicts coloured by their value and answers in bold."""
    out = Text(text, style=base)
    for m in _ANSWER.finditer(text):
        out.stylize("bold", m.start(1), m.end(1))
    for m in _TAG.finditer(text):
        out.stylize("dim", m.start(), m.end())
    for m in _VERDICT.finditer(text):
        good = m[1].lower() == "correct"
        out.stylize("bold reverse green" if good else "bold reverse red", m.start(1), m.end(1))
    return out


def segment_text(index: int, seg: Segment) -> Text:
    """One trace segment: a coloured header line (kind, grade, source) then its text."""
    style = SEGMENT_STYLES.get(seg.kind, "")
    head = Text.assemble((f"{index:>2} {seg.kind:<7}", f"bold {style}"), " ")
    if seg.kind in ("sample", "answer"):
        head.append_text(grade_mark(seg.correct))
    elif seg.kind == "glue" and seg.correct is not None:
        head.append("after a " + ("correct" if seg.correct else "wrong") + " attempt", "dim")
    if seg.source_id:
        head.append(f"  <- {seg.source_id}", "dim")
    return Text("\n").join([head, highlight(seg.text, style)])


def _field_line(pairs: list[tuple[str, object]]) -> Text:
    out = Text()
    for name, value in pairs:
        out.append(f"{name} ", "dim")
        out.append(f"{value}  ", "bold")
    return out


def record_header(record: Record) -> Text:
    """The id line and key fields of any browsable record."""
    if isinstance(record, Sample):
        fields = [("variant", record.variant), ("tokens", record.num_tokens)]
        fields += [("finish", record.finish_reason), ("answer", record.extracted)]
        ident, grade = record.sample_id, record.correct
    elif isinstance(record, Reflection):
        fields = [("verdict", record.verdict), ("agrees", record.agrees)]
        fields += [("tokens", record.num_tokens), ("sample", record.sample_id)]
        ident, grade = record.reflection_id, None
    elif isinstance(record, Trace):
        fields = [("format", record.format), ("segments", len(record.segments))]
        fields += [("final answer", record.final_answer)]
        ident, grade = record.trace_id, None
    elif isinstance(record, Rollout):
        fields = [("arm", record.arm), ("step", record.step), ("group", record.group)]
        fields += [("reward", f"{record.reward:.2f}"), ("advantage", f"{record.advantage:+.3f}")]
        fields += [("tokens", record.num_tokens), ("truncated", record.truncated)]
        fields += [("answer", record.extracted)]
        ident, grade = f"{record.problem_id} #{record.index}", None
    elif isinstance(record, EvalResult):
        fields = [("model", record.model), ("task", record.task), ("tokens", record.num_tokens)]
        fields += [("answers", record.num_answers), ("reflections", record.num_reflections)]
        fields += [("budget", getattr(record, "budget", 0)), ("forced", record.budget_forced)]
        fields += [("answer", record.extracted)]
        ident, grade = f"{record.problem_id} #{record.index}", record.correct
    else:
        return Text(type(record).__name__, "bold")
    head = Text(ident, "bold underline")
    if grade is not None:
        head.append("  ").append_text(grade_mark(grade))
    return Text("\n").join([head, _field_line(fields)])


def record_body(record: Record) -> Text:
    """The generated text of a record (a trace's segments, coloured, one after another)."""
    if isinstance(record, Trace):
        return Text("\n\n").join(segment_text(i, s) for i, s in enumerate(record.segments))
    for name in ("response", "text", "completion"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            return highlight(value)
    return Text("")


def record_detail(record: Record, problem: Problem | None = None) -> Text:
    """Header, the problem's question (when known) and the body of one record."""
    parts = [record_header(record)]
    if problem is not None:
        parts.append(Text.assemble(("question ", "dim"), (problem.question, "italic")))
    parts.append(record_body(record))
    return Text("\n\n").join(parts)
