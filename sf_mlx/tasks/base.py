"""Shared task plumbing: answer extraction and the `TaskSpec` record (stdlib only).

Kept apart from `__init__` so task modules can import it without a circular import.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sf_mlx.records import Problem

# One <answer>...</answer> block; the body may not contain another opening tag, so in
# "<answer>a <answer>b</answer>" the block is "b". Linear but slow on huge inputs: code that
# grades model output should call `extract_answer` / `count_answers` (C-level string search).
ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.IGNORECASE | re.DOTALL)


_OPEN, _CLOSE = "<answer>", "</answer>"
# Lower-case ASCII letters only: str.lower() can change the length of non-ASCII text ('İ'),
# and positions in the lowered copy must stay valid in the original.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _lower(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def extract_answer(response: str) -> str | None:
    """Content of the last complete <answer>...</answer> block, stripped; None if there is none.

    Same blocks as `ANSWER_RE.finditer`, found with a few C-level string searches instead
    (linear time, milliseconds on 10 MB): the last block opens at the last opening tag before
    the last closing tag and ends at the first closing tag after that.
    """
    if not isinstance(response, str):
        return None
    low = _lower(response)
    last_close = low.rfind(_CLOSE)
    if last_close < 0:
        return None
    start = low.rfind(_OPEN, 0, last_close)
    if start < 0:
        return None
    start += len(_OPEN)
    return response[start : low.find(_CLOSE, start)].strip()


def count_answers(response: str) -> int:
    """Number of complete <answer>...</answer> blocks (the blocks `extract_answer` chooses from)."""
    if not isinstance(response, str):
        return 0
    # Each closing tag completes a block iff an opening tag comes after the previous closing tag.
    pieces = _lower(response).split(_CLOSE)
    return sum(1 for piece in pieces[:-1] if _OPEN in piece)


@dataclass(frozen=True)
class TaskSpec:
    """A task: how to make problems, how to check an extracted answer, what the params mean."""

    name: str
    make_problems: Callable[..., list[Problem]]  # make_problems(n, seed, **params)
    check: Callable[[Problem, str | None], bool]  # total: never raises
    describe_params: dict[str, str] = field(default_factory=dict)


def unknown_name(kind: str, name: str, options: Iterable[str]) -> ValueError:
    """The one-line error for a name not in `options`, suggesting the nearest valid one."""
    options = list(options)
    near = difflib.get_close_matches(str(name), options, n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown {kind} {name!r}{hint} (valid: {', '.join(options)})")
