"""Resumable batched generation shared by the `sample` and `reflect` stages.

A job is one prompt whose completion becomes one record with a stable id. Records are appended to
their JSONL file as each batch finishes; on a re-run, ids already in the file are skipped, so a
killed stage loses at most the batch in flight and never duplicates a record.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sf_mlx.records import Record, to_dicts
from sf_mlx.rundir import RunDir, append_jsonl, iter_jsonl


@dataclass(frozen=True)
class Job:
    record_id: str
    prompt: str  # the user turn
    payload: Any  # whatever `make_record` needs besides the generation


Progress = Callable[[int, int, float], None]  # (done, total, tokens per second)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from a stable tuple (never Python's salted hash)."""
    return (
        int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big") >> 1
    )


def existing_ids(path: Path, id_field: str) -> set[str]:
    if not path.exists():
        return set()
    return {row[id_field] for row in iter_jsonl(path)}


def run_jobs(
    run: RunDir,
    stage: str,
    out_path: Path,
    id_field: str,
    jobs: Sequence[Job],
    model: Any,
    tokenizer: Any,
    params: Any,
    batch_size: int,
    seed: int,
    make_record: Callable[[Job, Any, int], Record],
    progress: Progress | None = None,
) -> int:
    """Generate every job not yet in `out_path`; returns how many were generated now.

    Pending jobs are cut into batches of `batch_size`, each seeded by its first record's id. On
    N ranks (sf_mlx/distributed.py) rank k takes batches k, k + N, ...; each round's records
    are gathered and appended in batch order, so the file is the one a single rank writes."""
    from sf_mlx import distributed as dist
    from sf_mlx import model as model_io

    done_ids = existing_ids(out_path, id_field)
    dist.same_on_every_rank(f"the records in {out_path.name}", sorted(done_ids))
    pending = [j for j in jobs if j.record_id not in done_ids]
    batches = [pending[s : s + batch_size] for s in range(0, len(pending), batch_size)]
    total, done = len(jobs), len(jobs) - len(pending)
    if progress:
        progress(done, total, 0.0)
    tps = 0.0  # of this rank's last batch

    def generate_batch(batch: list[Job]) -> list[Record]:
        nonlocal tps
        batch_seed = derive_seed(seed, stage, batch[0].record_id)
        tic = time.perf_counter()
        prompts = [model_io.chat_prompt(tokenizer, j.prompt) for j in batch]
        gens = model_io.generate(
            model, tokenizer, prompts, params, seed=batch_seed, batch_size=batch_size
        )
        tps = sum(len(g.tokens) for g in gens) / max(time.perf_counter() - tic, 1e-9)
        return [make_record(j, g, batch_seed) for j, g in zip(batch, gens, strict=True)]

    for round_, results in dist.in_rounds(batches, generate_batch, to_dicts):
        if run.writer:
            append_jsonl(out_path, [row for records in results for row in records])
        done += sum(len(b) for b in round_)
        run.log_progress(stage, done, total)
        if progress:
            progress(done, total, tps)
    dist.barrier()  # the writer has appended everything before anyone reads the file
    return len(pending)


def run_generation_stage(
    run: RunDir,
    stage: str,
    out_path: Path,
    id_field: str,
    jobs: Sequence[Job],
    model_name: str,
    cfg: Any,
    seed: int,
    make_record: Callable[[Job, Any, int], Record],
    progress: Progress | None = None,
) -> int:
    """Load the model and sample every pending job with a stage config's decoding settings
    (`max_tokens`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `batch_size`)."""
    from sf_mlx import model as model_io

    model, tok = model_io.load(model_name)
    params = model_io.SamplingParams(
        cfg.max_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty
    )
    return run_jobs(
        run,
        stage,
        out_path,
        id_field,
        jobs,
        model,
        tok,
        params,
        cfg.batch_size,
        seed,
        make_record,
        progress,
    )
