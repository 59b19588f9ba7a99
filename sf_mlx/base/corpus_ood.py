"""Out-of-domain attempts and checks for the base corpus: long multiplication and acronyms.

The noisy solver is right with probability `CorpusConfig.p_correct` and otherwise slips one
digit or misreads one letter; the checks recompute the answer and end in a verdict.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sf_mlx.records import Problem
from sf_mlx.tasks import grade

if TYPE_CHECKING:
    from sf_mlx.base.corpus import CorpusConfig


def _digit_parts(n: int) -> list[int]:
    """76 -> [70, 6]: the nonzero digits of `n` with their place values, largest first."""
    s = str(n)
    return [int(d) * 10 ** (len(s) - 1 - k) for k, d in enumerate(s) if d != "0"]


def _by_digit_pairs(rng: random.Random, a: int, b: int, cfg: CorpusConfig) -> tuple[list, int]:
    """Every line a one-digit product (with its zeros) or a sum of two numbers, all of them
    true; a wrong attempt forgets one partial product (or, with one part, slips the total)."""
    parts = [(x, y) for x in _digit_parts(a) for y in _digit_parts(b)]
    wrong = rng.random() >= cfg.p_correct
    if wrong and len(parts) > 1:
        del parts[rng.randrange(len(parts))]
        wrong = False
    lines = [f"{x} * {y} = {x * y}" for x, y in parts]
    total = parts[0][0] * parts[0][1]
    for x, y in parts[1:]:
        lines.append(f"{total} + {x * y} = {total + x * y}")
        total += x * y
    if wrong:
        total = abs(total + rng.choice([1, -1, 10, -10]) * rng.randint(1, 9))
        lines.append(f"So the product is {total}.")
    return [f"Step {i}: {line}" for i, line in enumerate(lines, 1)], total


def multiplication_attempt(rng: random.Random, problem: Problem, style: str, cfg: CorpusConfig):
    a, b = problem.data["a"], problem.data["b"]
    if cfg.multiply_digit_pairs:
        lines, total = _by_digit_pairs(rng, a, b, cfg)
    else:
        parts = []
        for k, digit in enumerate(reversed(str(b))):
            if digit != "0":
                parts.append((a, int(digit) * 10**k))
        lines = [f"Step {i}: {a} * {m} = {a * m}" for i, (a, m) in enumerate(parts, 1)]
        total = a * b
        if rng.random() >= cfg.p_correct:  # a slipped digit in one partial product or the sum
            total += rng.choice([1, -1, 10, -10, 100, 1000]) * rng.randint(1, 9)
            total = abs(total)
        lines.append(f"Step {len(parts) + 1}: add them up: {total}")
    body = "\n".join(lines)
    if style == "plan_and_execute":
        what = f"each digit of {a}" if cfg.multiply_digit_pairs else str(a)
        body = (
            f"Plan: multiply {what} by each digit of {b}, then add the parts.\nExecution:\n{body}"
        )
    elif style == "rephrase":
        body = f"Rewritten Question: What is {a} times {b}?\n{body}"
    elif style == "alternatively" and cfg.multiply_digit_pairs:
        ra, rb = round(a, 1 - len(str(a))), round(b, 1 - len(str(b)))  # one significant digit
        body = f"{a} * {b} is about {ra} * {rb} = {ra * rb}.\nAlternatively, {body}"
    elif style == "alternatively":
        body = f"{a} * {b} is about {round(a * b, -len(str(a * b)) + 2)}.\nAlternatively, {body}"
    response = f"{body}\n<answer>{total}</answer>"
    return response, grade(problem, response)[1]


def multiplication_check_response(problem: Problem, attempt: str) -> tuple[str, bool]:
    extracted, correct = grade(problem, attempt)
    if extracted is None:
        return "There is no final answer to check.\n<verdict>Incorrect</verdict>", False
    a, b = problem.data["a"], problem.data["b"]
    same = "matches" if correct else "does not match"
    text = f"{a} * {b} = {a * b}. The answer {extracted} {same}."
    return f"{text}\n<verdict>{'Correct' if correct else 'Incorrect'}</verdict>", correct


def acronym_attempt(rng: random.Random, problem: Problem, style: str, cfg: CorpusConfig):
    words = problem.data["words"]
    letters = [w[0] for w in words]
    if rng.random() >= cfg.p_correct:  # a misread letter
        k = rng.randrange(len(letters))
        letters[k] = rng.choice("abcdefghijklmnoprstuw")
    answer = "".join(letters)
    if cfg.acronym_word_by_word:  # each word copied, then its first letter right after it
        pairs = ", ".join(f"{w} -> {x}" for w, x in zip(words, letters, strict=True))
        body = f"First letters: {pairs}."
    else:
        body = f"First letters: {', '.join(letters)}."
    if style == "plan_and_execute":
        body = f"Plan: take the first letter of each word and join them.\nExecution:\n{body}"
    elif style == "rephrase":
        body = f"Rewritten Question: Join the first letters of {', '.join(words)}.\n{body}"
    elif style == "alternatively":
        body = f"{body}\nAlternatively, read them together: {answer}."
    response = f"{body}\n<answer>{answer}</answer>"
    return response, grade(problem, response)[1]


def acronym_check_response(problem: Problem, attempt: str) -> tuple[str, bool]:
    extracted, correct = grade(problem, attempt)
    if extracted is None:
        return "There is no final answer to check.\n<verdict>Incorrect</verdict>", False
    letters = "".join(w[0] for w in problem.data["words"])
    same = "matches" if correct else "does not match"
    text = f"The first letters spell {letters}. The answer {extracted} {same}."
    return f"{text}\n<verdict>{'Correct' if correct else 'Incorrect'}</verdict>", correct
