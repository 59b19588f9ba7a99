"""`sf-mlx bench distributed`: one GRPO stage on 1 rank and on N local ranks (`mlx.launch`,
ring backend over loopback), from the same prepared run directory: wall time per step (rollout
and update), the bytes each rank put into collectives per step, the speed-up, and how far the
trained adapters are apart.

Local ranks share this machine's cores (sf_mlx/distributed.py gives each rank its share of BLAS
threads), so on a small CPU this measures the overhead of splitting the work, not a speed-up;
on a machine with a GPU per rank, or on several machines, the same command measures the
scaling.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARM = "rl_only"  # GRPO from the recipe's own model: the bench needs no SFT first


def _launcher(ranks: int) -> list[str]:
    if ranks == 1:
        return []
    with socket.socket() as s:  # a free port: the ring backend listens from here on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = Path(sys.executable).with_name("mlx.launch")
    return [str(launch), "-n", str(ranks), "--backend", "ring", "--starting-port", str(port)]


def _stage_rows(run: Path) -> tuple[float, list[dict]]:
    """(the stage's seconds, its metric rows) from events.jsonl."""
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    stage = f"grpo/{ARM}"
    secs = [e["seconds"] for e in events if e["kind"] == "stage_end" and e["stage"] == stage]
    rows = [e for e in events if e["kind"] == "metric" and e["stage"] == stage]
    return secs[-1], rows


def bench_distributed(
    recipe: str = "countdown-small",
    ranks: int = 2,
    steps: int = 3,
    sets=(),
    keep: Path | None = None,
) -> dict:
    """Run `grpo/rl_only` of `recipe` for `steps` steps on 1 and on `ranks` ranks; print and
    return the comparison."""
    import mlx.core as mx
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from sf_mlx.pipeline import open_run, run_stage

    console = Console()
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="sf-mlx-bench-dist-"))
    overrides = [
        *sets,
        f"grpo.steps={steps}",
        f"grpo.rollout_split={ranks}",
        f"grpo.checkpoint_every={steps}",
        f"evaluate.arms=[{ARM}]",
    ]
    prep, resolved = open_run(recipe, overrides, root / "prepared")
    for stage in ("problems", "base"):
        run_stage(prep, resolved, stage)
    cfg = resolved.grpo
    console.print(
        f"GRPO stage ({ARM}) of {recipe}: {steps} steps x {cfg.prompts_per_step} prompts x "
        f"{cfg.group_size} completions x <= {cfg.max_tokens} tokens, rollouts in "
        f"{cfg.rollout_split} parts, model {resolved.run.model}",
        highlight=False,
    )
    results = {}
    for n in (1, ranks):
        folder = root / f"ranks-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(prep.path, folder)
        cmd = _launcher(n) + [
            sys.executable, "-m", "sf_mlx.cli", "stage", f"grpo/{ARM}", "--run-dir", str(folder)
        ]  # fmt: skip
        tic = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - tic
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise RuntimeError(f"{n}-rank GRPO stage failed: " + " | ".join(tail))
        secs, rows = _stage_rows(folder)
        results[n] = {
            "wall_s": wall,
            "stage_s": secs,
            "rollout_s": float(np.mean([r["grpo/rollout_sec"] for r in rows])),
            "update_s": float(np.mean([r["grpo/update_sec"] for r in rows])),
            "comm_mb": float(np.mean([r["grpo/comm_mb"] for r in rows])),
            "adapters": folder / "grpo" / ARM / "adapters" / "adapters.safetensors",
        }
    a = mx.load(str(results[1]["adapters"]))
    b = mx.load(str(results[ranks]["adapters"]))
    diff = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    scale = max(float(mx.abs(a[k]).max()) for k in a)
    table = Table(title=f"GRPO stage on 1 vs {ranks} local ranks")
    for col in ("ranks", "stage s", "rollout s / step", "update s / step", "comm MB / step / rank"):
        table.add_column(col, justify="right")
    for n, r in results.items():
        table.add_row(
            str(n),
            f"{r['stage_s']:.1f}",
            f"{r['rollout_s']:.2f}",
            f"{r['update_s']:.2f}",
            f"{r['comm_mb']:.2f}",
        )
    console.print(table)
    one, many = results[1], results[ranks]
    console.print(
        f"{ranks} ranks / 1 rank: stage {one['stage_s'] / many['stage_s']:.2f}x, rollout "
        f"{one['rollout_s'] / many['rollout_s']:.2f}x, update "
        f"{one['update_s'] / many['update_s']:.2f}x as fast; adapters differ by at most "
        f"{diff:.1e} (largest weight {scale:.1e}); {os.cpu_count()} cores shared by the ranks",
        highlight=False,
    )
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"results": results, "max_weight_diff": diff}
