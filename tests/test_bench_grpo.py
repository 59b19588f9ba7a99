"""`sf-mlx bench grpo`'s measure: the reference path it times against is the same computation."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx

from sf_mlx.config import GrpoConfig


def test_the_current_step_matches_the_reference_path(tiny_model_dir):
    from sf_mlx import model as model_io
    from sf_mlx.bench_grpo import bench_round
    from sf_mlx.lora import attach_lora
    from sf_mlx.tasks import get_task

    mx.random.seed(0)
    m, tok = model_io.load(str(tiny_model_dir))
    attach_lora(m, rank=8, scale=20.0, dropout=0.0, num_layers=-1)
    problems = get_task("countdown").make_problems(
        8, 0, num_args=2, max_number=10, min_target=10, max_target=30
    )
    cfg = replace(
        GrpoConfig(),
        prompts_per_step=4,
        group_size=4,
        minibatch_prompts=2,
        max_tokens=24,
        temperature=1.0,
        microbatch_tokens=64,
    )

    def reward(problem, text):  # mixed rewards in most groups, so the gradient is not zero
        return float(len(text) % 2)

    r = bench_round(m, tok, problems, reward, cfg, seed=0, step=0, first="new")
    assert r.same_tokens  # dropping the no-op repetition penalty changes no token
    assert r.grad_max > 0 and r.grad_diff <= 1e-4 * r.grad_max
    assert r.rows == 16 and r.rows_in_gradient < 16  # some all-equal group was skipped
    assert set(r.rollout_s) == set(r.update_s) == {"new", "reference"}
