"""The `search-2` corpus: `search` plus remedies for causes found by probing its base (wrong
early stops, multiplication one digit pair per line, first letters as tokens of their own), and
`search-3`: `search-2` after a lead-in of single comparisons."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from sf_mlx.base.build import CORPORA
from sf_mlx.base.corpus import CorpusConfig, make_corpus
from sf_mlx.base.probes import equation_lines
from sf_mlx.base.tokenizer import train_tokenizer

SEARCH = CORPORA["search-2"][0]


def _leaves_a_number_out(e) -> bool:
    answer = e.response.rsplit("<answer>", 1)[1]
    return len(re.findall(r"\d+", answer)) < int(e.task.removeprefix("countdown-"))


def _countdown_attempts(cfg: CorpusConfig) -> list:
    cfg = replace(cfg, frac_check=0.0, frac_drill=0.0, frac_compare=0.0, frac_ood=0.0)
    cfg = replace(cfg, countdown_args={3: 0.5, 4: 0.5})
    return make_corpus(3000, seed=5, cfg=cfg)


def test_answers_that_leave_a_number_out_are_right_and_wrong_in_the_search_2_corpus():
    """Without early stops every such answer is right (the shortcut a check learnt: `Result 50,
    target 40: equal.` on the base's own one-step attempts); with them, right about half the
    time, and every line they write stays true."""
    no_stops = replace(SEARCH, p_stop_early=0.0)
    before = [e for e in _countdown_attempts(no_stops) if _leaves_a_number_out(e)]
    assert len(before) > 100 and all(e.correct for e in before)
    after = [e for e in _countdown_attempts(SEARCH) if _leaves_a_number_out(e)]
    right = sum(e.correct for e in after) / len(after)
    assert len(after) > 300 and 0.35 < right < 0.75
    lines = [ok for e in after for *_, ok in equation_lines(e.response)]
    assert lines and all(lines)


def _one_nonzero_digit(n: int) -> bool:
    return len(str(n).rstrip("0")) == 1


@pytest.mark.parametrize("spec", ["multiplication:digits=2:b_digits=1", "multiplication:digits=2"])
def test_digit_pair_multiplication_writes_only_true_one_digit_products_and_sums(spec):
    cfg = replace(SEARCH, frac_check=0.0, frac_drill=0.0, frac_compare=0.0, frac_ood=1.0)
    rows = make_corpus(300, seed=1, cfg=replace(cfg, ood={spec: 1}))
    products = sums = 0
    for e in rows:
        for a, op, b, _, ok in equation_lines(e.response):
            assert ok, e.response
            if op == "*":
                products += 1
                assert _one_nonzero_digit(a) and _one_nonzero_digit(b), e.response
            else:
                sums += op == "+"
    assert products > 300 and sums > 100
    right = sum(e.correct for e in rows) / len(rows)
    assert 0.4 < right < 0.7  # a wrong attempt forgets a partial product
    # the class default writes the whole product of a and one digit of b in one line
    plain = make_corpus(100, seed=1, cfg=replace(cfg, ood={spec: 1}, multiply_digit_pairs=False))
    assert any(a > 9 and b > 0 for e in plain for a, op, b, *_ in equation_lines(e.response))


def test_initial_letter_tokens_make_a_word_s_first_letter_a_token_of_its_own():
    texts = ["Take the first letter of each word: only, after, road."] * 50 + ["only after"] * 50
    split = train_tokenizer(texts, vocab_size=300, initial_letters=True)
    whole = train_tokenizer(texts, vocab_size=300)
    text = "Take the first letter of each word: only, after, road."
    assert "Ġonly" in whole.encode(text).tokens
    pieces = split.encode(text).tokens
    assert {"Ġo", "Ġa", "Ġr", "T"} <= set(pieces) and "Ġonly" not in pieces
    assert split.decode(split.encode(text).ids) == text
    assert split.encode("Step 1: 10 * 5 = 50").tokens == whole.encode("Step 1: 10 * 5 = 50").tokens


def test_a_lead_in_is_trained_first_once_each_then_epochs_over_the_rest():
    """`lead_rows` rows fill the first steps, each exactly once; later steps never reach them,
    and without a lead-in the data order is the one builds always had."""
    import numpy as np

    from sf_mlx.base.pretrain import batch_indices

    n, lead, b = 50, 12, 4
    first = [batch_indices(n, b, s, seed=3, lead_rows=lead) for s in range(lead // b)]
    assert sorted(np.concatenate(first).tolist()) == list(range(lead))
    rest = np.concatenate([batch_indices(n, b, s, 3, lead) for s in range(3, 3 + 9)])
    assert rest.min() >= lead and len(set(rest.tolist())) == len(rest)  # one epoch, no repeat
    assert [batch_indices(n, b, s, 3, lead).tolist() for s in range(20)] == [
        batch_indices(n, b, s, 3, lead).tolist() for s in range(20)
    ]
    plain = batch_indices(n, b, 5, seed=3)
    expected = np.random.default_rng([3, 0]).permutation(n)[20:24]
    assert plain.tolist() == expected.tolist()


def test_the_search_3_lead_in_is_single_comparisons_apart_from_the_corpus():
    from sf_mlx.base.corpus import make_lead

    cfg = CORPORA["search-3"][0]
    assert cfg.lead_comparisons > 50_000 and cfg.frac_compare == SEARCH.frac_compare
    assert replace(cfg, lead_comparisons=0) == SEARCH  # search-2 plus exactly the lead-in
    lead = make_lead(300, seed=0, cfg=cfg)
    assert lead == make_lead(300, seed=0, cfg=cfg) and lead != make_lead(300, seed=1, cfg=cfg)
    assert {(e.kind, e.task) for e in lead} == {("drill", "comparison")}
    # the corpus after the lead-in is search-2's own, example for example
    assert make_corpus(300, seed=0, cfg=cfg) == make_corpus(300, seed=0, cfg=SEARCH)


def test_word_by_word_acronyms_write_each_word_then_its_first_letter():
    """`acronym_word_by_word`: `First letters: idea -> i, lawn -> l, lift -> l.` in the prompt's
    word order, the answer the letters joined; a wrong attempt misreads one letter."""
    cfg = replace(
        SEARCH,
        frac_check=0.0,
        frac_drill=0.0,
        frac_compare=0.0,
        frac_ood=1.0,
        ood={"acronym:length=3": 1},
        acronym_word_by_word=True,
    )
    rows = make_corpus(300, seed=2, cfg=cfg)
    misread = 0
    for e in rows:
        words = e.prompt.split("each word: ", 1)[1].split(".", 1)[0].split(", ")
        pairs = re.search(r"First letters: (.*)\.\n", e.response)[1].split(", ")
        assert [p.split(" -> ")[0] for p in pairs] == words, e.response
        letters = [p.split(" -> ")[1] for p in pairs]
        assert e.response.endswith(f"<answer>{''.join(letters)}</answer>")
        wrong = sum(w[0] != x for w, x in zip(words, letters, strict=True))
        assert wrong <= 1 and e.correct == (wrong == 0)
        misread += wrong
    assert 0.2 < misread / len(rows) < 0.6
    plain = make_corpus(20, seed=2, cfg=replace(cfg, acronym_word_by_word=False))
    assert not any(" -> " in e.response for e in plain)
