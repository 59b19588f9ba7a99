"""Export/import: the released RAW schema round trip, its use by the rearrange stage, ShareGPT
rows, and Parquet datasets read back with `datasets`."""

import json
import random
from pathlib import Path

import pytest

from sf_mlx.config import RearrangeConfig
from sf_mlx.export import (
    EXTRACTED,
    IS_CORRECT,
    export_hf,
    export_released_raw,
    import_released_raw,
    problem_id_for,
    to_sharegpt,
)
from sf_mlx.prompts import parse_verdict
from sf_mlx.rundir import RunDir, read_jsonl, write_jsonl_atomic
from sf_mlx.stages.rearrange import run_rearrange
from sf_mlx.traces import make_pairs, make_traces, render_trace

FIXTURE = Path(__file__).parent / "fixtures" / "released_raw.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_import_fixture():
    problems, samples, refls = import_released_raw(FIXTURE)
    assert len(problems) == 2 and len(samples) == 7 and len(refls) == 11
    p1 = problems[0]
    assert p1.problem_id == problem_id_for(p1.question) and p1.task == "countdown"
    assert p1.data == {"answer": "3*5+7"} and p1.solution == "3*5+7"
    assert [s.sample_id.split("/", 2)[2] for s in samples] == [
        "original/0",
        "plan_and_execute/0",
        "alternatively/0",
        "rephrase/0",
        "original/0",
        "original/1",
        "plan_and_execute/0",
    ]
    assert [s.correct for s in samples] == [True, False, True, False, True, False, False]
    assert samples[0].extracted == "3*5+7" and samples[0].response.endswith("</answer>")
    got = [(r.reflection_id.rsplit("/", 2)[-2:], r.verdict, r.agrees) for r in refls]
    assert [(v, a) for _, v, a in got] == [
        ("correct", True),
        ("incorrect", False),
        ("incorrect", True),
        ("correct", False),
        ("correct", True),
        (None, False),  # no verdict tag
        ("incorrect", True),
        ("correct", True),
        (None, False),  # the first tag says "maybe"
        ("correct", False),
        ("incorrect", True),  # upper-case tag, padded
    ]
    assert {r.sample_id for r in refls} <= {s.sample_id for s in samples}


def test_raw_round_trip_is_lossless():
    assert export_released_raw(*import_released_raw(FIXTURE)) == _rows()


def test_import_other_spellings_and_file_types(tmp_path):
    rows = _rows()
    single = [
        {
            (
                "model_responses__mutated_prompts_eval" + k.split("__eval", 1)[1]
                if "__eval" in k
                else k
            ): v
            for k, v in r.items()
        }
        for r in rows
    ]
    assert IS_CORRECT not in single[0] and EXTRACTED not in single[0]
    (tmp_path / "single.json").write_text(json.dumps(single))
    expected = import_released_raw(FIXTURE)
    assert import_released_raw(tmp_path / "single.json") == expected
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    (tmp_path / "cols.json").write_text(json.dumps(cols))
    assert import_released_raw(tmp_path / "cols.json") == expected
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "raw.parquet")
    assert import_released_raw(tmp_path / "raw.parquet") == expected
    renamed = [
        {("prompt_type" if k == "prompt_variant" else k): v for k, v in r.items()} for r in rows
    ]
    write_jsonl_atomic(tmp_path / "pt.jsonl", renamed)
    assert import_released_raw(tmp_path / "pt.jsonl") == expected


def test_import_errors_name_values(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        import_released_raw(tmp_path / "x.csv")
    bad = _rows()[:2]
    del bad[1]["model_responses__mutated_prompts_reflection"]
    write_jsonl_atomic(tmp_path / "bad.jsonl", bad)
    with pytest.raises(
        ValueError, match="row 1: missing column 'model_responses__mutated_prompts_"
    ):
        import_released_raw(tmp_path / "bad.jsonl")
    clash = _rows()[:2]
    clash[1]["answer"] = "7+3*5"
    write_jsonl_atomic(tmp_path / "clash.jsonl", clash)
    with pytest.raises(ValueError, match="answer '7\\+3\\*5' differs"):
        import_released_raw(tmp_path / "clash.jsonl")


def test_parse_verdict():
    assert parse_verdict("x <verdict> Correct </verdict>") == "correct"
    assert parse_verdict("<VERDICT>incorrect</VERDICT><verdict>correct</verdict>") == "incorrect"
    assert parse_verdict("<verdict>unsure</verdict> <verdict>correct</verdict>") is None
    assert parse_verdict("Correct") is None


def test_released_samples_feed_the_rearrange_stage(tmp_path):
    problems, samples, refls = import_released_raw(FIXTURE)
    run = RunDir(tmp_path / "run").create()
    write_jsonl_atomic(run.problems, problems)
    write_jsonl_atomic(run.samples, samples)
    write_jsonl_atomic(run.reflections, refls)
    stats = run_rearrange(run, RearrangeConfig(format="*C_full", valid_fraction=0.5), seed=0)
    # question 1 keeps 4 pairs, question 2 keeps 2 (its row 6 has no agreeing reflection)
    assert stats["pairs_kept"] == 6 and stats["traces"] == 4 + 2
    assert stats["train_rows"] + stats["valid_rows"] == 6 and stats["valid_problems"] == 1
    dropped = samples[5].sample_id
    segs = [s for t in read_jsonl(run.traces) for s in t["segments"]]
    shown = {s["source_id"] for s in segs if s["kind"] == "sample"}
    assert shown == {s.sample_id for s in samples} - {dropped}
    agreeing = {r.reflection_id for r in refls if r.agrees}
    assert {s["source_id"] for s in segs if s["kind"] == "reflect"} <= agreeing


def test_to_sharegpt_both_forms():
    _, samples, refls = import_released_raw(FIXTURE)
    pairs = make_pairs(samples, refls, seed=0)
    pid = samples[0].problem_id
    trace = make_traces(pid, "Q?", pairs[pid], "*CC", random.Random(0))[0]
    row = to_sharegpt(trace)
    assert row == {
        "conversations": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": render_trace(trace)},
        ],
        "sft_template_type_idx": "*CC",
    }
    classic = to_sharegpt(trace, from_value=True)["conversations"]
    assert [c["from"] for c in classic] == ["human", "gpt"]
    assert classic[1]["value"] == render_trace(trace)


def test_export_hf_parquet_reads_back(tmp_path):
    datasets = pytest.importorskip("datasets")
    problems, samples, refls = import_released_raw(FIXTURE)
    pairs = make_pairs(samples, refls, seed=0)
    traces = [
        t
        for p in problems
        for t in make_traces(
            p.problem_id, p.question, pairs[p.problem_id], "*C_full", random.Random(1)
        )
    ]
    rows = [to_sharegpt(t) for t in traces]
    path = export_hf(rows, tmp_path / "sft")
    assert path == tmp_path / "sft" / "data" / "train-00000-of-00001.parquet"
    back = datasets.load_dataset(str(tmp_path / "sft"), cache_dir=str(tmp_path / "cache"))["train"]
    assert back.to_list() == rows
    trace_rows = [t.to_dict() for t in traces]
    sample_rows = [s.to_dict() for s in samples]
    for name, data in (("traces", trace_rows), ("samples", sample_rows)):
        p = export_hf(data, tmp_path / name)
        assert (
            datasets.Dataset.from_parquet(str(p), cache_dir=str(tmp_path / "c2")).to_list() == data
        )
    with pytest.raises(ValueError, match="no rows"):
        export_hf([], tmp_path / "empty")
