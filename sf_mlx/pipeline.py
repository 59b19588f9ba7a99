"""Run a recipe: create or reopen the run directory, then run each stage that is not done yet.

Stages run in the paper's order and talk only through the run directory, so a killed recipe
resumes at the first stage without a done-marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sf_mlx.config import Recipe, dump_recipe, load_recipe, recipe_to_dict
from sf_mlx.rundir import RunDir

# (stage name, runner). Later stages (sample, reflect, rearrange, sft, grpo, evaluate, report)
# are appended here as they are built.
StageFn = Callable[[RunDir, Recipe], dict]


def _stages() -> list[tuple[str, StageFn]]:
    from sf_mlx.stages.base_check import run_base_check
    from sf_mlx.stages.problems import run_problems

    return [("problems", run_problems), ("base", run_base_check)]


def open_run(recipe_name: str, overrides: list[str], run_dir: Path | None) -> tuple[RunDir, Recipe]:
    """Resolve the recipe and create (or reopen) its run directory; refuses a changed recipe."""
    recipe = load_recipe(recipe_name, overrides)
    name = recipe.run.name or Path(recipe_name).stem
    run = RunDir(Path(run_dir) if run_dir else Path("runs") / name).create()
    if run.recipe.exists():
        saved = load_recipe(str(run.recipe))
        if recipe_to_dict(saved) != recipe_to_dict(recipe):
            changed = [
                f"{s}.{k}"
                for s, sec in recipe_to_dict(recipe).items()
                for k, v in sec.items()
                if recipe_to_dict(saved)[s][k] != v
            ]
            raise ValueError(
                f"{run.path} was started with a different recipe (changed: {', '.join(changed)}); "
                "use another --run-dir or delete the folder"
            )
    else:
        dump_recipe(recipe, run.recipe, header=f"resolved from {recipe_name}")
    return run, recipe


def run_recipe(
    recipe_name: str,
    overrides: list[str] = (),  # type: ignore[assignment]
    run_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> RunDir:
    run, recipe = open_run(recipe_name, list(overrides), run_dir)
    stages = _stages()
    for i, (stage, fn) in enumerate(stages, 1):
        if run.is_done(stage):
            log(f"[{i}/{len(stages)}] {stage}: done already, skipped")
            continue
        log(f"[{i}/{len(stages)}] {stage} ...")
        run.set_status(stage, "running")
        run.log_event("stage_start", stage=stage)
        tic = time.perf_counter()
        try:
            info = fn(run, recipe)
        except BaseException:
            run.set_status(stage, "failed")
            raise
        secs = time.perf_counter() - tic
        run.log_event("stage_end", stage=stage, seconds=round(secs, 2))
        log(f"[{i}/{len(stages)}] {stage}: {info} ({secs:.1f} s)")
    run.set_status("done", "done")
    return run
