"""Synthetic pretraining corpus for the built-in base model: a weak instruct model, imitated.

Pure functions, no MLX. Every example is one (prompt, response) chat turn:
- `attempt`: an answer to a task question in one of the four prompt variants' styles, from a
  noisy solver that is right only part of the time and wrong in realistic ways (claiming the
  target when off, reusing or inventing a number, a plain miss; the `small` preset's corpus
  also slips arithmetic steps);
- `check`: the reflection prompt over one attempt; the response recomputes what it must and ends
  in `<verdict>Correct</verdict>` or `<verdict>Incorrect</verdict>`, always agreeing with the
  checker;
- `drill`: arithmetic facts, so the small model's hard part is the search, not `12*3`, and
  single result-vs-target comparisons, the decision every check ends with.
Never an attempt followed by a reflection and a retry in one response: that is the skill the
SkillFactory stages must create (`assert_no_retry_structure` guards it).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from sf_mlx.base.corpus_ood import (
    acronym_attempt,
    acronym_check_response,
    multiplication_attempt,
    multiplication_check_response,
)
from sf_mlx.base.solver import (
    OPS,
    Claim,
    Step,
    _apply,
    _nearest_chain,
    _random_chain,
    claim,
)
from sf_mlx.prompts import VARIANTS, reflection_prompt, variant_prompt
from sf_mlx.records import Problem
from sf_mlx.tasks import count_answers, get_task, grade, heldout, parse_task_spec, spec_label

RETRY_MARKERS = ("<sample>", "</sample>", "<reflect>", "</reflect>", "<think>", "</think>")


@dataclass(frozen=True)
class Example:
    kind: str  # "attempt" | "check" | "drill"
    task: str  # "countdown-3", "multiplication-2", "acronym", "arithmetic"
    style: str  # the prompt variant (attempts), "check", or "drill"
    prompt: str
    response: str
    correct: bool | None  # attempts: the checker's grade; checks: the verdict given


@dataclass(frozen=True)
class CorpusConfig:
    """Mixture and ranges of the corpus. The class defaults are the shipped `small` base's, so a
    model card written before a field existed still names its corpus exactly; the `tiny` preset
    and the named corpora (`build.SIZES`, `build.CORPORA`) set their own values."""

    min_number: int = 1
    max_number: int = 10
    min_target: int = 10
    max_target: int = 50
    countdown_args: dict[int, float] = field(
        default_factory=lambda: {2: 0.15, 3: 0.45, 4: 0.25, 5: 0.1, 6: 0.05}
    )
    frac_check: float = 0.25  # "check this attempt" demonstrations
    frac_drill: float = 0.08  # arithmetic drill lines
    compare_share: float = 0.0  # of the drills: result-vs-target comparisons
    frac_ood: float = 0.10  # out-of-domain attempts (multiplication, acronym)
    # Which out-of-domain problems, as task specs (`multiplication:digits=2:b_digits=1`) and
    # weights; None: 60% multiplication of 2-5 digits (weights 4, 3, 2, 1), 40% 4-letter acronyms.
    ood: dict[str, float] | None = None
    # Countdown attempts follow a person's strategy, "nearest first": at every step combine the
    # pair whose result is closest to the target (right on about 36% of 3-number problems, by
    # itself); the rest of the attempts are realistic mistakes (a slipped step, a claimed target,
    # a reused or invented number, a random miss) or, rarely, a lucky random correct chain.
    p_strategy: float = 0.8
    p_step_slip: float = 0.08  # per step of the strategy: a slipped result that later steps trust
    pairs_considered: int = 3  # per step the strategy looks at this many pairs, not all of them
    p_lucky: float = 0.05
    # The other attempts' mistakes and their weights: a random miss, a claimed target, a slipped
    # step (a false equation), a reused or an invented number.
    mistakes: dict[str, float] = field(
        default_factory=lambda: {"miss": 4, "claim": 2, "slip": 2, "reuse": 1, "invent": 1}
    )
    # A claimed target: True writes the last step's result as the target (a false equation);
    # False keeps every step true and claims the target in words after them.
    claim_false_step: bool = True
    # Of the strategy's misses: how many stop early, short of the target with numbers unused.
    # Without them every answer that leaves a number out is right, and checks learn to call such
    # answers equal whatever the two numbers they write (`sf-mlx base probe`, README).
    p_stop_early: float = 0.0
    frac_compare: float = 0.0  # single result-vs-target comparisons in the checks' own words
    # Single comparisons trained on before the rest of the corpus, for the `small` preset
    # (scaled like the example count). Spread through the corpus, a model of this size did not
    # learn the decision from 39,000 of them; alone, it did once after about 70,000 and did not
    # in the `search-3` build (`sf-mlx base probe-compare`, README).
    lead_comparisons: int = 0
    # Comparisons (in checks, drills and single comparisons) write the difference before the
    # decision, `Result 45, target 46: 46 - 45 = 1: not equal.`: trained further on such lines
    # a base learnt the decision in 100 steps where the plain line stayed at chance
    # (`sf-mlx base probe-compare --form difference`, README).
    compare_difference: bool = False
    # Checks open by copying the numbers and the target in the question's words (`The numbers
    # [10, 5, 1] must make an equation that equals 40.`), and list the numbers in the
    # question's order: a base whose checks had to fetch the target from the question wrote
    # `Result 45, target 45` for target 40, the result copied twice (`sf-mlx base probe`, README).
    check_restates: bool = False
    p_correct: float = 0.55  # out-of-domain attempts: how often the noisy solver is right
    # Multiplication written one digit pair at a time (`70 * 5 = 350`, `6 * 5 = 30`, then
    # `350 + 30 = 380`), every line true, instead of one line per digit of b (`76 * 5 = 380`):
    # a base this size cannot do a 2-digit x 1-digit product in one line (2.8%, README).
    multiply_digit_pairs: bool = False
    # The build's tokenizer makes each word's first letter a token of its own (`Ġo` + `nly`):
    # with whole-word tokens a base this size did not read first letters (acronyms 0%, README).
    initial_letter_tokens: bool = False
    # Acronym attempts copy each word, then write its first letter (`idea -> i, lawn -> l`)
    # instead of listing the letters alone: a base that wrote the same letters whatever the
    # words (0.2%, README) then only has to read the token it has just written.
    acronym_word_by_word: bool = False
    plain_prompt_share: float = 0.3  # attempts whose prompt is the plain question (SFT/RL form)


def _countdown_attempt(rng: random.Random, numbers: list[int], target: int, cfg: CorpusConfig):
    """One attempt as (steps, expression, error kind). Error kinds name realistic failures."""
    r = rng.random()
    if r < cfg.p_strategy:
        steps, expr, value = _nearest_chain(
            rng, numbers, target, cfg.p_step_slip, cfg.pairs_considered
        )
        if value == target:  # believed; a slipped step makes it wrong all the same
            return steps, expr, "none"
        if steps and rng.random() < 0.3:  # off by a little: claims the target anyway
            return claim(steps, target, cfg.claim_false_step), expr, "claim"
        if cfg.p_stop_early and len(numbers) > 2 and rng.random() < cfg.p_stop_early:
            stopped = _stopped_early(rng, numbers, target, cfg)
            if stopped is not None:
                return *stopped, "stop"
        return steps, expr, "nearest_miss"
    if r < cfg.p_strategy + cfg.p_lucky:
        for _ in range(400):
            steps, expr, value = _random_chain(rng, numbers, stop_at=target)
            if value == target:
                return steps, expr, "none"
    kind = rng.choices(list(cfg.mistakes), list(cfg.mistakes.values()))[0]
    pool = list(numbers)
    if kind == "reuse":  # one number written twice, another dropped
        pool[rng.randrange(len(pool))] = rng.choice(numbers)
    elif kind == "invent":  # a number that is not in the list
        pool[rng.randrange(len(pool))] = rng.choice(
            [n for n in range(1, 13) if n not in numbers] or [13]
        )
    for _ in range(50):  # a chain that does not reach the target
        steps, expr, value = _random_chain(rng, pool)
        if value != target:
            break
    if kind == "claim" and steps:  # claims the target although the chain does not reach it
        steps = claim(steps, target, cfg.claim_false_step)
    elif kind == "slip" and steps:  # one step written wrong; the expression keeps the true ops
        k = rng.randrange(len(steps))
        s = steps[k]
        off = rng.choice([-2, -1, 1, 2, 10, -10])
        steps = steps[:k] + [Step(s.a, s.op, s.b, max(0, s.claimed + off))] + steps[k + 1 :]
    return steps, expr, kind


def _stopped_early(rng: random.Random, numbers: list[int], target: int, cfg: CorpusConfig):
    """The strategy stopped after fewer steps than the numbers allow, short of the target, with
    numbers left unused: (steps, expression), or None when every early stop hits the target."""
    for _ in range(20):
        k = rng.randint(1, len(numbers) - 2)
        steps, expr, value = _nearest_chain(
            rng, numbers, target, cfg.p_step_slip, cfg.pairs_considered, max_steps=k
        )
        if value != target:
            return steps, expr
    return None


def _steps_block(steps: list) -> str:
    lines, k = [], 0
    for s in steps:
        if isinstance(s, Claim):
            lines.append(s.text())
        else:
            k += 1
            lines.append(f"Step {k}: {s.text()}")
    return "\n".join(lines)


def _countdown_response(rng, style: str, numbers, target, steps, expr) -> str:
    nums = ", ".join(map(str, numbers))
    body = _steps_block(steps)
    if style == "plan_and_execute":
        plan = rng.choice(
            [
                f"Plan: combine two of the numbers, then use the rest to reach {target}.",
                f"Plan: find a product or sum near {target}, then adjust with what is left.",
                f"Plan: start from the largest number and work towards {target}.",
            ]
        )
        body = f"{plan}\nExecution:\n{body}"
    elif style == "rephrase":
        body = f"Rewritten Question: Make {target} from {nums}, each at most once.\n{body}"
    elif style == "alternatively":
        misses = []
        for _ in range(rng.choice([0, 1, 1, 2])):
            m_steps, _, m_value = _random_chain(rng, numbers)
            if m_value != target:
                line = ", ".join(s.text() for s in m_steps)
                misses.append(f"{line}. This gives {m_value}, not {target}.")
        eqs = [s for s in steps if isinstance(s, Step)]
        final = ", ".join(s.text() for s in eqs)
        claimed = next((s.target for s in steps if isinstance(s, Claim)), None)
        result = claimed if claimed is not None else eqs[-1].claimed if eqs else target
        chosen = f"{final}. This gives {result}."
        parts = misses + [chosen]
        body = parts[0] + "".join(f"\nAlternatively, {p}" for p in parts[1:])
    return f"{body}\n<answer>{expr}</answer>"


def countdown_attempt_example(rng: random.Random, problem: Problem, style: str, cfg: CorpusConfig):
    numbers, target = problem.data["numbers"], problem.data["target"]
    steps, expr, _ = _countdown_attempt(rng, numbers, target, cfg)
    response = _countdown_response(rng, style, numbers, target, steps, expr)
    return response, grade(problem, response)[1]


def _evaluation_steps(expr: str) -> list[tuple[int | Fraction, str, int | Fraction, Fraction]]:
    """Split one of the corpus's own expressions into its binary steps, innermost first."""
    import ast  # the corpus parses only expressions it generated itself; never model output

    out = []

    def walk(node) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
        a, b = walk(node.left), walk(node.right)
        value = _apply(a, op, b)
        out.append((a, op, b, value))
        return value

    walk(ast.parse(expr, mode="eval").body)
    return out


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def countdown_check_response(
    problem: Problem, attempt: str, difference: bool = False, restate: bool = False
) -> tuple[str, bool]:
    """Recompute only what is needed: numbers first, then the arithmetic, then the result next
    to the target (with `difference`, and their difference), and only then the decision. With
    `restate`, the check first copies the numbers and the target in the question's own words,
    and later lines copy them from there."""
    numbers, target = problem.data["numbers"], problem.data["target"]
    extracted, correct = grade(problem, attempt)
    if extracted is None:
        return "There is no final answer to check.\n<verdict>Incorrect</verdict>", False
    given = list(numbers) if restate else sorted(numbers)
    lines = [f"The numbers {given} must make an equation that equals {target}."] if restate else []
    lines.append(f"The answer is {extracted}.")
    steps = _evaluation_steps(extracted)
    used = _literals(extracted)
    lines.append(f"Numbers used: {', '.join(map(str, used))}.")
    have, need = Counter(numbers), Counter(used)
    bad = next((n for n in used if need[n] > have[n]), None)
    if bad is not None:
        why = "is not in" if have[bad] == 0 else "is used more often than it appears in"
        lines.append(f"{bad} {why} {given}.")
    else:
        lines.append(f"All are from {given}.")
        for a, op, b, v in steps:
            lines.append(f"{_fmt(Fraction(a))} {op} {_fmt(Fraction(b))} = {_fmt(v)}")
        value = steps[-1][3] if steps else Fraction(used[0])
        lines.append(_compare_line(value, target, difference))
    verdict = "Correct" if correct else "Incorrect"
    return "\n".join(lines) + f"\n<verdict>{verdict}</verdict>", correct


def _compare_line(result: Fraction | int, target: int, difference: bool = False) -> str:
    """`Result 45, target 46: not equal.`; with `difference`, the larger minus the smaller
    first: `Result 45, target 46: 46 - 45 = 1: not equal.`"""
    result = Fraction(result)
    same = "equal" if result == target else "not equal"
    if not difference:
        return f"Result {_fmt(result)}, target {target}: {same}."
    high, low = max(result, Fraction(target)), min(result, Fraction(target))
    return (
        f"Result {_fmt(result)}, target {target}: "
        f"{_fmt(high)} - {_fmt(low)} = {_fmt(high - low)}: {same}."
    )


def _literals(expr: str) -> list[int]:
    import re

    return [int(t) for t in re.findall(r"\d+", expr)]


# ---------------------------------------------------------------------------------------------


def _compare_drill(rng: random.Random, cfg: CorpusConfig) -> Example:
    """Result-vs-target decisions in the checks' own words, half of them equal, most of the rest
    one digit off or swapped. A base trained on its checks' ~8k decisions alone decided against
    the two numbers it had written in 73 of 200 checks (`Result 46, target 46: not equal.`);
    with these drills a small model trained from scratch did so far less (README)."""
    pairs = []
    for _ in range(rng.randint(6, 10)):
        target = rng.randint(cfg.min_target, cfg.max_target)
        r = rng.random()
        if r < 0.5:
            result = target
        elif r < 0.85:  # one digit off, or the digits swapped
            result = target + rng.choice([-1, 1, -2, 2, -10, 10])
            if rng.random() < 0.2 and target % 10 and target // 10 != target % 10:
                result = int(str(target)[::-1])
        else:
            result = rng.randint(0, 2 * cfg.max_target)
        pairs.append((max(0, result), target))
    prompt = "Compare each result with its target:\n" + "\n".join(
        f"Result {r}, target {t}" for r, t in pairs
    )
    response = "\n".join(_compare_line(r, t, cfg.compare_difference) for r, t in pairs)
    return Example("drill", "comparison", "drill", prompt, response, None)


def comparison_pair(rng: random.Random, cfg: CorpusConfig) -> tuple[int, int]:
    """(result, target) as checks meet them: half equal, most others one digit off."""
    target = rng.randint(cfg.min_target, cfg.max_target)
    if rng.random() < 0.5:
        return target, target
    return max(0, target + rng.choice([-1, 1, -2, 2, -10, 10])), target


def _comparison(rng: random.Random, cfg: CorpusConfig) -> Example:
    """One result-vs-target decision in the checks' own words (`Result 45, target 46: not
    equal.`): the comparison a check ends with, without the recomputation before it."""
    result, target = comparison_pair(rng, cfg)
    prompt = f"Result {result}, target {target}"
    response = _compare_line(result, target, cfg.compare_difference)
    return Example("drill", "comparison", "drill", prompt, response, None)


def drill_operation(rng: random.Random) -> tuple[int, str, int]:
    """One arithmetic drill's operands and operator, with an exact non-negative result."""
    op = rng.choice(OPS)
    if op == "/":
        b = rng.randint(2, 12)
        a = b * rng.randint(1, 12)
    elif op == "-":
        a, b = sorted((rng.randint(0, 100), rng.randint(0, 60)), reverse=True)
    elif op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 25)
    else:
        a, b = rng.randint(1, 100), rng.randint(1, 60)
    return a, op, b


def _drill(rng: random.Random, cfg: CorpusConfig) -> Example:
    if cfg.compare_share and rng.random() < cfg.compare_share:
        return _compare_drill(rng, cfg)
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, op, b = drill_operation(rng)
        lines.append((a, op, b, int(_apply(a, op, b))))
    prompt = "Compute:\n" + "\n".join(f"{a} {op} {b}" for a, op, b, _ in lines)
    response = "\n".join(f"{a} {op} {b} = {c}" for a, op, b, c in lines)
    return Example("drill", "arithmetic", "drill", prompt, response, None)


ATTEMPTS = {
    "countdown": countdown_attempt_example,
    "multiplication": multiplication_attempt,
    "acronym": acronym_attempt,
}
CHECKS = {
    "countdown": countdown_check_response,
    "multiplication": multiplication_check_response,
    "acronym": acronym_check_response,
}


def _problem(rng: random.Random, cfg: CorpusConfig, ood: bool) -> tuple[Problem, str]:
    while True:
        problem, label = _any_problem(rng, cfg, ood)
        if not heldout(problem):
            return problem, label


def _any_problem(rng: random.Random, cfg: CorpusConfig, ood: bool) -> tuple[Problem, str]:
    seed = rng.getrandbits(31)
    if ood and cfg.ood:
        spec = rng.choices(list(cfg.ood), list(cfg.ood.values()))[0]
        task, params = parse_task_spec(spec)
        (p,) = get_task(task).make_problems(1, seed, **params)
        return p, spec_label(spec)
    if ood:
        if rng.random() < 0.6:
            digits = rng.choices([2, 3, 4, 5], [4, 3, 2, 1])[0]
            (p,) = get_task("multiplication").make_problems(1, seed, digits=digits)
            return p, f"multiplication-{digits}"
        (p,) = get_task("acronym").make_problems(1, seed)
        return p, "acronym"
    n = rng.choices(list(cfg.countdown_args), list(cfg.countdown_args.values()))[0]
    (p,) = get_task("countdown").make_problems(
        1,
        seed,
        num_args=n,
        min_number=cfg.min_number,
        max_number=cfg.max_number,
        min_target=cfg.min_target,
        max_target=cfg.max_target,
    )
    return p, f"countdown-{n}"


def make_example(rng: random.Random, cfg: CorpusConfig) -> Example:
    r = rng.random()
    if r < cfg.frac_drill:
        return _drill(rng, cfg)
    if cfg.frac_compare and r < cfg.frac_drill + cfg.frac_compare:
        return _comparison(rng, cfg)
    problem, label = _problem(rng, cfg, ood=rng.random() < cfg.frac_ood)
    # The plain question (the SFT / RL user turn) is answered in the `original` style.
    plain = rng.random() < cfg.plain_prompt_share
    style = "original" if plain else rng.choice(list(VARIANTS))
    attempt, correct = ATTEMPTS[problem.task](rng, problem, style, cfg)
    if r < cfg.frac_drill + cfg.frac_compare + cfg.frac_check:
        # Balance verdicts: regenerate until the attempt's grade matches a fair coin.
        want = rng.random() < 0.5
        for _ in range(20):
            if correct == want:
                break
            attempt, correct = ATTEMPTS[problem.task](rng, problem, style, cfg)
        if problem.task == "countdown":
            response, verdict = countdown_check_response(
                problem, attempt, cfg.compare_difference, cfg.check_restates
            )
        else:
            response, verdict = CHECKS[problem.task](problem, attempt)
        prompt = reflection_prompt(problem.question, attempt)
        return Example("check", label, "check", prompt, response, verdict)
    prompt = problem.question if plain else variant_prompt(problem.question, style)
    return Example("attempt", label, style, prompt, attempt, correct)


def make_lead(n: int, seed: int, cfg: CorpusConfig) -> list[Example]:
    """The lead-in: `n` single comparisons, deterministic for `seed`, apart from the corpus's."""
    rng = random.Random(f"sf-mlx-lead/{seed}")
    return [_comparison(rng, cfg) for _ in range(n)]


def make_corpus(n: int, seed: int, cfg: CorpusConfig | None = None) -> list[Example]:
    """`n` examples, deterministic for `seed`."""
    cfg = cfg or CorpusConfig()
    rng = random.Random(f"sf-mlx-corpus/{seed}")
    out = [make_example(rng, cfg) for _ in range(n)]
    assert_no_retry_structure(out)
    return out


def assert_no_retry_structure(examples: list[Example]) -> None:
    """The base model must never see attempt -> reflection -> retry in one response."""
    for ex in examples:
        bad = [m for m in RETRY_MARKERS if m in ex.response]
        if bad or count_answers(ex.response) > 1:
            raise AssertionError(f"corpus example has a retry structure ({bad}): {ex.response!r}")


def corpus_stats(examples: list[Example]) -> dict:
    """Counts per kind / task / style and the share of correct attempts, for the model card."""
    attempts = [e for e in examples if e.kind == "attempt"]
    checks = [e for e in examples if e.kind == "check"]
    return {
        "examples": len(examples),
        "kinds": dict(Counter(e.kind for e in examples)),
        "tasks": dict(sorted(Counter(e.task for e in examples).items())),
        "styles": dict(Counter(e.style for e in attempts)),
        "attempt_accuracy": round(
            sum(bool(e.correct) for e in attempts) / max(1, len(attempts)), 3
        ),
        "check_correct_verdicts": round(
            sum(bool(e.correct) for e in checks) / max(1, len(checks)), 3
        ),
    }


def example_to_dict(ex: Example) -> dict:
    return asdict(ex)
