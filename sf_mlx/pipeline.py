"""Run a recipe: create or reopen the run directory, then run each stage that is not done yet.

Stages run in the paper's order and talk only through the run directory, so a killed recipe
resumes at the first stage without a done-marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sf_mlx import distributed as dist
from sf_mlx.config import Recipe, recipe_to_dict
from sf_mlx.recipe_files import dump_recipe, load_recipe
from sf_mlx.rundir import RunDir

# A stage runner: (run, recipe, progress) -> stats. Progress: (done, total, tokens per second).
Progress = Callable[[int, int, float], None]
StageFn = Callable[[RunDir, Recipe, Progress | None], dict]


def _problems(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.problems import run_problems

    return run_problems(run, recipe)


def _base(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.base_check import run_base_check

    return run_base_check(run, recipe)


def _sample(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.sample import run_sample

    return run_sample(run, recipe, progress)


def _reflect(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.reflect import run_reflect

    return run_reflect(run, recipe, progress)


def _rearrange(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.rearrange import run_rearrange

    return run_rearrange(run, recipe.rearrange, recipe.run.seed)


def _sft(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.sft import run_sft

    return run_sft(run, recipe, progress)


def _star(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.arms import run_star

    return run_star(run, recipe, progress)


def _grpo(arm: str) -> StageFn:
    def stage(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
        from sf_mlx.stages.arms import run_grpo_arm

        return run_grpo_arm(run, recipe, arm, progress)

    return stage


def _evaluate(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.evaluate import run_evaluate

    return run_evaluate(run, recipe, progress)


def _report(run: RunDir, recipe: Recipe, progress: Progress | None) -> dict:
    from sf_mlx.stages.report import run_report

    return run_report(run, recipe, progress)


# The paper's order.
STAGES: dict[str, StageFn] = {
    "problems": _problems,
    "base": _base,
    "sample": _sample,
    "reflect": _reflect,
    "rearrange": _rearrange,
    "sft": _sft,
    "star": _star,
    "grpo/sft_grpo": _grpo("sft_grpo"),
    "grpo/rl_only": _grpo("rl_only"),
    "grpo/star_grpo": _grpo("star_grpo"),
    "evaluate": _evaluate,
    "report": _report,
}


def stage_plan(recipe: Recipe) -> list[str]:
    """The stages a recipe runs: every data stage, then what its arms need."""
    arms = set(recipe.evaluate.arms)
    wanted = {
        "star": bool({"star", "star_grpo"} & arms),
        "grpo/sft_grpo": "sft_grpo" in arms,
        "grpo/rl_only": "rl_only" in arms,
        "grpo/star_grpo": "star_grpo" in arms,
    }
    return [s for s in STAGES if wanted.get(s, True)]


# Cheap stages (they check the model, or read and write files) run on the writing ranks of a
# distributed run while the others wait; every other stage shares its work between all ranks.
WRITER_STAGES = ("problems", "base", "rearrange", "report")
SHARED_STAGES = tuple(s for s in STAGES if s not in WRITER_STAGES)


def distributed_run(run: RunDir) -> RunDir:
    """`run` as this rank sees it: writing it, or reading what another rank writes."""
    return replace(run, writer=dist.elect_writer(run.path))


LABELS = ("name", "description")  # run.* keys that name a run but change nothing it computes


def settings(recipe: Recipe) -> dict:
    """The recipe as a dict without its labels: what a resumed run must agree on. (A study can
    so adopt a run of the recipe it extends, e.g. `countdown-small`'s seed 0 as its `seed-0`.)"""
    out = recipe_to_dict(recipe)
    out["run"] = {k: v for k, v in out["run"].items() if k not in LABELS}
    return out


def open_run(recipe_name: str, overrides: list[str], run_dir: Path | None) -> tuple[RunDir, Recipe]:
    """Resolve the recipe and create (or reopen) its run directory; refuses a changed recipe.
    Under `mlx.launch` every rank opens it and one rank per file system writes it."""
    recipe = load_recipe(recipe_name, overrides)
    name = recipe.run.name or Path(recipe_name).stem
    run = distributed_run(RunDir(Path(run_dir) if run_dir else Path("runs") / name).create())
    dist.same_on_every_rank("the resolved recipe", settings(recipe))
    split = recipe.grpo.rollout_split
    grpo = any(s.startswith("grpo/") for s in stage_plan(recipe))
    if dist.size() > 1 and split % dist.size() and grpo:
        raise ValueError(
            f"grpo.rollout_split={split} with {dist.size()} ranks: some ranks would wait while "
            f"others sample; set grpo.rollout_split to a multiple of {dist.size()}"
        )
    fresh = run.writer and not run.recipe.exists()
    if fresh:
        dump_recipe(recipe, run.recipe, header=f"resolved from {recipe_name}")
    dist.barrier()  # every rank reads the recipe its writer wrote
    if not fresh:
        saved, now = settings(load_recipe(str(run.recipe))), settings(recipe)
        if saved != now:
            changed = [
                f"{s}.{k}" for s, sec in now.items() for k, v in sec.items() if saved[s][k] != v
            ]
            raise ValueError(
                f"{run.path} was started with a different recipe (changed: {', '.join(changed)}); "
                "use another --run-dir or delete the folder"
            )
    return run, recipe


def run_stage(
    run: RunDir, recipe: Recipe, stage: str, progress: Progress | None = None
) -> tuple[dict, float]:
    """Run one stage (even if done before), with status, events and timing; returns (stats, s).

    Under `mlx.launch`, a stage in SHARED_STAGES runs on every rank; any other only on the
    ranks that write, while the others wait for it."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if not run.writer and stage not in SHARED_STAGES:
        dist.barrier()
        return {}, 0.0
    with run.lock():
        run.set_status(stage, "running")
        run.log_event("stage_start", stage=stage)
        tic = time.perf_counter()
        try:
            info = STAGES[stage](run, recipe, progress)
        except KeyboardInterrupt:
            run.set_status(stage, "stopped")
            raise
        except BaseException:
            run.set_status(stage, "failed")
            raise
        secs = time.perf_counter() - tic
        run.log_event("stage_end", stage=stage, seconds=round(secs, 2))
        run.set_status(stage, "done")
    dist.barrier()  # its outputs and done marker are written before the next stage reads them
    return info, secs


def run_recipe(
    recipe_name: str,
    overrides: list[str] = (),  # type: ignore[assignment]
    run_dir: Path | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str], Progress | None] = lambda stage: None,
) -> RunDir:
    """Run every stage not yet done, in order; `progress(stage)` gives a per-stage callback.
    Under `mlx.launch` only rank 0 logs and shows progress."""
    if dist.rank() != 0:
        log, progress = (lambda text: None), (lambda stage: None)
    run, recipe = open_run(recipe_name, list(overrides), run_dir)
    if recipe.run.seeds:
        return run_study(run, recipe_name, list(overrides), recipe.run.seeds, log, progress)
    plan = stage_plan(recipe)
    n = len(plan)
    with run.lock():
        for i, stage in enumerate(plan, 1):
            done = run.is_done(stage)
            dist.same_on_every_rank(f"whether stage {stage} is done", done)
            if done:
                log(f"[{i}/{n}] {stage}: done already, skipped")
                continue
            log(f"[{i}/{n}] {stage} ...")
            info, secs = run_stage(run, recipe, stage, progress(stage))
            log(f"[{i}/{n}] {stage} done in {secs:.1f} s: {info}")
    return run


def run_study(
    run: RunDir,
    recipe_name: str,
    overrides: list[str],
    seeds: tuple[int, ...],
    log: Callable[[str], None] = print,
    progress: Callable[[str], Progress | None] = lambda stage: None,
) -> RunDir:
    """The recipe once per seed into `run/seed-K` (each resumable on its own: data, sampling and
    training seeds all follow run.seed), then the comparison over the seeds in `run/compare.md`
    and `run/compare.json`."""
    from sf_mlx.rundir import write_json_atomic, write_text_atomic
    from sf_mlx.study import compare, compare_markdown, compare_plots

    with run.lock():
        for k, seed in enumerate(seeds, 1):
            log(f"== seed {seed} ({k}/{len(seeds)}) ==")
            run_recipe(
                recipe_name,
                overrides + [f"run.seed={seed}", "run.seeds=[]"],
                run.path / f"seed-{seed}",
                log,
                progress,
            )
        if not run.writer:
            return run
        result = compare([run.path / f"seed-{s}" for s in seeds])
        write_json_atomic(run.path / "compare.json", result)
        write_text_atomic(run.path / "compare.md", compare_markdown(result))
        compare_plots(result, run.path / "plots")
    log(f"compared {len(seeds)} seeds: {run.path / 'compare.md'}")
    return run
