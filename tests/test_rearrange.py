"""Silver-trace assembly (sf_mlx.traces) and the rearrange stage: every format's guarantees,
exact render layout, provenance, working shuffle, and the stage's files and problem split."""

import json
import random
import re
from itertools import combinations

import pytest

from sf_mlx.config import RearrangeConfig
from sf_mlx.records import Problem, Reflection, Sample, Segment, Trace
from sf_mlx.rundir import RunDir, read_json, read_jsonl, write_jsonl_atomic
from sf_mlx.stages.rearrange import run_rearrange, split_problems
from sf_mlx.traces import (
    BACKTRACK,
    CONFIRM,
    ENDING,
    FORMATS,
    GENERIC,
    POOLS,
    Pair,
    build_trace,
    ends_correct,
    glue_pool,
    make_pairs,
    make_traces,
    render_trace,
    trace_to_chat,
)

ENDS_CORRECT = {"*C_full", "alg1", "*C", "0C", "*CC", "no_reflection"}


def _sample(pid: str, k: int, correct: bool) -> Sample:
    sid = f"{pid}/original/{k}"
    resp = f"  attempt {k}\n<answer>a{k}</answer>\n"
    return Sample(sid, pid, "original", k, resp, f"a{k}", correct, 5, "stop", 0)


def _refl(s: Sample, j: int = 0, agrees: bool = True) -> Reflection:
    verdict = "correct" if s.correct == agrees else "incorrect"
    text = f"check {s.index}.{j}\n<verdict>{verdict.title()}</verdict>\n"
    return Reflection(f"{s.sample_id}/r{j}", s.sample_id, s.problem_id, j, text, verdict, agrees, 3)


def _pairs(grades: list[bool], pid: str = "p0") -> list[Pair]:
    samples = [_sample(pid, k, c) for k, c in enumerate(grades)]
    return [Pair(s, _refl(s)) for s in samples]


def _shown(trace: Trace) -> list[str]:
    return [s.source_id.rsplit("/", 1)[1] for s in trace.segments if s.kind == "sample"]


def check_trace(trace: Trace, pairs: list[Pair], max_pairs: int) -> None:
    """Every structural promise of a trace, whatever its format."""
    spec = FORMATS[trace.format]
    by_sample = {p.sample.sample_id: p for p in pairs}
    by_refl = {p.reflection.reflection_id: p for p in pairs}
    segs = trace.segments
    assert segs[-1].kind == "answer" and segs[-2].kind == "glue" and segs[-2].text in ENDING
    shown = [s for s in segs if s.kind == "sample"]
    assert 1 <= len(shown) <= max_pairs
    assert len({s.source_id for s in shown}) == len(shown), "an attempt shown twice"
    body = segs[:-2]
    if spec.closing:  # the BACKTRACK / CONFIRM glue right after the last pair
        assert body[-1].kind == "glue" and body[-1].text in spec.closing
        assert body[-1].correct == shown[-1].correct
        body = body[:-1]
    i, current = 0, None
    while i < len(body):
        s = body[i]
        assert s.kind == "sample", f"expected a sample at {i}, got {s.kind}"
        current = by_sample[s.source_id]  # provenance: a real input sample
        assert s.text == current.sample.response.strip() and s.correct == current.sample.correct
        i += 1
        if spec.reflections:
            r = body[i]
            assert r.kind == "reflect" and by_refl[r.source_id] is current  # its own reflection
            assert r.text == current.reflection.text.strip()
            i += 1
        if i < len(body):
            g = body[i]
            assert g.kind == "glue" and g.source_id is None
            assert g.correct == current.sample.correct
            assert g.text in glue_pool(current.sample.correct, spec.reflections)
            i += 1
    assert body[-1].kind == ("reflect" if spec.reflections else "sample")
    # the final answer: the last attempt's, or for *C*IC the latest earlier correct one
    grades = [by_sample[s.source_id].sample for s in shown]
    source = (
        next(s for s in reversed(grades) if s.correct) if spec.closing == BACKTRACK else grades[-1]
    )
    assert trace.final_answer == source.extracted == segs[-1].text
    assert segs[-1].source_id == source.sample_id
    if trace.format in ENDS_CORRECT:
        assert grades[-1].correct and ends_correct(trace)
    if trace.format == "*C*IC":
        assert not grades[-1].correct and any(s.correct for s in grades[:-1])
    if trace.format == "*CC":
        assert grades[-1].correct and grades[-2].correct


# --- phrase pools --------------------------------------------------------------------------------


def test_pools_are_separate_sentences_without_duplicates():
    for name, pool in POOLS.items():
        assert len(pool) >= 10, name
        assert len(set(pool)) == len(pool), f"{name} has duplicates"
        for entry in pool:
            assert entry and entry == entry.strip() and len(entry) < 120, (name, entry)
            assert entry[0].isupper() and entry[-1] in ".!:", (name, entry)
            assert not re.search(r"[.!?:;,][A-Za-z\"']", entry), f"fused entry in {name}: {entry}"
    for (a, pa), (b, pb) in combinations(POOLS.items(), 2):
        assert not set(pa) & set(pb), f"{a} and {b} share entries"


# --- formats -------------------------------------------------------------------------------------

# Regression pins (sample index shown, in order) for seed "golden/<fmt>", 3 correct (0, 2, 4)
# and 3 wrong (1, 3, 5) pairs, max_pairs=4.
GOLDEN = {
    "*C_full": [["4"], ["3", "0"], ["0", "3", "2"], ["5", "0", "4", "2"]],
    "alg1": [["0"], ["1", "4", "2"]],
    "*C": [["4", "2", "1", "0"]],
    "0C": [["4"]],
    "*C*IC": [["0", "1", "3", "5"]],
    "*CC": [["5", "3", "4", "2"]],
    "no_reflection": [["4"], ["3", "2"], ["2", "3", "0"], ["4", "2", "3", "0"]],
    "no_order": [["5"], ["3", "5"], ["1", "3", "5"], ["0", "2", "4", "5"]],
    "random": [["1"], ["1", "2"], ["2", "4", "5"], ["2", "1", "4", "0"]],
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_golden_traces_every_format(fmt):
    assert set(GOLDEN) == set(FORMATS)
    pairs = _pairs([True, False] * 3)
    traces = make_traces("p0", "Q?", pairs, fmt, random.Random(f"golden/{fmt}"), max_pairs=4)
    assert [_shown(t) for t in traces] == GOLDEN[fmt]
    assert [t.trace_id for t in traces] == [f"p0/{fmt}/{i}" for i in range(len(traces))]
    for t in traces:
        assert t.format == fmt and t.question == "Q?" and t.problem_id == "p0"
        check_trace(t, pairs, 4)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("grades", [[True] * 4, [True], [False, True, False, False, False, False]])
def test_every_format_many_seeds(fmt, grades):
    pairs = _pairs(grades)
    for seed in range(25):
        for max_pairs in (2, 3, 5):
            traces = make_traces("p0", "Q?", pairs, fmt, random.Random(seed), max_pairs)
            for t in traces:
                check_trace(t, pairs, max_pairs)
            n = min(max_pairs, len(pairs))
            if fmt in ("*C_full", "no_reflection", "no_order", "random"):
                assert [len(_shown(t)) for t in traces] == list(range(1, n + 1))
            if fmt == "alg1":  # each correct pair is used, and ends at most one trace
                used = [s for t in traces for s in t.segments if s.kind == "sample" and s.correct]
                assert sorted(s.source_id for s in used) == sorted(
                    p.sample.sample_id for p in pairs if p.sample.correct
                )
            if fmt == "*C*IC":
                assert len(traces) == (1 if False in grades else 0)
            if fmt == "*CC":
                assert len(traces) == (1 if grades.count(True) >= 2 else 0)
            if fmt in ("0C", "*C"):
                assert len(traces) == 1


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_no_correct_pair_gives_no_traces(fmt):
    assert make_traces("p0", "Q?", _pairs([False] * 3), fmt, random.Random(0)) == []
    assert make_traces("p0", "Q?", [], fmt, random.Random(0)) == []


def test_no_order_may_end_wrong_with_that_answer():
    pairs = _pairs([True, False, False, False])
    finals = set()
    for seed in range(30):
        for t in make_traces("p0", "Q?", pairs, "no_order", random.Random(seed)):
            last = [s for s in t.segments if s.kind == "sample"][-1]
            finals.add(last.correct)
            assert t.final_answer == f"a{_shown(t)[-1]}"
    assert finals == {True, False}


def test_shuffle_permutes_earlier_pairs():
    # one correct (0) and four wrong pairs: the 5-pair trace always shows all of them, so only
    # the order of the four earlier pairs can vary
    pairs = _pairs([True, False, False, False, False])
    for fmt in ("*C_full", "no_reflection"):
        orders = set()
        for seed in range(40):
            shown = _shown(make_traces("p0", "Q?", pairs, fmt, random.Random(seed))[-1])
            assert sorted(shown[:-1]) == ["1", "2", "3", "4"]
            orders.add(tuple(shown[:-1]))
        assert len(orders) >= 10, (fmt, orders)
        assert {o[0] for o in orders} == {"1", "2", "3", "4"}
    # alg1 with 3 correct + 2 wrong: the earlier pairs are a shuffle of correct and wrong ones
    pairs = _pairs([True, True, True, False, False])
    firsts = set()
    for seed in range(60):
        for t in make_traces("p0", "Q?", pairs, "alg1", random.Random(seed), max_pairs=5):
            if len(_shown(t)) >= 3:
                firsts.add(_shown(t)[0])
    assert len(firsts) >= 4
    # *C*IC: the kept correct pair is not always first among the earlier ones
    pairs = _pairs([True, False, False, False])
    positions = {
        _shown(make_traces("p0", "Q?", pairs, "*C*IC", random.Random(s))[0]).index("0")
        for s in range(40)
    }
    assert positions == {0, 1, 2}


def test_render_layout_exact():
    segs = (
        Segment("sample", "try 1\n<answer>1+2</answer>", "s1", False),
        Segment("reflect", "no\n<verdict>Incorrect</verdict>", "s1/r0"),
        Segment("glue", "Again.", None, False),
        Segment("sample", "try 2\n<answer>3*1</answer>", "s2", True),
        Segment("reflect", "yes\n<verdict>Correct</verdict>", "s2/r0"),
        Segment("glue", "So the answer is:", None, True),
        Segment("answer", "3*1", "s2", True),
    )
    trace = Trace("t", "p", "*C_full", segs, "3*1", "Q?")
    expected = (
        "<think>\n"
        "<sample>\ntry 1\n<answer>1+2</answer>\n</sample>\n"
        "<reflect>\nno\n<verdict>Incorrect</verdict>\n</reflect>\n"
        "Again.\n"
        "<sample>\ntry 2\n<answer>3*1</answer>\n</sample>\n"
        "<reflect>\nyes\n<verdict>Correct</verdict>\n</reflect>\n"
        "</think>\n"
        "\n"
        "So the answer is:\n"
        "\n"
        "<answer>\n3*1\n</answer>"
    )
    assert render_trace(trace) == expected
    assert trace_to_chat(trace) == {
        "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": expected}]
    }
    with pytest.raises(ValueError, match="must end with glue, answer"):
        render_trace(Trace("t", "p", "*C_full", segs[:-1], "3*1", "Q?"))


def test_build_trace_render_strips_and_keeps_tags():
    pairs = _pairs([False, True])
    t = build_trace("p0", "Q?", pairs, "*C_full", random.Random(3))
    glue, ending = t.segments[2].text, t.segments[-2].text
    assert render_trace(t) == (
        "<think>\n<sample>\nattempt 0\n<answer>a0</answer>\n</sample>\n"
        "<reflect>\ncheck 0.0\n<verdict>Incorrect</verdict>\n</reflect>\n"
        f"{glue}\n<sample>\nattempt 1\n<answer>a1</answer>\n</sample>\n"
        "<reflect>\ncheck 1.0\n<verdict>Correct</verdict>\n</reflect>\n</think>\n\n"
        f"{ending}\n\n<answer>\na1\n</answer>"
    )
    nr = build_trace("p0", "Q?", pairs, "no_reflection", random.Random(3))
    assert "<reflect>" not in render_trace(nr) and nr.segments[1].text in GENERIC
    cc = build_trace("p0", "Q?", _pairs([True, True]), "*CC", random.Random(3))
    assert render_trace(cc).split("</think>")[0].rstrip().endswith(cc.segments[-3].text)
    assert cc.segments[-3].text in CONFIRM


def test_bad_inputs_fail_with_names():
    with pytest.raises(ValueError, match="unknown trace format 'C_full'.*'\\*C_full'"):
        make_traces("p0", "Q?", _pairs([True]), "C_full", random.Random(0))
    with pytest.raises(ValueError, match="needs max_pairs >= 2, got 1"):
        make_traces("p0", "Q?", _pairs([True, True]), "*CC", random.Random(0), max_pairs=1)
    with pytest.raises(ValueError, match="not of problem 'p9'"):
        make_traces("p9", "Q?", _pairs([True]), "0C", random.Random(0))
    s, other = _sample("p0", 0, True), _sample("p0", 1, True)
    with pytest.raises(ValueError, match="belongs to sample"):
        Pair(s, _refl(other))


def test_make_pairs_keeps_one_agreeing_reflection_per_sample():
    samples = [_sample("p0", k, k % 2 == 0) for k in range(4)] + [_sample("p1", 0, True)]
    refls = [_refl(s, j, agrees=j != 1) for s in samples[:3] for j in range(3)]
    refls += [_refl(samples[3], 0, agrees=False)]  # sample 3: no agreeing reflection
    pairs = make_pairs(samples, refls, seed=7)
    assert list(pairs) == ["p0"]  # p1's sample has no reflection at all
    assert [p.sample.index for p in pairs["p0"]] == [0, 1, 2]
    assert all(p.reflection.agrees for p in pairs["p0"])
    assert make_pairs(samples, refls, seed=7) == pairs
    chosen = {
        p.reflection.index for seed in range(20) for p in make_pairs(samples, refls, seed)["p0"]
    }
    assert chosen == {0, 2}


# --- the stage -----------------------------------------------------------------------------------


def _write_run(tmp_path, n_problems: int = 8) -> RunDir:
    run = RunDir(tmp_path / "run").create()
    problems, samples, refls = [], [], []
    for i in range(n_problems):
        pid = f"cd/s0/{i:05d}"
        problems.append(Problem(pid, "countdown", f"question {i}?", {"target": i}, split="sft"))
        grades = [False] * 4 if i == 0 else [k % 3 == 0 for k in range(4)]  # problem 0: no correct
        for k, c in enumerate(grades):
            s = _sample(pid, k, c)
            samples.append(s)
            refls += [_refl(s, 0, agrees=k != 2), _refl(s, 1, agrees=False)]  # sample 2 dropped
    write_jsonl_atomic(run.problems, problems)
    write_jsonl_atomic(run.samples, samples)
    write_jsonl_atomic(run.reflections, refls)
    return run


def test_stage_end_to_end(tmp_path):
    run = _write_run(tmp_path)
    cfg = RearrangeConfig(format="*C_full", valid_fraction=0.25, max_pairs=5)
    stats = run_rearrange(run, cfg, seed=3)
    traces = read_jsonl(run.traces, Trace)
    train = read_jsonl(run.sft_dir / "train.jsonl")
    valid = read_jsonl(run.sft_dir / "valid.jsonl")
    assert len(traces) == stats["traces"] == len(train) + len(valid) == 7 * 3
    q_train = {r["messages"][0]["content"] for r in train}
    q_valid = {r["messages"][0]["content"] for r in valid}
    assert len(q_valid) == 2 and len(q_train) == 5 and not q_train & q_valid
    assert "question 0?" not in q_train | q_valid
    texts = [render_trace(t) for t in traces]
    assert sorted(r["messages"][1]["content"] for r in train + valid) == sorted(texts)
    for t in traces:
        assert "/original/2" not in "".join(str(s.source_id) for s in t.segments)
        assert t.segments[-1].correct and ends_correct(t)
    assert stats["pairs_kept"] == 8 * 3 and stats["problems_with_traces"] == 7
    assert stats["problems"] == 8
    assert stats["traces_per_format"] == {"*C_full": 21} and stats["frac_ending_correct"] == 1.0
    assert stats["mean_pairs_per_trace"] == 2.0
    assert stats["mean_trace_chars"] == sum(map(len, texts)) / len(texts)
    assert read_json(run.sft_dir / "rearrange_stats.json") == stats
    assert run.done_info("rearrange")["traces"] == 21
    before = run.traces.read_bytes(), (run.sft_dir / "train.jsonl").read_bytes()
    run_rearrange(run, cfg, seed=3)  # deterministic re-run
    assert (run.traces.read_bytes(), (run.sft_dir / "train.jsonl").read_bytes()) == before


def test_stage_other_format_and_errors(tmp_path):
    run = _write_run(tmp_path, n_problems=3)
    stats = run_rearrange(run, RearrangeConfig(format="*C*IC", valid_fraction=0.0), seed=0)
    assert stats["traces"] == 2 and stats["frac_ending_correct"] == 0.0
    assert stats["valid_rows"] == 1 and stats["train_rows"] == 1
    rows = [json.loads(x) for x in (run.sft_dir / "valid.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][1]["content"].endswith("</answer>")
    with pytest.raises(ValueError, match=r"rearrange.format='\*C_ful'; expected one of \*C_full"):
        RearrangeConfig(format="*C_ful")  # the recipe rejects it before the stage runs
    bad = _write_run(tmp_path / "b", n_problems=1)  # the only problem has no correct attempt
    with pytest.raises(ValueError, match="no traces: 4 samples"):
        run_rearrange(bad, RearrangeConfig(), seed=0)


def test_split_problems():
    ids = [f"p{i}" for i in range(10)]
    train, valid = split_problems(ids, 0.3, seed=1)
    assert len(valid) == 3 and train | valid == set(ids) and not train & valid
    assert split_problems(ids, 0.3, seed=1) == (train, valid)
    assert split_problems(["a"], 0.5, 0) == ({"a"}, set())
    assert len(split_problems(["a", "b"], 0.0, 0)[1]) == 1
    assert len(split_problems(["a", "b"], 0.9, 0)[0]) == 1
    with pytest.raises(ValueError, match="valid_fraction=1.0"):
        split_problems(ids, 1.0, 0)


def test_stats_count_only_the_sft_pool(tmp_path):
    run = _write_run(tmp_path, n_problems=4)
    problems = read_jsonl(run.problems, Problem)
    others = [Problem(f"cd/s1/{i:05d}", "countdown", f"rl {i}?", {}, split="rl") for i in range(5)]
    write_jsonl_atomic(run.problems, problems + others)
    stats = run_rearrange(run, RearrangeConfig(valid_fraction=0.25), seed=0)
    assert stats["problems"] == 4 and stats["problems_with_traces"] == 3
