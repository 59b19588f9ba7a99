"""kill -9 inside SFT and GRPO, at seeded points, then a rerun: the same weights and rollout
records as the uninterrupted `countdown-tiny` run, and metric series that hold each step once.

The uninterrupted run is conftest's `tiny_run`; each killed run starts from a copy of it with
the stage's outputs removed, so only the stage under test is redone.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sf_mlx.pipeline import run_stage
from sf_mlx.recipe_files import load_recipe
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.stages.report import _metric_series

pytestmark = pytest.mark.slow

SEED = 20  # chooses the kill points


def _without(src: RunDir, dst: Path, stage: str, outputs: list[str]) -> RunDir:
    shutil.copytree(src.path, dst)
    run = RunDir(dst)
    for name in outputs:
        shutil.rmtree(dst / name, ignore_errors=True)
    run.clear_done(stage)
    return run


def _metric_rows(run: RunDir, stage: str) -> int:
    if not run.events.exists():
        return 0
    return sum(
        1 for e in run.read_events("metric") if e.get("stage") == stage
    )  # rows logged so far


def _kill_and_rerun(run: RunDir, stage: str, after_rows: int, delay: float) -> None:
    """Start `sf-mlx stage STAGE`, kill -9 it `delay` s after its `after_rows`-th metric row
    (or at once if it has logged that many already), then rerun the stage to the end."""
    cmd = [sys.executable, "-m", "sf_mlx.cli", "stage", stage, "--run-dir", str(run.path)]
    start = _metric_rows(run, stage)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _metric_rows(run, stage) - start >= after_rows:
            time.sleep(delay)
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_stage(run, load_recipe(str(run.recipe)), stage)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


def _same_arrays(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys() and x
    for k in x:
        assert np.array_equal(x[k], y[k]), f"{b}: {k} differs from the uninterrupted run"


def _steps_once(run: RunDir, stage: str, key: str, n: int) -> None:
    steps = [s for s, _ in _metric_series(run)[stage][key]]
    assert steps == list(range(1, n + 1)), f"{stage} {key}: steps {steps}"


@pytest.mark.parametrize("point", range(2))
def test_sft_killed_at_a_seeded_point_then_rerun_gives_the_same_weights(tiny_run, tmp_path, point):
    rng = random.Random(SEED * 10 + point)
    recipe = load_recipe(str(tiny_run.recipe))
    run = _without(tiny_run, tmp_path / "run", "sft", ["sft/adapters", "sft/fused"])
    _kill_and_rerun(run, "sft", rng.randrange(recipe.sft.iters), rng.uniform(0.0, 0.3))
    _same_arrays(
        tiny_run.sft_dir / "adapters" / "adapters.safetensors",
        run.sft_dir / "adapters" / "adapters.safetensors",
    )
    _steps_once(run, "sft", "sft/train_loss", recipe.sft.iters)


@pytest.mark.parametrize("point", range(2))
def test_grpo_killed_at_a_seeded_point_then_rerun_gives_the_same_run(tiny_run, tmp_path, point):
    rng = random.Random(SEED * 10 + 5 + point)
    recipe = load_recipe(str(tiny_run.recipe))
    stage, arm = "grpo/rl_only", "rl_only"
    run = _without(tiny_run, tmp_path / "run", stage, [f"grpo/{arm}"])
    _kill_and_rerun(run, stage, rng.randrange(recipe.grpo.steps), rng.uniform(0.0, 0.5))
    _same_arrays(
        tiny_run.grpo_dir(arm) / "adapters" / "adapters.safetensors",
        run.grpo_dir(arm) / "adapters" / "adapters.safetensors",
    )
    for step in range(1, recipe.grpo.steps + 1):
        assert (
            run.rollouts_path(arm, step).read_bytes()
            == tiny_run.rollouts_path(arm, step).read_bytes()
        )
    _steps_once(run, stage, "grpo/reward", recipe.grpo.steps)
    assert not os.path.exists(run.grpo_dir(arm) / "checkpoint.tmp")
    if point == 0:  # a finished stage run again keeps one summary row
        run_stage(run, recipe, stage)
        assert len(read_jsonl(run.grpo_dir(arm) / "summary.jsonl")) == 1
