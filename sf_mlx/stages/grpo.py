"""GRPO with a verifiable reward (PAPER.md stage 7), small enough to read in one sitting.

One step, exactly:
 1. Take B problems from the RL pool: epoch-wise seeded permutations, so step t's batch is a
    pure function of (seed, t) and resuming needs no saved iterator.
 2. Sample G completions per problem from the current policy (LoRA adapter on), through the
    shared model I/O (batched KV cache), at the rollout temperature, at most `max_tokens`.
 3. Reward: `reward_fn(problem, text)`; for tasks it is the checker on the LAST `<answer>`
    (binary). A completion cut by the length limit gets `truncated_reward` (0 by default).
 4. Advantages per group: GRPO `(r - mean) / (std + 1e-4)`; Dr. GRPO `r - mean`. All-equal
    rewards give A = 0, hence zero policy gradient.
 5. Loss on completion tokens only (prompt masked), with the per-token ratio
    rho = exp(logp_theta - logp_old):  L = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
    (+ beta * k3 KL to the reference = the same weights with the adapter switched off).
    GRPO averages over each completion's tokens then over completions; Dr. GRPO sums tokens and
    divides by the constant (completions x max_tokens). `mu` passes over the batch, in
    mini-batches of `minibatch_prompts` groups, one optimizer update per mini-batch.

Departures from the textbook, all deliberate:
- logp_old is recomputed with the training forward pass (same weights as at sampling) instead of
  reusing the sampler's incremental-decode log-probs, so the first pass has ratio exactly 1; the
  sampler's log-probs (at the same temperature) are only compared, as `grpo/logprob_gap`
  (float error between incremental decoding and the full forward pass).
- The EOS token that ended a completion is part of the action and of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# --------------------------------------------------------------------------- advantages / variants


def grpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """(B, G) rewards -> (B, G) group-normalised advantages."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + 1e-4)


def dr_grpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """Dr. GRPO: no division by the group std."""
    return rewards - rewards.mean(axis=1, keepdims=True)


def mean_per_sequence(per_token: mx.array, mask: mx.array, max_tokens: int) -> mx.array:
    """GRPO: mean over each completion's tokens, then over completions."""
    per_seq = (per_token * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)  # (N,)
    return per_seq.mean()


def sum_over_constant(per_token: mx.array, mask: mx.array, max_tokens: int) -> mx.array:
    """Dr. GRPO: token sum over a constant normaliser (completions x max_tokens)."""
    return (per_token * mask).sum() / (per_token.shape[0] * max_tokens)


@dataclass(frozen=True)
class Variant:
    advantages: Callable[[np.ndarray], np.ndarray]
    aggregate: Callable[[mx.array, mx.array, int], mx.array]


# The one place a variant is chosen.
VARIANTS: dict[str, Variant] = {
    "grpo": Variant(grpo_advantages, mean_per_sequence),
    "dr_grpo": Variant(dr_grpo_advantages, sum_over_constant),
}


# --------------------------------------------------------------------------- log-probs and loss


def sequence_logprobs(
    model: nn.Module, tokens: mx.array, temperature: float = 1.0
) -> tuple[mx.array, mx.array]:
    """Log-prob of each next token and the entropy of each next-token distribution.

    tokens (N, T) -> (logp (N, T-1), entropy (N, T-1)); position t scores tokens[:, t + 1].
    """
    logits = model(tokens[:, :-1]).astype(mx.float32) / temperature  # (N, T-1, V)
    logz = mx.logsumexp(logits, axis=-1, keepdims=True)  # (N, T-1, 1)
    logp_all = logits - logz  # (N, T-1, V)
    logp = mx.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]  # (N, T-1)
    entropy = -(mx.exp(logp_all) * logp_all).sum(axis=-1)  # (N, T-1)
    return logp, entropy


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
    tokens: mx.array,  # (N, T) prompt + completion, right-padded
    mask: mx.array,  # (N, T-1) 1 on completion tokens (as next-token targets)
    old_logp: mx.array,  # (N, T-1)
    ref_logp: mx.array | None,  # (N, T-1) or None when beta == 0
    adv: mx.array,  # (N,)
    eps_low: float,
    eps_high: float,
    beta: float,
    temperature: float,
    max_tokens: int,
    aggregate: Callable[[mx.array, mx.array, int], mx.array],
) -> tuple[mx.array, tuple[mx.array, mx.array, mx.array]]:
    """Scalar loss and (clip fraction, KL, entropy) averaged over completion tokens."""
    logp, entropy = sequence_logprobs(model, tokens, temperature)
    per_token, clipped = clipped_objective(logp, old_logp, adv, eps_low, eps_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else mx.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl
    n = mx.maximum(mask.sum(), 1)
    stats = ((clipped * mask).sum() / n, (kl * mask).sum() / n, (entropy * mask).sum() / n)
    return aggregate(per_token, mask, max_tokens), stats


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


# --------------------------------------------------------------------------- batching helpers


def batch_problem_indices(n_pool: int, batch: int, step: int, seed: int) -> list[int]:
    """Step `step`'s problems: epoch-wise seeded permutations of the pool (wraps around)."""
    if n_pool < batch:
        raise ValueError(f"prompts_per_step={batch} but the RL pool has only {n_pool} problems")
    per_epoch = n_pool // batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, 7, epoch]).permutation(n_pool)
    return [int(i) for i in perm[k * batch : (k + 1) * batch]]


def pad_sequences(
    prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
) -> tuple[mx.array, mx.array]:
    """Right-padded (N, T) tokens and the (N, T-1) mask of completion tokens as targets."""
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    toks = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width - 1), dtype=np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        toks[i, : len(p) + len(c)] = p + c
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0  # targets at positions of c
    return mx.array(toks), mx.array(mask)


SKILL_TAGS = {"samples": "<sample>", "reflections": "<reflect>"}


def skill_usage(texts: Sequence[str]) -> dict[str, float]:
    """Mean number of `<sample>` / `<reflect>` blocks per response."""
    n = max(1, len(texts))
    return {k: sum(t.count(tag) for t in texts) / n for k, tag in SKILL_TAGS.items()}


# --------------------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class RolloutBatch:
    """One step's B x G completions, flattened group-major (group g owns rows g*G .. g*G+G-1)."""

    problem_idx: list[int]  # (B,)
    prompts: list[list[int]]  # (N,) prompt token ids
    completions: list[list[int]]  # (N,) sampled ids (+ EOS when the completion stopped)
    texts: list[str]  # (N,)
    sampler_logprobs: list[list[float]]  # (N,) the sampler's log-prob of each sampled token
    truncated: list[bool]  # (N,)
    rewards: np.ndarray  # (B, G)
    advantages: np.ndarray  # (B, G)


def collect_rollouts(
    model,
    tokenizer,
    problems,
    prompts_text: Callable[[object], str],
    reward_fn,
    idx: list[int],
    cfg,
    seed: int,
    step: int,
) -> RolloutBatch:
    """Sample G completions for each chosen problem and score them (steps 2-4 above)."""
    from sf_mlx import model as model_io
    from sf_mlx.stages.generation import derive_seed

    g = cfg.group_size
    prompt_ids = [model_io.chat_prompt(tokenizer, prompts_text(problems[i])) for i in idx]
    flat_prompts = [p for p in prompt_ids for _ in range(g)]
    params = model_io.SamplingParams(cfg.max_tokens, cfg.temperature, 1.0, 0, 1.0)
    gens = model_io.generate(
        model,
        tokenizer,
        flat_prompts,
        params,
        seed=derive_seed(seed, "grpo", step),
        batch_size=len(flat_prompts),
    )
    eos = tokenizer.eos_token_ids
    eos_id = next(iter(eos)) if not isinstance(eos, int) else eos
    completions, truncated, rewards = [], [], []
    for k, gen in enumerate(gens):
        stopped = gen.finish_reason == "stop"
        completions.append(gen.tokens + ([eos_id] if stopped else []))
        truncated.append(not stopped)
        r = (
            cfg.truncated_reward
            if not stopped
            else float(reward_fn(problems[idx[k // g]], gen.text))
        )
        rewards.append(r)
    r = np.array(rewards, dtype=np.float64).reshape(len(idx), g)
    return RolloutBatch(
        problem_idx=idx,
        prompts=flat_prompts,
        completions=completions,
        texts=[x.text for x in gens],
        sampler_logprobs=[x.logprobs for x in gens],
        truncated=truncated,
        rewards=r,
        advantages=VARIANTS[cfg.advantage].advantages(r),
    )


def policy_update(model, optimizer, batch: RolloutBatch, pad_id: int, cfg) -> dict[str, float]:
    """Step 5: logp_old (and the reference) once, then `mu` passes of mini-batch updates."""
    from mlx.optimizers import clip_grad_norm

    g, variant = cfg.group_size, VARIANTS[cfg.advantage]
    adv_flat = batch.advantages.reshape(-1)  # (N,)
    n_groups = len(batch.problem_idx)
    mbs = [
        list(range(s, min(s + cfg.minibatch_prompts, n_groups)))
        for s in range(0, n_groups, cfg.minibatch_prompts)
    ]
    prepared = []
    for groups in mbs:
        rows = [gi * g + j for gi in groups for j in range(g)]
        tokens, mask = pad_sequences(
            [batch.prompts[r] for r in rows], [batch.completions[r] for r in rows], pad_id
        )
        old_logp = mx.stop_gradient(sequence_logprobs(model, tokens, cfg.temperature)[0])
        ref = None
        if cfg.beta:
            with adapters_disabled(model):
                ref = mx.stop_gradient(sequence_logprobs(model, tokens, cfg.temperature)[0])
        mx.eval(old_logp, *([ref] if ref is not None else []))
        prepared.append((rows, tokens, mask, old_logp, ref, mx.array(adv_flat[rows], mx.float32)))

    def loss_fn(m, tokens, mask, old_logp, ref, adv):
        return grpo_loss(
            m,
            tokens,
            mask,
            old_logp,
            ref,
            adv,
            cfg.epsilon_low,
            cfg.epsilon_high,
            cfg.beta,
            cfg.temperature,
            cfg.max_tokens,
            variant.aggregate,
        )

    grad_fn = nn.value_and_grad(model, loss_fn)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    n_updates = 0
    for _ in range(cfg.mu):
        for _rows, tokens, mask, old_logp, ref, adv in prepared:
            (loss, (clip_frac, kl, ent)), grads = grad_fn(model, tokens, mask, old_logp, ref, adv)
            grads, norm = clip_grad_norm(grads, 1.0)
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state, loss, clip_frac, kl, ent, norm)
            if not np.isfinite(loss.item()):
                raise FloatingPointError(f"GRPO loss is {loss.item()}")
            for k, v in zip(sums, (loss, clip_frac, kl, ent, norm), strict=True):
                sums[k] += v.item()
            n_updates += 1
    out = {k: v / max(1, n_updates) for k, v in sums.items()}
    # how far the sampler's incremental-decode log-probs are from the training forward pass
    gaps = []
    for rows, _tokens, mask, old_logp, _ref, _adv in prepared:
        lp = np.array(old_logp)
        mk = np.array(mask) > 0
        for i, r in enumerate(rows):
            recomputed = lp[i][mk[i]][: len(batch.sampler_logprobs[r])]
            if len(recomputed):
                gaps.append(np.abs(recomputed - np.array(batch.sampler_logprobs[r])).max())
    out["logprob_gap"] = float(max(gaps)) if gaps else 0.0
    return out


def save_checkpoint(path, model, optimizer, step: int) -> None:
    """Adapter weights, optimizer state and step, written to a temp folder then renamed."""
    import json
    import shutil
    from pathlib import Path

    from mlx.utils import tree_flatten

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(
        str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path, model, optimizer) -> int:
    import json
    from pathlib import Path

    from mlx.utils import tree_unflatten

    path = Path(path)
    model.load_weights(str(path / "adapters.safetensors"), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    mx.eval(model.parameters(), optimizer.state)
    return int(json.loads((path / "state.json").read_text())["step"])


StepHook = Callable[[int, dict, RolloutBatch], None]


def train_grpo(
    model: nn.Module,
    tokenizer,
    problems: Sequence,
    reward_fn: Callable[[object, str], float],
    cfg,
    ckpt_dir,
    seed: int,
    prompt_fn: Callable[[object], str] = lambda p: p.question,
    on_step: StepHook | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Run GRPO steps until `cfg.steps` (resuming from `ckpt_dir` if a checkpoint is there).

    The model must already carry its trainable adapter. Returns the last completed step.
    `should_stop()` saves a checkpoint and returns; Ctrl-C saves a checkpoint of the last
    completed step and re-raises; a NaN/inf loss raises FloatingPointError and keeps the last
    good checkpoint.
    """
    import time
    from pathlib import Path

    import mlx.optimizers as optim

    ckpt = Path(ckpt_dir)
    optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=0.0)
    step = 0
    if (ckpt / "state.json").exists():
        step = load_checkpoint(ckpt, model, optimizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    while step < cfg.steps:
        try:
            mx.reset_peak_memory()
            tic = time.perf_counter()
            idx = batch_problem_indices(len(problems), cfg.prompts_per_step, step, seed)
            batch = collect_rollouts(
                model, tokenizer, problems, prompt_fn, reward_fn, idx, cfg, seed, step
            )
            t_roll = time.perf_counter() - tic
            upd = policy_update(model, optimizer, batch, pad_id, cfg)
            t_upd = time.perf_counter() - tic - t_roll
        except KeyboardInterrupt:  # the step in flight is dropped; everything before it is kept
            save_checkpoint(ckpt, model, optimizer, step)
            raise
        step += 1
        if on_step:
            on_step(step, step_metrics(batch, upd, t_roll, t_upd), batch)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or should_stop():
            save_checkpoint(ckpt, model, optimizer, step)
        if should_stop():
            break
    return step


def step_metrics(batch: RolloutBatch, upd: dict, t_roll: float, t_upd: float) -> dict:
    """The namespaced per-step metrics (names declared in sf_mlx/metrics.py)."""
    r = batch.rewards
    lengths = np.array([len(c) for c in batch.completions])
    n_tokens = int(lengths.sum())
    usage = skill_usage(batch.texts)
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
        "grpo/entropy": upd["entropy"],
        "grpo/loss": upd["loss"],
        "grpo/grad_norm": upd["grad_norm"],
        "grpo/logprob_gap": upd["logprob_gap"],
        "grpo/tokens_per_sec": n_tokens / max(t_roll + t_upd, 1e-9),
        "grpo/peak_memory_gb": mx.get_peak_memory() / 1e9,
        "grpo/samples_per_response": usage["samples"],
        "grpo/reflections_per_response": usage["reflections"],
        "grpo/rollout_sec": t_roll,
        "grpo/update_sec": t_upd,
    }
