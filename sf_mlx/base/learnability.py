"""Probes that train: what the base architecture can learn to check, and how fast.

- `check_only` (probe (a)): the architecture trained from scratch on check demonstrations
  alone, or a given model trained further on checks written as a chosen corpus writes them;
  then the decision it gives on held-out checks and, for a given model, its verdicts on its
  own attempts.
- `compare_only` (probe (d)): single result-vs-target comparisons in one written form
  (`COMPARE_FORMS`), then the decision and whole greedy responses on held-out pairs.
Model output is parsed with regular expressions, never evaluated.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from sf_mlx import model as model_io
from sf_mlx.base.corpus import (
    CorpusConfig,
    _compare_line,
    comparison_pair,
    countdown_check_response,
)
from sf_mlx.base.probes import (
    _generate,
    decision_probabilities,
    decision_row,
    own_attempts,
    own_checks,
    own_verdicts,
    summarise_decisions,
)
from sf_mlx.prompts import reflection_prompt


def _train_from_scratch(
    pairs: list[tuple[str, str]],
    steps: int,
    seed: int,
    size: str,
    log,
    start: str | None = None,
    lr: float | None = None,
):
    """The `size` architecture with the shipped base's tokenizer, trained from scratch on the
    (prompt, response) pairs with the preset's training settings (peak rate `lr` if given);
    with `start`, that model and its tokenizer trained further at a constant `lr`. Returns
    (model, tokenizer, losses)."""
    from dataclasses import replace

    import mlx.core as mx
    from mlx_lm.models import nanochat
    from transformers import AutoTokenizer

    from sf_mlx.base import pretrain
    from sf_mlx.base.build import SIZES, _nanochat_config

    preset = SIZES[size]
    train_cfg = replace(
        preset.train,
        steps=max(1, steps),
        seed=seed,
        checkpoint_every=10**9,
        warmup=min(preset.train.warmup, max(1, steps // 5)),
        learning_rate=lr or preset.train.learning_rate,
        min_lr_ratio=1.0 if start else preset.train.min_lr_ratio,
    )
    m, tok = model_io.load(start or "builtin:small")
    hf_tok = AutoTokenizer.from_pretrained(model_io.resolve_model_path(start or "builtin:small"))
    if start is None:  # the tokenizer only; the weights are trained anew
        config = _nanochat_config(preset.shape, len(hf_tok), 2048, hf_tok.eos_token_id)
        mx.random.seed(seed)
        m = nanochat.Model(nanochat.ModelArgs.from_dict(config))
        mx.eval(m.parameters())
    if steps == 0:
        return m, tok, [float("nan")]
    encoded = pretrain.encode_examples(hf_tok, pairs)
    tokens, mask = pretrain.pack(encoded, train_cfg.seq_len, tok.pad_token_id)
    losses: list[float] = []

    def on_step(step: int, loss: float, tps: float) -> None:
        losses.append(loss)
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps} loss {loss:.4f} {tps:.0f} tok/s")

    pretrain.train(m, tokens, mask, train_cfg, on_step=on_step)
    log(f"trained {steps} steps on {len(pairs)} examples: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return m, tok, losses


def check_only(
    steps: int,
    n_eval: int,
    seed: int,
    log: Callable = print,
    size: str = "small",
    start: str | None = None,
    lr: float | None = None,
    cfg: CorpusConfig | None = None,
) -> dict:
    """Probe (a): the `size` architecture trained from scratch on check demonstrations alone
    (the shipped base's tokenizer and training settings, `steps` steps), then the decision
    probability on `n_eval` held-out checks (half of them of correct attempts). `start`: a
    model trained further instead (`_train_from_scratch`), whose checks of the start model's own
    attempts at `n_eval` held-out problems are then measured too (`own_verdicts`): training on
    checks alone unlearns the attempts. `cfg`: the corpus the
    checks are written in (default: the preset's)."""
    from dataclasses import replace

    from sf_mlx.base.behaviour import balanced_attempts
    from sf_mlx.base.build import SIZES
    from sf_mlx.base.corpus import make_corpus

    preset = SIZES[size]
    cfg = cfg or preset.corpus
    checks_cfg = replace(cfg, frac_check=1.0, frac_drill=0.0, frac_compare=0.0, frac_ood=0.0)
    corpus = make_corpus(preset.train.batch_size * max(1, steps) * 3, seed, checks_cfg)
    if start:  # the start model's own attempts, before it trains on checks alone
        own = own_attempts(*model_io.load(start), n_eval, seed + 1, cfg)
    m, tok, losses = _train_from_scratch(
        [(e.prompt, e.response) for e in corpus], steps, seed, size, log, start, lr
    )
    held = balanced_attempts(n_eval, seed + 7, cfg)
    prompts = [reflection_prompt(p.question, a) for p, a, _ in held]
    checks = [
        countdown_check_response(p, a, cfg.compare_difference, cfg.check_restates)[0]
        for p, a, _ in held
    ]
    out = {
        "steps": steps,
        "checks_trained": len(corpus) if steps else 0,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "decisions": summarise_decisions(decision_probabilities(m, tok, prompts, checks)),
    }
    log(f"decisions on held-out checks: {out['decisions']}")
    if start:
        out["own_checks"] = own_verdicts(*own, own_checks(m, tok, *own, seed + 1))
        log(f"its verdicts on its own attempts: {out['own_checks']}")
    return out


# ---------------------------------------------------------------------------------------------
# Probe (d): can the architecture learn the comparison itself? One comparison per example, in
# one of several written forms, so copying the two numbers is unambiguous and only the decision
# (or the digit pairing) has to be learned.


def _pair(rng: random.Random) -> tuple[int, int]:
    return comparison_pair(rng, CorpusConfig())


def _digit_pairs(result: str, target: str) -> str:
    if len(result) != len(target):
        return f"{len(result)} digits and {len(target)} digits differ"
    return ", ".join(
        f"{a} and {b} {'same' if a == b else 'differ'}" for a, b in zip(result, target, strict=True)
    )


COMPARE_FORMS: dict[str, Callable[[int, int], tuple[str, str]]] = {
    # the checks' own line: `Result 45, target 46: not equal.`
    "line": lambda r, t: (f"Result {r}, target {t}", _compare_line(r, t)),
    # digit by digit, then the decision: `Result 45, target 46: 4 and 4 same, 5 and 6 differ: ...`
    "digits": lambda r, t: (
        f"Result {r}, target {t}",
        f"Result {r}, target {t}: {_digit_pairs(str(r), str(t))}: {_same(r, t)}.",
    ),
    # the difference first, then the decision: `Result 45, target 46: 46 - 45 = 1: not equal.`
    "difference": lambda r, t: (f"Result {r}, target {t}", _compare_line(r, t, True)),
    # the primitive: are two single digits the same token?
    "single": lambda r, t: (
        f"Digits {r % 10} and {t % 10}",
        f"{r % 10} and {t % 10}: {_same(r % 10, t % 10)}.",
    ),
}


def _same(a: int, b: int) -> str:
    return "equal" if a == b else "not equal"


def compare_only(
    form: str,
    steps: int,
    n_eval: int,
    seed: int,
    log: Callable = print,
    size: str = "small",
    start: str | None = None,
    lr: float | None = None,
) -> dict:
    """Probe (d): the `size` architecture trained from scratch on single comparisons written in
    `form` (`COMPARE_FORMS`); then, on `n_eval` held-out pairs, the teacher-forced probability of
    the right decision once everything before it is written, and how often a greedy response
    reproduces the whole demonstration (copying and pairing the digits included). `start`: a
    model trained further instead (`_train_from_scratch`)."""
    if form not in COMPARE_FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(COMPARE_FORMS)}")
    from sf_mlx.base.build import SIZES

    write = COMPARE_FORMS[form]
    rng = random.Random(f"compare/{form}/{seed}")
    per_step = SIZES[size].train.batch_size * 12  # about 12 comparisons fill a packed row
    pairs = [write(*_pair(rng)) for _ in range(per_step * steps)]
    m, tok, losses = _train_from_scratch(pairs, steps, seed, size, log, start, lr)
    held_rng = random.Random(f"compare/{form}/{seed}/held-out")
    held_pairs = [_pair(held_rng) for _ in range(n_eval)]
    held = [write(*pair) for pair in held_pairs]
    rows = [
        decision_row(
            m, tok, prompt, response[: response.rindex(":") + 1], response.endswith(": equal.")
        )
        for prompt, response in held
    ]
    greedy = _generate(m, tok, [p for p, _ in held], 0.0, seed)
    out = {
        "form": form,
        "steps": steps,
        "examples_trained": len(pairs),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "decisions": summarise_decisions(rows),
        "greedy_exact": sum(g.strip() == r for g, (_, r) in zip(greedy, held, strict=True))
        / max(1, len(held)),
        "greedy_examples": greedy[:3],
    }
    if form == "difference":
        out["difference_steps"] = difference_steps(held_pairs, [g.strip() for g in greedy])
    log(f"{form}: {out}")
    return out


_DIFFERENCE = re.compile(
    r"Result (-?\d+), target (-?\d+): (-?\d+) - (-?\d+) = (-?\d+): (equal|not equal)\."
)


def difference_steps(pairs: list[tuple[int, int]], responses: list[str]) -> dict:
    """Where written differences go wrong, step by step, as shares of `responses` (one per
    (result, target) pair): the line's form, both numbers copied, the larger written first and
    the smaller second, the subtraction true for what was written, the decision following the
    written difference (0 or not), and the decision right for the pair."""
    keys = ("form", "copied", "operands", "subtraction", "decision_follows", "decision_right")
    counts = dict.fromkeys(keys, 0)
    for (r, t), text in zip(pairs, responses, strict=True):
        m = _DIFFERENCE.fullmatch(text)
        if not m:
            continue
        x, y, a, b, d = (int(v) for v in m.groups()[:5])
        said_equal = m[6] == "equal"
        steps = (
            True,
            (x, y) == (r, t),
            (a, b) == (max(r, t), min(r, t)),
            a - b == d,
            said_equal == (d == 0),
            said_equal == (r == t),
        )
        for k, ok in zip(keys, steps, strict=True):
            counts[k] += ok
    return {k: v / max(1, len(responses)) for k, v in counts.items()}
