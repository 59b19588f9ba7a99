"""Diagnostic probes of a base model's checking: cheap measurements that say why checks fail.

- `arithmetic_lines`: how often the `a op b = c` lines a model writes are true, by where it
  writes them (its own attempts, its checks of its own attempts, arithmetic drills) and by the
  size of the operands.
- `decision_confidence`: in the model's own checks, the probability it gives the right decision
  (`equal` / `not equal`) once it has written `Result X, target Y:`, teacher-forced, so a
  confidently wrong decision is told apart from a coin flip.
- `own_verdicts` / `check_steps`: how often its checks of its own attempts reach the checker's
  verdict, and the first step (target, result, decision, verdict) where each wrong one went wrong.
Probes that train a model are in `sf_mlx.base.learnability`. Model output is parsed with
regular expressions, never evaluated.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from fractions import Fraction

from sf_mlx import model as model_io
from sf_mlx.base.behaviour import DECISION_LINE, decision_follows_numbers
from sf_mlx.base.corpus import (
    CorpusConfig,
    _apply,
    _fmt,
    _literals,
    drill_operation,
)
from sf_mlx.prompts import parse_verdict, reflection_prompt
from sf_mlx.records import Problem
from sf_mlx.tasks import grade, heldout_problems

_EQUATION = re.compile(r"(?<![\d/])(\d+) ([-+*/]) (\d+) = (\d+(?:/\d+)?)(?![\d/])")
# up to the decision's colon, past the difference where one is written
_DECISION = re.compile(DECISION_LINE)
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
    last = _last_decision(check)
    return None if last is None else (check[: last.end()], last.group(1) == last.group(2))


def _last_decision(check: str) -> re.Match | None:
    found = list(_DECISION.finditer(check))
    return found[-1] if found else None


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
    from sf_mlx.tasks.arith import eval_with_numbers

    extracted, correct = grade(problem, attempt)
    said = parse_verdict(check)
    if said == ("correct" if correct else "incorrect"):
        return None
    last = _last_decision(check)
    if last is None or extracted is None:
        return "no_decision"
    line = last.groups()
    if line[1] != str(problem.data["target"]):
        return "target"
    value = eval_with_numbers(extracted)
    if value is None or line[0] != _fmt(value[0]):
        return "result"
    if not decision_follows_numbers(check):
        return "decision"
    if (said == "correct") != (line[0] == line[1]):
        return "verdict"
    return "numbers_used"
