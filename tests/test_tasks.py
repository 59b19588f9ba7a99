"""Task registry, answer extraction, generators and the non-Countdown checkers (pure and fast)."""

from __future__ import annotations

import inspect
import json
import random
import re
import time
from pathlib import Path

import pytest

from sf_mlx.records import Problem
from sf_mlx.tasks import (
    ANSWER_RE,
    TASKS,
    TaskSpec,
    acronym,
    count_answers,
    countdown,
    extract_answer,
    get_task,
    grade,
    hub,
    multiplication,
)

# --- registry -------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(TASKS) == {"countdown", "multiplication", "acronym", "gsm8k", "commonsense_qa"}
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name
        assert get_task(name) is spec
        params = inspect.signature(spec.make_problems).parameters
        assert list(params)[:2] == ["n", "seed"]
        assert set(spec.describe_params) == set(list(params)[2:]), name


def test_get_task_unknown_suggests_nearest() -> None:
    with pytest.raises(ValueError, match="'countdown'"):
        get_task("countdwn")
    with pytest.raises(ValueError, match="'multiplication'"):
        get_task("multiplcation")


def test_grade() -> None:
    [p] = countdown.make_problems(1, 0)
    assert grade(p, f"think... <answer>{p.solution}</answer>") == (p.solution, True)
    assert grade(p, "<answer>1 + 1</answer>") == ("1 + 1", False)
    assert grade(p, "no tags at all") == (None, False)


# --- extract_answer -------------------------------------------------------------------------


def test_extract_answer() -> None:
    assert extract_answer("<answer> 1 + 2 </answer>") == "1 + 2"
    assert extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"
    assert extract_answer("<ANSWER>x</Answer>") == "x"
    assert extract_answer("<answer>\nStep 1: 1 + 2 = 3\n</answer>") == "Step 1: 1 + 2 = 3"
    assert extract_answer("no answer here") is None
    assert extract_answer("<answer>a</answer> <answer>unclosed") == "a"
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("</answer>") is None
    assert extract_answer("<answer>a <answer>b</answer>") == "b"
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer(None) is None  # type: ignore[arg-type]
    assert count_answers("<answer>a</answer> <answer>b</answer> <answer>c") == 2
    assert count_answers("nothing") == 0


def test_extract_answer_matches_regex() -> None:
    text = "<answer>a</answer></answer><answer>b<answer>c</answer>x"
    assert [m.group(1) for m in ANSWER_RE.finditer(text)] == ["a", "c"]
    assert count_answers(text) == 2 and extract_answer(text) == "c"
    rng = random.Random(0)
    parts = ["<answer>", "</answer>", "<ANSWER>", "</Answer>", "a", "İ\n", "<answer", "/answer>"]
    for _ in range(3000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 10)))
        blocks = [m.group(1).strip() for m in ANSWER_RE.finditer(text)]
        assert extract_answer(text) == (blocks[-1] if blocks else None), text
        assert count_answers(text) == len(blocks), text


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 1_250_000,
        "<answer>" + "x" * 10_000_000,
        "<answer>1</answer>" + "</answe" * 1_400_000,
        "x" * 10_000_000 + "<answer>7</answer>",
    ],
    ids=["many-open-tags", "unclosed-10MB", "broken-close-tags", "answer-at-end"],
)
def test_extract_answer_large_input_fast(text: str) -> None:
    start = time.perf_counter()
    extract_answer(text)
    count_answers(text)
    assert time.perf_counter() - start < 2.0


# --- countdown generation -------------------------------------------------------------------


@pytest.mark.parametrize("num_args", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("require_all", [False, True])
def test_countdown_generated_problems_are_solved_by_their_reference(
    num_args: int, require_all: bool
) -> None:
    problems = countdown.make_problems(150, 3, num_args=num_args, require_all=require_all)
    assert len({p.problem_id for p in problems}) == 150
    for i, p in enumerate(problems):
        d = p.data
        assert p.task == "countdown" and p.problem_id == f"countdown-{num_args}/s3/{i:05d}"
        assert len(d["numbers"]) == num_args and all(1 <= x <= 100 for x in d["numbers"])
        assert 10 <= d["target"] <= 1000 and d["require_all"] is require_all
        assert str(d["numbers"]) in p.question and str(d["target"]) in p.question
        assert len(d["steps"]) == num_args - 1
        assert countdown.check(p, p.solution), p
        assert countdown.check(p, "\n".join(d["steps"])), p
        assert countdown.check_answer(p.solution, d["numbers"], d["target"], require_all=True)
        assert re.fullmatch(r"[0-9+\-*/() ]+", p.solution)


def test_countdown_deterministic_and_seeded() -> None:
    a = countdown.make_problems(30, 11, num_args=4)
    assert a == countdown.make_problems(30, 11, num_args=4)
    assert countdown.make_problems(5, 11, num_args=4) == a[:5]  # per-problem derivation
    b = countdown.make_problems(30, 12, num_args=4)
    assert [p.data["numbers"] for p in a] != [p.data["numbers"] for p in b]


def test_countdown_custom_ranges() -> None:
    ps = countdown.make_problems(50, 0, num_args=3, min_number=1, max_number=9, max_target=50)
    assert all(max(p.data["numbers"]) <= 9 and p.data["target"] <= 50 for p in ps)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"min_target": 500, "max_target": 100}, "min_target=500"),
        ({"num_args": 7}, "num_args=7"),
        ({"num_args": 1}, "num_args=1"),
        ({"min_number": 0}, "min_number=0"),
        ({"min_number": 50, "max_number": 10}, "max_number=10"),
        ({"num_args": 2, "max_number": 1, "min_target": 10, "max_target": 20}, r"\[10, 20\]"),
    ],
)
def test_countdown_impossible_ranges(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        countdown.make_problems(3, 0, **params)


def test_countdown_generation_speed() -> None:
    start = time.perf_counter()
    countdown.make_problems(1000, 0, num_args=6)
    assert time.perf_counter() - start < 2.0


def test_countdown_solver() -> None:
    for p in countdown.make_problems(5, 1, num_args=5) + countdown.make_problems(2, 1, num_args=6):
        d = p.data
        found = countdown.solve(d["numbers"], d["target"], require_all=True)
        assert found is not None and countdown.check_answer(found, d["numbers"], d["target"], True)
    assert countdown.solve([1, 1], 10) is None
    assert countdown.solve([2, 3, 7], 3) == "3"
    assert countdown.solve([2, 3, 7], 3, require_all=True) is not None  # 7 - 2 * ... e.g.
    assert countdown.solve([1, 3, 4, 6], 24, require_all=True) is not None  # 6 / (1 - 3 / 4)
    assert countdown.solve([0, 5], 0, require_all=True) is not None
    start = time.perf_counter()
    assert countdown.solve([97, 89, 83, 79, 73, 71], 100_003, require_all=True) is None
    assert time.perf_counter() - start < 2.0


# --- multiplication -------------------------------------------------------------------------


MUL = Problem(
    "m",
    "multiplication",
    "q",
    {"a": 3456, "b": 7890, "product": 27267840, "digits": 4},
    "27267840",
)


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("27267840", True),
        (" 27,267,840 ", True),
        ("27 267 840", True),
        ("= 27267840", True),
        ("3456 x 7890 = 27267840", True),
        ("3456 × 7890 = 27,267,840", True),
        ("7890 * 3456 = 27267840", True),
        ("27267841", False),
        ("27,26,7840", False),
        ("2726784O", False),
        ("２７２６７８４０", False),
        ("27267840.0", False),
        ("-27267840", False),
        ("3456 x 7891 = 27267840", False),
        ("3456 x 7890 27267840", False),
        ("about 27267840", False),
        ("", False),
        (None, False),
        ("9" * 10_000, False),
    ],
)
def test_multiplication_checker(answer: str | None, ok: bool) -> None:
    assert multiplication.check(MUL, answer) is ok


def test_multiplication_generation() -> None:
    for digits in range(2, 6):
        ps = multiplication.make_problems(20, 0, digits=digits)
        assert ps == multiplication.make_problems(20, 0, digits=digits)
        for p in ps:
            a, b = p.data["a"], p.data["b"]
            assert len(str(a)) == len(str(b)) == digits and p.data["product"] == a * b
            assert multiplication.check(p, p.solution) and f"{a} x {b}" in p.question
    with pytest.raises(ValueError, match="digits=6"):
        multiplication.make_problems(1, 0, digits=6)


# --- acronym --------------------------------------------------------------------------------


def test_word_list() -> None:
    words = acronym.word_list()
    assert 300 <= len(words) <= 2000 and len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in words)


def _acr(words: list[str], length: int) -> Problem:
    return Problem("a", "acronym", "q", {"words": words, "length": length}, "")


def test_acronym_checker() -> None:
    p = _acr(["river", "apple", "tiger", "egg"], 4)
    assert acronym.check(p, "rate") and acronym.check(p, " RATE. ") and acronym.check(p, "Rate")
    assert not acronym.check(p, "rat") and not acronym.check(p, "tear")
    assert not acronym.check(p, "") and not acronym.check(p, None)
    # With distractors, any list word spelled by a subsequence of the initials counts.
    q = _acr(["cat", "apple", "river", "tiger"], 3)
    for word, ok in [("car", True), ("cat", True), ("art", True), ("act", False), ("crt", False)]:
        assert acronym.check(q, word) is ok, word


@pytest.mark.parametrize("distractors", [0, 2])
def test_acronym_generation(distractors: int) -> None:
    for length in range(3, 9):
        ps = acronym.make_problems(30, 5, length=length, distractors=distractors)
        assert ps == acronym.make_problems(30, 5, length=length, distractors=distractors)
        for p in ps:
            words = p.data["words"]
            assert len(words) == length + distractors and p.solution not in words
            assert all(w in acronym.word_list() for w in words)
            assert acronym.check(p, p.solution) and acronym.check(p, p.solution.upper())
            assert all(w in p.question for w in words)
    with pytest.raises(ValueError, match="length=9"):
        acronym.make_problems(1, 0, length=9)


# --- hub datasets from local files ----------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A car costs $1,200 twice. Total?", "answer": "2 * 1200 = 2400\n#### 2,400"},
    {"question": "Half of 9?", "answer": "9 / 2 = 4.5\n#### 4.5"},
]
CSQA_ROWS = [
    {
        "id": "q1",
        "question": "Where do you keep milk cold?",
        "question_concept": "milk",
        "choices": {
            "label": ["A", "B", "C", "D", "E"],
            "text": ["oven", "fridge", "desk", "car", "garden"],
        },
        "answerKey": "B",
    },
    {
        "id": "q2",
        "question": "What has leaves?",
        "question_concept": "leaf",
        "choices": {
            "label": ["A", "B", "C", "D", "E"],
            "text": ["stone", "cup", "tree", "road", "coin"],
        },
        "answerKey": "C",
    },
    {
        "id": "q3",
        "question": "Unlabeled row?",
        "question_concept": "x",
        "choices": {"label": ["A", "B"], "text": ["yes", "no"]},
        "answerKey": "",
    },
]


def test_gsm8k_local(tmp_path: Path) -> None:
    f = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM_ROWS)
    cache = str(tmp_path / "cache")
    ps = hub.load_hub_problems("gsm8k", path=str(f), cache_dir=cache)
    assert [p.solution for p in ps] == ["7", "2400", "4.5"]
    assert ps[0].problem_id == "gsm8k/test/00000" and "<answer>" in ps[0].question
    for response, ok in [
        ("<answer>7</answer>", True),
        ("<answer>The answer is 7.</answer>", True),
        ("<answer>8</answer>", False),
        ("no tags, 7", False),
    ]:
        assert grade(ps[0], response)[1] is ok, response
    assert grade(ps[1], "<answer>$2,400</answer>")[1]
    assert grade(ps[1], "<answer>2400.00</answer>")[1]
    assert not grade(ps[1], "<answer>2400 or 2500</answer>")[1]
    assert grade(ps[2], "<answer>4.5</answer>")[1] and not grade(ps[2], "<answer>4</answer>")[1]
    sub = TASKS["gsm8k"].make_problems(2, 1, path=str(f), cache_dir=cache)
    assert len(sub) == 2 and sub == TASKS["gsm8k"].make_problems(2, 1, path=str(f), cache_dir=cache)


def test_commonsense_qa_local_folder(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "csqa" / "validation.jsonl", CSQA_ROWS)
    _write_jsonl(tmp_path / "csqa" / "train.jsonl", CSQA_ROWS[:1])
    ps = hub.load_hub_problems(
        "commonsense_qa", path=str(tmp_path / "csqa"), cache_dir=str(tmp_path / "cache")
    )
    assert [p.solution for p in ps] == ["B", "C"]  # the unlabeled row is skipped
    p = ps[0]
    assert "B. fridge" in p.question and p.problem_id == "commonsense_qa/validation/00000"
    for answer, ok in [
        ("B", True),
        ("b", True),
        ("(B)", True),
        ("B)", True),
        ("B) fridge", True),
        ("B. fridge", True),
        ("(B) fridge", True),
        ("fridge", True),
        ("Fridge.", True),
        ("C", False),
        ("B) oven", False),
        ("oven", False),
        ("F", False),
        ("", False),
        (None, False),
    ]:
        assert hub.check_commonsense_qa(p, answer) is ok, answer


def test_hub_offline_error_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The env vars are read when datasets is imported, which may already have happened.
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        hub.load_hub_problems(
            "gsm8k", hub_id="sf-mlx-test/no-such-dataset", cache_dir=str(tmp_path)
        )
    msg = str(err.value)
    assert "\n" not in msg and "path=" in msg and "no-such-dataset" in msg
    with pytest.raises(ValueError, match="does not exist"):
        hub.load_hub_problems("gsm8k", path="/no/such/file.jsonl")
    with pytest.raises(ValueError, match="unknown hub task"):
        hub.load_hub_problems("mmlu")


def test_multiplication_by_a_shorter_factor() -> None:
    ps = multiplication.make_problems(30, 0, digits=2, b_digits=1)
    assert ps == multiplication.make_problems(30, 0, digits=2, b_digits=1)
    for p in ps:
        a, b = p.data["a"], p.data["b"]
        assert len(str(a)) == 2 and 2 <= b <= 9 and multiplication.check(p, p.solution)
        assert p.problem_id.startswith("multiplication-2x1/")
    # without b_digits the problems are those of equal-length factors, unchanged
    assert multiplication.make_problems(5, 0, digits=3) == multiplication.make_problems(
        5, 0, digits=3, b_digits=3
    )
    with pytest.raises(ValueError, match="b_digits=3 must be in 1..2"):
        multiplication.make_problems(1, 0, digits=2, b_digits=3)


def test_task_specs_name_a_task_and_its_integer_parameters() -> None:
    from sf_mlx.tasks import parse_task_spec, spec_label

    assert parse_task_spec("acronym") == ("acronym", {})
    assert parse_task_spec("multiplication:digits=2: b_digits=1") == (
        "multiplication",
        {"digits": 2, "b_digits": 1},
    )
    assert spec_label("multiplication:digits=2:b_digits=1") == "multiplication-digits2-b_digits1"
    assert spec_label("acronym") == "acronym"
    for bad, msg in (
        ("acronymm", "acronym"),
        ("acronym:lenght=3", "'lenght=3' is not key=value with a key of length, distractors"),
        ("acronym:length", "is not key=value"),
        ("acronym:length=three", "length must be an integer"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_task_spec(bad)
