"""The `sample` stage (PAPER.md stages 2-3): the base model's own attempts, graded by the checker.

Every SFT-pool problem is asked under each prompt variant `n_samples` times (the variant's
instruction is added to the plain question only here). Each attempt is graded on its last
`<answer>` and appended to samples.jsonl as its batch finishes; a re-run resumes.
"""

from __future__ import annotations

from collections import defaultdict

from sf_mlx.config import Recipe
from sf_mlx.prompts import variant_prompt
from sf_mlx.records import Problem, Sample
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.stages.generation import Job, Progress, run_generation_stage
from sf_mlx.stages.problems import read_pool
from sf_mlx.tasks import grade

STAGE = "sample"


def sample_jobs(problems: list[Problem], variants: tuple[str, ...], n: int) -> list[Job]:
    return [
        Job(f"{p.problem_id}/{v}/{i}", variant_prompt(p.question, v), (p, v, i))
        for p in problems
        for v in variants
        for i in range(n)
    ]


def _record(job: Job, gen, seed: int) -> Sample:
    problem, variant, index = job.payload
    extracted, correct = grade(problem, gen.text)
    return Sample(
        sample_id=job.record_id,
        problem_id=problem.problem_id,
        variant=variant,
        index=index,
        response=gen.text,
        extracted=extracted,
        correct=correct,
        num_tokens=len(gen.tokens),
        finish_reason=gen.finish_reason,
        seed=seed,
    )


def sample_stats(samples: list[Sample]) -> dict:
    by_variant: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_variant[s.variant].append(s)
    n = max(1, len(samples))
    return {
        "samples": len(samples),
        "accuracy": round(sum(s.correct for s in samples) / n, 4),
        "accuracy_per_variant": {
            v: round(sum(s.correct for s in ss) / len(ss), 4)
            for v, ss in sorted(by_variant.items())
        },
        "answer_format": round(sum(s.extracted is not None for s in samples) / n, 4),
        "truncated": round(sum(s.finish_reason == "length" for s in samples) / n, 4),
        "mean_tokens": round(sum(s.num_tokens for s in samples) / n, 1),
        "problems_with_a_correct_sample": len({s.problem_id for s in samples if s.correct}),
    }


def run_sample(run: RunDir, recipe: Recipe, progress: Progress | None = None) -> dict:
    cfg = recipe.sample
    problems = read_pool(run, "sft")
    jobs = sample_jobs(problems, cfg.variants, cfg.n_samples)
    run_generation_stage(
        run,
        STAGE,
        run.samples,
        "sample_id",
        jobs,
        recipe.run.model,
        cfg,
        recipe.run.seed,
        _record,
        progress,
    )
    stats = sample_stats(read_jsonl(run.samples, Sample))
    run.mark_done(STAGE, stats)
    return stats
