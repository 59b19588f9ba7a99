"""Prompt wording: the four sampling variants and the reflection prompt (PAPER.md stages 2 and 4).

Variant instructions are added to the plain question only when sampling; SFT and GRPO use the
plain question. The built-in base model's corpus is written against exactly these strings.
"""

from __future__ import annotations

import re

VARIANTS: dict[str, str] = {
    "original": "Think step by step.",
    "plan_and_execute": "First write a short high-level plan, then carry it out step by step.",
    "alternatively": (
        'Find several candidate answers, separate them with "Alternatively,", '
        "and discuss each one before you choose."
    ),
    "rephrase": ('Begin with "Rewritten Question:" and restate only what matters, then solve it.'),
}

REFLECTION_INSTRUCTION = (
    "Check the attempt below step by step. End with <verdict>Correct</verdict> "
    "or <verdict>Incorrect</verdict>."
)


def variant_prompt(question: str, variant: str) -> str:
    """The user turn for sampling: the plain question plus the variant's instruction."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown prompt variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return f"{question}\n{VARIANTS[variant]}"


def reflection_prompt(question: str, attempt: str) -> str:
    """The user turn asking the model to check one of its own attempts."""
    return f"{REFLECTION_INSTRUCTION}\n\nQuestion: {question}\n\nAttempt:\n{attempt.strip()}"


_VERDICT_RE = re.compile(r"<verdict>(.*?)</verdict>", re.IGNORECASE | re.DOTALL)


def parse_verdict(reflection: str) -> str | None:
    """The FIRST `<verdict>` tag (case-insensitive) as "correct" / "incorrect"; None otherwise.

    As in the released SkillFactory script, only the first tag counts, even when it holds
    something else (`<verdict>maybe</verdict>` gives None).
    """
    m = _VERDICT_RE.search(reflection)
    if not m:
        return None
    verdict = m.group(1).strip().lower()
    return verdict if verdict in ("correct", "incorrect") else None
