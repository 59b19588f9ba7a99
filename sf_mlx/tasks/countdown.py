"""Countdown: reach a target from 2-6 given numbers with + - * /, each number used at most once.

Generation, the answer checker (expression or "Step k: a op b = c" lines) and a bounded solver.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from sf_mlx.records import Problem
from sf_mlx.tasks.arith import (
    MAX_EXPR_CHARS,
    eval_with_numbers,
    normalize_operators,
    parse_int,
    uses_allowed,
)
from sf_mlx.tasks.base import TaskSpec

NAME = "countdown"
MIN_ARGS, MAX_ARGS = 2, 6
MAX_STEPS_CHARS = 4000  # a whole step-format answer; 5 steps need ~150 chars
_ATTEMPTS_PER_NUMBERS = 30  # random expressions tried on one draw of numbers
_DRAWS = 40  # number draws per problem before the ranges are declared impossible

# Defaults follow the common TinyZero / Stream-of-Search Countdown setup (numbers 1-100,
# targets up to 1000); the SkillFactory paper leaves the ranges open.
DEFAULTS = {
    "num_args": 3,
    "min_number": 1,
    "max_number": 100,
    "min_target": 10,
    "max_target": 1000,
    "require_all": False,
}
DESCRIBE_PARAMS = {
    "num_args": "how many numbers are given, 2-6 (default 3)",
    "min_number": "smallest given number, >= 1 (default 1)",
    "max_number": "largest given number (default 100)",
    "min_target": "smallest target (default 10)",
    "max_target": "largest target (default 1000)",
    "require_all": "answers must use every number exactly once (default False)",
}

# Precedence of a rendered sub-expression, to print only the parentheses that matter.
_ATOM, _MUL, _ADD = 3, 2, 1


def question(numbers: list[int], target: int, require_all: bool = False) -> str:
    """The plain user prompt for one Countdown problem."""
    use = "exactly once" if require_all else "at most once"
    return (
        f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
        f"Use +, -, *, / and each number {use}. "
        "Give the final answer as an expression in <answer> </answer> tags."
    )


def _wrap(expr: str, prec: int, need: int) -> str:
    return f"({expr})" if prec < need else expr


def _combine(
    rng: random.Random, a: tuple[int, str, int], b: tuple[int, str, int], steps: list[str]
) -> tuple[int, str, int]:
    """Apply a random valid op to two (value, expr, precedence) items; record the step."""
    (x, ex, px), (y, ey, py) = a, b
    ops = ["+", "*"]
    if x != y:
        ops.append("-")  # a zero intermediate would make later steps degenerate
    if min(x, y) > 1 and max(x, y) % min(x, y) == 0:
        ops.append("/")  # exact division only; by 1 is pointless
    op = rng.choice(ops)
    if op in "-/" and x < y:
        (x, ex, px), (y, ey, py) = (y, ey, py), (x, ex, px)
    if op == "+":
        value, expr, prec = x + y, f"{ex} + {ey}", _ADD
    elif op == "-":
        value, expr, prec = x - y, f"{ex} - {_wrap(ey, py, _MUL)}", _ADD
    elif op == "*":
        value, expr, prec = x * y, f"{_wrap(ex, px, _MUL)} * {_wrap(ey, py, _MUL)}", _MUL
    else:
        value, expr, prec = x // y, f"{_wrap(ex, px, _MUL)} / {_wrap(ey, py, _ATOM)}", _MUL
    steps.append(f"{x} {op} {y} = {value}")
    return value, expr, prec


def _random_build(rng: random.Random, numbers: list[int]) -> tuple[int, str, list[str]]:
    """A random expression over all `numbers`: (value, expression, steps)."""
    pool = [(n, str(n), _ATOM) for n in numbers]
    steps: list[str] = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        for k in sorted((i, j), reverse=True):
            pool.pop(k)
        pool.append(_combine(rng, a, b, steps))
    value, expr, _ = pool[0]
    return value, expr, steps


def _check_params(
    num_args: int, min_number: int, max_number: int, min_target: int, max_target: int
) -> None:
    if not MIN_ARGS <= num_args <= MAX_ARGS:
        raise ValueError(f"countdown: num_args={num_args} must be in {MIN_ARGS}..{MAX_ARGS}")
    if not 1 <= min_number <= max_number:
        raise ValueError(
            f"countdown: need 1 <= min_number <= max_number, got min_number={min_number}, "
            f"max_number={max_number}"
        )
    if not 0 <= min_target <= max_target:
        raise ValueError(
            f"countdown: need 0 <= min_target <= max_target, got min_target={min_target}, "
            f"max_target={max_target}"
        )


def make_problem(
    seed: int,
    index: int,
    num_args: int = 3,
    min_number: int = 1,
    max_number: int = 100,
    min_target: int = 10,
    max_target: int = 1000,
    require_all: bool = False,
) -> Problem:
    """Problem `index` of stream `seed`; depends only on (seed, index, params)."""
    _check_params(num_args, min_number, max_number, min_target, max_target)
    # A string seed is hashed with SHA-512 by `random`: stable across runs and Python versions.
    rng = random.Random(f"countdown/{num_args}/{seed}/{index}")
    for _ in range(_DRAWS):
        numbers = [rng.randint(min_number, max_number) for _ in range(num_args)]
        for _ in range(_ATTEMPTS_PER_NUMBERS):
            value, expr, steps = _random_build(rng, numbers)
            if min_target <= value <= max_target:
                return Problem(
                    problem_id=f"countdown-{num_args}/s{seed}/{index:05d}",
                    task=NAME,
                    question=question(numbers, value, require_all),
                    data={
                        "numbers": numbers,
                        "target": value,
                        "steps": steps,
                        "require_all": bool(require_all),
                    },
                    solution=expr,
                )
    raise ValueError(
        f"countdown: no target in [{min_target}, {max_target}] reachable from {num_args} numbers "
        f"in [{min_number}, {max_number}] after {_DRAWS * _ATTEMPTS_PER_NUMBERS} tries; "
        "widen the target range"
    )


def make_problems(
    n: int,
    seed: int,
    num_args: int = 3,
    min_number: int = 1,
    max_number: int = 100,
    min_target: int = 10,
    max_target: int = 1000,
    require_all: bool = False,
) -> list[Problem]:
    """`n` solvable problems; problem i is the same whatever `n` is."""
    if n < 0:
        raise ValueError(f"countdown: n={n} must be >= 0")
    _check_params(num_args, min_number, max_number, min_target, max_target)
    return [
        make_problem(seed, i, num_args, min_number, max_number, min_target, max_target, require_all)
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# Checker

_STEP_PREFIX_RE = re.compile(r"^step\s*[0-9]+\s*[:.)]\s*", re.IGNORECASE)


def _check_expression(answer: str, numbers: list[int], target: Fraction, require_all: bool) -> bool:
    """`expr` or `expr = target` on one line."""
    parts = answer.split("=")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        claimed = parse_int(parts[1])
        if claimed is None or claimed != target:
            return False
    result = eval_with_numbers(parts[0])
    if result is None:
        return False
    value, used = result
    return value == target and uses_allowed(used, numbers, require_all)


def _check_steps(lines: list[str], numbers: list[int], target: Fraction, require_all: bool) -> bool:
    """Lines "[Step k:] lhs = c": lhs an expression over given numbers and earlier results."""
    givens = Counter(numbers)
    results: Counter[int] = Counter()
    last: int | None = None
    for k, line in enumerate(lines):
        body = _STEP_PREFIX_RE.sub("", line, count=1)
        parts = body.split("=")
        if len(parts) != 2:
            return False
        claimed = parse_int(parts[1])
        evaluated = eval_with_numbers(parts[0])
        if claimed is None or evaluated is None:
            return False
        value, used = evaluated
        if len(used) < 2 or value != claimed:
            return False  # a step must combine two things, and its stated result must be right
        for v in used:
            # Take a given number before an equal earlier result: which copy is taken does not
            # change what stays available later, and this way `require_all` sees the most usage.
            if givens[v] > 0:
                givens[v] -= 1
            elif results[v] > 0:
                results[v] -= 1
            else:
                return False
        if k < len(lines) - 1:
            results[claimed] += 1
        last = claimed
    if last is None or last != target:
        return False
    # require_all: every given number consumed and every intermediate result fed onward, so all
    # numbers flow into the final result (dead side steps do not count as using a number).
    return not require_all or (+givens == Counter() and +results == Counter())


def check_answer(
    answer: str | None, numbers: list[int], target: int, require_all: bool = False
) -> bool:
    """Is `answer` (already extracted) a valid solution? Never raises.

    Accepted: one expression, optionally "= target"; or one step per line ("Step 1: 3 + 5 = 8"),
    the "Step k:" prefix optional, claimed results integers. Operators + - * / and × ÷ −.
    Non-integer intermediate values (8 / 3 * 3) are fine in the expression form only.
    """
    try:
        if not isinstance(answer, str) or len(answer) > MAX_STEPS_CHARS:
            return False  # before any copy of a possibly huge string
        text = normalize_operators(answer).strip()
        if not text:
            return False
        goal = Fraction(int(target))
        nums = [int(n) for n in numbers]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) == 1 and not _STEP_PREFIX_RE.match(lines[0]):
            if len(lines[0]) > MAX_EXPR_CHARS + 20:
                return False
            return _check_expression(lines[0], nums, goal, require_all)
        if len(lines) > 2 * MAX_ARGS:
            return False
        return _check_steps(lines, nums, goal, require_all)
    except (ValueError, TypeError, KeyError, RecursionError, MemoryError, OverflowError):
        return False


def check(problem: Problem, answer: str | None) -> bool:
    """Task checker: `answer` against `problem.data` numbers / target / require_all."""
    try:
        data = problem.data
        return check_answer(
            answer, data["numbers"], data["target"], bool(data.get("require_all", False))
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Solver

MAX_SOLVER_VALUES = 50_000  # reachable values kept per subset of numbers: bounds time and memory

_Table = dict[Fraction, tuple[str, int]]  # value -> (expression, precedence)


def solve(numbers: list[int], target: int, require_all: bool = False) -> str | None:
    """An expression over `numbers` (all of them when `require_all`) equal to `target`, or None.

    Exact search over subsets with non-negative intermediates (fractions allowed): tables of
    every value reachable from each subset of up to n-2 numbers (at most MAX_SOLVER_VALUES
    each), then a target-driven look-up for the larger subsets. Up to 6 numbers, well under a
    second; None means "no solution" unless a table hit the cap.
    """
    nums = [int(n) for n in numbers]
    if not 1 <= len(nums) <= MAX_ARGS:
        raise ValueError(f"solve: {len(nums)} numbers given; 1..{MAX_ARGS} supported")
    if any(n < 0 for n in nums):
        raise ValueError(f"solve: numbers must be non-negative, got {nums}")
    goal = Fraction(int(target))
    if goal < 0:
        return None  # every reachable value is non-negative
    full = (1 << len(nums)) - 1
    table_size = max(1, len(nums) - 2)
    masks = sorted(range(1, full + 1), key=lambda m: bin(m).count("1"))
    reach: dict[int, _Table] = {}
    for mask in masks:
        bits = [i for i in range(len(nums)) if mask >> i & 1]
        if len(bits) == 1:
            reach[mask] = {Fraction(nums[bits[0]]): (str(nums[bits[0]]), _ATOM)}
        elif len(bits) <= table_size:
            table: _Table = {}
            for sub, other in _splits(mask):
                _join(reach[sub], reach[other], table)
            reach[mask] = table
    memo: dict[tuple[int, Fraction], tuple[str, int] | None] = {}
    for mask in [full] if require_all else masks:
        found = _find(nums, reach, memo, mask, goal)
        if found is not None:
            return found[0]
    return None


def _splits(mask: int) -> list[tuple[int, int]]:
    """Each unordered split of `mask` into two non-empty parts, once: (larger, smaller)."""
    out = []
    sub = (mask - 1) & mask
    while sub:
        other = mask ^ sub
        if (bin(sub).count("1"), sub) > (bin(other).count("1"), other):
            out.append((sub, other))
        sub = (sub - 1) & mask
    return out


def _find(
    nums: list[int],
    reach: dict[int, _Table],
    memo: dict[tuple[int, Fraction], tuple[str, int] | None],
    mask: int,
    goal: Fraction,
) -> tuple[str, int] | None:
    """(expression, precedence) over exactly the numbers in `mask` equal to `goal`, or None."""
    if mask in reach:
        return reach[mask].get(goal)
    key = (mask, goal)
    if key in memo:
        return memo[key]
    memo[key] = None
    for big, small in _splits(mask):
        for y, (ey, py) in reach[small].items():
            if y == 0 and goal == 0:
                # 0 * (anything over `big`): the sum of its numbers will do.
                rest = " + ".join(str(nums[i]) for i in range(len(nums)) if big >> i & 1)
                rest_prec = _ADD if "+" in rest else _ATOM
                res = (f"{_wrap(ey, py, _MUL)} * {_wrap(rest, rest_prec, _MUL)}", _MUL)
                memo[key] = res
                return res
            # x (from `big`) op y = goal, or y op x = goal: the x each op needs.
            tries = [(goal - y, "x+y"), (goal + y, "x-y"), (y - goal, "y-x"), (goal * y, "x/y")]
            if y:
                tries.append((goal / y, "x*y"))
            if goal:
                tries.append((y / goal, "y/x"))
            for x, op in tries:
                if x < 0 or (op == "x/y" and not y) or (op == "y/x" and not x):
                    continue
                hit = _find(nums, reach, memo, big, x)
                if hit is None:
                    continue
                ex, px = hit
                if op == "x+y":
                    res = (f"{ex} + {ey}", _ADD)
                elif op == "x-y":
                    res = (f"{ex} - {_wrap(ey, py, _MUL)}", _ADD)
                elif op == "y-x":
                    res = (f"{ey} - {_wrap(ex, px, _MUL)}", _ADD)
                elif op == "x*y":
                    res = (f"{_wrap(ex, px, _MUL)} * {_wrap(ey, py, _MUL)}", _MUL)
                elif op == "x/y":
                    res = (f"{_wrap(ex, px, _MUL)} / {_wrap(ey, py, _ATOM)}", _MUL)
                else:
                    res = (f"{_wrap(ey, py, _MUL)} / {_wrap(ex, px, _ATOM)}", _MUL)
                memo[key] = res
                return res
    return None


def _join(
    left: dict[Fraction, tuple[str, int]],
    right: dict[Fraction, tuple[str, int]],
    out: dict[Fraction, tuple[str, int]],
) -> None:
    for x, (ex, px) in left.items():
        for y, (ey, py) in right.items():
            if len(out) >= MAX_SOLVER_VALUES:
                return
            cands = [
                (x + y, f"{ex} + {ey}", _ADD),
                (x * y, f"{_wrap(ex, px, _MUL)} * {_wrap(ey, py, _MUL)}", _MUL),
            ]
            if x >= y:
                cands.append((x - y, f"{ex} - {_wrap(ey, py, _MUL)}", _ADD))
            else:
                cands.append((y - x, f"{ey} - {_wrap(ex, px, _MUL)}", _ADD))
            if y:
                cands.append((x / y, f"{_wrap(ex, px, _MUL)} / {_wrap(ey, py, _ATOM)}", _MUL))
            if x:
                cands.append((y / x, f"{_wrap(ey, py, _MUL)} / {_wrap(ex, px, _ATOM)}", _MUL))
            for value, expr, prec in cands:
                if value not in out:
                    out[value] = (expr, prec)


TASK = TaskSpec(
    name=NAME,
    make_problems=make_problems,
    check=check,
    describe_params=DESCRIBE_PARAMS,
)
