"""Rich text for records: tags highlighted, trace segments coloured by kind, source records."""

from __future__ import annotations

import re
from collections.abc import Callable

from rich.text import Text

from sf_mlx.records import EvalResult, Problem, Record, Reflection, Rollout, Sample, Segment, Trace
from sf_mlx.tasks import extract_answer

SEGMENT_STYLES = {"sample": "cyan", "reflect": "magenta", "glue": "yellow", "answer": "bold green"}
_TAG = re.compile(r"</?(think|sample|reflect|answer|verdict)>", re.IGNORECASE)
_VERDICT = re.compile(r"<verdict>\s*(\w+)\s*</verdict>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def grade_mark(correct: bool | None) -> Text:
    if correct is None:
        return Text("")
    return Text("✓ correct", "bold green") if correct else Text("✗ wrong", "bold red")


VERDICT_STYLES = {True: "bold reverse green", False: "bold reverse red", None: "bold reverse"}
_PAIR = re.compile(r"<sample>(.*?)</sample>\s*<reflect>(.*?)</reflect>", re.IGNORECASE | re.DOTALL)
Check = Callable[[str | None], bool]  # grades one extracted answer


def answer_check(problem: Problem | None) -> Check | None:
    """The task's checker for `problem`'s answers (None without a problem or a known task)."""
    if problem is None:
        return None
    from sf_mlx.tasks import get_task

    try:
        task = get_task(problem.task)
    except (KeyError, ValueError):
        return None
    return lambda answer: bool(task.check(problem, answer))


def highlight(
    text: str, base: str = "", check: Check | None = None, verdict_right: bool | None = None
) -> Text:
    """`text` with tags dimmed and answers in bold. A verdict is coloured by whether it is
    RIGHT, never by what it says: with `check`, each <sample>'s answer is graded and the verdict
    of the <reflect> after it is green when it matches that grade, red when it does not;
    `verdict_right` colours the verdicts of a text that is one reflection; otherwise verdicts
    are shown uncoloured."""
    out = Text(text, style=base)
    for m in _ANSWER.finditer(text):
        out.stylize("bold", m.start(1), m.end(1))
    for m in _TAG.finditer(text):
        out.stylize("dim", m.start(), m.end())
    right: dict[int, bool] = {}  # verdict start -> whether it is right
    if check is not None:
        for pair in _PAIR.finditer(text):
            graded = check(extract_answer(pair[1]))
            for v in _VERDICT.finditer(text, pair.start(2), pair.end(2)):
                right[v.start(1)] = (v[1].lower() == "correct") == graded
    for m in _VERDICT.finditer(text):
        out.stylize(VERDICT_STYLES[right.get(m.start(1), verdict_right)], m.start(1), m.end(1))
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


def record_body(record: Record, problem: Problem | None = None) -> Text:
    """The generated text of a record (a trace's segments, coloured, one after another); with
    its problem, verdicts are coloured by whether they are right."""
    if isinstance(record, Trace):
        return Text("\n\n").join(segment_text(i, s) for i, s in enumerate(record.segments))
    if isinstance(record, Reflection):
        return highlight(record.text, verdict_right=record.agrees)
    for name in ("response", "text", "completion"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            return highlight(value, check=answer_check(problem))
    return Text("")


def record_detail(record: Record, problem: Problem | None = None) -> Text:
    """Header, the problem's question (when known) and the body of one record."""
    parts = [record_header(record)]
    if problem is not None:
        parts.append(Text.assemble(("question ", "dim"), (problem.question, "italic")))
    parts.append(record_body(record, problem))
    return Text("\n\n").join(parts)
