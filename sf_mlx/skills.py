"""Skill usage in a response (PAPER.md stage 8): answer tags, sample / reflect blocks, and how
well each reflection's verdict matches the checker's grade of the sample it follows.

Pure functions, stdlib only (the TUI and the report use them too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sf_mlx.prompts import parse_verdict
from sf_mlx.tasks import count_answers, extract_answer

_PAIR_RE = re.compile(
    r"<sample>(.*?)</sample>\s*<reflect>(.*?)</reflect>", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class SkillUse:
    answers: int  # <answer> blocks
    samples: int  # <sample> blocks
    reflections: int  # <reflect> blocks
    verdicts: tuple[tuple[str | None, bool], ...]  # (verdict given, checker's grade of its sample)


def skill_use(response: str, check: Callable[[str | None], bool]) -> SkillUse:
    """Count the skills in one response; `check(answer)` grades a sample's extracted answer."""
    pairs = [
        (parse_verdict(reflect), bool(check(extract_answer(sample))))
        for sample, reflect in _PAIR_RE.findall(response)
    ]
    lower = response.lower()
    return SkillUse(
        answers=count_answers(response),
        samples=lower.count("<sample>"),
        reflections=lower.count("<reflect>"),
        verdicts=tuple(pairs),
    )


def verdict_f1(pairs: Iterable[tuple[str | None, bool]]) -> dict[str, float | None]:
    """Per-class F1 of verdicts against grades; an unparsed verdict counts as a miss for its
    true class. None when a class never occurs."""
    pairs = list(pairs)
    out: dict[str, float | None] = {}
    for cls, name in ((True, "correct"), (False, "incorrect")):
        tp = sum(1 for v, g in pairs if g == cls and v == name)
        fp = sum(1 for v, g in pairs if g != cls and v == name)
        fn = sum(1 for v, g in pairs if g == cls and v != name)
        out[name] = None if tp + fn == 0 else (2 * tp / (2 * tp + fp + fn))
    return out
