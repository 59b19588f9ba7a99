"""`sf-mlx bench ...`: benchmarks that print ratios measured in one run on this machine.

Registered on the main app by `sf_mlx.cli`; heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks that print ratios measured in one run on this machine.")


@bench_app.command("matmul")
def bench_matmul(
    sizes: Annotated[str, typer.Option(help="Comma-separated square sizes.")] = "256,512,1024,2048",
    reps: Annotated[int, typer.Option(help="Timed repetitions per size (best is kept).")] = 5,
) -> None:
    """MLX float32 matmul GFLOP/s with the stock BLAS and with sf-mlx's fix, vs numpy."""
    from sf_mlx.bench import bench_matmul as run
    from sf_mlx.cli import fail

    try:
        parsed = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        fail(f"--sizes {sizes!r}: expected comma-separated integers")
    run(parsed, reps)


@bench_app.command("sampling")
def bench_sampling(
    model: Annotated[str, typer.Option(help="Model folder, Hub id or builtin:small.")] = (
        "builtin:small"
    ),
    prompts: Annotated[int, typer.Option(help="Countdown prompts generated per round.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Sequences decoded together.")] = 32,
    max_tokens: Annotated[int, typer.Option(help="Generation limit per prompt.")] = 128,
    rounds: Annotated[int, typer.Option(help="Alternating timed rounds (best is kept).")] = 2,
) -> None:
    """sf-mlx rollout tokens/s vs mlx_lm.batch_generate on the same model, prompts and batch."""
    from sf_mlx.bench import bench_sampling as run
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    try:
        run(model, prompts, batch_size, max_tokens, rounds)
    except ModelLoadError as e:
        fail(str(e))


@bench_app.command("grpo")
def bench_grpo(
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run", help="A run past its sft stage: time its SkillFactory arm's GRPO step."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Without --run: model folder, Hub id or builtin:small.")
    ] = "builtin:small",
    rounds: Annotated[int, typer.Option(help="Batches timed (after one warm-up).")] = 3,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a recipe key, e.g. grpo.beta=0.04.")
    ] = [],  # noqa: B006 - typer reads list defaults
) -> None:
    """A GRPO step's rollout and update vs the plain reference path: seconds, ratios, gradients."""
    from sf_mlx.bench_grpo import bench_grpo as run
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    if rounds < 1:
        fail(f"--rounds {rounds}: expected at least 1")
    try:
        run(run_dir, model, rounds, sets=set_)
    except (ValueError, ModelLoadError) as e:
        fail(str(e).splitlines()[0])


@bench_app.command("distributed")
def bench_distributed(
    recipe: Annotated[str, typer.Option(help="Recipe whose grpo/rl_only stage is timed.")] = (
        "countdown-small"
    ),
    ranks: Annotated[int, typer.Option(help="Local ranks compared with one.")] = 2,
    steps: Annotated[int, typer.Option(help="GRPO steps per run.")] = 3,
    keep: Annotated[
        Path | None, typer.Option(help="Keep the run directories in this folder.")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a recipe key (repeatable).")
    ] = [],  # noqa: B006 - typer reads list defaults
) -> None:
    """A GRPO stage on 1 rank vs N local ranks (mlx.launch, ring): time, traffic, weights."""
    from sf_mlx.bench_distributed import bench_distributed as run
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    if ranks < 2 or steps < 1:
        fail("--ranks: expected at least 2; --steps: at least 1")
    try:
        run(recipe, ranks, steps, set_, keep)
    except (ValueError, RuntimeError, ModelLoadError) as e:
        fail(str(e).splitlines()[0])


@bench_app.command("memory")
def bench_memory(
    rows: Annotated[int, typer.Option(help="Rows of the log-prob pass.")] = 8,
    length: Annotated[int, typer.Option(help="Tokens per row of the log-prob pass.")] = 256,
    hidden: Annotated[int, typer.Option(help="Hidden size of the stand-in's body.")] = 128,
    plan: Annotated[
        bool,
        typer.Option(
            help="Instead: measure the memory coefficients on stand-ins, then print each phase "
            "of --recipe on --model and the settings under which it fits 16/32/64/80 GB."
        ),
    ] = False,
    recipe: Annotated[str, typer.Option(help="Recipe to plan (with --plan).")] = "countdown-paper",
    model: Annotated[
        str | None,
        typer.Option(
            help="A model folder whose config.json gives the shapes (with --plan); "
            "default: Qwen2.5-1.5B's."
        ),
    ] = None,
) -> None:
    """Peak memory of the log-prob pass and a GRPO update with Qwen's 151,936-token vocabulary;
    with --plan, what a recipe needs on a real model and the settings under which it fits."""
    from sf_mlx.cli import fail

    if not plan:
        from sf_mlx.bench_memory import bench_memory as run

        if min(rows, length, hidden) < 1:
            fail("--rows, --length and --hidden: expected positive integers")
        run(rows, length, hidden)
        return
    import json
    from pathlib import Path

    from sf_mlx.bench_memory_plan import calibrate
    from sf_mlx.bench_memory_plan import plan as run_plan
    from sf_mlx.memory import QWEN25_1_5B, Shapes
    from sf_mlx.recipe_files import load_recipe

    shapes, name = QWEN25_1_5B, "Qwen2.5-1.5B"
    try:
        load_recipe(recipe)
        if model is not None:
            config = Path(model) / "config.json"
            if not config.is_file():
                fail(f"--model {model}: no config.json there")
            shapes, name = Shapes.from_config(json.loads(config.read_text())), model
    except ValueError as e:
        fail(str(e).splitlines()[0])
    coef, _ = calibrate()
    run_plan(recipe, shapes, coef, name)


@bench_app.command("tui")
def bench_tui(
    rollouts: Annotated[int, typer.Option(help="Synthetic GRPO rollouts in the run.")] = 100_000,
) -> None:
    """Open a run with many rollouts in the TUI (headless): load time and responsiveness."""
    from sf_mlx.bench import bench_tui as run
    from sf_mlx.cli import fail

    if rollouts < 1:
        fail(f"--rollouts {rollouts}: expected at least 1")
    run(rollouts)
