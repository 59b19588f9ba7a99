"""Full-parameter GRPO (`grpo.method=full`, the paper's setting): every weight trains, the KL
reference is the starting weights (one copy kept, none with beta = 0), and the GRPO arms of a
run are written and evaluated as model folders."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sf_mlx.config import GrpoConfig
from sf_mlx.stages import grpo
from sf_mlx.stages.arms import load_policy


def _format_reward(problem, text):
    from sf_mlx.tasks import extract_answer

    return float(extract_answer(text) is not None)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def test_full_grpo_trains_every_weight_against_the_starting_weights(tiny_model_dir, tmp_path):
    from sf_mlx import model as model_io
    from sf_mlx.tasks import get_task

    cfg = replace(
        GrpoConfig(),
        method="full",
        beta=0.5,
        steps=2,
        prompts_per_step=4,
        group_size=8,
        minibatch_prompts=4,  # one update per step: step 1's policy is the reference
        max_tokens=24,
        learning_rate=2e-3,
        checkpoint_every=1,
    )
    model, tok, trains = load_policy(str(tiny_model_dir), cfg, seed=0)
    assert trains == {"fine_tune_type": "full", "fp32_master": False}
    start = _weights(model)
    assert set(dict(tree_flatten(model.trainable_parameters()))) == set(start)
    problems = get_task("countdown").make_problems(
        16, 0, num_args=2, max_number=10, min_target=10, max_target=30
    )
    kls = []
    grpo.train_grpo(
        model,
        tok,
        problems,
        _format_reward,
        cfg,
        tmp_path / "ckpt",
        seed=0,
        on_step=lambda step, metrics, batch: kls.append(metrics["grpo/kl"]),
    )
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[1] > 1e-6
    after = _weights(model)
    for name in ("lm_head.weight", "transformer.wte.weight"):
        assert not np.array_equal(after[name], start[name]), name
    # the reference is the untouched starting model: same logits as a fresh load
    fresh, _ = model_io.load(str(tiny_model_dir))
    tokens = mx.array([tok.encode("Using the numbers [3, 5]")])
    with grpo.starting_weights(model, fresh.parameters()):
        assert mx.array_equal(model(tokens), fresh(tokens)).item()
    assert np.array_equal(_weights(model)["lm_head.weight"], after["lm_head.weight"])


@pytest.mark.slow
def test_countdown_tiny_with_full_grpo_writes_and_evaluates_model_folders(tmp_path):
    from sf_mlx.pipeline import run_recipe
    from sf_mlx.records import EvalResult
    from sf_mlx.rundir import read_json, read_jsonl

    run = run_recipe(
        "countdown-tiny",
        ["grpo.method=full", "grpo.learning_rate=1e-5"],
        run_dir=tmp_path / "run",
        log=lambda _: None,
    )
    for arm in ("sft_grpo", "rl_only", "star_grpo"):
        folder = run.grpo_dir(arm)
        assert (folder / "model" / "config.json").exists() and not (folder / "adapters").exists()
        assert read_json(folder / "model.json")["model"] == str(folder / "model")
    files = sorted(run.eval_dir.rglob("*.jsonl"))
    evaluated = {r.model for f in files for r in read_jsonl(f, EvalResult)}
    assert {"sft_grpo", "rl_only", "star_grpo"} <= evaluated
