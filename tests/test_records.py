"""Records: every type round-trips through to_dict / JSON / from_dict; unknown keys are errors."""

import json

import pytest

from sf_mlx.records import (
    RECORD_TYPES,
    EvalResult,
    Problem,
    Reflection,
    Rollout,
    Sample,
    Segment,
    Trace,
)

PID = "countdown-3/s0/00017"
SID = f"{PID}/original/0"
RID = f"{SID}/r0"

EXAMPLES = [
    Problem(PID, "countdown", "Use 3, 5, 7 to make 22.", {"numbers": [3, 5, 7], "target": 22}),
    Sample(SID, PID, "original", 0, "3*5+7 <answer>3*5+7</answer>", "3*5+7", True, 12, "stop", 7),
    Sample(SID + "x", PID, "rephrase", 1, "hmm", None, False, 256, "length", 8),
    Reflection(RID, SID, PID, 0, "3*5=15, 15+7=22. <verdict>Correct</verdict>", "correct", True, 9),
    Reflection(RID + "x", SID, PID, 1, "I am not sure", None, False, 5),
    Segment("glue", "Let me try again.", None, False),
    Trace(
        "t0",
        PID,
        "*C_full",
        (
            Segment("sample", "3+5+7 <answer>3+5+7</answer>", SID + "x", False),
            Segment("reflect", "<verdict>Incorrect</verdict>", RID + "x", None),
            Segment("glue", "Let me try again.", None, False),
            Segment("sample", "<answer>3*5+7</answer>", SID, True),
            Segment("answer", "<answer>3*5+7</answer>"),
        ),
        "3*5+7",
        "Use 3, 5, 7 to make 22.",
    ),
    Rollout(3, 1, PID, 5, "<answer>3*5+7</answer>", 1.0, 0.93, "3*5+7", 20, False, "sft_grpo"),
    EvalResult("sft", "countdown-4", PID, 2, "...", None, False, 512, 3, 2, True),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip_through_json(record):
    d = record.to_dict()
    text = json.dumps(d)  # plain JSON types only
    back = type(record).from_dict(json.loads(text))
    assert back == record
    assert back.to_dict() == d


def test_every_record_type_has_an_example():
    assert {type(r).__name__ for r in EXAMPLES} == set(RECORD_TYPES)


def test_trace_segments_are_rebuilt_as_segments():
    trace = next(r for r in EXAMPLES if isinstance(r, Trace))
    d = trace.to_dict()
    assert all(type(s) is dict for s in d["segments"])
    back = Trace.from_dict(json.loads(json.dumps(d)))
    assert isinstance(back.segments, tuple)
    assert all(isinstance(s, Segment) for s in back.segments)
    assert [s.source_id for s in back.segments][:2] == [SID + "x", RID + "x"]


def test_trace_accepts_a_list_and_stays_hashable():
    seg = Segment("sample", "x", "s", True)
    trace = Trace("t", "p", "*C_full", [seg], "x", "q")
    assert trace.segments == (seg,)
    hash(trace)


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_unknown_key_is_named(record):
    d = {**record.to_dict(), "colour": "blue"}
    with pytest.raises(ValueError, match="colour"):
        type(record).from_dict(d)


def test_unknown_key_inside_a_segment_is_named():
    trace = next(r for r in EXAMPLES if isinstance(r, Trace))
    d = trace.to_dict()
    d["segments"][0]["weight"] = 2
    with pytest.raises(ValueError, match="weight"):
        Trace.from_dict(d)


def test_bad_segment_kind_is_named():
    with pytest.raises(ValueError, match="'retry'"):
        Segment("retry", "x")


def test_bad_finish_reason_and_verdict_are_named():
    with pytest.raises(ValueError, match="'eos'"):
        Sample("s", "p", "original", 0, "r", None, False, 1, "eos", 0)
    with pytest.raises(ValueError, match="'Correct'"):
        Reflection("r", "s", "p", 0, "t", "Correct", True, 1)


def test_records_are_frozen():
    with pytest.raises(AttributeError):
        EXAMPLES[1].correct = False


def test_timing_table_counts_the_last_run_of_each_stage(tmp_path):
    from sf_mlx.rundir import RunDir
    from sf_mlx.stages.report import timing_table

    run = RunDir(tmp_path / "run").create()
    run.log_event("stage_end", stage="sample", seconds=10.0)
    run.log_event("stage_end", stage="sft", seconds=99.0)  # a stage re-run later
    run.log_event("stage_end", stage="sft", seconds=30.0)
    lines = timing_table(run).splitlines()
    assert lines[2:] == ["| sample | 10.0 | 25% |", "| sft | 30.0 | 75% |", "| total | 40.0 | |"]
