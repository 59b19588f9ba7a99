"""The `rearrange` stage (PAPER.md stage 5): graded samples + agreeing reflections -> silver traces.

Algorithm, per run:
1. Read problems.jsonl, samples.jsonl, reflections.jsonl. Keep reflections with `agrees=True`
   (verdict matches the checker's grade).
2. Pair each sample with ONE of its agreeing reflections, drawn with
   `Random(f"{seed}/{sample_id}/reflection")`; samples with none are dropped
   (`sf_mlx.traces.make_pairs`). One fixed reflection per sample keeps a trace from showing an
   attempt twice; the released script instead redraws a reflection each time a sample is used.
3. Per problem, build traces in `cfg.format` with `Random(f"{seed}/{problem_id}/{format}")`
   (`sf_mlx.traces.make_traces`; the formats, and how they depart from the released script, are
   listed there: a working shuffle, no fused phrases, no crash without wrong attempts).
4. Split by problem: a seeded shuffle of the problems that have traces puts round(valid_fraction
   * n) of them (at least 1 when n >= 2, never all) in valid, the rest in train, so a question
   is never in both files.
5. Write traces.jsonl, sft/train.jsonl and sft/valid.jsonl (mlx-lm chat rows: plain question,
   rendered trace), sft/rearrange_stats.json, then the done marker.
"""

from __future__ import annotations

import random
from typing import Any

from sf_mlx.config import RearrangeConfig
from sf_mlx.records import Problem, Reflection, Sample, Trace
from sf_mlx.rundir import RunDir, read_jsonl, write_json_atomic, write_jsonl_atomic
from sf_mlx.stages.problems import read_pool
from sf_mlx.traces import (
    ends_correct,
    get_format,
    make_pairs,
    make_traces,
    render_trace,
    trace_pairs,
    trace_to_chat,
)

STAGE = "rearrange"


def split_problems(
    problem_ids: list[str], valid_fraction: float, seed: int
) -> tuple[set[str], set[str]]:
    """(train, valid) problem ids; valid gets round(fraction * n), at least 1 when n >= 2."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"rearrange.valid_fraction={valid_fraction}; expected 0 <= f < 1")
    ids = sorted(problem_ids)
    n = len(ids)
    n_valid = min(max(1, round(valid_fraction * n)), n - 1) if n >= 2 else 0
    random.Random(f"{seed}/{STAGE}/split").shuffle(ids)
    return set(ids[n_valid:]), set(ids[:n_valid])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def build_all_traces(
    problems: list[Problem],
    samples: list[Sample],
    reflections: list[Reflection],
    cfg: RearrangeConfig,
    seed: int,
) -> tuple[list[Trace], int]:
    """(traces of every problem in `problems` order, number of pairs kept)."""
    get_format(cfg.format)  # fail on a bad name before any work
    by_id = {p.problem_id: p for p in problems}
    unknown = sorted({s.problem_id for s in samples} - set(by_id))
    if unknown:
        raise ValueError(f"{len(unknown)} sample(s) of unknown problems, e.g. {unknown[:3]}")
    pairs = make_pairs(samples, reflections, seed)
    traces: list[Trace] = []
    for p in problems:
        rng = random.Random(f"{seed}/{p.problem_id}/{cfg.format}")
        got = pairs.get(p.problem_id, [])
        traces += make_traces(p.problem_id, p.question, got, cfg.format, rng, cfg.max_pairs)
    return traces, sum(len(v) for v in pairs.values())


def run_rearrange(run: RunDir, cfg: RearrangeConfig, seed: int) -> dict[str, Any]:
    """Build the silver traces and the SFT files of `run`; returns the stats (also saved)."""
    problems = read_pool(run, "sft")  # the only problems sampled
    samples = read_jsonl(run.samples, Sample, complete=True)
    reflections = read_jsonl(run.reflections, Reflection, complete=True)
    traces, n_pairs = build_all_traces(problems, samples, reflections, cfg, seed)
    if not traces:
        raise ValueError(
            f"no traces: {len(samples)} samples, {sum(r.agrees for r in reflections)} agreeing "
            f"reflections, {n_pairs} pairs, none in a problem with a correct pair "
            f"(format {cfg.format!r})"
        )
    with_traces = list(dict.fromkeys(t.problem_id for t in traces))
    train_ids, valid_ids = split_problems(with_traces, cfg.valid_fraction, seed)
    texts = {t.trace_id: render_trace(t) for t in traces}
    train = [trace_to_chat(t) for t in traces if t.problem_id in train_ids]
    valid = [trace_to_chat(t) for t in traces if t.problem_id in valid_ids]

    per_format: dict[str, int] = {}
    for t in traces:
        per_format[t.format] = per_format.get(t.format, 0) + 1
    stats = {
        "format": cfg.format,
        "traces": len(traces),
        "traces_per_format": per_format,
        "problems": len(problems),  # the SFT pool
        "problems_with_traces": len(with_traces),
        "samples": len(samples),
        "reflections_agreeing": sum(r.agrees for r in reflections),
        "pairs_kept": n_pairs,
        "mean_pairs_per_trace": _mean([trace_pairs(t) for t in traces]),
        "mean_trace_chars": _mean([len(x) for x in texts.values()]),
        "frac_ending_correct": _mean([float(ends_correct(t)) for t in traces]),
        "train_rows": len(train),
        "valid_rows": len(valid),
        "train_problems": len(train_ids),
        "valid_problems": len(valid_ids),
    }
    write_jsonl_atomic(run.traces, traces)
    write_jsonl_atomic(run.sft_dir / "train.jsonl", train)
    write_jsonl_atomic(run.sft_dir / "valid.jsonl", valid)
    write_json_atomic(run.sft_dir / "rearrange_stats.json", stats)
    run.mark_done(STAGE, stats)
    return stats
