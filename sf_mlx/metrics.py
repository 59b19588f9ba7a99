"""Metric names, declared once: namespaced name, short label, one-line meaning, number format.

Stages log these names in events.jsonl; the TUI, plots and README read labels from this table.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, NamedTuple


class Metric(NamedTuple):
    name: str  # "grpo/reward"; a pattern holds "<task>", e.g. "eval/<task>/accuracy"
    label: str  # short, for plot titles and table headers
    meaning: str  # one line
    fmt: str = ".4f"  # format spec for one value

    def format(self, value: Any) -> str:
        """`value` with this metric's format spec ("-" for None)."""
        return "-" if value is None else format(value, self.fmt)


METRICS: tuple[Metric, ...] = (
    # built-in base model pretraining
    Metric("base/train_loss", "base loss", "pretraining cross-entropy of the built-in base model"),
    Metric(
        "base/tokens_per_sec", "base tok/s", "pretraining throughput in tokens per second", ".0f"
    ),
    # SFT on silver traces
    Metric(
        "sft/train_loss", "train loss", "SFT cross-entropy on the trace tokens (mean per token)"
    ),
    Metric("sft/valid_loss", "valid loss", "SFT cross-entropy on held-out traces"),
    Metric("sft/learning_rate", "SFT lr", "SFT learning rate at this step", ".2e"),
    Metric("sft/tokens_per_sec", "SFT tok/s", "SFT throughput in trained tokens per second", ".0f"),
    # GRPO
    Metric("grpo/reward", "reward", "mean reward over the step's completions"),
    Metric(
        "grpo/accuracy", "accuracy", "fraction of completions whose final answer is correct", ".3f"
    ),
    Metric("grpo/reward_std", "reward std", "mean within-group standard deviation of reward"),
    Metric(
        "grpo/frac_reward_zero_std",
        "zero-std groups",
        "fraction of groups whose rewards are all equal (no learning signal)",
        ".3f",
    ),
    Metric("grpo/mean_length", "mean length", "mean completion length in tokens", ".1f"),
    Metric("grpo/max_length", "max length", "longest completion in tokens", ".0f"),
    Metric("grpo/truncation_rate", "truncated", "fraction of completions cut at max_tokens", ".3f"),
    Metric("grpo/clip_fraction", "clipped", "fraction of tokens whose ratio was clipped", ".3f"),
    Metric("grpo/kl", "KL", "mean per-token KL to the adapter-off reference policy"),
    Metric(
        "grpo/entropy",
        "entropy",
        "mean per-token entropy of the distributions the completions were sampled from",
    ),
    Metric(
        "grpo/tokens_per_sec", "GRPO tok/s", "completion tokens per second of the whole step", ".0f"
    ),
    Metric("grpo/loss", "loss", "clipped surrogate loss (+ beta * KL), mean over updates"),
    Metric("grpo/grad_norm", "grad norm", "gradient norm before clipping to 1.0", ".3f"),
    Metric(
        "grpo/logprob_gap",
        "logprob gap",
        "max |sampler log-prob - training forward log-prob| over sampled tokens (float error)",
        ".2e",
    ),
    Metric("grpo/peak_memory_gb", "peak mem GB", "peak accelerator memory in GB", ".2f"),
    Metric(
        "grpo/samples_per_response",
        "attempts/resp",
        "mean number of attempts (<sample> blocks) per completion",
        ".2f",
    ),
    Metric(
        "grpo/reflections_per_response",
        "reflections/resp",
        "mean number of reflections (<reflect> blocks) per completion",
        ".2f",
    ),
    Metric(
        "grpo/rows_in_gradient",
        "rows in grad",
        "completions that went through forward/backward (beta = 0 skips zero-advantage rows)",
        ".0f",
    ),
    Metric("grpo/rollout_sec", "rollout s", "seconds spent generating the step's rollouts", ".1f"),
    Metric("grpo/update_sec", "update s", "seconds spent on the step's gradient updates", ".1f"),
    Metric(
        "grpo/comm_mb",
        "comm MB",
        "MB this rank put into collectives in the step (0 on one rank)",
        ".2f",
    ),
    # evaluation, one per task variant, e.g. eval/countdown-4/accuracy
    Metric(
        "eval/<task>/accuracy", "accuracy", "mean correctness over k samples per question", ".3f"
    ),
    Metric("eval/<task>/pass_at_k", "pass@k", "fraction of questions with a correct sample", ".3f"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
_PATTERNS = [
    (re.compile("^" + re.escape(m.name).replace(re.escape("<task>"), "(?P<task>[^/]+)") + "$"), m)
    for m in METRICS
    if "<task>" in m.name
]


def metric(name: str) -> Metric:
    """The Metric for `name`; pattern metrics come back with the task filled in."""
    if name in BY_NAME:
        return BY_NAME[name]
    for pattern, m in _PATTERNS:
        match = pattern.match(name)
        if match:
            task = match["task"]
            return m._replace(name=name, label=f"{m.label} ({task})")
    near = difflib.get_close_matches(name, list(BY_NAME), n=1)
    hint = f"did you mean {near[0]}?" if near else f"declared: {', '.join(BY_NAME)}"
    raise KeyError(f"unknown metric {name!r}; {hint}")


def is_metric(name: str) -> bool:
    try:
        metric(name)
    except KeyError:
        return False
    return True


def stage_metrics(stage: str) -> list[Metric]:
    """Declared metrics of one namespace ("sft", "grpo", "base", "eval"), in table order."""
    return [m for m in METRICS if m.name.split("/", 1)[0] == stage]


def add_point(points: list[tuple[int, float]], step: int, value: float) -> None:
    """Append (step, value) to a metric's series in log order. A step at or before the last
    one means the stage went back (a restarted SFT, a GRPO stage resumed from an earlier
    checkpoint): the points of the abandoned attempt from that step on are dropped, so a series
    holds each step once, from the attempt that finished it."""
    while points and points[-1][0] >= step:
        points.pop()
    points.append((step, value))


def smooth(ys: list[float], weight: float) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), debiased so the first point is kept:
    `weight` 0 returns the series unchanged."""
    out, avg = [], 0.0
    for i, y in enumerate(ys, start=1):
        avg = weight * avg + (1 - weight) * y
        out.append(avg / (1 - weight**i) if weight > 0 else y)
    return out
