"""Data parallelism over `mx.distributed`: two local ranks on the ring backend (loopback only,
started with `mlx.launch` as a user would) compute what one rank computes.

- the collectives sf-mlx uses (gather, broadcast, agreement check, writer election);
- `countdown-tiny` end to end on 2 ranks against the same recipe on 1 rank: the same sample,
  reflection and evaluation records (same ids, none lost, none twice), and SFT and GRPO weights
  equal to float tolerance;
- a rank killed mid-stage leaves a run that a rerun on 1 rank finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sf_mlx.pipeline import open_run, run_stage
from sf_mlx.records import EvalResult, Reflection, Sample
from sf_mlx.rundir import read_jsonl

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, timeout: float, wait: bool = True):
    """`mlx.launch -n 2 --backend ring ARGS` in its own process group."""
    # each rank listens on its own port from here on; a free one avoids a busy default
    cmd = [
        str(Path(sys.executable).with_name("mlx.launch")),
        "-n",
        "2",
        "--backend",
        "ring",
        "--starting-port",
        str(_free_port()),
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not wait:
        return proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"2-rank run timed out:\n{out.decode()[-3000:]}") from None
    return proc.returncode, out.decode()


def test_collectives_on_two_ranks(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from pathlib import Path
            from sf_mlx import distributed as dist
            import mlx.core as mx

            out = Path(sys.argv[1])
            r = dist.rank()
            result = {
                "size": dist.size(),
                "gathered": dist.all_gather_objects({"rank": r, "text": "é" * (r + 2)}),
                "broadcast": dist.broadcast_object(f"from {r}"),
                "sums": dist.all_sum(mx.array([1.0, float(r)])).tolist(),
                "max": dist.max_scalar(float(r)),
                "share": dist.my_share(5),
                "writer": dist.elect_writer(out),
            }
            try:
                dist.same_on_every_rank("the probe value", r)
            except ValueError as e:
                result["disagree"] = str(e)
            dist.same_on_every_rank("a shared value", 7)
            (out / f"rank{r}.json").write_text(json.dumps(result))
            """
        )
    )
    code, log = launch([sys.executable, str(script), str(tmp_path)], tmp_path, timeout=120)
    assert code == 0, log
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r, res in enumerate((r0, r1)):
        assert res["size"] == 2
        assert res["gathered"] == [{"rank": 0, "text": "éé"}, {"rank": 1, "text": "ééé"}]
        assert res["broadcast"] == "from 0"
        assert res["sums"] == [2.0, 1.0] and res["max"] == 1.0
        assert res["share"] == list(range(r, 5, 2))
        assert "rank(s) [1]" in res["disagree"]
    # one file system: rank 0 writes, rank 1 reads; the election leaves no marker behind
    assert (r0["writer"], r1["writer"]) == (True, False)
    assert not list(tmp_path.glob(".writer-*"))


# --------------------------------------------------------------------------- countdown-tiny


@pytest.fixture(scope="module")
def tiny_runs(tiny_run, tmp_path_factory):
    """countdown-tiny (its rollouts in 2 parts) on 1 rank (conftest) and on 2 ranks."""
    root = tmp_path_factory.mktemp("dist")
    code, log = launch(
        [sys.executable, "-m", "sf_mlx.cli", "recipe", "countdown-tiny", "--run-dir", "two"],
        root,
        timeout=900,
    )
    assert code == 0, log[-3000:]
    return tiny_run.path, root / "two", log


def _rows(path: Path, cls) -> list[dict]:
    return [r.to_dict() for r in read_jsonl(path, cls)]


def test_two_ranks_write_the_records_of_one(tiny_runs):
    one, two, _ = tiny_runs
    for name, cls, key in (
        ("samples.jsonl", Sample, "sample_id"),
        ("reflections.jsonl", Reflection, "reflection_id"),
    ):
        a, b = _rows(one / name, cls), _rows(two / name, cls)
        assert len({r[key] for r in b}) == len(b), f"{name}: a record twice"
        assert a == b, name
    # evaluation cells of models that no training touched are the same generations
    for cell in sorted((one / "eval" / "base").glob("*.jsonl")):
        assert _rows(cell, EvalResult) == _rows(two / "eval" / "base" / cell.name, EvalResult)
    cells = sorted(p.relative_to(one) for p in (one / "eval").rglob("*.jsonl"))
    assert cells == sorted(p.relative_to(two) for p in (two / "eval").rglob("*.jsonl"))
    assert (two / "done" / "report.json").exists() and (two / "report.md").exists()


def _weights(folder: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


def test_two_ranks_train_the_weights_of_one(tiny_runs):
    one, two, _ = tiny_runs
    for folder in ("sft/adapters", "star/adapters", "grpo/rl_only/adapters"):
        a, b = _weights(one / folder), _weights(two / folder)
        assert a.keys() == b.keys()
        moved = max(float(np.abs(a[k]).max()) for k in a)
        assert moved > 0
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=f"{folder}:{k}")


def test_only_rank_zero_writes_events_and_logs(tiny_runs):
    one, two, log = tiny_runs
    kinds = [json.loads(line)["kind"] for line in (two / "events.jsonl").read_text().splitlines()]
    ends = [
        json.loads(line)["stage"]
        for line in (two / "events.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "stage_end"
    ]
    assert len(ends) == len(set(ends)), "a stage ended twice: two ranks wrote events"
    assert kinds.count("stage_start") == kinds.count("stage_end")
    assert log.count("] problems ...") == 1, "every rank logged the plan"
    # the traffic of a step: gathered rollouts and summed gradients on 2 ranks, none on 1
    for run, moved in ((one, False), (two, True)):
        rows = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        comm = [r["grpo/comm_mb"] for r in rows if r["kind"] == "metric" and "grpo/comm_mb" in r]
        assert comm and all((c > 0) == moved for c in comm)


def _rank_pid(group: int, rank: int) -> int:
    """The pid of the Python process of `rank` in the launcher's process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, ProcessLookupError):
            continue
        if f"MLX_RANK={rank}".encode() in env and b"sf_mlx.cli" in cmd:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank} in process group {group}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_rank_killed_mid_stage_leaves_a_run_one_rank_finishes(tmp_path):
    proc = launch(
        [sys.executable, "-m", "sf_mlx.cli", "recipe", "countdown-tiny", "--run-dir", "run"]
        + ["--set", "sample.batch_size=4"],
        tmp_path,
        timeout=0,
        wait=False,
    )
    samples = tmp_path / "run" / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.05)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)  # rank 1 dies mid-stage
    try:
        proc.wait(timeout=120)  # the launcher stops the other rank and exits
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    while time.monotonic() < deadline + 60:  # until the ranks are gone (and their lock)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    n_before = samples.read_bytes().count(b"\n")
    assert 0 < n_before < 64, "the kill did not land inside the sample stage"
    run, recipe = open_run("countdown-tiny", ["sample.batch_size=4"], tmp_path / "run")
    run_stage(run, recipe, "sample")  # the stage the kill interrupted, on one rank
    rows = read_jsonl(run.samples, Sample)
    assert len(rows) == len({r.sample_id for r in rows}) == 64
    assert run.is_done("sample")
