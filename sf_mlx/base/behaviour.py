"""Measure a base model's behaviour on held-out problems (the numbers in its model card).

Countdown accuracy and answer format for 2..6 numbers and the out-of-domain tasks, verdict
agreement with the checker on balanced held-out attempts, and how often a response already
contains SkillFactory's `<sample>` / `<reflect>` tags (it should not). For the checks it also
counts how often the decision (`Result 46, target 46: equal.`) follows the two numbers the model
itself wrote, which separates a wrong decision from a wrong recomputation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from sf_mlx import model as model_io
from sf_mlx.base.corpus import CorpusConfig, countdown_attempt_example
from sf_mlx.prompts import parse_verdict, reflection_prompt
from sf_mlx.records import Problem
from sf_mlx.tasks import grade, heldout_problems, parse_task_spec, spec_label

SKILL_TAGS = ("<sample>", "<reflect>")
# The out-of-domain cells of a base built without its own list (`CorpusConfig.ood`).
OOD_SPECS = ("multiplication:digits=2", "multiplication:digits=3", "acronym")
# A decision line up to the decision's colon, past the difference where one is written
# (`Result 45, target 46: 46 - 45 = 1:`), then the decision itself.
DECISION_LINE = r"Result (-?[\d/]+), target (-?\d+):(?: [^:\n]*=[^:\n]*:)?"
_DECISION = re.compile(DECISION_LINE + r" (equal|not equal)\.")


def decision_follows_numbers(check: str) -> bool | None:
    """Whether a check's last decision line agrees with the two numbers written in it (None when
    the check has no decision line). The model's text is parsed, never evaluated."""
    found = _DECISION.findall(check)
    if not found:
        return None
    result, target, said = found[-1]
    return (said == "equal") == (result == target)


def _ranges(cfg: CorpusConfig) -> dict:
    """The held-out problems use the number ranges the model was built with."""
    return dict(
        min_number=cfg.min_number,
        max_number=cfg.max_number,
        min_target=cfg.min_target,
        max_target=cfg.max_target,
    )


def _load(model_path: str, temperature: float):
    """The model, its tokenizer and the sampling settings every measurement here uses."""
    m, tok = model_io.load(model_path)
    return m, tok, model_io.SamplingParams(max_tokens=320, temperature=temperature)


def _run(m, tok, problems: list[Problem], prompts: list[str], params, seed: int):
    ids = [model_io.chat_prompt(tok, p) for p in prompts]
    gens = model_io.generate(m, tok, ids, params, seed=seed, batch_size=64)
    return gens


def _score(problems: list[Problem], gens) -> dict:
    graded = [grade(p, g.text) for p, g in zip(problems, gens, strict=True)]
    n = len(problems)
    return {
        "n": n,
        "accuracy": sum(c for _, c in graded) / n,
        "format": sum(e is not None for e, _ in graded) / n,
        "mean_tokens": sum(len(g.tokens) for g in gens) / n,
    }


def measure(
    model_path: str,
    n: int,
    seed: int,
    temperature: float = 0.7,
    log: Callable[[str], None] = print,
    cfg: CorpusConfig | None = None,
) -> dict:
    """`cfg`: the corpus settings the model was built with; its number ranges and noisy solver
    make the held-out problems and attempts (the defaults' when not given)."""
    cfg = cfg or CorpusConfig()
    m, tok, params = _load(model_path, temperature)
    ranges = _ranges(cfg)
    out: dict = {"temperature": temperature, "countdown": {}, "ood": {}}
    texts: list[str] = []
    own: list[tuple[Problem, str, bool]] = []
    for k in range(2, 7):
        probs = heldout_problems("countdown", n, seed + k, num_args=k, **ranges)
        gens = _run(m, tok, probs, [p.question for p in probs], params, seed + k)
        out["countdown"][f"countdown-{k}"] = _score(probs, gens)
        texts += [g.text for g in gens]
        if k == 3:
            own = [(p, g.text, grade(p, g.text)[1]) for p, g in zip(probs, gens, strict=True)]
        log(f"  countdown-{k}: {out['countdown'][f'countdown-{k}']}")
    for spec in OOD_SPECS if cfg.ood is None else list(cfg.ood):
        task, params_ = parse_task_spec(spec)
        label = spec_label(spec)
        probs = heldout_problems(task, max(10, n // 2), seed, **params_)
        gens = _run(m, tok, probs, [p.question for p in probs], params, seed)
        out["ood"][label] = _score(probs, gens)
        texts += [g.text for g in gens]
        log(f"  {label}: {out['ood'][label]}")
    out["skill_tag_rate"] = sum(any(t in x for t in SKILL_TAGS) for x in texts) / len(texts)

    out["verdict"] = _verdicts(m, tok, balanced_attempts(n, seed, cfg), params, seed)
    log(f"  verdict (balanced held-out attempts): {out['verdict']}")
    # ... and on its own Countdown-3 samples, balanced by subsampling the larger class.
    right = [a for a in own if a[2]]
    wrong = [a for a in own if not a[2]]
    k = min(len(right), len(wrong))
    if k:
        out["verdict_own_samples"] = _verdicts(m, tok, right[:k] + wrong[:k], params, seed + 1)
        log(f"  verdict (own samples, balanced): {out['verdict_own_samples']}")
    return out


def balanced_attempts(n: int, seed: int, cfg: CorpusConfig) -> list[tuple[Problem, str, bool]]:
    """`n` held-out Countdown-3 attempts by the corpus' noisy solver, half of them correct, as
    (problem, attempt, correct); deterministic for `seed` and `cfg`."""
    ranges = _ranges(cfg)
    rng = random.Random(seed)
    probs = heldout_problems("countdown", 4 * n, seed + 99, num_args=3, **ranges)
    attempts: list[tuple[Problem, str, bool]] = []
    want = {True: n // 2, False: n // 2}
    for p in probs:
        text, correct = countdown_attempt_example(rng, p, rng.choice(["original", "rephrase"]), cfg)
        if want[correct] > 0:
            want[correct] -= 1
            attempts.append((p, text, correct))
    return attempts


def verdict_agreement(
    model_path: str, n: int, seed: int, cfg: CorpusConfig, temperature: float = 0.7
) -> dict:
    """Verdict agreement on `n` balanced held-out attempts (a set chosen by `seed`), with a 95%
    Wilson interval: the card's 200 attempts leave about +-7 points of noise, 1,000 about +-3."""
    if n < 2 or n % 2:
        raise ValueError(f"attempts {n}: expected an even number of at least 2")
    m, tok, params = _load(model_path, temperature)
    out = _verdicts(m, tok, balanced_attempts(n, seed, cfg), params, seed)
    out["interval95"] = wilson_interval(round(out["agreement"] * out["n"]), out["n"])
    return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def _verdicts(m, tok, attempts: list[tuple[Problem, str, bool]], params, seed: int) -> dict:
    prompts = [reflection_prompt(p.question, text) for p, text, _ in attempts]
    gens = _run(m, tok, [a[0] for a in attempts], prompts, params, seed)
    verdicts = [parse_verdict(g.text) for g in gens]
    decisions = [d for d in (decision_follows_numbers(g.text) for g in gens) if d is not None]
    agree = [
        (v == "correct") == c and v is not None
        for v, (_, _, c) in zip(verdicts, attempts, strict=True)
    ]
    by = {
        c: [a for a, (_, _, cc) in zip(agree, attempts, strict=True) if cc == c]
        for c in (True, False)
    }
    return {
        "n": len(attempts),
        "agreement": sum(agree) / max(1, len(agree)),
        "agreement_correct": sum(by[True]) / max(1, len(by[True])),
        "agreement_incorrect": sum(by[False]) / max(1, len(by[False])),
        "parsed": sum(v is not None for v in verdicts) / max(1, len(verdicts)),
        "decision_lines": len(decisions),
        "decision_follows_numbers": sum(decisions) / max(1, len(decisions)),
    }
