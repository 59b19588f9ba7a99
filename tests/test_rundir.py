"""Run directory: atomic files, partial-line-safe JSONL readers, done markers, events, status;
and the metric name table the events use."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sf_mlx.metrics import BY_NAME, METRICS, Metric, is_metric, metric, stage_metrics
from sf_mlx.records import Sample
from sf_mlx.rundir import (
    JsonlTail,
    RunDir,
    append_jsonl,
    iter_jsonl,
    list_runs,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)


def _sample(i: int) -> Sample:
    return Sample(
        f"s{i}", "p0", "original", i, f"resp {i}\nline two", str(i), i % 2 == 0, 5, "stop", i
    )


def test_atomic_writes_leave_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "samples.jsonl"
    assert write_jsonl_atomic(path, [_sample(0), {"a": 1}]) == 2
    write_jsonl_atomic(path, [_sample(1)])  # replaces, never appends
    write_json_atomic(tmp_path / "sub" / "x.json", {"k": [1, 2]})
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.jsonl", "x.json"]
    assert read_jsonl(path, Sample) == [_sample(1)]
    assert read_json(tmp_path / "sub" / "x.json") == {"k": [1, 2]}


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_records_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [_sample(i) for i in range(5)]
    append_jsonl(path, rows[:2])
    append_jsonl(path, rows[2:])
    assert read_jsonl(path, Sample) == rows
    assert list(iter_jsonl(path))[0] == rows[0].to_dict()
    assert path.read_text().count("\n") == 5  # newlines inside strings are escaped


def test_partial_trailing_line_is_ignored(tmp_path):
    path = tmp_path / "events.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    full = json.dumps({"i": 2}) + "\n"
    with path.open("a") as f:
        f.write(full[:4])  # a writer is half-way through a line
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    tail = JsonlTail(path)
    assert tail.read_new() == [{"i": 0}, {"i": 1}]
    assert tail.read_new() == []
    with path.open("a") as f:
        f.write(full[4:])  # ... and finishes it
    assert tail.read_new() == [{"i": 2}]
    assert tail.read_new() == []
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_append_after_a_killed_writer_keeps_earlier_rows(tmp_path):
    path = tmp_path / "events.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    with path.open("ab") as f:
        f.write(b'{"i": 99, "tru')  # the writer was killed mid-line
    tail = JsonlTail(path)
    assert tail.read_new() == [{"i": 0}, {"i": 1}]
    append_jsonl(path, [{"i": 2}])  # the next writer drops the dead partial line
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert tail.read_new() == [{"i": 2}]


def test_corrupt_complete_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        read_jsonl(path)
    tail = JsonlTail(path)
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        tail.read_new()
    assert tail.read_new() == [{"i": 0}, {"i": 2}]  # reading goes on past the bad line


def test_tail_handles_missing_and_replaced_files(tmp_path):
    path = tmp_path / "rows.jsonl"
    tail = JsonlTail(path)
    assert tail.read_new() == []
    write_jsonl_atomic(path, [{"i": 0}, {"i": 1}])
    assert tail.read_new() == [{"i": 0}, {"i": 1}] and not tail.restarted
    write_jsonl_atomic(path, [{"j": 0}, {"j": 1}, {"j": 2}])  # a stage re-ran
    assert tail.read_new() == [{"j": 0}, {"j": 1}, {"j": 2}] and tail.restarted
    assert tail.read_new() == [] and not tail.restarted
    assert read_jsonl(tmp_path / "nope.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")


def test_named_paths(tmp_path):
    run = RunDir(tmp_path / "r1").create()
    assert run.path.is_dir() and run.name == "r1" and os.fspath(run) == str(run.path)
    assert run.samples == run.path / "samples.jsonl"
    assert run.recipe.name == "recipe.yaml" and run.status.name == "status.json"
    assert run.grpo_dir("sft_grpo") == run.path / "grpo" / "sft_grpo"
    assert run.rollouts_path("rl_only", 3).relative_to(run.path).as_posix() == (
        "grpo/rl_only/rollouts/step_3.jsonl"
    )
    assert RunDir(str(run.path)) == run
    with pytest.raises(ValueError, match="'../x'"):
        run.grpo_dir("../x")


def test_done_markers(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert not run.is_done("sample")
    run.mark_done("sample", {"rows": 12})
    assert run.is_done("sample")
    assert run.done_info("sample")["rows"] == 12
    run.mark_done("grpo/rl_only")
    assert run.is_done("grpo/rl_only") and not run.is_done("grpo/sft_grpo")
    run.clear_done("sample")
    run.clear_done("sample")  # clearing twice is fine
    assert not run.is_done("sample") and run.done_info("sample") is None


def test_events_and_metrics(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.log_event("stage_start", stage="sft")
    run.log_progress("sft", 3, 10)
    run.log_metrics("sft", 3, {"sft/train_loss": 1.5, "sft/learning_rate": 1e-4})
    run.log_message("sft", "hello")
    rows = run.read_events()
    assert [r["kind"] for r in rows] == ["stage_start", "progress", "metric", "message"]
    assert all(isinstance(r["time"], float) for r in rows)
    assert run.read_events("metric") == [
        {"time": rows[2]["time"], "kind": "metric", "stage": "sft", "step": 3}
        | {"sft/train_loss": 1.5, "sft/learning_rate": 1e-4}
    ]
    assert rows[1] | {"time": 0} == {
        "time": 0,
        "kind": "progress",
        "stage": "sft",
        "done": 3,
        "total": 10,
    }
    with pytest.raises(ValueError, match="'bogus'"):
        run.log_event("bogus")
    with pytest.raises(ValueError, match="step"):
        run.log_metrics("sft", 1, {"step": 2})


def test_status_round_trip(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert run.read_status() is None and not run.is_running()
    run.set_status("grpo", "running", step=4, arm="sft_grpo")
    status = run.read_status()
    assert status["stage"] == "grpo" and status["state"] == "running" and status["step"] == 4
    assert status["arm"] == "sft_grpo" and status["pid"] == os.getpid()
    assert isinstance(status["updated"], float)
    assert run.is_running()  # this very process
    run.set_status("grpo", "done")
    assert run.read_status()["step"] is None and not run.is_running()
    with pytest.raises(ValueError, match="'sleeping'"):
        run.set_status("grpo", "sleeping")


def test_list_runs(tmp_path):
    RunDir(tmp_path / "b").create().set_status("sample", "running")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recipe.yaml").write_text("run: {}\n")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert [r.name for r in list_runs(tmp_path)] == ["a", "b"]
    assert list_runs(tmp_path / "missing") == []


# --- metric names -------------------------------------------------------------------------------


def test_metric_names_unique_and_namespaced():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names)) == len(BY_NAME)
    assert all(m.name.count("/") >= 1 and m.label and m.meaning for m in METRICS)
    for m in METRICS:
        format(1.5, m.fmt)  # a valid format spec


def test_metric_lookup():
    assert metric("grpo/frac_reward_zero_std").label == "zero-std groups"
    acc = metric("eval/countdown-4/accuracy")
    assert isinstance(acc, Metric) and acc.name == "eval/countdown-4/accuracy"
    assert "countdown-4" in acc.label
    assert metric("eval/multiplication/pass_at_k").fmt == ".3f"
    assert metric("grpo/kl").format(None) == "-"
    assert is_metric("sft/train_loss") and not is_metric("eval/countdown-4/nope")
    with pytest.raises(KeyError, match="grpo/rewrd.*grpo/reward"):
        metric("grpo/rewrd")
    assert [m.name for m in stage_metrics("sft")][0] == "sft/train_loss"


def test_stdlib_modules_never_import_mlx():
    code = (
        "import sys; import sf_mlx.records, sf_mlx.rundir, sf_mlx.config, sf_mlx.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'numpy')]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_run_directory_is_written_by_one_process_at_a_time(tmp_path):
    """A second process is refused in one line; the lock dies with its holder, even by kill -9."""
    import signal

    from sf_mlx.rundir import RunDir, RunDirBusy

    run = RunDir(tmp_path / "run").create()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sf_mlx.rundir import RunDir\n"
            f"with RunDir({str(run.path)!r}).lock():\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunDirBusy, match=f"in use by another sf-mlx process \\(pid {holder.pid}\\)"
        ):
            with run.lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run.lock():  # free again once the holder is gone
        with run.lock():  # and nested use in one process is free
            assert (run.path / ".lock").read_text() == str(os.getpid())


def test_progress_and_metrics_keep_the_status_step_and_time_current(tmp_path):
    from sf_mlx.rundir import RunDir

    run = RunDir(tmp_path / "run").create()
    run.set_status("sample", "running")
    first = run.read_status()
    assert first["step"] is None
    run.heartbeat("sample", 0, every=0.0)  # a fresh process may beat at once
    run.log_progress("sample", 5, 10)
    assert run.read_status()["step"] in (0, 5)
    run.heartbeat("sample", 7, every=0.0)
    now = run.read_status()
    assert now["step"] == 7 and now["updated"] >= first["updated"] and now["state"] == "running"
    run.heartbeat("sft", 9, every=0.0)  # not the running stage: no change
    assert run.read_status()["step"] == 7
    run.set_status("sample", "done")
    run.heartbeat("sample", 8, every=0.0)  # a finished stage stays as it ended
    assert run.read_status()["state"] == "done" and run.read_status()["step"] is None


def test_a_finished_file_with_a_cut_last_line_or_a_repeated_record_is_an_error(tmp_path):
    rows = [
        Sample(f"p/original/{i}", "p", "original", i, "r", None, False, 1, "stop", 0)
        for i in range(3)
    ]
    path = tmp_path / "samples.jsonl"
    write_jsonl_atomic(path, rows)
    whole = path.read_bytes()
    assert read_jsonl(path, Sample, complete=True) == rows

    path.write_bytes(whole[:-5])  # damaged after its stage finished
    assert read_jsonl(path, Sample) == rows[:2]  # a live reader waits for the line
    with pytest.raises(ValueError, match=r"samples.jsonl:3: the last line is cut off"):
        read_jsonl(path, Sample, complete=True)

    path.write_bytes(whole + whole.splitlines(keepends=True)[1])  # a line twice
    with pytest.raises(ValueError, match=r":4: sample_id 'p/original/1' is also on line 2"):
        read_jsonl(path, Sample)
