"""The built-in base model: tokenizer, corpus, a tiny build that learns, the shipped small model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf_mlx.base.corpus import (
    Example,
    assert_no_retry_structure,
    corpus_stats,
    make_corpus,
)
from sf_mlx.base.tokenizer import TRACE_TAGS, save_tokenizer, train_tokenizer
from sf_mlx.tasks import get_task, heldout

SHIPPED = Path(__file__).resolve().parents[1] / "sf_mlx" / "data" / "base-small"


@pytest.fixture(scope="module")
def corpus() -> list[Example]:
    return make_corpus(1500, seed=0)


def test_corpus_is_deterministic_per_seed(corpus):
    again = make_corpus(1500, seed=0)
    other = make_corpus(1500, seed=1)
    assert again == corpus
    assert other != corpus


def test_corpus_never_shows_a_retry_structure(corpus):
    assert_no_retry_structure(corpus)  # raises on <sample>/<reflect>/<think> or 2+ answers
    bad = Example("attempt", "countdown-3", "original", "q", "<sample>x</sample>", True)
    with pytest.raises(AssertionError, match="retry structure"):
        assert_no_retry_structure([bad])
    two = Example(
        "attempt", "countdown-3", "original", "q", "<answer>1</answer><answer>2</answer>", True
    )
    with pytest.raises(AssertionError):
        assert_no_retry_structure([two])


def test_corpus_mixes_kinds_styles_and_grades(corpus):
    stats = corpus_stats(corpus)
    assert set(stats["kinds"]) == {"attempt", "check", "drill"}
    assert set(stats["styles"]) == {"original", "plan_and_execute", "alternatively", "rephrase"}
    assert 0.35 < stats["attempt_accuracy"] < 0.75  # a noisy solver: right only part of the time
    checks = [e for e in corpus if e.kind == "check"]
    assert 0.35 < sum(e.correct for e in checks) / len(checks) < 0.65  # balanced verdicts
    for e in checks:  # every check demonstration ends with the checker's verdict
        want = "<verdict>Correct</verdict>" if e.correct else "<verdict>Incorrect</verdict>"
        assert e.response.endswith(want)


def test_comparison_drills_decide_from_the_two_numbers():
    """The drills write the checks' own decision line; half equal, most of the rest one digit
    off, so only reading both numbers predicts the word."""
    import re
    from dataclasses import replace

    from sf_mlx.base.corpus import CorpusConfig

    cfg = replace(CorpusConfig(), frac_drill=1.0, compare_share=1.0)
    drills = make_corpus(300, seed=0, cfg=cfg)
    lines = [ln for e in drills for ln in e.response.splitlines()]
    assert {e.task for e in drills} == {"comparison"}
    equal = near = 0
    for ln in lines:
        m = re.fullmatch(r"Result (\d+), target (\d+): (equal|not equal)\.", ln)
        assert m, ln
        r, t = int(m[1]), int(m[2])
        assert (m[3] == "equal") == (r == t), ln
        equal += r == t
        near += r != t and (abs(r - t) in (1, 2, 10) or str(r) == str(t)[::-1])
    assert 0.4 < equal / len(lines) < 0.6
    assert near > 0.5 * (len(lines) - equal)
    for e in drills:  # the prompt lists exactly the pairs the response decides
        asked = e.prompt.splitlines()[1:]
        assert [ln.rsplit(":", 1)[0] for ln in e.response.splitlines()] == asked


def test_heldout_problems_never_appear_in_the_corpus(corpus):
    held = [
        p
        for p in get_task("countdown").make_problems(
            300, 5, num_args=3, max_number=10, min_target=10, max_target=50
        )
        if heldout(p)
    ]
    assert held, "the held-out part of the space is empty"
    assert 0.1 < len(held) / 300 < 0.3
    # the corpus generator rejects held-out problems outright
    import random

    from sf_mlx.base.corpus import CorpusConfig, _problem

    rng = random.Random(0)
    for _ in range(300):
        p, _ = _problem(rng, CorpusConfig(), ood=False)
        assert not heldout(p)


def test_tokenizer_round_trip_digits_and_tags(tmp_path, corpus):
    from transformers import AutoTokenizer

    tok = train_tokenizer([t for e in corpus[:500] for t in (e.prompt, e.response)], 400)
    save_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    text = (
        "<think>\n<sample>\nStep 1: 12 * 345 = 4140\n<answer>12 * 345</answer>\n</sample>\n"
        "<reflect>\nok <verdict>Correct</verdict>\n</reflect>\n</think>"
    )
    ids = hf.encode(text, add_special_tokens=False)
    assert hf.decode(ids) == text
    assert hf.decode(ids, skip_special_tokens=True) == text  # tags are not "special": kept
    pieces = hf.convert_ids_to_tokens(hf.encode("4140 99", add_special_tokens=False))
    assert [p for p in pieces if p.strip("Ġ")] == ["4", "1", "4", "0", "9", "9"]
    for tag in TRACE_TAGS:
        assert len(hf.encode(tag, add_special_tokens=False)) == 1, tag
    chat = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert hf.eos_token == "<|im_end|>"


def test_tiny_build_learns_and_loads_with_mlx_lm(tiny_model_dir):
    from mlx_lm import load

    card = json.loads((tiny_model_dir / "metrics.json").read_text())
    first, final = card["first_losses"][0], card["final_loss"]
    assert final < 0.5 * first, f"loss did not fall: first {first}, final {final}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tiny_model_dir / name).exists(), name
    model, tok = load(str(tiny_model_dir))
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_tiny_preset_solves_some_held_out_two_number_problems(tmp_path):
    """The whole `--size tiny` build (about a minute): weak, but it copies the given numbers
    and solves some 2-number Countdown problems it never saw (the old preset solved none)."""
    from sf_mlx import model as model_io
    from sf_mlx.base.build import build
    from sf_mlx.tasks import grade, heldout_problems

    out = build(
        "tiny", out=tmp_path / "m", work=tmp_path / "w", log=lambda _: None, measure_behaviour=False
    )
    m, tok = model_io.load(str(out))
    probs = heldout_problems(
        "countdown",
        100,
        1002,
        num_args=2,
        min_number=1,
        max_number=10,
        min_target=10,
        max_target=50,
    )
    gens = model_io.generate(
        m,
        tok,
        [model_io.chat_prompt(tok, p.question) for p in probs],
        model_io.SamplingParams(max_tokens=96, temperature=0.7),
        seed=2,
        batch_size=50,
    )
    graded = [grade(p, g.text) for p, g in zip(probs, gens, strict=True)]
    solved = sum(c for _, c in graded)
    assert sum(e is not None for e, _ in graded) >= 90, "tiny lost the answer format"
    assert solved >= 4, f"tiny solved {solved} of 100 held-out 2-number problems"


def test_shipped_small_base_loads_and_generates():
    from sf_mlx import model as model_io

    assert (SHIPPED / "config.json").exists(), f"shipped base model missing at {SHIPPED}"
    card = json.loads((SHIPPED / "metrics.json").read_text())
    import hashlib

    digest = hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert digest == card["weights_sha256"], "shipped weights differ from the model card's hash"
    m, tok = model_io.load("builtin:small")
    problem = get_task("countdown").make_problems(
        1, 3, num_args=3, max_number=10, min_target=10, max_target=50
    )[0]
    gens = model_io.generate(
        m,
        tok,
        [model_io.chat_prompt(tok, problem.question)],
        model_io.SamplingParams(max_tokens=96),
        seed=0,
    )
    assert gens[0].tokens and gens[0].finish_reason in ("stop", "length")
    assert len(gens[0].logprobs) == len(gens[0].tokens)
    assert all(lp <= 0.0 for lp in gens[0].logprobs)


@pytest.mark.slow
def test_rebuilding_small_reproduces_the_shipped_first_losses(tmp_path):
    """Corpus, tokenizer, initial weights and data order are all functions of the seed."""
    from sf_mlx.base.build import build

    card = json.loads((SHIPPED / "metrics.json").read_text())
    out = build(
        "small",
        out=tmp_path / "m",
        work=tmp_path / "w",
        seed=card["seed"],
        steps=2,
        log=lambda _: None,
        measure_behaviour=False,
    )
    shipped_vocab = json.loads((SHIPPED / "tokenizer.json").read_text())["model"]["vocab"]
    rebuilt_vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert rebuilt_vocab == shipped_vocab
    losses = json.loads((out / "metrics.json").read_text())["first_losses"]
    assert losses == pytest.approx(card["first_losses"][:2], rel=1e-3)


def test_decision_follows_numbers_reads_the_last_decision_line():
    from sf_mlx.base.behaviour import decision_follows_numbers

    assert decision_follows_numbers("Result 46, target 46: equal.\n<verdict>Correct") is True
    assert decision_follows_numbers("Result 46, target 46: not equal.") is False
    assert decision_follows_numbers("Result 45, target 46: not equal.") is True
    assert decision_follows_numbers("Result 7/2, target 46: equal.") is False
    # a model that wrote two decision lines is judged on its last one
    two = "Result 45, target 46: not equal.\nResult 12, target 21: equal."
    assert decision_follows_numbers(two) is False
    assert decision_follows_numbers("There is no final answer to check.") is None
    assert decision_follows_numbers("Result 46, target 46: maybe.") is None
    # the difference written before the decision is read past
    assert decision_follows_numbers("Result 46, target 46: 46 - 46 = 0: equal.") is True
    assert decision_follows_numbers("Result 45, target 46: 46 - 45 = 1: equal.") is False
    assert decision_follows_numbers("Result 45, target 46: 46 - 45 = 1: not equal.") is True


def test_base_measure_writes_the_card_and_repeats_its_numbers(tiny_model_dir, tmp_path):
    """`sf-mlx base measure --write-card` stores the behaviour (decisions included) in the
    folder's card; measuring again gives the same numbers (same problems, same seed)."""
    import shutil

    from typer.testing import CliRunner

    from sf_mlx.base.build import remeasure
    from sf_mlx.cli import app

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    res = CliRunner().invoke(app, ["base", "measure", str(folder), "--write-card"])
    assert res.exit_code == 0, res.output
    assert "countdown-3" in res.output and "decision follows the numbers" in res.output
    card = json.loads((folder / "metrics.json").read_text())
    v = card["behaviour"]["verdict"]
    assert v["n"] == 20 and 0 <= v["decision_lines"] <= v["n"]
    assert 0.0 <= v["decision_follows_numbers"] <= 1.0
    assert "Verdict agreement with the checker" in (folder / "README.md").read_text()
    assert (folder / "model.safetensors").read_bytes() == weights
    assert remeasure(str(folder), log=lambda _: None) == card["behaviour"]

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "metrics.json").unlink()
    res = CliRunner().invoke(app, ["base", "measure", str(bare), "--write-card"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: {bare}: no metrics.json, so there is no model card to update"
    ]


def test_base_verdicts_checks_a_balanced_set_and_repeats_for_its_seed(tiny_model_dir):
    """`sf-mlx base verdicts` checks N balanced held-out attempts from the build's solver and
    prints agreement with a 95% interval; the same seed gives the same line, bad N one error."""
    from typer.testing import CliRunner

    from sf_mlx.base.behaviour import balanced_attempts, wilson_interval
    from sf_mlx.base.build import SIZES
    from sf_mlx.cli import app

    cfg = SIZES["tiny"].corpus
    attempts = balanced_attempts(30, 3, cfg)
    assert len(attempts) == 30 and sum(c for _, _, c in attempts) == 15
    assert attempts == balanced_attempts(30, 3, cfg) != balanced_attempts(30, 4, cfg)
    assert wilson_interval(65, 100) == pytest.approx((0.5526, 0.7364), abs=5e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0

    args = ["base", "verdicts", str(tiny_model_dir), "--attempts", "12", "--seed", "3"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("verdict agreement ") and "on 12 attempts" in first.output
    assert CliRunner().invoke(app, args).output == first.output
    bad = CliRunner().invoke(app, [*args[:3], "--attempts", "7"])
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: attempts 7: expected an even number of at least 2"


def test_the_small_corpus_makes_search_mistakes_not_arithmetic_ones():
    """Every equation the `search` corpus's attempts and checks write is true; a claimed target
    is said in words after true steps, and such an attempt is graded wrong."""
    from sf_mlx.base.build import CORPORA
    from sf_mlx.base.probes import equation_lines

    corpus = make_corpus(1500, seed=3, cfg=CORPORA["search"][0])
    countdown = [e for e in corpus if e.task.startswith("countdown") and e.kind != "drill"]
    lines = [ok for e in countdown for *_, ok in equation_lines(e.response)]
    assert len(lines) > 1000 and all(lines)
    claims = [e for e in countdown if e.kind == "attempt" and "That makes" in e.response]
    assert claims and not any(e.correct for e in claims)
    # the legacy corpus (the class defaults) still writes slipped steps
    legacy = make_corpus(1500, seed=3)
    old = [ok for e in legacy if e.kind == "attempt" for *_, ok in equation_lines(e.response)]
    assert 0.8 < sum(old) / len(old) < 0.99


def test_single_comparisons_decide_from_both_numbers():
    from dataclasses import replace

    from sf_mlx.base.corpus import CorpusConfig

    cfg = replace(CorpusConfig(), frac_drill=0.0, frac_compare=1.0)
    rows = make_corpus(400, seed=0, cfg=cfg)
    assert {(e.kind, e.task) for e in rows} == {("drill", "comparison")}
    equal = 0
    for e in rows:
        r, t = (int(x) for x in e.prompt.removeprefix("Result ").split(", target "))
        assert e.response == f"{e.prompt}: {'equal' if r == t else 'not equal'}."
        equal += r == t
    assert 0.4 < equal / len(rows) < 0.6


def test_difference_comparisons_write_a_true_difference_before_the_decision():
    """With `compare_difference`, every comparison a check, drill or single comparison writes
    is `Result X, target Y: max - min = d: decision.`, the subtraction true and the decision
    `equal` exactly when d is 0; the checks' verdicts are unchanged."""
    import re
    from dataclasses import replace
    from fractions import Fraction

    from sf_mlx.base.corpus import CorpusConfig, countdown_check_response
    from sf_mlx.records import Problem

    cfg = replace(CorpusConfig(), frac_drill=0.2, frac_compare=0.2, compare_difference=True)
    rows = make_corpus(600, seed=0, cfg=cfg)
    line = re.compile(
        r"Result (-?[\d/]+), target (\d+): (-?[\d/]+) - (-?[\d/]+) = ([\d/]+): (equal|not equal)\."
    )
    seen = {"check": 0, "drill": 0}
    for e in rows:
        for ln in e.response.splitlines():
            if not ln.startswith("Result "):
                continue
            m = line.fullmatch(ln)
            assert m, ln
            r, t, hi, lo, d = (Fraction(x) for x in m.groups()[:5])
            assert {hi, lo} == {r, t} and hi >= lo and hi - lo == d, ln
            assert (m[6] == "equal") == (d == 0), ln
            seen[e.kind] = seen.get(e.kind, 0) + 1
    assert seen["check"] > 20 and seen["drill"] > 100
    problem = Problem("p", "countdown", "q", {"numbers": [3, 7, 9], "target": 30})
    plain, ok = countdown_check_response(problem, "<answer>3 * (9 + 1)</answer>")
    diff, ok_diff = countdown_check_response(problem, "<answer>(9 - 7) * 3</answer>", True)
    assert ok is False and ok_diff is False
    assert diff.splitlines()[-2] == "Result 6, target 30: 30 - 6 = 24: not equal."
    right, ok_right = countdown_check_response(problem, "<answer>3 * (7 + 9 - 6)</answer>", True)
    assert "Result" not in right and ok_right is False  # 6 is not one of the numbers


def test_restating_checks_copy_the_numbers_and_target_from_the_question_first():
    """With `check_restates`, a check opens with the question's numbers (in its order) and its
    target, and every later line names the numbers in that order; the verdict is unchanged."""
    from dataclasses import replace

    from sf_mlx.base.corpus import CorpusConfig, countdown_check_response
    from sf_mlx.records import Problem

    p = Problem("p", "countdown", "q", {"numbers": [10, 5, 1], "target": 40})
    for answer, verdict in (("10 * (5 - 1)", True), ("(10 * 5) - 5", False), ("10 * 4", False)):
        plain, v = countdown_check_response(p, f"<answer>{answer}</answer>", True)
        restated, v2 = countdown_check_response(p, f"<answer>{answer}</answer>", True, True)
        assert v == v2 == verdict
        first, *rest = restated.splitlines()
        assert first == "The numbers [10, 5, 1] must make an equation that equals 40."
        assert "\n".join(rest) == plain.replace("[1, 5, 10]", "[10, 5, 1]")
    cfg = replace(CorpusConfig(), frac_check=1.0, frac_drill=0.0, frac_ood=0.0)
    rows = make_corpus(200, seed=0, cfg=replace(cfg, check_restates=True))
    for e in rows:
        numbers = e.prompt.split("Using the numbers ", 1)[1].split("]", 1)[0] + "]"
        target = e.prompt.split("equals ", 1)[1].split(".", 1)[0]
        if "no final answer" not in e.response:
            assert e.response.startswith(
                f"The numbers {numbers} must make an equation that equals {target}."
            ), e.response


def test_out_of_domain_attempts_follow_the_corpus_task_specs():
    from dataclasses import replace

    from sf_mlx.base.corpus import CorpusConfig

    cfg = replace(
        CorpusConfig(),
        frac_drill=0.0,
        frac_check=0.0,
        frac_ood=1.0,
        ood={"multiplication:digits=2:b_digits=1": 1, "acronym:length=3": 1},
    )
    rows = make_corpus(200, seed=0, cfg=cfg)
    assert {e.task for e in rows} == {"multiplication-digits2-b_digits1", "acronym-length3"}


def test_the_base_architecture_is_causal_and_reads_its_whole_context():
    """The wiring a checking model needs: every position sees every earlier token, none later."""
    import mlx.core as mx
    from mlx_lm.models import nanochat

    from sf_mlx.base.build import SIZES, _nanochat_config

    mx.random.seed(0)
    shape = SIZES["tiny"].shape
    m = nanochat.Model(nanochat.ModelArgs.from_dict(_nanochat_config(shape, 64, 128, 2)))
    x = mx.random.randint(0, 64, (1, 40))
    base = m(x)

    def changed(pos: int) -> list[bool]:
        y = mx.array(x)
        y[0, pos] = (x[0, pos] + 1) % 64
        diff = mx.abs(m(y) - base).max(axis=-1)[0]
        return [bool(d > 1e-6) for d in diff.tolist()]

    assert all(changed(0))  # the first token reaches every later position
    last = changed(39)
    assert last[-1] and not any(last[:-1])  # the last reaches no earlier one


@pytest.mark.slow
def test_a_build_can_use_a_named_corpus(tmp_path):
    from sf_mlx.base.build import CORPORA, build

    out = build(
        "tiny",
        out=tmp_path / "m",
        work=tmp_path / "w",
        seed=0,
        steps=1,
        log=lambda _: None,
        measure_behaviour=False,
        corpus="search-3",
    )
    card = json.loads((out / "metrics.json").read_text())
    assert card["corpus_config"]["frac_compare"] == CORPORA["search-3"][0].frac_compare
    assert card["corpus"]["examples"] == round(130_000 * 6000 / 95_000)
    assert card["corpus"]["tasks"]["comparison"] > 0.2 * card["corpus"]["examples"]
    # the lead-in, scaled like the corpus, fills whole steps before it
    assert card["corpus"]["lead_comparisons"] == round(72_000 * 6000 / 95_000)
    lead_rows = card["train"]["lead_rows"]
    assert lead_rows == card["corpus"]["lead_rows"] > 0 and lead_rows % 2 == 0
    assert card["corpus"]["lead_comparisons"] > 5 * lead_rows  # several comparisons per row
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        build("tiny", out=tmp_path / "x", work=tmp_path / "y", corpus="nope")
