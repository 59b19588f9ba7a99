"""The GRPO objective (the math of steps 4-5 in `grpo.py`): advantages, the one table
of variants, log-probs, the clipped surrogate, the k3 KL, and the reference policy."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from sf_mlx.logprobs import token_logprobs

# --------------------------------------------------------------------------- advantages / variants


def grpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """(B, G) rewards -> (B, G) group-normalised advantages."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + 1e-4)


def dr_grpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """Dr. GRPO: no division by the group std."""
    return rewards - rewards.mean(axis=1, keepdims=True)


def row_mean(per_token: mx.array, mask: mx.array) -> mx.array:
    """(N, T) token losses -> (N,) mean over each completion's tokens."""
    return (per_token * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)


def row_sum(per_token: mx.array, mask: mx.array) -> mx.array:
    """(N, T) token losses -> (N,) sum over each completion's tokens."""
    return (per_token * mask).sum(axis=1)


@dataclass(frozen=True)
class Variant:
    """A GRPO variant: advantages from rewards, and the loss of a mini-batch as
    sum over its completions of `row_loss` / `normaliser(completions, tokens, max_tokens)`,
    counting the completions and completion tokens that are in the loss."""

    advantages: Callable[[np.ndarray], np.ndarray]
    row_loss: Callable[[mx.array, mx.array], mx.array]
    normaliser: Callable[[int, int, int], int]


# The one place a variant is chosen.
VARIANTS: dict[str, Variant] = {
    "grpo": Variant(grpo_advantages, row_mean, lambda rows, tokens, max_tokens: rows),
    "dapo": Variant(grpo_advantages, row_sum, lambda rows, tokens, max_tokens: tokens),
    "dr_grpo": Variant(
        dr_grpo_advantages, row_sum, lambda rows, tokens, max_tokens: rows * max_tokens
    ),
}


# --------------------------------------------------------------------------- log-probs and loss


def sequence_logprobs(
    model: nn.Module, tokens: mx.array, temperature: float = 1.0, start: int = 0
) -> mx.array:
    """Log-prob of each next token from position `start` on, at `temperature`.

    tokens (N, T) -> logp (N, T-1-start); column t scores tokens[:, start + t + 1]. Only the
    chosen token's log-prob is gathered: no (N, T, V) log-softmax is materialised, and for a
    large vocabulary no (N, T, V) logits either (`sf_mlx.logprobs`).
    """
    return token_logprobs(model, tokens, temperature, start)


def clipped_objective(
    logp: mx.array, old_logp: mx.array, adv: mx.array, eps_low: float, eps_high: float
) -> tuple[mx.array, mx.array]:
    """Per-token clipped surrogate loss and where clipping bound: logp/old (N, T), adv (N,)."""
    ratio = mx.exp(logp - old_logp)  # (N, T)
    a = adv[:, None]  # (N, 1)
    unclipped = ratio * a
    clipped = mx.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    loss = -mx.minimum(unclipped, clipped)  # (N, T)
    return loss, (clipped < unclipped).astype(mx.float32)


def k3_kl(logp: mx.array, ref_logp: mx.array) -> mx.array:
    """Schulman's k3 estimator of KL(policy || reference), per token, >= 0."""
    d = ref_logp - logp
    return mx.exp(d) - d - 1.0


def grpo_loss(
    model: nn.Module,
    tokens: mx.array,  # (n, T) prompt + completion, right-padded
    mask: mx.array,  # (n, T-1-start) 1 on completion tokens (as next-token targets)
    old_logp: mx.array | None,  # (n, T-1-start); None: the ratio is exactly 1 (this pass's logp)
    ref_logp: mx.array | None,  # (n, T-1-start) or None when beta == 0
    adv: mx.array,  # (n,)
    eps_low: float,
    eps_high: float,
    beta: float,
    temperature: float,
    row_loss: Callable[[mx.array, mx.array], mx.array],
    normaliser: float,
    start: int = 0,
) -> tuple[mx.array, tuple[mx.array, mx.array, mx.array]]:
    """These rows' share of a mini-batch loss (their `row_loss` sum / `normaliser`), and
    (clipped tokens, KL summed over tokens, the detached logp) for the step's statistics."""
    logp = sequence_logprobs(model, tokens, temperature, start)  # (n, T')
    old = mx.stop_gradient(logp) if old_logp is None else old_logp
    per_token, clipped = clipped_objective(logp, old, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else mx.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl
    loss = row_loss(per_token, mask).sum() / normaliser
    stats = ((clipped * mask).sum(), (kl * mask).sum(), mx.stop_gradient(logp))
    return loss, stats


@contextmanager
def starting_weights(model: nn.Module, weights: dict):
    """The reference policy of full-parameter GRPO: the starting `weights` swapped in for the
    duration (arrays are immutable, so holding them is the one copy the reference costs)."""
    from mlx.utils import tree_map

    current = tree_map(lambda x: x, model.parameters())
    model.update(weights)
    try:
        yield
    finally:
        model.update(current)


@contextmanager
def adapters_disabled(model: nn.Module):
    """The reference policy: the same weights with every LoRA adapter's scale set to 0."""
    saved = []
    for _, m in model.named_modules():
        if hasattr(m, "lora_a") and hasattr(m, "scale"):
            saved.append((m, m.scale))
            m.scale = 0.0
    try:
        yield model
    finally:
        for m, s in saved:
            m.scale = s
