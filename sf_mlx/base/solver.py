"""The corpus's noisy Countdown solver: chains of steps combining a pool of numbers.

Pure functions, no MLX. `nearest_chain` is a person's strategy ("nearest first"), `random_chain`
a random correct chain; a `Step` may write a result other than the true one (a slip), and a
`Claim` says the target was reached after steps that do not reach it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

OPS = ("+", "-", "*", "/")


@dataclass(frozen=True)
class Step:
    a: int
    op: str
    b: int
    claimed: int  # what the attempt writes; may differ from the truth (a slip)

    @property
    def true(self) -> Fraction:
        return _apply(self.a, self.op, self.b)

    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.claimed}"


def _apply(a: int | Fraction, op: str, b: int | Fraction) -> Fraction:
    a, b = Fraction(a), Fraction(b)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


def _random_chain(rng: random.Random, numbers: list[int], stop_at: int | None = None):
    """Combine the numbers in random order with exact, non-negative integer steps.

    Returns (steps, expression, value, used numbers). Stops early when `stop_at` is reached.
    """
    pool = [(n, str(n), False) for n in numbers]  # (value, expression, is_compound)
    steps: list[Step] = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        if pool[i][0] < pool[j][0] and rng.random() < 0.8:  # people write the larger first
            i, j = j, i
        va, vb = pool[i][0], pool[j][0]
        ops = [op for op in OPS if _valid(va, op, vb)]
        op = rng.choice(ops)
        value = int(_apply(va, op, vb))
        steps.append(Step(va, op, vb, value))
        pool, expr = _combine(pool, i, j, op, value)
        if stop_at is not None and value == stop_at:
            return steps, expr, value
    return steps, pool[0][1], pool[0][0]


def _combine(pool: list, i: int, j: int, op: str, value: int) -> tuple[list, str]:
    """Replace pool entries i and j, (value, expression, is_compound) each, by `i op j` with the
    given value; returns (new pool, the combined expression)."""
    (_, ea, ca), (_, eb, cb) = pool[i], pool[j]
    expr = f"{f'({ea})' if ca else ea} {op} {f'({eb})' if cb else eb}"
    return [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, expr, True)], expr


def _valid(a: int, op: str, b: int) -> bool:
    if op == "-":
        return a - b >= 0
    if op == "/":
        return b not in (0, 1) and a % b == 0
    if op == "*":
        return a != 1 and b != 1  # multiplying by one is a wasted step
    return True


def _nearest_chain(
    rng: random.Random,
    numbers: list[int],
    target: int,
    p_slip: float = 0.0,
    pairs: int = 99,
    max_steps: int | None = None,
):
    """The "nearest first" strategy: each step combines the pair whose exact integer result is
    closest to the target (ties broken at random), among `pairs` pairs it happens to look at, so
    it misses more as the numbers grow. With probability `p_slip` a step's result is
    written wrong and the later steps build on the wrong value, so longer chains fail more often.
    `max_steps` stops the chain early, with numbers left unused (the answer is the expression
    built so far). Returns (steps, expression, believed value)."""
    pool = [(n, str(n), False) for n in numbers]
    steps: list[Step] = []
    while len(pool) > 1:
        best: list[tuple[int, int, str]] = []
        best_gap = None
        looked = [(i, j) for i in range(len(pool)) for j in range(i + 1, len(pool))]
        looked = rng.sample(looked, min(pairs, len(looked)))
        for i, j in looked + [(j, i) for i, j in looked]:
            va, vb = pool[i][0], pool[j][0]
            for op in OPS:
                if op in "+*" and va < vb:  # people write the larger number first
                    continue
                if not _valid(va, op, vb):
                    continue
                gap = abs(int(_apply(va, op, vb)) - target)
                if best_gap is None or gap < best_gap:
                    best, best_gap = [(i, j, op)], gap
                elif gap == best_gap:
                    best.append((i, j, op))
        if not best:  # only when every pair is (1, 1)-like: fall back to a random step
            return _random_chain(rng, [v for v, _, _ in pool])[:3]
        i, j, op = rng.choice(best)
        va, vb = pool[i][0], pool[j][0]
        value = int(_apply(va, op, vb))
        if rng.random() < p_slip:
            value = max(0, value + rng.choice([-2, -1, 1, 2, 10, -10]))
        steps.append(Step(va, op, vb, value))
        pool, _ = _combine(pool, i, j, op, value)
        if value == target or len(steps) == max_steps:
            break
    return steps, pool[-1][1], pool[-1][0]


@dataclass(frozen=True)
class Claim:
    """A claimed target after true steps: the attempt says it reached `target`."""

    target: int

    def text(self) -> str:
        return f"That makes {self.target}."


def claim(steps: list, target: int, false_step: bool) -> list:
    """The steps of an attempt that claims the target it did not reach: `false_step` writes the
    last step's result as the target (a false equation), otherwise a `Claim` follows them."""
    if false_step:
        last = steps[-1]
        return steps[:-1] + [Step(last.a, last.op, last.b, target)]
    return steps + [Claim(target)]
