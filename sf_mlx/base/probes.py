"""Diagnostic probes of a base model's checking: cheap measurements that say why checks fail.

- `arithmetic_lines`: how often the `a op b = c` lines a model writes are true, by where it
  writes them (its own attempts, its checks of its own attempts, arithmetic drills) and by the
  size of the operands.
- `decision_confidence`: in the model's own checks, the probability it gives the right decision
  (`equal` / `not equal`) once it has written `Result X, target Y:`, teacher-forced, so a
  confidently wrong decision is told apart from a coin flip.
- `check_only`: the small architecture trained from scratch on check demonstrations alone, then
  the same decision probability on held-out checks: if this cannot reach ~100%, the training
  pipeline (masking, packing, positions) has a defect; if it can, the base's corpus is the cause.
Model output is parsed with regular expressions, never evaluated.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from fractions import Fraction

from sf_mlx import model as model_io
from sf_mlx.base.corpus import (
    CorpusConfig,
    _apply,
    _compare_line,
    _fmt,
    _literals,
    comparison_pair,
    countdown_check_response,
    drill_operation,
)
from sf_mlx.prompts import parse_verdict, reflection_prompt
from sf_mlx.records import Problem
from sf_mlx.tasks import grade, heldout_problems

_EQUATION = re.compile(r"(?<![\d/])(\d+) ([-+*/]) (\d+) = (\d+(?:/\d+)?)(?![\d/])")
# up to the decision's colon, past the difference where one is written
_DECISION = re.compile(r"Result (-?[\d/]+), target (-?\d+):(?: [^:\n]*=[^:\n]*:)?")
DECISIONS = (" equal.", " not equal.")


def equation_lines(text: str) -> list[tuple[int, str, int, Fraction, bool]]:
    """Every `a op b = c` in `text` as (a, op, b, written c, true?)."""
    out = []
    for a, op, b, c in _EQUATION.findall(text):
        a, b = int(a), int(b)
        written = Fraction(c)
        if op == "/" and b == 0:
            out.append((a, op, b, written, False))
            continue
        out.append((a, op, b, written, _apply(a, op, b) == written))
    return out


def _size(a: int, b: int) -> str:
    """Operand-size bucket of one line: by the larger operand's digits."""
    return {1: "1 digit", 2: "2 digits"}.get(len(str(max(a, b))), "3+ digits")


def _drill_prompts(n: int, seed: int) -> list[str]:
    """Arithmetic drills in the corpus' own form, `Compute:` then one line per operation."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        lines = [" ".join(map(str, drill_operation(rng))) for _ in range(4)]
        prompts.append("Compute:\n" + "\n".join(lines))
    return prompts


def _generate(m, tok, prompts: list[str], temperature: float, seed: int) -> list[str]:
    params = model_io.SamplingParams(max_tokens=320, temperature=temperature)
    ids = [model_io.chat_prompt(tok, p) for p in prompts]
    return [g.text for g in model_io.generate(m, tok, ids, params, seed=seed, batch_size=64)]


def own_attempts_and_checks(
    m, tok, n: int, seed: int, cfg: CorpusConfig, temperature: float = 0.7
) -> tuple[list[Problem], list[str], list[str]]:
    """n held-out Countdown-3 problems, the model's attempt at each (plain question) and its
    check of that attempt (the reflection prompt)."""
    probs, attempts = own_attempts(m, tok, n, seed, cfg, temperature)
    return probs, attempts, own_checks(m, tok, probs, attempts, seed, temperature)


def own_attempts(
    m, tok, n: int, seed: int, cfg: CorpusConfig, temperature: float = 0.7
) -> tuple[list[Problem], list[str]]:
    """n held-out Countdown-3 problems in the model's number ranges and its attempt at each."""
    probs = heldout_problems(
        "countdown",
        n,
        seed,
        num_args=3,
        min_number=cfg.min_number,
        max_number=cfg.max_number,
        min_target=cfg.min_target,
        max_target=cfg.max_target,
    )
    return probs, _generate(m, tok, [p.question for p in probs], temperature, seed)


def own_checks(
    m, tok, probs: list[Problem], attempts: list[str], seed: int, temperature: float = 0.7
) -> list[str]:
    """The model's check of each attempt (the reflection prompt)."""
    prompts = [reflection_prompt(p.question, a) for p, a in zip(probs, attempts, strict=True)]
    return _generate(m, tok, prompts, temperature, seed + 1)


def arithmetic_lines(texts_by_context: dict[str, list[str]]) -> dict:
    """{context: {"lines", "true", by operand size: {"lines", "true"}}} over the given texts."""
    out: dict = {}
    for context, texts in texts_by_context.items():
        by_size: dict[str, list[bool]] = defaultdict(list)
        for text in texts:
            for a, _, b, _, ok in equation_lines(text):
                by_size[_size(a, b)].append(ok)
        every = [ok for oks in by_size.values() for ok in oks]
        out[context] = {
            "lines": len(every),
            "true": sum(every) / max(1, len(every)),
            "by_size": {
                k: {"lines": len(v), "true": sum(v) / len(v)} for k, v in sorted(by_size.items())
            },
        }
    return out


def _continuation_logprob(m, prefix: list[int], continuation: list[int]) -> float:
    import mlx.core as mx

    tokens = mx.array([prefix + continuation])
    logits = m(tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    k = len(continuation)
    picked = mx.take_along_axis(logp[0, -k:], mx.array(continuation)[:, None], axis=-1)
    return float(picked.sum())


def decision_row(m, tok, prompt: str, written: str, equal: bool) -> dict:
    """The probability of the right decision after `written` (the response up to the decision's
    colon), renormalised over ` equal.` and ` not equal.`, teacher-forced."""
    eq, neq = (tok.encode(d, add_special_tokens=False) for d in DECISIONS)
    prefix = model_io.chat_prompt(tok, prompt) + tok.encode(written, add_special_tokens=False)
    lp_eq = _continuation_logprob(m, prefix, eq)
    lp_neq = _continuation_logprob(m, prefix, neq)
    p_eq = 1.0 / (1.0 + math.exp(lp_neq - lp_eq))
    return {"equal": equal, "p_right": p_eq if equal else 1.0 - p_eq}


def decision_probabilities(m, tok, prompts: list[str], checks: list[str]) -> list[dict]:
    """For each check with a `Result X, target Y:` line: the probability of the right decision,
    renormalised over the two decisions, teacher-forced on the check up to that colon."""
    out = []
    for prompt, check in zip(prompts, checks, strict=True):
        found = decision_prefix(check)
        if found:
            out.append(decision_row(m, tok, prompt, *found))
    return out


def decision_prefix(check: str) -> tuple[str, bool] | None:
    """A check up to its last decision's colon (past the difference where one is written), and
    whether the two numbers on that line are equal; None without a `Result X, target Y:` line."""
    found = list(_DECISION.finditer(check))
    if not found:
        return None
    last = found[-1]
    return check[: last.end()], last.group(1) == last.group(2)


def summarise_decisions(rows: list[dict]) -> dict:
    """Mean probability of the right decision and its spread, for equal and unequal pairs."""
    out = {}
    for name, want in (("equal", True), ("not_equal", False)):
        ps = [r["p_right"] for r in rows if r["equal"] == want]
        out[name] = {
            "n": len(ps),
            "mean_p_right": sum(ps) / max(1, len(ps)),
            "confidently_wrong": sum(p < 0.1 for p in ps) / max(1, len(ps)),
            "unsure": sum(0.1 <= p <= 0.9 for p in ps) / max(1, len(ps)),
            "confidently_right": sum(p > 0.9 for p in ps) / max(1, len(ps)),
        }
    return out


def probe_base(model: str, n: int, seed: int, cfg: CorpusConfig, log: Callable = print) -> dict:
    """Probes (b) and (c) on one model: its own attempts, checks and drills."""
    m, tok = model_io.load(model)
    probs, attempts, checks = own_attempts_and_checks(m, tok, n, seed, cfg)
    drills = _generate(m, tok, _drill_prompts(max(1, n // 4), seed), 0.7, seed + 2)
    out = {
        "n": n,
        "arithmetic": arithmetic_lines({"attempt": attempts, "check": checks, "drill": drills}),
    }
    log(f"arithmetic lines: {out['arithmetic']}")
    prompts = [reflection_prompt(p.question, a) for p, a in zip(probs, attempts, strict=True)]
    out["decisions"] = summarise_decisions(decision_probabilities(m, tok, prompts, checks))
    log(f"decisions: {out['decisions']}")
    out["own_checks"] = own_verdicts(probs, attempts, checks)
    log(f"its verdicts on its own attempts: {out['own_checks']}")
    return out


def own_verdicts(problems: list[Problem], attempts: list[str], checks: list[str]) -> dict:
    """How often the verdict of a model's check of its own attempt agrees with the checker:
    overall, on its right and on its wrong attempts, and their mean (the balanced agreement,
    0.5 for a verdict that ignores the attempt); and the same on its wrong answers that leave
    a number out and on its other wrong answers (a check can learn to call every answer that
    leaves a number out right, when every such answer it was shown was right)."""
    right, wrong, short_wrong = [], [], []
    for p, attempt, check in zip(problems, attempts, checks, strict=True):
        extracted, correct = grade(p, attempt)
        agrees = parse_verdict(check) == ("correct" if correct else "incorrect")
        (right if correct else wrong).append(agrees)
        if not correct and extracted is not None:
            short_wrong.append((len(_literals(extracted)) < len(p.data["numbers"]), agrees))
    r, w = sum(right) / max(1, len(right)), sum(wrong) / max(1, len(wrong))
    steps = [check_steps(p, a, c) for p, a, c in zip(problems, attempts, checks, strict=True)]
    by_shape = {}
    for name, short in (("leaves_a_number_out", True), ("uses_every_number", False)):
        agree = [a for s, a in short_wrong if s == short]
        by_shape[name] = {"wrong": len(agree), "on_wrong": sum(agree) / max(1, len(agree))}
    return {
        "attempts": len(attempts),
        "attempts_correct": len(right),
        "agreement": (sum(right) + sum(wrong)) / max(1, len(attempts)),
        "on_correct": r,
        "on_wrong": w,
        "balanced": (r + w) / 2,
        "wrong_answers": by_shape,
        "wrong_verdicts_from": dict(Counter(x for x in steps if x is not None).most_common()),
    }


def check_steps(problem: Problem, attempt: str, check: str) -> str | None:
    """The first step at which a check of a Countdown attempt went wrong, for a check whose
    verdict disagrees with the checker (None when it agrees): `no_decision` (no `Result X,
    target Y:` line), `target` (Y is not the problem's target: copied from elsewhere, often the
    result itself), `result` (X is not the value of the attempt's answer: a wrong
    recomputation, or one copied from the attempt's own false lines), `decision` (the decision
    does not follow the two numbers written, past a written difference), `verdict` (the
    verdict does not follow the decision), else `numbers_used` (the verdict followed a right
    result but the answer misuses the numbers). Model text is parsed, never evaluated."""
    from sf_mlx.base.behaviour import decision_follows_numbers
    from sf_mlx.tasks.arith import eval_with_numbers

    extracted, correct = grade(problem, attempt)
    said = parse_verdict(check)
    if said == ("correct" if correct else "incorrect"):
        return None
    found = decision_prefix(check)
    if found is None or extracted is None:
        return "no_decision"
    line = _DECISION.findall(check)[-1]
    if line[1] != str(problem.data["target"]):
        return "target"
    value = eval_with_numbers(extracted)
    if value is None or line[0] != _fmt(value[0]):
        return "result"
    if not decision_follows_numbers(check):
        return "decision"
    if (said == "correct") != found[1]:
        return "verdict"
    return "numbers_used"


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
    held = [write(*_pair(held_rng)) for _ in range(n_eval)]
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
        out["difference_steps"] = difference_steps(
            [_numbers(p) for p, _ in held], [g.strip() for g in greedy]
        )
    log(f"{form}: {out}")
    return out


def _numbers(prompt: str) -> tuple[int, int]:
    r, t = prompt.removeprefix("Result ").split(", target ")
    return int(r), int(t)


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
