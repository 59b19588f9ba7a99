"""Tasks: problem generators and answer checkers (pure functions, stdlib only, no MLX).

`TASKS` maps a task name to its `TaskSpec`; `grade` extracts and checks one response.
"""

from __future__ import annotations

import hashlib
import re

from sf_mlx.records import Problem
from sf_mlx.tasks import acronym, countdown, hub, multiplication
from sf_mlx.tasks.base import ANSWER_RE, TaskSpec, count_answers, extract_answer, unknown_name

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        countdown.TASK,
        multiplication.TASK,
        acronym.TASK,
        hub.GSM8K_TASK,
        hub.COMMONSENSE_QA_TASK,
    )
}


def get_task(name: str) -> TaskSpec:
    """The task called `name`; ValueError naming the nearest valid name otherwise."""
    if name in TASKS:
        return TASKS[name]
    raise unknown_name("task", name, sorted(TASKS))


def parse_task_spec(spec: str) -> tuple[str, dict[str, int]]:
    """`name` or `name:key=value:key=value` (integer values, keys from the task's parameters) as
    (name, params); ValueError naming what is wrong. Colons separate the parameters so a spec is
    one item of a `--set problems.ood_tasks=[...]` list; commas are read too."""
    name, _, rest = spec.partition(":")
    task = get_task(name.strip())
    params: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in re.split("[:,]", rest))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in task.describe_params:
            known = ", ".join(task.describe_params) or "none"
            raise ValueError(f"task spec {spec!r}: {item!r} is not key=value with a key of {known}")
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(f"task spec {spec!r}: {key} must be an integer") from None
    return task.name, params


def spec_label(spec: str) -> str:
    """A file-safe name for a task spec: `acronym:length=3` -> `acronym-length3`."""
    name, params = parse_task_spec(spec)
    return "-".join([name] + [f"{k}{v}" for k, v in params.items()])


def grade(problem: Problem, response: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one model response to `problem`."""
    answer = extract_answer(response)
    return answer, bool(get_task(problem.task).check(problem, answer))


def heldout(problem: Problem) -> bool:
    """True for a fixed 20% of the problem space (a hash of the numbers and target, or of the
    question). The built-in base model never saw these; every evaluation set is drawn from them."""
    d = problem.data
    key = (
        f"{problem.task}|{sorted(d['numbers'])}|{d['target']}"
        if "numbers" in d
        else problem.question
    )
    return hashlib.sha256(key.encode()).digest()[0] < 52  # 52/256 = 20.3%


def heldout_problems(task: str, n: int, seed: int, **params) -> list[Problem]:
    """The first `n` held-out problems of a seeded stream."""
    out: list[Problem] = []
    batch = 0
    while len(out) < n:
        made = get_task(task).make_problems(4 * n, seed + 7919 * batch, **params)
        out += [p for p in made if heldout(p)]
        batch += 1
        if batch > 50:
            raise ValueError(f"could not find {n} held-out {task} problems with {params}")
    return out[:n]


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated integers") from None


def problem_from_inputs(
    task: str,
    *,
    numbers: str | None = None,
    target: int | None = None,
    require_all: bool = False,
    a: int | None = None,
    b: int | None = None,
    words: str | None = None,
) -> Problem:
    """A one-off problem from user inputs (the `sf-mlx check` command); ValueError on bad input."""
    get_task(task)
    if task == "countdown":
        if numbers is None or target is None:
            raise ValueError("countdown needs --numbers (e.g. 3,5,7) and --target (e.g. 22)")
        nums = _int_list(numbers, "--numbers")
        if not 1 <= len(nums) <= 12 or min(nums) < 0:
            raise ValueError(f"--numbers {numbers!r}: give 1 to 12 non-negative integers")
        data = {"numbers": nums, "target": target, "require_all": require_all}
        return Problem("cli", task, countdown.question(nums, target, require_all), data)
    if task == "multiplication":
        if a is None or b is None:
            raise ValueError("multiplication needs --a and --b")
        data = {"a": a, "b": b, "product": a * b, "digits": len(str(abs(a)))}
        return Problem("cli", task, multiplication.question(a, b), data)
    if task == "acronym":
        if not words:
            raise ValueError("acronym needs --words (e.g. river,apple,tiger)")
        clues = [w.strip().lower() for w in words.split(",") if w.strip()]
        data = {"words": clues, "length": len(clues), "distractors": 0}
        return Problem("cli", task, acronym.question(clues, len(clues)), data)
    raise ValueError(f"`check` supports countdown, multiplication and acronym, not {task!r}")


__all__ = [
    "heldout",
    "heldout_problems",
    "parse_task_spec",
    "spec_label",
    "problem_from_inputs",
    "ANSWER_RE",
    "TASKS",
    "Problem",
    "TaskSpec",
    "count_answers",
    "extract_answer",
    "get_task",
    "grade",
]
