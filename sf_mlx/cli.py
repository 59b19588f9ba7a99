"""The `sf-mlx` command line: thin commands that parse, call one function, say where results are.

Heavy imports (mlx, transformers, datasets) happen inside commands so `sf-mlx --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sf_mlx.cli_base import base_app
from sf_mlx.cli_bench import bench_app

app = typer.Typer(
    help="SkillFactory on one machine: self-sampled silver traces, SFT and GRPO with MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_app = typer.Typer(help="The task suite: generate problems, see reference solutions.")
app.add_typer(tasks_app, name="tasks")
app.add_typer(bench_app, name="bench")
app.add_typer(base_app, name="base")


def fail(message: str) -> None:
    """One clear error line on stderr, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _params(pairs: list[str]) -> dict:
    out: dict = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r}: expected KEY=VALUE")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


@tasks_app.command("list")
def tasks_list() -> None:
    """List tasks and their generation parameters."""
    from sf_mlx.tasks import TASKS

    for name, spec in TASKS.items():
        typer.echo(name)
        for key, meaning in spec.describe_params.items():
            typer.echo(f"    {key}: {meaning}")


@tasks_app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="countdown, multiplication, acronym, gsm8k, ...")],
    n: Annotated[int, typer.Option("-n", help="How many problems.")] = 3,
    seed: Annotated[int, typer.Option(help="Generation seed.")] = 0,
    num_args: Annotated[int | None, typer.Option(help="Countdown: how many numbers (2-6).")] = None,
    param: Annotated[
        list[str], typer.Option("--param", "-p", help="Task parameter KEY=VALUE (repeatable).")
    ] = [],  # noqa: B006 - typer reads list defaults
) -> None:
    """Print problems with their reference solutions."""
    from sf_mlx.tasks import get_task

    params = _params(param)
    if num_args is not None:
        params["num_args"] = num_args
    try:
        spec = get_task(task)
        problems = spec.make_problems(n, seed, **params)
    except (ValueError, TypeError) as e:
        fail(str(e).splitlines()[0])
    for p in problems:
        typer.echo(f"[{p.problem_id}]\n{p.question}\n  reference: {p.solution}\n")


@app.command("check")
def check(
    task: Annotated[str, typer.Argument(help="countdown, multiplication or acronym.")],
    answer: Annotated[
        str, typer.Argument(help="An answer, or a whole response with <answer> tags.")
    ],
    numbers: Annotated[str | None, typer.Option(help="Countdown: comma-separated numbers.")] = None,
    target: Annotated[int | None, typer.Option(help="Countdown: the target.")] = None,
    require_all: Annotated[
        bool, typer.Option(help="Countdown: every number must be used.")
    ] = False,
    a: Annotated[int | None, typer.Option(help="Multiplication: first factor.")] = None,
    b: Annotated[int | None, typer.Option(help="Multiplication: second factor.")] = None,
    words: Annotated[str | None, typer.Option(help="Acronym: comma-separated clue words.")] = None,
) -> None:
    """Grade one answer with the task's checker. Exit 0 if correct, 1 if wrong, 2 on bad input."""
    from sf_mlx.tasks import extract_answer, problem_from_inputs

    try:
        problem = problem_from_inputs(
            task, numbers=numbers, target=target, require_all=require_all, a=a, b=b, words=words
        )
    except ValueError as e:
        fail(str(e))
    from sf_mlx.tasks import get_task

    extracted = extract_answer(answer) if "<answer>" in answer.lower() else answer.strip()
    ok = bool(get_task(problem.task).check(problem, extracted))
    typer.echo(f"{'CORRECT' if ok else 'WRONG'}: {extracted!r}")
    raise typer.Exit(0 if ok else 1)


@app.command("recipes")
def recipes() -> None:
    """List the recipes in recipes/ with their one-line description."""
    from sf_mlx.recipe_files import available_recipes, load_recipe

    for name in available_recipes():
        try:
            desc = load_recipe(name).run.description
        except ValueError as e:
            desc = f"(invalid: {e})"
        typer.echo(f"{name:24s} {desc}")


class _Bars:
    """Rich progress bars, one per stage: done / total and tokens per second."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:10s}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tps]:>8.0f} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def for_stage(self, stage: str):
        task = None

        def update(done: int, total: int, tps: float) -> None:
            nonlocal task
            if task is None:
                task = self.progress.add_task(stage, total=total, tps=0.0)
            self.progress.update(task, completed=done, total=total, **({"tps": tps} if tps else {}))

        return update


@app.command("recipe")
def recipe(
    name: Annotated[
        str, typer.Argument(help="A recipe name from `sf-mlx recipes`, or a YAML path.")
    ],
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a key: section.key=value (repeatable).")
    ] = [],  # noqa: B006 - typer reads list defaults
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/NAME).")] = None,
    tui: Annotated[
        bool, typer.Option("--tui", help="Run in the background and watch it in the TUI.")
    ] = False,
) -> None:
    """Run a recipe's stages in order, skipping those already done (a killed recipe resumes)."""
    from sf_mlx.model import ModelLoadError
    from sf_mlx.pipeline import run_recipe

    if tui:
        _recipe_in_background(name, set_, run_dir)
        return

    try:
        with _Bars() as bars:
            run = run_recipe(
                name, set_, run_dir, log=bars.progress.console.print, progress=bars.for_stage
            )
    except (ValueError, ModelLoadError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(f"run directory: {run.path}")


def _recipe_in_background(name: str, overrides: list[str], run_dir: Path | None) -> None:
    """Start the recipe as its own process (it outlives the TUI), then open the TUI on its run."""
    import subprocess

    from sf_mlx.recipe_files import load_recipe

    try:
        resolved = load_recipe(name, overrides)
    except ValueError as e:
        fail(str(e).splitlines()[0])
    path = Path(run_dir) if run_dir else Path("runs") / (resolved.run.name or Path(name).stem)
    path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sf_mlx.cli", "recipe", name, "--run-dir", str(path)]
    cmd += [a for o in overrides for a in ("--set", o)]
    with open(path / "recipe.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from tui.app import run as run_tui

    run_tui(path, single_run=True)
    code = proc.poll()
    if code is None:
        typer.echo(f"recipe still running (pid {proc.pid}); log: {path / 'recipe.log'}")
    else:
        state = "finished" if code == 0 else f"failed (exit code {code})"
        typer.echo(f"recipe {state}; run directory: {path}; log: {path / 'recipe.log'}")


@app.command("tui")
def tui_cmd(
    path: Annotated[Path, typer.Argument(help="A run directory or a folder of runs.")] = Path(
        "runs"
    ),
) -> None:
    """Watch runs in the terminal UI: live training, traces, GRPO groups, arm comparison."""
    if not path.exists():
        fail(f"{path} does not exist; start a run with `sf-mlx recipe NAME` first")
    from tui.app import run as run_tui

    run_tui(path)


@app.command("stage")
def stage(
    name: Annotated[
        str,
        typer.Argument(
            help="problems, base, sample, reflect, rearrange, sft, star, grpo/sft_grpo, "
            "grpo/rl_only or grpo/star_grpo."
        ),
    ],
    run_dir: Annotated[Path, typer.Option(help="An existing run directory (has recipe.yaml).")],
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a key for this stage only (repeatable).")
    ] = [],  # noqa: B006 - typer reads list defaults
) -> None:
    """Run (or re-run) one stage on a run directory; generation stages resume where they stopped."""
    import json

    from sf_mlx.model import ModelLoadError
    from sf_mlx.pipeline import distributed_run, run_stage
    from sf_mlx.recipe_files import load_recipe
    from sf_mlx.rundir import RunDir

    run = RunDir(run_dir)
    if not run.recipe.exists():
        fail(
            f"{run_dir} has no recipe.yaml; start it with `sf-mlx recipe NAME --run-dir {run_dir}`"
        )
    try:
        recipe_ = load_recipe(str(run.recipe), set_)
        run = distributed_run(run)
        with _Bars() as bars:
            info, secs = run_stage(run, recipe_, name, bars.for_stage(name))
    except (ValueError, ModelLoadError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(json.dumps(info, indent=2))
    typer.echo(f"{name} done in {secs:.1f} s; outputs in {run.path}")


@app.command("validate")
def validate_cmd(
    run_dir: Annotated[Path, typer.Option(help="A run directory whose arm's stage is done.")],
    arm: Annotated[str, typer.Option(help="base, sft, star, sft_grpo, rl_only or star_grpo.")],
    pool: Annotated[str, typer.Option(help="Training pool to score on: rl or sft.")] = "rl",
    n: Annotated[int, typer.Option(help="Problems from that pool.")] = 100,
) -> None:
    """Score one arm on problems of a training pool (never the evaluation questions): accuracy,
    skill use and verdict F1, to choose settings by without tuning on the evaluation."""
    import json

    from sf_mlx.model import ModelLoadError
    from sf_mlx.recipe_files import load_recipe
    from sf_mlx.rundir import RunDir
    from sf_mlx.stages.evaluate import validate

    run = RunDir(run_dir)
    if not run.recipe.exists():
        fail(f"{run_dir} has no recipe.yaml")
    if n < 1:
        fail(f"--n {n}: expected at least 1 problem")
    try:
        summary = validate(run, load_recipe(str(run.recipe)), arm, pool, n)
    except (ValueError, ModelLoadError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(json.dumps({"arm": arm, "pool": pool, **summary}, indent=2))


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Option(help="A run directory with samples / traces.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    what: Annotated[
        str, typer.Option(help="traces, samples or raw (the released raw schema).")
    ] = "traces",
    fmt: Annotated[str, typer.Option("--format", help="hf (Parquet) or sharegpt (JSONL).")] = "hf",
) -> None:
    """Export a run's traces or samples to Hugging Face datasets (Parquet) or ShareGPT JSONL."""
    from sf_mlx.export import export_run

    try:
        path = export_run(run_dir, out, what, fmt)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(f"wrote {path}")


@app.command("compare")
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: one recipe, several seeds.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Also write compare.md, compare.json and plots/ (with error bars) here."),
    ] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap draws for the intervals.")] = 2000,
) -> None:
    """Per arm and cell: mean accuracy over the runs (seeds) with a 95% interval over seeds and
    questions, and the paired difference SkillFactory -> GRPO minus RL-only on Countdown 4-6."""
    from sf_mlx.rundir import write_json_atomic, write_text_atomic
    from sf_mlx.study import compare, compare_markdown, compare_plots

    if boot < 100:
        fail(f"--boot {boot}: expected at least 100 draws")
    try:
        result = compare(runs, n_boot=boot)
    except ValueError as e:
        fail(str(e).splitlines()[0])
    text = compare_markdown(result)
    typer.echo(text, nl=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "compare.md", text)
        write_json_atomic(out / "compare.json", result)
        plots = compare_plots(result, out / "plots")
        typer.echo(f"wrote {out / 'compare.md'}, compare.json and plots/{', plots/'.join(plots)}")


@app.command("import-raw")
def import_raw(
    path: Annotated[
        Path, typer.Argument(help="JSON/JSONL/Parquet file in the released raw schema.")
    ],
    run_dir: Annotated[Path, typer.Option(help="A new run directory to create.")],
    recipe_name: Annotated[str, typer.Option("--recipe", help="Recipe written into the run.")] = (
        "countdown-small"
    ),
    task: Annotated[str, typer.Option(help="Task the questions belong to.")] = "countdown",
) -> None:
    """Import the paper's released samples + reflections, then `sf-mlx stage rearrange` them."""
    from sf_mlx.export import import_run

    try:
        counts = import_run(path, run_dir, recipe_name, task)
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(
        f"imported {counts} into {run_dir}; next: sf-mlx stage rearrange --run-dir {run_dir}"
    )


@app.command("config")
def config(
    name: Annotated[str, typer.Argument(help="A recipe name or YAML path.")],
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a key: section.key=value (repeatable).")
    ] = [],  # noqa: B006 - typer reads list defaults
) -> None:
    """Print a recipe fully resolved (every default filled in, overrides applied)."""
    import yaml

    from sf_mlx.config import recipe_to_dict
    from sf_mlx.recipe_files import load_recipe

    try:
        resolved = load_recipe(name, set_)
    except ValueError as e:
        fail(str(e).splitlines()[0])
    typer.echo(yaml.safe_dump(recipe_to_dict(resolved), sort_keys=False).rstrip())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
