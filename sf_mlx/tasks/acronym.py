"""Acronym (an out-of-domain task): the first letters of listed words spell an English word.

Words come from the shipped list `sf_mlx/data/words.txt`; "English word" means "in that list".
"""

from __future__ import annotations

import functools
import random
from importlib import resources

from sf_mlx.records import Problem
from sf_mlx.tasks.base import TaskSpec

NAME = "acronym"
MIN_LENGTH, MAX_LENGTH = 3, 8
MAX_DISTRACTORS = 8
DESCRIBE_PARAMS = {
    "length": "letters in the hidden word = words that spell it, 3-8 (default 4)",
    "distractors": "extra words mixed in; the answer then uses a subsequence (default 0)",
}


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """The shipped word list: lowercase ASCII words of 3-8 letters, sorted, unique."""
    path = resources.files("sf_mlx").joinpath("data").joinpath("words.txt")
    text = path.read_text(encoding="ascii")
    words = {w.strip() for w in text.splitlines()}
    return tuple(sorted(w for w in words if w and not w.startswith("#")))


@functools.lru_cache(maxsize=1)
def _word_set() -> frozenset[str]:
    return frozenset(word_list())


def question(words: list[str], length: int, distractors: int = 0) -> str:
    """The plain user prompt."""
    listed = ", ".join(words)
    tail = " Give your final answer in <answer> </answer> tags."
    if distractors == 0:
        return (
            f"Take the first letter of each word: {listed}. Which English word do they spell?"
            + tail
        )
    return (
        f"Here are some words: {listed}. Pick {length} of them, keeping their order, so that their "
        f"first letters spell an English word of {length} letters. Which word is it?{tail}"
    )


def _is_subsequence(word: str, letters: str) -> bool:
    it = iter(letters)
    return all(ch in it for ch in word)  # `in` on an iterator consumes it: order is kept


def check_answer(answer: str | None, words: list[str], length: int) -> bool:
    """A list word of `length` letters spelled by the first letters of `words`, in order."""
    if not isinstance(answer, str) or len(answer) > 100:
        return False
    guess = answer.strip().strip(".!\"'").strip().lower()
    if len(guess) != length or guess not in _word_set():
        return False
    letters = "".join(w[:1].lower() for w in words)
    return _is_subsequence(guess, letters)


def check(problem: Problem, answer: str | None) -> bool:
    """Task checker: never raises."""
    try:
        return check_answer(answer, list(problem.data["words"]), int(problem.data["length"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def make_problems(n: int, seed: int, length: int = 4, distractors: int = 0) -> list[Problem]:
    """`n` solvable problems; problem i depends only on (seed, i, params)."""
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"acronym: length={length} must be in {MIN_LENGTH}..{MAX_LENGTH}")
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise ValueError(f"acronym: distractors={distractors} must be in 0..{MAX_DISTRACTORS}")
    if n < 0:
        raise ValueError(f"acronym: n={n} must be >= 0")
    words = word_list()
    by_letter: dict[str, list[str]] = {}
    for w in words:
        by_letter.setdefault(w[0], []).append(w)
    # A target is usable if each of its letters starts some other list word (so the clue
    # words never include the answer itself).
    targets = [
        w
        for w in words
        if len(w) == length and all(any(c != w for c in by_letter.get(ch, [])) for ch in w)
    ]
    if not targets:
        raise ValueError(f"acronym: the word list has no usable {length}-letter words")
    problems = []
    for i in range(n):
        rng = random.Random(f"acronym/{length}/{distractors}/{seed}/{i}")
        target = rng.choice(targets)
        clues = [rng.choice([c for c in by_letter[ch] if c != target]) for ch in target]
        for _ in range(distractors):
            extra = rng.choice(words)
            while extra == target:
                extra = rng.choice(words)
            clues.insert(rng.randint(0, len(clues)), extra)
        problems.append(
            Problem(
                problem_id=f"acronym-{length}/s{seed}/{i:05d}",
                task=NAME,
                question=question(clues, length, distractors),
                data={
                    "words": clues,
                    "length": length,
                    "answer": target,
                    "distractors": distractors,
                },
                solution=target,
            )
        )
    return problems


TASK = TaskSpec(
    name=NAME, make_problems=make_problems, check=check, describe_params=DESCRIBE_PARAMS
)
