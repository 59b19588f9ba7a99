"""Safe exact evaluation of model-written arithmetic: `ast` parsing, `Fraction` values, hard bounds.

Model text is never turned into code: it is parsed with `ast.parse(mode="eval")` and walked.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

MAX_EXPR_CHARS = 1000  # one expression; Countdown answers are ~30 chars
MAX_NODES = 200  # AST nodes; 6 numbers need 11 (plus the Expression root)
MAX_PAREN_DEPTH = 32  # checked on the raw string, before ast.parse could recurse
MAX_BITS = 256  # numerator/denominator bit length of any literal or intermediate value

# Common model spellings of the operators, mapped to ASCII before anything else.
OPERATOR_ALIASES = {"×": "*", "÷": "/", "−": "-"}
_ALIAS_TABLE = str.maketrans(OPERATOR_ALIASES)

# Everything else is rejected up front: no letters, dots, underscores, quotes, commas, brackets,
# `%`, `=`, `<`, `&` ... so names, calls, attributes, floats, strings, lambdas, walrus, tuples and
# lists cannot even reach the parser. The AST walk below re-checks node types anyway.
_ALLOWED_CHARS_RE = re.compile(r"[0-9+\-*/() \t]*")
_LEADING_ZERO_RE = re.compile(r"(?<![0-9])0[0-9]")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def normalize_operators(text: str) -> str:
    """Map `×` `÷` `−` to `*` `/` `-` (nothing else: a letter `x` stays a name and is rejected)."""
    return text.translate(_ALIAS_TABLE)


def _paren_depth_ok(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                return False
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _too_big(value: Fraction) -> bool:
    return value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS


def parse_expression(expr: str) -> ast.expr | None:
    """The validated AST of `expr`, or None if it is not a plain + - * / ( ) integer expression.

    Unary operators are rejected outright (`-3`, `+3`, `--3`): Countdown numbers are given, never
    negated, and rejecting all unary ops leaves no sign tricks to reason about.
    """
    if not isinstance(expr, str) or len(expr) > 4 * MAX_EXPR_CHARS:
        return None  # cheap early exit before copying a huge string (whitespace may pad a bit)
    text = normalize_operators(expr).strip()
    if not text or len(text) > MAX_EXPR_CHARS or not text.isascii():
        return None  # isascii first: '٣', '３', '²' are digits to Python but not to us
    if not _ALLOWED_CHARS_RE.fullmatch(text) or _LEADING_ZERO_RE.search(text):
        return None
    if not _paren_depth_ok(text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    nodes = 0
    for node in ast.walk(tree):
        nodes += 1
        if nodes > MAX_NODES:
            return None
        if isinstance(node, (ast.Expression, ast.Add, ast.Sub, ast.Mult, ast.Div)):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            continue
        # type() not isinstance(): bool is an int subclass (cannot occur after the char filter).
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            continue
        return None
    return tree.body


def _eval_node(node: ast.expr, used: list[int]) -> Fraction | None:
    if isinstance(node, ast.Constant):
        value = Fraction(node.value)
        used.append(node.value)
        return None if _too_big(value) else value
    assert isinstance(node, ast.BinOp)  # guaranteed by parse_expression
    left = _eval_node(node.left, used)
    if left is None:
        return None
    right = _eval_node(node.right, used)
    if right is None:
        return None
    op = type(node.op)
    if op is ast.Add:
        value = left + right
    elif op is ast.Sub:
        value = left - right
    elif op is ast.Mult:
        # Bound the product before computing it, so 9*9*...*9 or huge literals stay cheap.
        if (
            left.numerator.bit_length() + right.numerator.bit_length() > MAX_BITS + 1
            or left.denominator.bit_length() + right.denominator.bit_length() > MAX_BITS + 1
        ):
            return None
        value = left * right
    else:
        if right == 0:
            return None  # division by zero is simply a wrong answer
        value = left / right
    return None if _too_big(value) else value


def eval_with_numbers(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals in order of appearance) of `expr`, or None if invalid."""
    tree = parse_expression(expr)
    if tree is None:
        return None
    used: list[int] = []
    try:
        value = _eval_node(tree, used)
    except (RecursionError, MemoryError, OverflowError, ZeroDivisionError, ValueError, TypeError):
        return None
    return None if value is None else (value, used)


def uses_allowed(used: list[int], allowed: list[int], require_all: bool = False) -> bool:
    """True if `used` is a sub-multiset of `allowed` (the same multiset when `require_all`)."""
    need, have = Counter(used), Counter(allowed)
    if any(need[k] > have[k] for k in need):
        return False
    return not require_all or need == have


def evaluate(
    expr: str, allowed_numbers: list[int] | None = None, require_all: bool = False
) -> Fraction | None:
    """Exact value of `expr`; None if invalid, out of bounds, or using numbers not allowed.

    With `allowed_numbers`, each literal must come from that multiset (each entry at most once;
    exactly once when `require_all`). Never raises.
    """
    result = eval_with_numbers(expr)
    if result is None:
        return None
    value, used = result
    if allowed_numbers is not None and not uses_allowed(used, list(allowed_numbers), require_all):
        return None
    return value


def parse_int(text: str) -> int | None:
    """A plain ASCII integer literal with an optional leading '-' (no '+', no leading zeros)."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return None
    t = normalize_operators(text).strip()
    if len(t) > MAX_EXPR_CHARS or not re.fullmatch(r"-?(?:0|[1-9][0-9]*)", t, re.ASCII):
        return None
    return int(t)
