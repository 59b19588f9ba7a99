"""The `reflect` stage (PAPER.md stage 4): the same model checks each of its own attempts.

`n_reflections` reflections per sample with the reflection prompt (question + attempt); the
first `<verdict>` tag is the verdict. A reflection is kept for the silver traces only when its
verdict agrees with the checker's grade (`agrees`); samples left with none are dropped later by
`rearrange`. Stats: verdict agreement per class and the fraction of samples kept.
"""

from __future__ import annotations

from sf_mlx.config import Recipe
from sf_mlx.prompts import parse_verdict, reflection_prompt
from sf_mlx.records import Problem, Reflection, Sample
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.stages.generation import Job, Progress, run_generation_stage

STAGE = "reflect"


def reflect_jobs(problems: dict[str, Problem], samples: list[Sample], m: int) -> list[Job]:
    return [
        Job(
            f"{s.sample_id}/r{i}",
            reflection_prompt(problems[s.problem_id].question, s.response),
            (s, i),
        )
        for s in samples
        for i in range(m)
    ]


def _record(job: Job, gen, seed: int) -> Reflection:
    sample, index = job.payload
    verdict = parse_verdict(gen.text)
    return Reflection(
        reflection_id=job.record_id,
        sample_id=sample.sample_id,
        problem_id=sample.problem_id,
        index=index,
        text=gen.text,
        verdict=verdict,
        agrees=verdict == ("correct" if sample.correct else "incorrect"),
        num_tokens=len(gen.tokens),
    )


def reflect_stats(samples: list[Sample], reflections: list[Reflection]) -> dict:
    grade = {s.sample_id: s.correct for s in samples}

    def agreement(cls: bool) -> float | None:
        rs = [r for r in reflections if grade[r.sample_id] == cls]
        return round(sum(r.agrees for r in rs) / len(rs), 4) if rs else None

    kept = {r.sample_id for r in reflections if r.agrees}
    n = max(1, len(reflections))
    return {
        "reflections": len(reflections),
        "verdict_parsed": round(sum(r.verdict is not None for r in reflections) / n, 4),
        "agreement": round(sum(r.agrees for r in reflections) / n, 4),
        "agreement_on_correct_samples": agreement(True),
        "agreement_on_wrong_samples": agreement(False),
        "samples_kept": len(kept),
        "samples_kept_fraction": round(len(kept) / max(1, len(samples)), 4),
        "correct_samples_kept": sum(grade[s] for s in kept),
    }


def run_reflect(run: RunDir, recipe: Recipe, progress: Progress | None = None) -> dict:
    cfg = recipe.reflect
    problems = {p.problem_id: p for p in read_jsonl(run.problems, Problem, complete=True)}
    samples = read_jsonl(run.samples, Sample, complete=True)
    jobs = reflect_jobs(problems, samples, cfg.n_reflections)
    run_generation_stage(
        run,
        STAGE,
        run.reflections,
        "reflection_id",
        jobs,
        recipe.run.model,
        cfg,
        recipe.run.seed,
        _record,
        progress,
    )
    stats = reflect_stats(samples, read_jsonl(run.reflections, Reflection))
    run.mark_done(STAGE, stats)
    return stats
