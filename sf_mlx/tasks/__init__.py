"""Tasks: problem generators and answer checkers (pure functions, stdlib only, no MLX).

`TASKS` maps a task name to its `TaskSpec`; `grade` extracts and checks one response.
"""

from __future__ import annotations

import difflib

from sf_mlx.records import Problem
from sf_mlx.tasks import acronym, countdown, hub, multiplication
from sf_mlx.tasks.base import ANSWER_RE, TaskSpec, count_answers, extract_answer

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
    near = difflib.get_close_matches(str(name), list(TASKS), n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown task {name!r}{hint} (valid: {', '.join(sorted(TASKS))})")


def grade(problem: Problem, response: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one model response to `problem`."""
    answer = extract_answer(response)
    return answer, bool(get_task(problem.task).check(problem, answer))


__all__ = [
    "ANSWER_RE",
    "TASKS",
    "Problem",
    "TaskSpec",
    "count_answers",
    "extract_answer",
    "get_task",
    "grade",
]
