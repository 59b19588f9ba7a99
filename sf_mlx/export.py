"""Export and import: Hugging Face Parquet datasets, ShareGPT `conversations` rows, and the
released SkillFactory RAW schema (one row per question x prompt variant x attempt).

`datasets` / `pyarrow` are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sf_mlx.prompts import parse_verdict
from sf_mlx.records import Problem, Reflection, Sample, Trace
from sf_mlx.traces import render_trace, trace_pairs

# Released RAW column names (the released script's defaults). Some exports spell the eval
# columns with one underscore; both are read, the double-underscore form is written.
RESPONSES = "model_responses__mutated_prompts"
IS_CORRECT = "model_responses__mutated_prompts__eval_is_correct"
EXTRACTED = "model_responses__mutated_prompts__eval_extracted_answers"
REFLECTIONS = "model_responses__mutated_prompts_reflection"
_ALIASES = {
    IS_CORRECT: (IS_CORRECT, "model_responses__mutated_prompts_eval_is_correct"),
    EXTRACTED: (EXTRACTED, "model_responses__mutated_prompts_eval_extracted_answers"),
}


# --- Hugging Face datasets ------------------------------------------------------------------------


def export_hf(
    rows: list[dict[str, Any]], out_dir: str | os.PathLike[str], split: str = "train"
) -> Path:
    """Write `rows` as a Parquet dataset in the Hub layout (`data/<split>-00000-of-00001.parquet`);
    `datasets.load_dataset(out_dir)` reads it back. Returns the Parquet file."""
    if not rows:
        raise ValueError(f"export_hf: no rows to write to {out_dir}")
    import datasets  # heavy: only when exporting

    path = Path(out_dir) / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


# --- ShareGPT (LLaMA-Factory / verl) --------------------------------------------------------------


def to_sharegpt(trace: Trace, from_value: bool = False) -> dict[str, Any]:
    """The released output row: `conversations` plus `sft_template_type_idx` (the format tag).

    Items are {"role", "content"} as the released data and its LLaMA-Factory config use; with
    `from_value` they are classic ShareGPT {"from": "human"|"gpt", "value"}.
    """
    turns = (("user", "human", trace.question), ("assistant", "gpt", render_trace(trace)))
    if from_value:
        conv = [{"from": f, "value": text} for _, f, text in turns]
    else:
        conv = [{"role": r, "content": text} for r, _, text in turns]
    return {"conversations": conv, "sft_template_type_idx": template_tag(trace)}


def template_tag(trace: Trace) -> str:
    """The released data's `sft_template_type_idx`: `*C_full` traces are tagged by their number
    of attempts, "1C" .. "5C" (the released script names each N of its loop so); other formats
    by their own name."""
    return f"{trace_pairs(trace)}C" if trace.format == "*C_full" else trace.format


# --- released RAW schema --------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # column-oriented {column: [values]}
            cols = list(data)
            return [dict(zip(cols, vals, strict=True)) for vals in zip(*data.values(), strict=True)]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(
                f"{path}: expected a list of rows or a mapping of columns, got "
                f"{type(data).__name__}"
            )
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # comes with datasets

        return pq.read_table(path).to_pylist()
    raise ValueError(
        f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json or .parquet"
    )


def _column(row: dict[str, Any], name: str, where: str) -> Any:
    for key in _ALIASES.get(name, (name,)):
        if key in row:
            return row[key]
    raise ValueError(f"{where}: missing column {name!r}; has {sorted(row)}")


def _first(value: Any, name: str, where: str) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: {name} must be a non-empty list, got {value!r}")
    return value[0]


def problem_id_for(question: str, prefix: str = "released") -> str:
    """A stable id from the question text (same question -> same id in any file or order)."""
    return f"{prefix}/{hashlib.sha256(question.encode('utf-8')).hexdigest()[:12]}"


def import_released_raw(
    path: str | os.PathLike[str], task: str = "countdown", prefix: str = "released"
) -> tuple[list[Problem], list[Sample], list[Reflection]]:
    """Problems, samples and reflections from a local file in the released RAW schema.

    One row per (question, prompt variant, attempt): the attempt, its grade and extracted answer
    at [0] of their lists, its reflections in `model_responses__mutated_prompts_reflection`.
    Ids: problem = `problem_id_for(question)`, sample = `<problem>/<variant>/<k>` (k counts rows
    of that question and variant in file order), reflection = `<sample>/r<j>`. The variant is
    `prompt_variant` (else `prompt_type`, else "original"); `answer` is kept in
    `Problem.data["answer"]` (and as text in `solution`). Token counts and seeds are unknown (0).
    Other columns are not kept.
    """
    path = Path(path)
    problems: dict[str, Problem] = {}
    samples: list[Sample] = []
    reflections: list[Reflection] = []
    counts: dict[tuple[str, str], int] = {}
    for i, row in enumerate(_read_rows(path)):
        where = f"{path} row {i}"
        question = _column(row, "question", where)
        answer = row.get("answer")
        pid = problem_id_for(question, prefix)
        if pid not in problems:
            data = {"answer": answer}
            solution = "" if answer is None else str(answer)
            # the released samples' questions are the sampled pool: SFT, as in a run
            problems[pid] = Problem(pid, task, question, data, solution, split="sft")
        elif problems[pid].data["answer"] != answer:
            raise ValueError(
                f"{where}: answer {answer!r} differs from {problems[pid].data['answer']!r} "
                f"given earlier for the same question"
            )
        variant = row.get("prompt_variant", row.get("prompt_type")) or "original"
        k = counts[(pid, variant)] = counts.get((pid, variant), -1) + 1
        sid = f"{pid}/{variant}/{k}"
        correct = _first(_column(row, IS_CORRECT, where), IS_CORRECT, where)
        if not isinstance(correct, bool):
            raise ValueError(f"{where}: {IS_CORRECT}[0]={correct!r} is not a bool")
        extracted = _first(_column(row, EXTRACTED, where), EXTRACTED, where)
        response = _first(_column(row, RESPONSES, where), RESPONSES, where)
        samples.append(Sample(sid, pid, variant, k, response, extracted, correct, 0, "stop", 0))
        for j, text in enumerate(_column(row, REFLECTIONS, where) or []):
            verdict = parse_verdict(text)
            agrees = verdict is not None and (verdict == "correct") == correct
            reflections.append(Reflection(f"{sid}/r{j}", sid, pid, j, text, verdict, agrees, 0))
    return list(problems.values()), samples, reflections


def export_released_raw(
    problems: Iterable[Problem], samples: Iterable[Sample], reflections: Iterable[Reflection]
) -> list[dict[str, Any]]:
    """RAW rows (one per sample, in sample order): the inverse of `import_released_raw`."""
    by_id = {p.problem_id: p for p in problems}
    refl: dict[str, list[Reflection]] = {}
    for r in reflections:
        refl.setdefault(r.sample_id, []).append(r)
    rows = []
    for s in samples:
        if s.problem_id not in by_id:
            raise ValueError(f"sample {s.sample_id!r}: unknown problem {s.problem_id!r}")
        p = by_id[s.problem_id]
        answer = p.data["answer"] if "answer" in p.data else p.solution
        texts = [r.text for r in sorted(refl.get(s.sample_id, []), key=lambda r: r.index)]
        rows.append(
            {
                "question": p.question,
                "answer": answer,
                "prompt_variant": s.variant,
                RESPONSES: [s.response],
                IS_CORRECT: [s.correct],
                EXTRACTED: [s.extracted],
                REFLECTIONS: texts,
            }
        )
    return rows


# --- run directories ------------------------------------------------------------------------------

EXPORTS = ("traces", "samples", "raw")


def export_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], what: str, fmt: str
) -> Path:
    """Export a run's traces / samples / raw released-schema rows as `hf` Parquet or `sharegpt`."""
    from sf_mlx.rundir import RunDir, read_jsonl, write_jsonl_atomic
    from sf_mlx.traces import trace_to_chat

    run = RunDir(Path(run_dir))
    if what not in EXPORTS:
        raise ValueError(f"--what {what!r}: expected one of {', '.join(EXPORTS)}")
    if fmt not in ("hf", "sharegpt"):
        raise ValueError(f"--format {fmt!r}: expected hf or sharegpt")
    if fmt == "sharegpt" and what != "traces":
        raise ValueError("--format sharegpt exports traces only (they are the SFT conversations)")
    if what == "traces":
        traces = read_jsonl(run.traces, Trace)
        if fmt == "sharegpt":
            path = Path(out) / "traces_sharegpt.jsonl"
            write_jsonl_atomic(path, [to_sharegpt(t) for t in traces])
            return path
        rows = [{**t.to_dict(), "text": render_trace(t), **trace_to_chat(t)} for t in traces]
    elif what == "samples":
        rows = [s.to_dict() for s in read_jsonl(run.samples, Sample)]
    else:
        rows = export_released_raw(
            read_jsonl(run.problems, Problem),
            read_jsonl(run.samples, Sample),
            read_jsonl(run.reflections, Reflection),
        )
    return export_hf(rows, Path(out) / what)


def import_run(
    path: str | os.PathLike[str], run_dir: str | os.PathLike[str], recipe_name: str, task: str
) -> dict[str, int]:
    """Start a run from released raw data: problems, samples and reflections written and marked
    done, so `sf-mlx stage rearrange` builds traces from the paper's own samples. The imported
    questions are the SFT pool; the RL and evaluation pools are the recipe's own, less any
    imported question, so the run goes on through GRPO and evaluation."""

    from sf_mlx.recipe_files import dump_recipe, load_recipe
    from sf_mlx.rundir import RunDir, write_jsonl_atomic
    from sf_mlx.stages.problems import eval_pools, training_pools
    from sf_mlx.tasks import get_task

    get_task(task)  # an unknown task name is one line, before anything is written
    problems, samples, reflections = import_released_raw(path, task=task)
    run = RunDir(Path(run_dir)).create()
    if run.samples.exists():
        raise ValueError(f"{run.path} already has samples.jsonl; import into a new run directory")
    if not run.recipe.exists():
        dump_recipe(load_recipe(recipe_name), run.recipe, header=f"imported from {path}")
    recipe = load_recipe(str(run.recipe))
    imported = {p.question for p in problems}
    rl = [p for p in training_pools(recipe)[1] if p.question not in imported]
    evals = [p for p in eval_pools(recipe) if p.question not in imported]
    write_jsonl_atomic(run.problems, problems + rl + evals)
    write_jsonl_atomic(run.samples, samples)
    write_jsonl_atomic(run.reflections, reflections)
    counts = {
        "problems": len(problems),
        "samples": len(samples),
        "reflections": len(reflections),
        "rl_problems": len(rl),
        "eval_problems": len(evals),
    }
    for stage in ("problems", "sample", "reflect"):
        run.mark_done(stage, {"imported_from": str(path), **counts})
    return counts
