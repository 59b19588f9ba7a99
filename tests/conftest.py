"""Shared fixtures: a tiny base model built on the fly (seconds) for model-level tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A `tiny` base model folder, trained for a few dozen steps (about 20 s on 2 cores)."""
    from sf_mlx.base.build import build

    root = tmp_path_factory.mktemp("tiny-base")
    return build(
        "tiny",
        out=root / "model",
        work=root / "work",
        seed=0,
        steps=40,
        log=lambda _: None,
        measure_behaviour=False,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`countdown-tiny` run end to end on the shipped small base (about a minute)."""
    from sf_mlx.pipeline import run_recipe

    run_dir = tmp_path_factory.mktemp("e2e") / "countdown-tiny"
    return run_recipe("countdown-tiny", run_dir=run_dir, log=lambda _: None)
