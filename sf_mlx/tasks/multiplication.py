"""Long multiplication (an out-of-domain task): a d-digit by d-digit product, d = 2..5, or a
d-digit number by a shorter one (`b_digits`)."""

from __future__ import annotations

import random
import re

from sf_mlx.records import Problem
from sf_mlx.tasks.base import TaskSpec

NAME = "multiplication"
MIN_DIGITS, MAX_DIGITS = 2, 5
DESCRIBE_PARAMS = {
    "digits": "digits of each factor, 2-5 (default 2)",
    "b_digits": "digits of the second factor, 1..digits (default: digits)",
}

# The integer: plain, or grouped in thousands with commas or spaces ("1,234,567" / "1 234 567").
# Character classes spell [0-9] out: `\d` would also match '٣' or '３'.
_NUMBER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,3}(?: [0-9]{3})+|[0-9]+)"
_TIMES = r"[x×*X]"
_ANSWER_RE = re.compile(
    rf"(?:(?P<a>{_NUMBER})\s*{_TIMES}\s*(?P<b>{_NUMBER})\s*)?(?:=\s*)?(?P<n>{_NUMBER})"
)
MAX_ANSWER_CHARS = 200


def question(a: int, b: int) -> str:
    """The plain user prompt."""
    return f"What is {a} x {b}? Give your final answer in <answer> </answer> tags."


def _parse_number(text: str) -> int:
    return int(re.sub(r"[, ]", "", text))


def check_answer(answer: str | None, a: int, b: int) -> bool:
    """`answer` is a*b: "1234", "1,234", "= 1234" or "a x b = 1234" (with x, ×, * or X)."""
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return False
    m = _ANSWER_RE.fullmatch(answer.strip())
    if m is None:
        return False
    if m.group("a") is not None:
        # "a x b = n": the restated factors must be the problem's (in either order).
        restated = sorted((_parse_number(m.group("a")), _parse_number(m.group("b"))))
        if restated != sorted((a, b)) or "=" not in answer:
            return False
    return _parse_number(m.group("n")) == a * b


def check(problem: Problem, answer: str | None) -> bool:
    """Task checker: never raises."""
    try:
        return check_answer(answer, int(problem.data["a"]), int(problem.data["b"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def make_problems(n: int, seed: int, digits: int = 2, b_digits: int | None = None) -> list[Problem]:
    """`n` problems; problem i depends only on (seed, i, digits, b_digits)."""
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise ValueError(f"multiplication: digits={digits} must be in {MIN_DIGITS}..{MAX_DIGITS}")
    b_digits = digits if b_digits is None else b_digits
    if not 1 <= b_digits <= digits:
        raise ValueError(f"multiplication: b_digits={b_digits} must be in 1..{digits}")
    if n < 0:
        raise ValueError(f"multiplication: n={n} must be >= 0")
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    b_lo, b_hi = max(2, 10 ** (b_digits - 1)), 10**b_digits - 1
    label = f"{digits}" if b_digits == digits else f"{digits}x{b_digits}"
    problems = []
    for i in range(n):
        rng = random.Random(f"multiplication/{label}/{seed}/{i}")
        a, b = rng.randint(lo, hi), rng.randint(b_lo, b_hi)
        problems.append(
            Problem(
                problem_id=f"multiplication-{label}/s{seed}/{i:05d}",
                task=NAME,
                question=question(a, b),
                data={"a": a, "b": b, "product": a * b, "digits": digits},
                solution=str(a * b),
            )
        )
    return problems


TASK = TaskSpec(
    name=NAME, make_problems=make_problems, check=check, describe_params=DESCRIBE_PARAMS
)
