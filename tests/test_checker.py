"""Adversarial table for the Countdown checker and the safe evaluator: wrong is False, no raise."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from sf_mlx.records import Problem
from sf_mlx.tasks import countdown
from sf_mlx.tasks.arith import evaluate, parse_int

NUMS = [2, 3, 5, 7, 8]
TARGET = 22

# (id, answer, expected) against NUMS / TARGET, require_all=False.
CASES: list[tuple[str, str | None, bool]] = [
    # --- accepted
    ("expr", "3 * 5 + 7", True),
    ("expr-no-spaces", "3*5+7", True),
    ("expr-padded", "  3 * 5 + 7 \n", True),
    ("expr-parens", "((3 * 5)) + 7", True),
    ("expr-reordered", "7 + 5 * 3", True),
    ("expr-eq-target", "3 * 5 + 7 = 22", True),
    ("expr-unicode-ops", "8 × 3 − 2", True),
    ("expr-divide-sign", "7 * 3 + 5 - 8 ÷ 2", True),
    ("steps", "Step 1: 3 * 5 = 15\nStep 2: 15 + 7 = 22", True),
    ("steps-no-prefix", "3 * 5 = 15\n15 + 7 = 22", True),
    ("steps-blank-lines", "\nStep 1: 3 * 5 = 15\n\n  Step 2: 15 + 7 = 22  \n", True),
    ("steps-one-line", "Step 1: 8 * 3 - 2 = 22", True),
    ("steps-result-equals-given", "5 - 3 = 2\n7 * 2 = 14\n14 + 8 = 22", True),
    # --- rejected: not arithmetic on given integers
    ("name", "x", False),
    ("name-in-expr", "3 * x + 7", False),
    ("letter-x-times", "3 x 5 + 7", False),
    ("import", "__import__('os')", False),
    ("call", "print(1)", False),
    ("attribute", "(1).__class__", False),
    ("subscript", "[22][0]", False),
    ("pow", "2 ** 3 + 7 + 7", False),
    ("floordiv", "8 // 3 + 20", False),
    ("mod", "8 % 3 + 20", False),
    ("bitor", "3 | 5", False),
    ("shift", "3 << 2", False),
    ("invert", "~3", False),
    ("compare", "22 == 3 * 5 + 7", False),
    ("unary-minus", "-2 + 3 * 8", False),
    ("unary-plus", "+7 + 3 * 5", False),
    ("double-minus", "--7 + 3 * 5", False),
    ("minus-minus-binop", "7 - -3 * 5", False),
    ("float", "2.5 * 8 + 2", False),
    ("float-trailing", "3 * 5 + 7.0", False),
    ("scientific", "1e3", False),
    ("complex", "3j", False),
    ("underscore", "1_0 + 12", False),
    ("leading-zero", "07 + 3 * 5", False),
    ("arabic-indic-digit", "٣ * 5 + 7", False),
    ("fullwidth-digit", "３ * 5 + 7", False),
    ("superscript", "5² - 3", False),
    ("bool", "True + 21", False),
    ("none-literal", "None", False),
    ("string", "'22'", False),
    ("fstring", "f'{22}'", False),
    ("lambda", "lambda: 22", False),
    ("walrus", "(y := 22)", False),
    ("list", "[22]", False),
    ("tuple", "(3, 5)", False),
    ("ternary", "3 * 5 + 7 if 1 else 0", False),
    ("two-statements", "3 * 5 + 7; 1", False),
    # --- rejected: wrong numbers or value
    ("number-not-given", "20 + 2", False),
    ("number-used-twice", "3 * 5 + 7 + 3 - 3", False),
    ("zero-not-given", "8 * 3 - 2 + 0", False),
    ("div-by-zero", "8 / (5 - 3 - 2)", False),
    ("wrong-value", "3 * 5 + 8", False),
    ("eq-wrong-target", "3 * 5 + 7 = 23", False),
    ("eq-claims-target-wrongly", "3 * 5 + 8 = 22", False),
    ("eq-twice", "3 * 5 + 7 = 22 = 22", False),
    ("eq-expression-rhs", "3 * 5 + 7 = 2 * 11", False),
    ("steps-wrong-arith", "Step 1: 3 * 5 = 15\nStep 2: 15 + 8 = 22", False),
    ("steps-wrong-final", "Step 1: 3 * 5 = 15\nStep 2: 15 + 8 = 23", False),
    ("steps-result-reused", "Step 1: 3 + 8 = 11\nStep 2: 11 + 11 = 22", False),
    ("steps-given-reused", "Step 1: 7 + 7 = 14\nStep 2: 14 + 8 = 22", False),
    ("steps-future-result", "Step 1: 15 + 7 = 22\nStep 2: 3 * 5 = 15", False),
    ("steps-trailing-text", "Step 1: 3 * 5 = 15\nStep 2: 15 + 7 = 22\nSo the answer is 22", False),
    ("steps-no-op", "Step 1: 7 = 7\nStep 2: 3 * 5 + 7 = 22", False),
    ("steps-negative-dead-result", "Step 1: 5 - 7 = -2\nStep 2: 3 * 8 - 2 = 22", True),
    ("steps-negative-operand", "Step 1: 5 - 7 = -2\nStep 2: 3 * 8 + -2 = 22", False),
    ("steps-float-result", "Step 1: 3 * 5 = 15.0\nStep 2: 15 + 7 = 22", False),
    # --- rejected: formatting
    ("empty", "", False),
    ("none", None, False),
    ("whitespace", "   \n\t ", False),
    ("answer-tag-left-in", "<answer>3 * 5 + 7</answer>", False),
    ("close-tag-left-in", "3 * 5 + 7 </answer>", False),
    ("multi-line-expression", "3 * 5\n+ 7", False),
    ("unbalanced", "(3 * 5 + 7", False),
    ("extra-close", "3 * 5) + 7", False),
]

# Resource attacks: each must be rejected quickly (loose bound; not a performance test).
RESOURCE_CASES: list[tuple[str, str]] = [
    ("huge-power", "9**9**9**9"),
    ("power-tower-chars", "9" + "**9" * 300),
    ("long-product", "*".join(["99"] * 300)),
    ("product-under-length-cap", "*".join(["9"] * 450)),
    ("huge-literal", "1" + "0" * 900),
    ("huge-literal-over-cap", "9" * 100_000),
    ("deep-nesting", "(" * 100_000 + "1" + ")" * 100_000),
    ("deep-nesting-unbalanced", "(" * 100_000),
    ("nesting-just-over-cap", "(" * 40 + "3 * 5 + 7" + ")" * 40),
    ("sum-10k-terms", "+".join(["1"] * 10_000)),
    ("ten-megabytes", "1+" * 5_000_000 + "1"),
    ("ten-megabytes-of-steps", "Step 1: 3 * 5 = 15\n" * 550_000),
    ("many-steps", "\n".join(f"Step {k}: 2 + 3 = 5" for k in range(10_000))),
    ("divide-tower", "/".join(["7"] * 450)),
]


@pytest.mark.parametrize(("answer", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_countdown_checker_table(answer: str | None, expected: bool) -> None:
    start = time.perf_counter()
    assert countdown.check_answer(answer, NUMS, TARGET) is expected
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "answer", [c[1] for c in RESOURCE_CASES], ids=[c[0] for c in RESOURCE_CASES]
)
def test_countdown_checker_resource_bounds(answer: str) -> None:
    start = time.perf_counter()
    assert countdown.check_answer(answer, NUMS, TARGET) is False
    assert evaluate(answer) is None
    assert time.perf_counter() - start < 1.0


def test_table_size() -> None:
    assert len(CASES) + len(RESOURCE_CASES) >= 40


def test_fraction_intermediate_expression() -> None:
    # 6 / (1 - 3/4) = 24 needs the non-integer 3/4 on the way.
    assert countdown.check_answer("6 / (1 - 3 / 4)", [1, 3, 4, 6], 24)
    assert countdown.check_answer("8 / 3 * 3", [8, 3, 3], 8)
    assert not countdown.check_answer("8 / 3 * 3", [8, 3], 8)


def test_require_all() -> None:
    assert countdown.check_answer("8 * 3 - 2", [2, 3, 8], 22, require_all=True)
    assert not countdown.check_answer("3 * 5 + 7", NUMS, 22, require_all=True)
    steps = "Step 1: 8 * 3 = 24\nStep 2: 24 - 2 = 22"
    assert countdown.check_answer(steps, [2, 3, 8], 22, require_all=True)
    # A dead side step touches every number but does not feed the target.
    dead = "Step 1: 2 + 4 = 6\nStep 2: 3 * 5 = 15\nStep 3: 15 + 7 = 22"
    assert countdown.check_answer(dead, [2, 3, 4, 5, 7], 22)
    assert not countdown.check_answer(dead, [2, 3, 4, 5, 7], 22, require_all=True)
    # "8" can be the given 8 or the result of 3 + 5; either way the 8 is left over.
    ambiguous = "Step 1: 3 + 5 = 8\nStep 2: 8 * 2 = 16"
    assert countdown.check_answer(ambiguous, [8, 3, 5, 2], 16)
    assert not countdown.check_answer(ambiguous, [8, 3, 5, 2], 16, require_all=True)
    both = "Step 1: 3 + 5 = 8\nStep 2: 8 * 8 = 64"
    assert countdown.check_answer(both, [8, 3, 5], 64, require_all=True)


def test_check_uses_problem_data() -> None:
    p = Problem("p", "countdown", "q", {"numbers": NUMS, "target": TARGET}, "3 * 5 + 7")
    assert countdown.check(p, "3 * 5 + 7")
    assert not countdown.check(p, "3 * 5 + 8")
    broken = Problem("p", "countdown", "q", {"numbers": "abc"}, "")
    assert countdown.check(broken, "3 * 5 + 7") is False


def test_evaluate_exact() -> None:
    assert evaluate("1 / 3 + 1 / 6") == Fraction(1, 2)
    assert evaluate("(7 + 3) * 5 - 2", [7, 3, 5, 2]) == 48
    assert evaluate("(7 + 3) * 5 - 2", [7, 3, 5]) is None
    assert evaluate("7 + 3", [7, 3, 5], require_all=True) is None
    assert evaluate("0") == 0
    assert evaluate("100 - 100") == 0
    assert evaluate("10 / 0") is None
    assert evaluate(None) is None  # type: ignore[arg-type]
    assert parse_int("-12") == -12
    assert parse_int("012") is None
    assert parse_int("１２") is None
