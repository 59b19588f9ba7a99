"""GRPO with a verifiable reward (PAPER.md stage 7), small enough to read in one sitting.
The objective's math (advantages, variants, log-probs, loss) is in `grpo_objective.py`.

One step, exactly:
 1. Take B problems from the RL pool: epoch-wise seeded permutations, so step t's batch is a
    pure function of (seed, t) and resuming needs no saved iterator.
 2. Sample G completions per problem from the current policy (LoRA adapter on), through the
    shared model I/O (batched KV cache), at the rollout temperature, at most `max_tokens`.
    A completion that stopped keeps the EOS token it actually sampled (a tokenizer may have
    several, e.g. Qwen's <|im_end|> and <|endoftext|>).
 3. Reward: `reward_fn(problem, text)`; for tasks it is the checker on the LAST `<answer>`
    (binary). A completion cut by the length limit gets `truncated_reward` (0 by default).
 4. Advantages per group: GRPO and DAPO `(r - mean) / (std + 1e-4)`; Dr. GRPO `r - mean`.
    All-equal rewards give A = 0, hence zero policy gradient.
 5. Loss on completion tokens only (prompt masked), with the per-token ratio
    rho = exp(logp_theta - logp_old):  L = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
    (+ beta * k3 KL to the reference = the same weights with the adapter switched off).
    The variant fixes the normaliser of a mini-batch: GRPO averages over each completion's
    tokens then over completions; DAPO averages over all its tokens; Dr. GRPO sums tokens and
    divides by the constant (completions x max_tokens). With `overlong_filter`, completions cut
    at `max_tokens` are left out of the loss (numerator and normaliser), but their reward still
    enters the group's advantages. `mu` passes over the batch, in mini-batches of
    `minibatch_prompts` groups, one optimizer update per mini-batch; nothing non-finite is ever
    applied (the loss and gradient norm are checked before the update).

Work whose result is known in advance is not done (the gradient is the same, to float error):
- with beta = 0 a row with A = 0 has zero loss and zero gradient: it enters the normaliser but
  not the forward/backward pass;
- with mu = 1 and a single mini-batch the weights at the update are those that sampled, so the
  ratio is exactly 1: logp_old is the detached logp of the gradient pass (as TRL does); otherwise
  logp_old is computed once per step, before any update;
- a mini-batch's gradient is accumulated over micro-batches of length-sorted rows (at most
  `microbatch_tokens` padded tokens each, widths rounded up to PAD_TO), and the log-softmax runs
  only from the first completion position of the micro-batch on;
- the policy's entropy is measured by the sampler on the distributions it sampled from, not by
  the gradient pass.

Departures from the textbook, all deliberate:
- logp_old comes from the training forward pass (same weights as at sampling), not from the
  sampler's incremental-decode log-probs; those (at the same temperature) are only compared, as
  `grpo/logprob_gap` (float error between incremental decoding and the full forward pass).
- The EOS token that ended a completion is part of the action and of the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from sf_mlx.memory import checkpointed_layers
from sf_mlx.stages.grpo_checkpoint import load_checkpoint, save_checkpoint
from sf_mlx.stages.grpo_metrics import step_metrics
from sf_mlx.stages.grpo_objective import (
    VARIANTS,
    adapters_disabled,
    grpo_loss,
    sequence_logprobs,
    starting_weights,
)

PAD_TO = 32  # micro-batch widths are rounded up to a multiple of this (+1), as in SFT

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
    prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int, pad_to: int = 1
) -> tuple[mx.array, mx.array]:
    """Right-padded (N, T) tokens and the (N, T-1) mask of completion tokens as targets.

    T is the longest row, rounded up to 1 + a multiple of `pad_to` (fewer distinct shapes)."""
    longest = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    width = max(longest, 1 + pad_to * math.ceil((longest - 1) / pad_to))
    toks = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width - 1), dtype=np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        toks[i, : len(p) + len(c)] = p + c
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0  # targets at positions of c
    return mx.array(toks), mx.array(mask)


def plan_microbatches(lengths: Sequence[int], budget: int, pad_to: int = PAD_TO) -> list[list[int]]:
    """Indices into `lengths`, sorted by length and cut into micro-batches of at most `budget`
    padded tokens (rows x rounded width); a row longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        width = 1 + pad_to * math.ceil((lengths[i] - 1) / pad_to)
        if out and (len(out[-1]) + 1) * width <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# --------------------------------------------------------------------------- the training loop


def rollout_parts(n_groups: int, n_parts: int) -> list[list[int]]:
    """Group indices of each seeded rollout part: `n_parts` contiguous runs of whole groups."""
    return [[int(i) for i in part] for part in np.array_split(np.arange(n_groups), n_parts)]


@dataclass(frozen=True)
class RolloutBatch:
    """One step's B x G completions, flattened group-major (group g owns rows g*G .. g*G+G-1)."""

    problem_idx: list[int]  # (B,)
    prompts: list[list[int]]  # (N,) prompt token ids
    completions: list[list[int]]  # (N,) sampled ids (+ the EOS sampled, when it stopped)
    texts: list[str]  # (N,)
    sampler_logprobs: list[list[float]]  # (N,) the sampler's log-prob of each completion token
    entropies: list[float]  # (N,) mean entropy of the distributions each completion sampled from
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
    from sf_mlx import distributed as dist
    from sf_mlx import model as model_io
    from sf_mlx.stages.generation import derive_seed

    g = cfg.group_size
    prompt_ids = [model_io.chat_prompt(tokenizer, prompts_text(problems[i])) for i in idx]
    flat_prompts = [p for p in prompt_ids for _ in range(g)]
    params = model_io.SamplingParams(cfg.max_tokens, cfg.temperature, 1.0, 0, 1.0)
    parts = rollout_parts(len(idx), cfg.rollout_split)

    def sample_part(j: int) -> list:
        rows = [gi * g + k for gi in parts[j] for k in range(g)]
        # one part keeps the seed a step has always had
        part_seed = derive_seed(seed, "grpo", step, *([j] if len(parts) > 1 else []))
        return model_io.generate(
            model,
            tokenizer,
            [flat_prompts[r] for r in rows],
            params,
            seed=part_seed,
            batch_size=cfg.rollout_batch or len(rows),
        )

    gens = [  # rank k samples parts k, k + N, ...; every rank gets all of them, in part order
        x
        for _, results in dist.in_rounds(
            range(len(parts)),
            sample_part,
            encode=lambda part: [asdict(x) for x in part],
            decode=lambda part: [model_io.Generation(**x) for x in part],
        )
        for part in results
        for x in part
    ]
    completions, logprobs, truncated, rewards = [], [], [], []
    for k, gen in enumerate(gens):
        stopped = gen.stop_token is not None
        completions.append(gen.tokens + ([gen.stop_token] if stopped else []))
        logprobs.append(gen.logprobs + ([gen.stop_logprob] if stopped else []))
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
        sampler_logprobs=logprobs,
        entropies=[x.entropy for x in gens],
        truncated=truncated,
        rewards=r,
        advantages=VARIANTS[cfg.variant].advantages(r),
    )


@dataclass(frozen=True)
class MicroBatch:
    """Rows of one mini-batch that go through one forward/backward pass together."""

    rows: list[int]  # (n,) indices into the RolloutBatch
    tokens: mx.array  # (n, T) right-padded, T rounded up to PAD_TO
    mask: mx.array  # (n, T-1-start) completion targets from position `start` on
    start: int  # first target position computed (the shortest prompt's last token)
    adv: mx.array  # (n,)
    old_logp: mx.array | None  # (n, T-1-start); None when the ratio is exactly 1
    ref_logp: mx.array | None  # (n, T-1-start); None when beta == 0


@dataclass(frozen=True)
class MiniBatch:
    """One optimizer update: its micro-batches and the variant's normaliser over all its rows."""

    micro: list[MicroBatch]  # this rank's share of them (all of them on one rank)
    normaliser: int
    loss_tokens: int  # completion tokens in the loss (the denominator of clip fraction and KL)
    moving_rows: int  # rows in the forward/backward passes, over all ranks


def minibatch_rows(n_groups: int, group_size: int, minibatch_prompts: int) -> list[list[int]]:
    """Row indices of each mini-batch: `minibatch_prompts` whole groups, in order."""
    return [
        [
            gi * group_size + j
            for gi in range(s, min(s + minibatch_prompts, n_groups))
            for j in range(group_size)
        ]
        for s in range(0, n_groups, minibatch_prompts)
    ]


def plan_update(
    model, batch: RolloutBatch, pad_id: int, cfg, reference=adapters_disabled
) -> list[MiniBatch]:
    """Mini-batches of `minibatch_prompts` groups, each cut into micro-batches of the rows that
    change the gradient; logp_old and the reference computed here, once per step, if needed.
    `reference(model)`: a context in which the model is the KL reference policy. On N ranks,
    rank k keeps micro-batches k, k + N, ... of each mini-batch."""
    from sf_mlx import distributed as dist

    variant = VARIANTS[cfg.variant]
    adv = batch.advantages.reshape(-1)  # (N,)
    minibatches = minibatch_rows(len(batch.problem_idx), cfg.group_size, cfg.minibatch_prompts)
    ratio_is_one = cfg.mu == 1 and len(minibatches) == 1  # the weights that sampled do the update
    plan = []
    for rows in minibatches:
        in_loss = [r for r in rows if not (cfg.overlong_filter and batch.truncated[r])]
        n_tokens = sum(len(batch.completions[r]) for r in in_loss)
        moving = in_loss if cfg.beta else [r for r in in_loss if adv[r] != 0]
        lengths = [len(batch.prompts[r]) + len(batch.completions[r]) for r in moving]
        micro = []
        parts = plan_microbatches(lengths, cfg.microbatch_tokens)
        for part in [parts[k] for k in dist.my_share(len(parts))]:
            mrows = [moving[i] for i in part]
            tokens, mask = pad_sequences(
                [batch.prompts[r] for r in mrows],
                [batch.completions[r] for r in mrows],
                pad_id,
                PAD_TO,
            )
            start = min(len(batch.prompts[r]) for r in mrows) - 1
            old = ref = None
            if not ratio_is_one:
                old = mx.stop_gradient(sequence_logprobs(model, tokens, cfg.temperature, start))
            if cfg.beta:
                with reference(model):
                    ref = sequence_logprobs(model, tokens, cfg.temperature, start)
                ref = mx.stop_gradient(ref)
            mx.eval([a for a in (old, ref) if a is not None])
            micro.append(
                MicroBatch(
                    mrows,
                    tokens,
                    mask[:, start:],
                    start,
                    mx.array(adv[mrows], mx.float32),
                    old,
                    ref,
                )
            )
        normaliser = max(1, variant.normaliser(len(in_loss), n_tokens, cfg.max_tokens))
        plan.append(MiniBatch(micro, normaliser, n_tokens, len(moving)))
    return plan


def minibatch_gradient(model, mini: MiniBatch, cfg) -> tuple[dict, dict[str, mx.array], list]:
    """The gradient of one mini-batch's loss, accumulated over its micro-batches (unclipped),
    its (loss, clipped tokens, KL sum) and each micro-batch's detached logp."""
    row_loss = VARIANTS[cfg.variant].row_loss

    def loss_fn(m, mb: MicroBatch):
        return grpo_loss(
            m,
            mb.tokens,
            mb.mask,
            mb.old_logp,
            mb.ref_logp,
            mb.adv,
            cfg.epsilon_low,
            cfg.epsilon_high,
            cfg.beta,
            cfg.temperature,
            row_loss,
            mini.normaliser,
            mb.start,
        )

    grad_fn = nn.value_and_grad(model, loss_fn)
    grads = tree_map(mx.zeros_like, model.trainable_parameters())
    sums = {"loss": mx.array(0.0), "clipped": mx.array(0.0), "kl": mx.array(0.0)}
    logps = []
    for mb in mini.micro:
        (loss, (clipped, kl, logp)), mb_grads = grad_fn(model, mb)
        grads = tree_map(mx.add, grads, mb_grads)
        sums = {
            "loss": sums["loss"] + loss,
            "clipped": sums["clipped"] + clipped,
            "kl": sums["kl"] + kl,
        }
        mx.eval(grads, sums, logp)  # one micro-batch's activations alive at a time
        logps.append(logp)
    return grads, sums, logps


def policy_update(
    model, optimizer, batch: RolloutBatch, pad_id: int, cfg, reference=adapters_disabled
) -> dict[str, float]:
    """Step 5: plan the mini-batches, then `mu` passes of one optimizer update per mini-batch."""
    from mlx.optimizers import clip_grad_norm

    from sf_mlx import distributed as dist

    plan = plan_update(model, batch, pad_id, cfg, reference)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "grad_norm": 0.0}
    gaps: list[float] = []
    n_updates = 0
    for pass_ in range(cfg.mu):
        for mini in plan:
            with checkpointed_layers(model, cfg.grad_checkpoint):
                grads, stats, logps = minibatch_gradient(model, mini, cfg)
            if dist.size() > 1:  # every rank's micro-batches: one gradient, one update
                grads = dist.sum_gradients(grads)
                summed = dist.all_sum(mx.stack(list(stats.values())))
                stats = {k: summed[i] for i, k in enumerate(stats)}
            grads, norm = clip_grad_norm(grads, 1.0)
            mx.eval(grads, norm)
            loss = stats["loss"].item()
            if not (math.isfinite(loss) and math.isfinite(norm.item())):
                raise FloatingPointError(
                    f"GRPO loss is {loss}, gradient norm {norm.item()}: nothing was applied"
                )
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state)
            if pass_ == 0:  # sampler vs training forward, at the weights that sampled
                for mb, logp in zip(mini.micro, logps, strict=True):
                    gaps += _logprob_gaps(batch, mb, logp if mb.old_logp is None else mb.old_logp)
            n = max(1, mini.loss_tokens)
            values = (loss, stats["clipped"].item() / n, stats["kl"].item() / n, norm.item())
            for k, v in zip(sums, values, strict=True):
                sums[k] += v
            n_updates += 1
    out = {k: v / max(1, n_updates) for k, v in sums.items()}
    out["logprob_gap"] = dist.max_scalar(float(max(gaps)) if gaps else 0.0)
    out["rows_in_gradient"] = sum(mini.moving_rows for mini in plan)
    return out


def _logprob_gaps(batch: RolloutBatch, mb: MicroBatch, logp: mx.array) -> list[float]:
    """Per row, the largest |sampler log-prob - training forward log-prob| over its tokens."""
    lp, mk = np.array(logp), np.array(mb.mask) > 0
    out = []
    for i, r in enumerate(mb.rows):
        sampled = np.array(batch.sampler_logprobs[r])
        recomputed = lp[i][mk[i]][: len(sampled)]
        if len(recomputed):
            out.append(float(np.abs(recomputed - sampled[: len(recomputed)]).max()))
    return out


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
    writer: bool = True,
) -> int:
    """Run GRPO steps until `cfg.steps` (resuming from `ckpt_dir` if a checkpoint is there).

    The model must already carry its trainable adapter. Returns the last completed step.
    `should_stop()` saves a checkpoint and returns; Ctrl-C puts back the weights and optimizer
    state of the last completed step (an update may have been half applied), saves them and
    re-raises; a non-finite loss or gradient raises FloatingPointError before it is applied.
    `writer=False`: a rank of a distributed run that leaves checkpoints to another.
    """
    import time
    from pathlib import Path

    import mlx.optimizers as optim

    from sf_mlx import distributed as dist

    ckpt = Path(ckpt_dir)
    optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=0.0)
    reference = adapters_disabled
    if cfg.method == "full" and cfg.beta:  # the weights before any step
        start_weights = tree_map(lambda x: x, model.parameters())
        reference = partial(starting_weights, weights=start_weights)
    step = 0
    if (ckpt / "state.json").exists():
        step = load_checkpoint(ckpt, model, optimizer)
    dist.same_on_every_rank(f"the step of {ckpt}", step)

    def save(step: int) -> None:
        if writer:
            save_checkpoint(ckpt, model, optimizer, step)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def snapshot():  # arrays are immutable: holding the leaves keeps this state
        return tree_map(lambda x: x, model.trainable_parameters()), tree_map(
            lambda x: x, optimizer.state
        )

    done = snapshot()  # the state after `step` whole steps
    try:
        while step < cfg.steps:
            mx.reset_peak_memory()
            sent = dist.traffic_bytes()
            tic = time.perf_counter()
            idx = batch_problem_indices(len(problems), cfg.prompts_per_step, step, seed)
            batch = collect_rollouts(
                model, tokenizer, problems, prompt_fn, reward_fn, idx, cfg, seed, step
            )
            t_roll = time.perf_counter() - tic
            upd = policy_update(model, optimizer, batch, pad_id, cfg, reference)
            t_upd = time.perf_counter() - tic - t_roll
            step, done = step + 1, snapshot()
            if on_step:
                comm = dist.traffic_bytes() - sent
                on_step(step, step_metrics(batch, upd, t_roll, t_upd, comm), batch)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or should_stop():
                save(step)
            if should_stop():
                break
    except KeyboardInterrupt:  # the step in flight is dropped; everything before it is kept
        params, opt_state = done
        model.update(params)
        optimizer.state = opt_state
        save(step)
        raise
    return step
