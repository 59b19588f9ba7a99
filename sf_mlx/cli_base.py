"""`sf-mlx base ...`: build, measure and check the built-in base model (`sf_mlx/base/`).

Registered on the main app by `sf_mlx.cli`; heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

base_app = typer.Typer(help="The built-in base model (a small weak instruct model sf-mlx trains).")

ModelArg = Annotated[str, typer.Argument(help="Model folder, Hub id or builtin:small.")]


@base_app.command("build")
def base_build(
    size: Annotated[
        str, typer.Option(help="tiny (tests, about a minute) or small (the shipped base, 1-3 h).")
    ] = "small",
    out: Annotated[Path | None, typer.Option(help="Output model folder.")] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints and caches (resume from here).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of corpus, initial weights and data order.")] = 0,
    minutes: Annotated[
        float | None, typer.Option(help="Train for about this long (sets the step count).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Train this many steps.")] = None,
    stop_at: Annotated[
        int | None, typer.Option(help="Stop after this step, keeping the schedule of --steps.")
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="A named corpus instead of the size's own: search, search-2 ... search-5."
        ),
    ] = None,
) -> None:
    """Generate the corpus, train, measure and write a base model folder (resumable)."""
    from sf_mlx.base.build import CORPORA, SIZES, build
    from sf_mlx.cli import fail

    if size not in SIZES:
        fail(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    if corpus is not None and corpus not in CORPORA:
        fail(f"--corpus {corpus!r}: expected one of {', '.join(CORPORA)}")
    command = "sf-mlx " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("sf-mlx") else ""
    path = build(
        size,
        out=out,
        work=work_dir,
        seed=seed,
        minutes=minutes,
        steps=steps,
        stop_at=stop_at,
        command=command,
        corpus=corpus,
    )
    typer.echo(f"model folder: {path}  (load with mlx_lm.load({str(path)!r}))")


@base_app.command("measure")
def base_measure(
    model: ModelArg = "builtin:small",
    write_card: Annotated[
        bool, typer.Option(help="Store the numbers in the folder's metrics.json and README.md.")
    ] = False,
) -> None:
    """Measure a base model's behaviour on held-out problems as `base build` does."""
    from sf_mlx.base.build import remeasure
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    try:
        b = remeasure(model, write_card=write_card, log=lambda _: None)
    except (ValueError, ModelLoadError) as e:
        fail(str(e))
    for name, row in {**b["countdown"], **b["ood"]}.items():
        typer.echo(
            f"{name:18s} accuracy {row['accuracy']:.3f}  format {row['format']:.3f}  n {row['n']}"
        )
    for key in ("verdict", "verdict_own_samples"):
        if key in b:
            v = b[key]
            typer.echo(
                f"{key:18s} agreement {v['agreement']:.3f} (correct {v['agreement_correct']:.3f},"
                f" wrong {v['agreement_incorrect']:.3f}; decision follows the numbers"
                f" {v['decision_follows_numbers']:.3f} of {v['decision_lines']}) n {v['n']}"
            )
    typer.echo(f"skill tags        {b['skill_tag_rate']:.4f}")


@base_app.command("verdicts")
def base_verdicts(
    model: ModelArg = "builtin:small",
    attempts: Annotated[
        int, typer.Option(help="Balanced held-out attempts to check (even; the card uses 200).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Chooses the set of attempts and the sampling.")] = 1,
) -> None:
    """Verdict agreement on many balanced held-out attempts, with a 95% interval."""
    from sf_mlx.base.build import reverdict
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    try:
        v = reverdict(model, attempts, seed)
    except (ValueError, ModelLoadError) as e:
        fail(str(e))
    low, high = v["interval95"]
    typer.echo(
        f"verdict agreement {v['agreement']:.3f} [{low:.3f}, {high:.3f}] on {v['n']} attempts"
        f" (correct {v['agreement_correct']:.3f}, wrong {v['agreement_incorrect']:.3f});"
        f" decision follows the numbers {v['decision_follows_numbers']:.3f}"
        f" of {v['decision_lines']}; verdict parsed {v['parsed']:.3f}"
    )


@base_app.command("probe")
def base_probe(
    model: ModelArg = "builtin:small",
    n: Annotated[int, typer.Option(help="Held-out Countdown-3 problems (attempt + check).")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the problems and sampling.")] = 1,
) -> None:
    """Why checks fail: truth of the arithmetic lines by context and operand size, and the
    probability of the right decision once both numbers are written (teacher-forced)."""
    import json

    from sf_mlx.base.build import _built_with, _card
    from sf_mlx.base.probes import probe_base
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError, resolve_model_path

    if n < 1:
        fail(f"--n {n}: expected at least 1")
    try:
        cfg = _built_with(_card(Path(resolve_model_path(model))))
        out = probe_base(model, n, seed, cfg, log=lambda _: None)
    except (ValueError, ModelLoadError) as e:
        fail(str(e))
    typer.echo(json.dumps(out, indent=2))


@base_app.command("probe-check-only")
def base_probe_check_only(
    steps: Annotated[int, typer.Option(help="Training steps on check demonstrations.")] = 200,
    n: Annotated[int, typer.Option(help="Held-out checks measured (even).")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of corpus, weights and held-out checks.")] = 0,
    size: Annotated[str, typer.Option(help="Architecture preset: tiny or small.")] = "small",
    start: Annotated[
        str | None,
        typer.Option(
            help="Go on training this model folder at a constant --lr instead of a new one, and "
            "measure its checks of its own attempts too; --steps 0 only measures it."
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the preset's peak).")
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Write the checks as this named corpus does (default: the preset's, or with "
            "--start the corpus that model was built with)."
        ),
    ] = None,
) -> None:
    """Train the base architecture on check demonstrations alone, then measure the decision it
    gives with both numbers written: near 100% means the pipeline can learn it."""
    import json

    from sf_mlx.base.build import CORPORA, SIZES, _built_with, _card
    from sf_mlx.base.learnability import check_only
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError, resolve_model_path

    if size not in SIZES:
        fail(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    if steps < (0 if start else 1) or n < 2 or n % 2 or (lr is not None and lr <= 0):
        fail(
            f"--steps {steps} --n {n} --lr {lr}: expected steps >= 1 (0 with --start), an even "
            "n >= 2, lr > 0"
        )
    if corpus is not None and corpus not in CORPORA:
        fail(f"--corpus {corpus!r}: expected one of {', '.join(CORPORA)}")
    try:
        cfg = CORPORA[corpus][0] if corpus else None
        if cfg is None and start:
            cfg = _built_with(_card(Path(resolve_model_path(start))))
        out = check_only(steps, n, seed, log=typer.echo, size=size, start=start, lr=lr, cfg=cfg)
    except (ValueError, ModelLoadError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(json.dumps(out, indent=2))


@base_app.command("probe-compare")
def base_probe_compare(
    form: Annotated[
        str, typer.Option(help="How the comparison is written: line, digits, difference, single.")
    ] = "line",
    steps: Annotated[int, typer.Option(help="Training steps on single comparisons.")] = 100,
    n: Annotated[int, typer.Option(help="Held-out comparisons measured.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of examples, weights and held-out pairs.")] = 0,
    size: Annotated[str, typer.Option(help="Architecture preset: tiny or small.")] = "small",
    start: Annotated[
        str | None,
        typer.Option(
            help="Go on training this model folder (a base, or a build stopped with --stop-at) "
            "at a constant --lr instead of a new one; --steps 0 only measures it."
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the preset's peak).")
    ] = None,
) -> None:
    """Train the base architecture on single result-vs-target comparisons in one written form,
    then measure the decision (teacher-forced) and whole greedy responses on held-out pairs."""
    import json

    from sf_mlx.base.build import SIZES
    from sf_mlx.base.learnability import COMPARE_FORMS, compare_only
    from sf_mlx.cli import fail
    from sf_mlx.model import ModelLoadError

    if form not in COMPARE_FORMS:
        fail(f"--form {form!r}: expected one of {', '.join(COMPARE_FORMS)}")
    if size not in SIZES:
        fail(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    if steps < (0 if start else 1) or n < 1 or (lr is not None and lr <= 0):
        fail(
            f"--steps {steps} --n {n} --lr {lr}: expected steps >= 1 (0 with --start), "
            "n >= 1, lr > 0"
        )
    try:
        out = compare_only(form, steps, n, seed, log=typer.echo, size=size, start=start, lr=lr)
    except (ValueError, ModelLoadError) as e:
        fail(str(e).splitlines()[0])
    typer.echo(json.dumps(out, indent=2))
