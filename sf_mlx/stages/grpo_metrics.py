"""GRPO's per-step metrics (names declared in sf_mlx/metrics.py) and skill usage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

if TYPE_CHECKING:
    from sf_mlx.stages.grpo import RolloutBatch

SKILL_TAGS = {"samples": "<sample>", "reflections": "<reflect>"}


def skill_usage(texts: Sequence[str]) -> dict[str, float]:
    """Mean number of `<sample>` / `<reflect>` blocks per response."""
    n = max(1, len(texts))
    return {k: sum(t.count(tag) for t in texts) / n for k, tag in SKILL_TAGS.items()}


def step_metrics(
    batch: RolloutBatch, upd: dict, t_roll: float, t_upd: float, comm_bytes: int = 0
) -> dict:
    """The namespaced per-step metrics (names declared in sf_mlx/metrics.py)."""
    r = batch.rewards
    lengths = np.array([len(c) for c in batch.completions])
    n_tokens = int(lengths.sum())
    usage = skill_usage(batch.texts)
    entropy = float(np.dot(batch.entropies, lengths) / max(n_tokens, 1))  # token-weighted
    return {
        "grpo/reward": float(r.mean()),
        "grpo/accuracy": float((r > 0).mean()),
        "grpo/reward_std": float(r.std(axis=1).mean()),
        "grpo/frac_reward_zero_std": float((r.std(axis=1) == 0).mean()),
        "grpo/mean_length": float(lengths.mean()),
        "grpo/max_length": int(lengths.max()),
        "grpo/truncation_rate": float(np.mean(batch.truncated)),
        "grpo/clip_fraction": upd["clip_fraction"],
        "grpo/kl": upd["kl"],
        "grpo/entropy": entropy,
        "grpo/loss": upd["loss"],
        "grpo/grad_norm": upd["grad_norm"],
        "grpo/logprob_gap": upd["logprob_gap"],
        "grpo/tokens_per_sec": n_tokens / max(t_roll + t_upd, 1e-9),
        "grpo/peak_memory_gb": mx.get_peak_memory() / 1e9,
        "grpo/samples_per_response": usage["samples"],
        "grpo/reflections_per_response": usage["reflections"],
        "grpo/rows_in_gradient": upd["rows_in_gradient"],
        "grpo/rollout_sec": t_roll,
        "grpo/update_sec": t_upd,
        "grpo/comm_mb": comm_bytes / 1e6,
    }
