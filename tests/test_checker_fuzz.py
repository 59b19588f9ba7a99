"""Fuzzing the Countdown checker against an independent oracle: no false accepts, no crashes.

The oracle is a separate recursive-descent evaluator over exact fractions, written here and
sharing no code with `sf_mlx.tasks.arith`. Deterministic (seeded), a few seconds.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from sf_mlx.tasks.countdown import check_answer

_TOKEN = re.compile(r"\s*([0-9]+|[-+*/()])")


def _oracle(answer: str, numbers: list[int], target: int, require_all: bool) -> bool:
    """True for `expr` or `expr = target` using +-*/ and parentheses, no unary signs or leading
    zeros, numbers from the list at most once each (exactly once with require_all)."""
    expr, eq, claimed = answer.partition("=")
    if eq and claimed.strip() != str(target):
        return False
    found = _evaluate(expr)
    if found is None or found[0] != target:
        return False
    have, need = Counter(numbers), Counter(found[1])
    if any(need[n] > have[n] for n in need):
        return False
    return need == have if require_all else True


def _evaluate(expr: str) -> tuple[Fraction, list[int]] | None:
    """(value, numbers used) of an expression, or None when it is not one."""
    pos, tokens = 0, []
    while pos < len(expr.rstrip()):
        m = _TOKEN.match(expr, pos)
        if not m:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    used: list[int] = []
    i = 0

    def atom() -> Fraction:
        nonlocal i
        if i >= len(tokens):
            raise ValueError
        t = tokens[i]
        i += 1
        if t == "(":
            v = add()
            if i >= len(tokens) or tokens[i] != ")":
                raise ValueError
            i += 1
            return v
        if t.isascii() and t.isdigit() and (t == "0" or not t.startswith("0")):
            used.append(int(t))
            return Fraction(int(t))
        raise ValueError

    apply = {
        "+": lambda v, w: v + w,
        "-": lambda v, w: v - w,
        "*": lambda v, w: v * w,
        "/": lambda v, w: v / w,  # Fraction raises ZeroDivisionError on 0
    }

    def level(ops: str, operand):
        """One precedence level: operands joined by `ops`, left to right."""

        def parse() -> Fraction:
            nonlocal i
            v = operand()
            while i < len(tokens) and tokens[i] in ops:
                op = tokens[i]
                i += 1
                v = apply[op](v, operand())
            return v

        return parse

    add = level("+-", level("*/", atom))

    try:
        value = add()
    except (ValueError, ZeroDivisionError):
        return None
    return (value, used) if i == len(tokens) else None


def _expression(rng: random.Random, pool: list[int]) -> str:
    """A random expression over `pool`, sometimes with a number not in it or one used twice."""
    nums = rng.sample(pool, rng.randint(1, len(pool)))
    if rng.random() < 0.2:
        nums.append(rng.choice(pool))  # a reuse
    if rng.random() < 0.1:
        nums[rng.randrange(len(nums))] = rng.randint(0, 30)  # perhaps not in the list
    text = str(nums[0])
    for n in nums[1:]:
        op = rng.choice("+-*/")
        text = f"({text}) {op} {n}" if rng.random() < 0.5 else f"{text} {op} {n}"
    return text


def test_random_expressions_agree_with_an_independent_oracle():
    rng = random.Random(0)
    accepted = 0
    for _ in range(20_000):
        pool = [rng.randint(1, 12) for _ in range(rng.randint(2, 5))]
        expr = _expression(rng, pool)
        # aim at the expression's own value half the time, so accepts are common
        found = _evaluate(expr)
        own = found is not None and found[0].denominator == 1 and found[0] >= 0
        target = int(found[0]) if own and rng.random() < 0.5 else rng.randint(0, 60)
        answer = f"{expr} = {target}" if rng.random() < 0.3 else expr
        require_all = rng.random() < 0.3
        want = _oracle(answer, pool, target, require_all)
        got = check_answer(answer, pool, target, require_all)
        assert got == want, (answer, pool, target, require_all)
        accepted += got
    assert accepted > 2_000  # the property was tested on accepts, not only on rejects


def test_garbage_is_never_accepted_wrongly_and_never_crashes():
    rng = random.Random(1)
    alphabet = list("0123456789+-*/() =.\n") + ["Step 1: ", "x", "**", "//", "٣", "e", "_", "'"]
    for _ in range(20_000):
        pool = [rng.randint(1, 10) for _ in range(rng.randint(2, 4))]
        target = rng.randint(0, 40)
        answer = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        if check_answer(answer, pool, target) and "Step" not in answer and "\n" not in answer:
            assert _oracle(answer, pool, target, False), (answer, pool, target)
