"""Hub evaluation tasks (GSM8K, CommonsenseQA) via `datasets`, from the Hub or local files.

`datasets` is imported inside the loader only, so the rest of `sf_mlx.tasks` stays stdlib.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from sf_mlx.records import Problem
from sf_mlx.tasks.base import TaskSpec

# name -> (hub id, config, default split). CommonsenseQA's test split ships without answer
# keys, so its default is the validation split (what papers report as "CSQA").
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "commonsense_qa": ("tau/commonsense_qa", None, "validation"),
}
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TAIL = " Give your final answer in <answer> </answer> tags."


def _local_files(path: str, split: str) -> tuple[str, list[str]]:
    """(datasets builder name, files) for a local file or a folder of files."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _FORMATS)
        # A folder holding several splits (e.g. a Hub snapshot): keep the files of this split.
        of_split = [f for f in files if split in f.name]
        files = of_split or files
    else:
        raise ValueError(f"path={path!r} does not exist")
    formats = {_FORMATS.get(f.suffix.lower()) for f in files}
    if not files or None in formats or len(formats) != 1:
        raise ValueError(
            f"path={path!r}: need .json/.jsonl or .parquet files of one format, "
            f"found {[f.name for f in files][:5]}"
        )
    return formats.pop() or "json", [str(f) for f in files]


def _load_rows(
    name: str,
    split: str,
    path: str | None,
    hub_id: str | None,
    cache_dir: str | None,
) -> Any:
    import datasets  # lazy: heavy, and only needed here

    if path is not None:
        builder, files = _local_files(path, split)
        return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
    repo, config, _ = HUB_DATASETS[name]
    repo = hub_id or repo
    try:
        return datasets.load_dataset(repo, config, split=split, cache_dir=cache_dir)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        # OSError covers ConnectionError (offline) and FileNotFoundError (unknown dataset).
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"could not load {name!r} from the Hub as {repo!r} (config={config!r}, "
            f"split={split!r}): {first}; pass path= a local .json/.jsonl/.parquet file or folder"
        ) from None


def _gsm8k_problem(row: dict[str, Any], pid: str) -> Problem | None:
    raw = str(row.get("answer", ""))
    if "####" not in raw:
        return None
    gold = raw.rsplit("####", 1)[1].strip().replace(",", "")
    q = str(row["question"]).strip()
    return Problem(
        problem_id=pid,
        task="gsm8k",
        question=q + _TAIL,
        data={"raw_question": q, "answer": gold, "rationale": raw.rsplit("####", 1)[0].strip()},
        solution=gold,
    )


def _csqa_problem(row: dict[str, Any], pid: str) -> Problem | None:
    key = str(row.get("answerKey") or "").strip()
    choices = row.get("choices") or {}
    labels, texts = list(choices.get("label", [])), list(choices.get("text", []))
    if not key or key not in labels or len(labels) != len(texts):
        return None  # unlabeled (CSQA's test split) or malformed row
    options = {str(lab): str(txt) for lab, txt in zip(labels, texts, strict=True)}
    q = str(row["question"]).strip()
    listed = "\n".join(f"{lab}. {txt}" for lab, txt in options.items())
    return Problem(
        problem_id=pid,
        task="commonsense_qa",
        question=(
            f"{q}\n{listed}\nAnswer with the letter of the correct choice."
            " Give your final answer in <answer> </answer> tags."
        ),
        data={"raw_question": q, "choices": options, "answer": key},
        solution=key,
    )


def load_hub_problems(
    name: str,
    split: str | None = None,
    n: int | None = None,
    path: str | None = None,
    seed: int = 0,
    *,
    hub_id: str | None = None,
    cache_dir: str | None = None,
) -> list[Problem]:
    """Problems of `name` ("gsm8k" or "commonsense_qa") from the Hub or a local file/folder.

    `split` defaults to the dataset's evaluation split (gsm8k: test, commonsense_qa:
    validation). `n` keeps a seeded random subset (in dataset order); `path` reads local
    JSON/JSONL/Parquet rows with the Hub schema; `hub_id` overrides the Hub repository.
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown hub task {name!r}; choose from {sorted(HUB_DATASETS)}")
    split = split or HUB_DATASETS[name][2]
    rows = _load_rows(name, split, path, hub_id, cache_dir)
    make = _gsm8k_problem if name == "gsm8k" else _csqa_problem
    problems = []
    for i in range(len(rows)):
        p = make(dict(rows[i]), f"{name}/{split}/{i:05d}")
        if p is not None:
            problems.append(p)
    if not problems:
        hint = " (CommonsenseQA's test split has no answer keys: use split='validation')"
        raise ValueError(f"{name}: no labeled rows in split {split!r}" + hint * (name != "gsm8k"))
    if n is not None and n < len(problems):
        keep = sorted(random.Random(seed).sample(range(len(problems)), max(n, 0)))
        problems = [problems[k] for k in keep]
    return problems


# ---------------------------------------------------------------------------------------------
# Checkers

_NUMBER_RE = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def _to_fraction(text: str) -> Fraction | None:
    t = text.replace(",", "").strip()
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def check_gsm8k(problem: Problem, answer: str | None) -> bool:
    """The last number in `answer` (commas stripped) equals the gold number."""
    try:
        if not isinstance(answer, str) or len(answer) > 10_000:
            return False
        last = None
        for m in _NUMBER_RE.finditer(answer):
            last = m.group(0)
        gold = _to_fraction(str(problem.data["answer"]))
        got = _to_fraction(last) if last is not None else None
        return gold is not None and got is not None and got == gold
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def _norm(text: str) -> str:
    return " ".join(text.strip().strip(".").strip().lower().split())


def check_commonsense_qa(problem: Problem, answer: str | None) -> bool:
    """The choice letter ("B", "(B)", "B) text", "B. text") or the exact choice text."""
    try:
        if not isinstance(answer, str) or len(answer) > 1000:
            return False
        choices: dict[str, str] = dict(problem.data["choices"])
        gold = str(problem.data["answer"])
        text = answer.strip()
        by_text = {_norm(t): lab for lab, t in choices.items()}
        if _norm(text) in by_text:
            return by_text[_norm(text)] == gold
        labels = "".join(re.escape(lab) for lab in choices if len(lab) == 1)
        if not labels:
            return False
        m = re.fullmatch(rf"\(?([{labels}])\)?\.?", text, re.IGNORECASE)
        if m:
            return m.group(1).upper() == gold.upper()
        m = re.fullmatch(rf"\(?([{labels}])[).:]\s*(.*)", text, re.DOTALL) or re.fullmatch(
            rf"\(([{labels}])\)\s*(.*)", text, re.DOTALL
        )
        if m is None:
            return False
        letter, rest = m.group(1), _norm(m.group(2))
        # "B) text": the letter decides, unless the text names a different choice.
        if rest and rest in by_text and by_text[rest] != letter:
            return False
        return letter == gold
    except (AttributeError, KeyError, TypeError, ValueError, re.error):
        return False


def _maker(name: str) -> Callable[..., list[Problem]]:
    def make_problems(
        n: int,
        seed: int,
        path: str | None = None,
        split: str | None = None,
        cache_dir: str | None = None,
    ) -> list[Problem]:
        return load_hub_problems(name, split=split, n=n, path=path, seed=seed, cache_dir=cache_dir)

    make_problems.__doc__ = f"`n` {name} problems (seeded subset) from the Hub or `path`."
    return make_problems


_HUB_PARAMS = {
    "path": "local .json/.jsonl/.parquet file or folder with Hub-schema rows (default: the Hub)",
    "split": "dataset split (default: test for gsm8k, validation for commonsense_qa)",
    "cache_dir": "datasets cache folder (default: the datasets default)",
}
GSM8K_TASK = TaskSpec(
    name="gsm8k", make_problems=_maker("gsm8k"), check=check_gsm8k, describe_params=_HUB_PARAMS
)
COMMONSENSE_QA_TASK = TaskSpec(
    name="commonsense_qa",
    make_problems=_maker("commonsense_qa"),
    check=check_commonsense_qa,
    describe_params=_HUB_PARAMS,
)
