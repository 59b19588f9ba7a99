"""Diagnostic probes of the base, on hand-made text and on a model with a known bias."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from sf_mlx.base import learnability, probes


def test_equation_lines_are_judged_by_exact_arithmetic():
    text = "Step 1: 7 - 7 = 1\nStep 2: 14 - 9 = 5\n8 / 3 = 8/3\n6 * 4 = 24. Then 12 / 0 = 3"
    got = [(a, op, b, ok) for a, op, b, _, ok in probes.equation_lines(text)]
    assert got == [
        (7, "-", 7, False),
        (14, "-", 9, True),
        (8, "/", 3, True),
        (6, "*", 4, True),
        (12, "/", 0, False),
    ]


def test_arithmetic_lines_count_by_context_and_operand_size():
    out = probes.arithmetic_lines({"attempt": ["3 + 4 = 7\n12 * 2 = 25"], "check": ["no lines"]})
    assert out["attempt"]["lines"] == 2 and out["attempt"]["true"] == 0.5
    assert out["attempt"]["by_size"] == {
        "1 digit": {"lines": 1, "true": 1.0},
        "2 digits": {"lines": 1, "true": 0.0},
    }
    assert out["check"] == {"lines": 0, "true": 0.0, "by_size": {}}


class SaysEqual(nn.Module):
    """A model that always puts its mass on the first token of " equal."."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def __call__(self, x):
        logits = mx.zeros((*x.shape, self.vocab))
        return logits + 20.0 * (mx.arange(self.vocab) == self.token)


def test_decision_probabilities_tell_right_from_wrong_decisions():
    from sf_mlx import model as model_io

    _, tok = model_io.load("builtin:small")
    eq = tok.encode(probes.DECISIONS[0], add_special_tokens=False)
    neq = tok.encode(probes.DECISIONS[1], add_special_tokens=False)
    assert eq[0] != neq[0]
    m = SaysEqual(len(tok.vocab), eq[0])
    checks = ["Result 12, target 12: equal.", "Result 11, target 12: equal.", "no decision"]
    rows = probes.decision_probabilities(m, tok, ["check this"] * 3, checks)
    assert [r["equal"] for r in rows] == [True, False]
    assert rows[0]["p_right"] > 0.99 and rows[1]["p_right"] < 0.01
    s = probes.summarise_decisions(rows)
    assert s["equal"]["confidently_right"] == 1.0 and s["not_equal"]["confidently_wrong"] == 1.0


def test_decision_prefix_stops_at_the_decision_past_a_written_difference():
    check = "7 * 6 = 42\nResult 42, target 46: 46 - 42 = 4: not equal.\n<verdict>Incorrect"
    assert probes.decision_prefix(check) == (
        "7 * 6 = 42\nResult 42, target 46: 46 - 42 = 4:",
        False,
    )
    assert probes.decision_prefix("Result 46, target 46: equal.") == ("Result 46, target 46:", True)
    assert probes.decision_prefix("Result 46, target 46: 46 - 46 = 0: equal.")[1] is True
    assert probes.decision_prefix("no decision here") is None


@pytest.mark.slow
def test_check_only_probe_trains_and_measures_held_out_decisions():
    out = learnability.check_only(steps=4, n_eval=6, seed=0, log=lambda _: None, size="tiny")
    assert out["loss_last"] < out["loss_first"]
    d = out["decisions"]
    assert d["equal"]["n"] + d["not_equal"]["n"] > 0
    for row in d.values():
        assert 0.0 <= row["mean_p_right"] <= 1.0


def test_compare_forms_write_one_comparison_with_the_decision_last():
    for form, write in learnability.COMPARE_FORMS.items():
        for r, t in ((46, 46), (45, 46), (9, 46)):
            prompt, response = write(r, t)
            assert response.endswith(
                ": equal."
                if (form == "single" and r % 10 == t % 10) or (form != "single" and r == t)
                else ": not equal."
            ), form
            assert ":" in response and prompt
    assert learnability.COMPARE_FORMS["digits"](45, 46)[1] == (
        "Result 45, target 46: 4 and 4 same, 5 and 6 differ: not equal."
    )
    assert "1 digits and 2 digits differ" in learnability.COMPARE_FORMS["digits"](9, 46)[1]
    assert learnability.COMPARE_FORMS["difference"](45, 46)[1] == (
        "Result 45, target 46: 46 - 45 = 1: not equal."
    )
    assert learnability.COMPARE_FORMS["difference"](46, 46)[1].endswith("46 - 46 = 0: equal.")


def test_difference_steps_say_which_step_of_a_written_difference_went_wrong():
    pairs = [(45, 46), (46, 36), (30, 30), (12, 21), (7, 9)]
    responses = [
        "Result 45, target 46: 46 - 45 = 1: not equal.",  # all right
        "Result 46, target 36: 46 - 46 = 0: equal.",  # the smaller number miscopied
        "Result 30, target 30: 30 - 30 = 0: not equal.",  # decision against its difference
        "Result 12, target 21: 21 - 12 = 8: not equal.",  # a false subtraction
        "7 and 9",  # not the form
    ]
    out = learnability.difference_steps(pairs, responses)
    assert out == {
        "form": 0.8,
        "copied": 0.8,
        "operands": 0.6,
        "subtraction": 0.6,
        "decision_follows": 0.6,
        "decision_right": 0.4,
    }


@pytest.mark.slow
def test_compare_probe_trains_and_measures_decisions_and_greedy_copies():
    out = learnability.compare_only(
        "digits", steps=3, n_eval=4, seed=0, log=lambda _: None, size="tiny"
    )
    assert out["loss_last"] < out["loss_first"]
    d = out["decisions"]
    assert d["equal"]["n"] + d["not_equal"]["n"] == 4
    assert 0.0 <= out["greedy_exact"] <= 1.0 and len(out["greedy_examples"]) == 3
    with pytest.raises(ValueError, match="form 'nope'"):
        learnability.compare_only("nope", steps=1, n_eval=1, seed=0)


def test_own_verdicts_score_the_checks_of_a_models_own_attempts():
    from sf_mlx.tasks import get_task

    (p,) = get_task("countdown").make_problems(1, 0, num_args=3)
    right = f"<answer>{p.solution}</answer>"
    wrong = "<answer>1 + 1</answer>"
    ok, no = "<verdict>Correct</verdict>", "<verdict>Incorrect</verdict>"
    out = probes.own_verdicts([p] * 4, [right, right, wrong, wrong], [ok, no, no, no])
    assert out["attempts_correct"] == 2 and out["agreement"] == 0.75
    assert (out["on_correct"], out["on_wrong"], out["balanced"]) == (0.5, 1.0, 0.75)
    a, b, c = p.data["numbers"]
    short, full = f"{a} + {b}", f"{a} * {b} * {c}"  # a number left out; every number used
    assert not any(get_task("countdown").check(p, x) for x in (short, full))
    short, full = f"<answer>{short}</answer>", f"<answer>{full}</answer>"
    out = probes.own_verdicts([p] * 3, [short, short, full], [ok, ok, no])
    assert out["wrong_answers"] == {
        "leaves_a_number_out": {"wrong": 2, "on_wrong": 0.0},
        "uses_every_number": {"wrong": 1, "on_wrong": 1.0},
    }


def test_check_steps_name_where_a_wrong_verdict_came_from():
    """The first step at which a check of an attempt went wrong: its recomputed result, its
    decision, its verdict; none for a verdict that agrees with the checker."""
    from sf_mlx.records import Problem

    p = Problem("p", "countdown", "q", {"numbers": [3, 7, 9], "target": 30})
    wrong = "Step 1: 9 - 7 = 2\nStep 2: 2 * 3 = 30\n<answer>(9 - 7) * 3</answer>"  # is 6
    misused = "<answer>3 * (9 + 7 - 6)</answer>"  # 30, but 6 is not one of the numbers
    ok, no = "\n<verdict>Correct</verdict>", "\n<verdict>Incorrect</verdict>"
    copied = "2 * 3 = 30\nResult 30, target 30: 30 - 30 = 0: equal."
    recomputed = "2 * 3 = 6\nResult 6, target 30: 30 - 6 = 24: not equal."
    ignored = "2 * 3 = 6\nResult 6, target 30: 30 - 6 = 24: equal."
    cases = [
        (wrong, copied + ok, "result"),  # the attempt's false line copied into the check
        (wrong, recomputed + ok, "verdict"),
        (wrong, ignored + ok, "decision"),
        (wrong, recomputed + no, None),
        (wrong, "I think so." + ok, "no_decision"),
        (misused, "Result 30, target 30: equal." + ok, "numbers_used"),
        (wrong, "2 * 3 = 6\nResult 6, target 6: 6 - 6 = 0: equal." + ok, "target"),
    ]
    for attempt, check, want in cases:
        assert probes.check_steps(p, attempt, check) == want, (check, want)
    out = probes.own_verdicts([p] * 3, [wrong] * 3, [copied + ok, copied + ok, ignored + ok])
    assert out["wrong_verdicts_from"] == {"result": 2, "decision": 1}


@pytest.mark.slow
def test_compare_probe_goes_on_from_a_given_model_or_only_measures_it(tiny_model_dir):
    """`--start`: the model's own weights and tokenizer; --steps 0 measures it unchanged, the
    same numbers twice; a few steps at a constant rate move its decisions."""

    def run(steps: int) -> dict:
        return learnability.compare_only(
            "line",
            steps,
            6,
            seed=0,
            log=lambda _: None,
            size="tiny",
            start=str(tiny_model_dir),
            lr=1e-2,
        )

    measured, again = run(0), run(0)
    assert measured["decisions"] == again["decisions"] and measured["steps"] == 0
    assert measured["greedy_examples"] == again["greedy_examples"]
    trained = run(4)
    assert trained["decisions"] != measured["decisions"]


@pytest.mark.slow
def test_check_only_probe_goes_on_from_a_model_and_checks_its_own_attempts(tiny_model_dir):
    """`--start`: the start model's own attempts are checked by the model trained further on
    checks alone (in the given corpus's form); --steps 0 gives the same numbers twice, and
    training changes the checks but not the attempts they check."""
    from dataclasses import replace

    from sf_mlx.base.corpus import CorpusConfig

    cfg = replace(CorpusConfig(), compare_difference=True, check_restates=True)

    def run(steps: int) -> dict:
        return learnability.check_only(
            steps,
            6,
            seed=0,
            log=lambda _: None,
            size="tiny",
            start=str(tiny_model_dir),
            lr=1e-2,
            cfg=cfg,
        )

    measured, again, trained = run(0), run(0), run(3)
    for key in ("decisions", "own_checks"):
        assert measured[key] == again[key]
    assert measured["checks_trained"] == 0
    own = trained["own_checks"]
    assert own["attempts"] == 6
    before = measured["own_checks"]  # the same attempts, made before training
    assert own["attempts_correct"] == before["attempts_correct"]
    for shape, row in own["wrong_answers"].items():
        assert row["wrong"] == before["wrong_answers"][shape]["wrong"]
    assert trained["decisions"] != measured["decisions"] and trained["checks_trained"] > 0
