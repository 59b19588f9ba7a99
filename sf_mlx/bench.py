"""Float32 matmul benchmark: MLX CPU with the stock BLAS vs with the sf_mlx.blas fix, vs numpy.

Each condition runs in a fresh subprocess, since the fix only takes effect before mlx.core loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# The stock reference BLAS runs at ~5 GFLOP/s: 2048^3 alone would take ~4 s a rep, so cap it.
STOCK_MAX_SIZE = 1024
STOCK_MAX_REPS = 3
_CHILD = (
    "import json, sys\n"
    "from sf_mlx.blas import apply_blas_fix, matmul_bench\n"
    "st = apply_blas_fix()\n"
    "rows = matmul_bench(tuple(json.loads(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3]))\n"
    "print(json.dumps({'status': st.__dict__, 'rows': rows}))\n"
)


def run_condition(fix: bool, sizes: tuple[int, ...], reps: int, budget_s: float) -> dict:
    """Run matmul_bench in a fresh interpreter with SF_MLX_BLAS=on/off; its JSON result."""
    env = dict(os.environ, SF_MLX_BLAS="on" if fix else "off")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    args = [sys.executable, "-c", _CHILD, json.dumps(list(sizes)), str(reps), str(budget_s)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"matmul benchmark child (SF_MLX_BLAS={env['SF_MLX_BLAS']}, sizes={list(sizes)}) "
            f"exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return json.loads(lines[-1])


def bench_matmul(sizes: tuple[int, ...] = (256, 512, 1024, 2048), reps: int = 5) -> list[dict]:
    """Benchmark MLX matmul stock vs fixed (and numpy) per size; print a table, return its rows.

    The stock run skips sizes above STOCK_MAX_SIZE and does at most STOCK_MAX_REPS reps.
    """
    sizes = tuple(int(n) for n in sizes)
    fixed = run_condition(True, sizes, reps, budget_s=3.0)
    stock_sizes = tuple(n for n in sizes if n <= STOCK_MAX_SIZE)
    stock = (
        run_condition(False, stock_sizes, min(reps, STOCK_MAX_REPS), budget_s=1.5)
        if stock_sizes
        else {"status": None, "rows": []}
    )
    stock_by_size = {r["size"]: r["mlx_gflops"] for r in stock["rows"]}
    rows = []
    for r in fixed["rows"]:
        stock_g = stock_by_size.get(r["size"])
        rows.append(
            {
                "size": r["size"],
                "mlx_stock_gflops": stock_g,
                "mlx_fixed_gflops": r["mlx_gflops"],
                "numpy_gflops": r["numpy_gflops"],
                "fixed_vs_numpy": r["ratio"],
                "speedup": r["mlx_gflops"] / stock_g if stock_g else None,
            }
        )
    _print_table(rows, fixed["status"], stock["status"])
    return rows


def _print_table(rows: list[dict], fixed_status: dict, stock_status: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title="float32 matmul n x n x n, MLX CPU (GFLOP/s, best of reps)")
    for name in ("n", "MLX stock", "MLX fixed", "numpy", "fixed/numpy", "fixed/stock"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["size"]),
            fmt(r["mlx_stock_gflops"], ".1f"),
            fmt(r["mlx_fixed_gflops"], ".1f"),
            fmt(r["numpy_gflops"], ".1f"),
            fmt(r["fixed_vs_numpy"], ".2f"),
            fmt(r["speedup"], ".0f") + ("x" if r["speedup"] else ""),
        )
    console = Console()
    console.print(table)
    console.print(
        f"fixed run: applied={fixed_status['applied']} source={fixed_status['source']!r} "
        f"({fixed_status['reason']})",
        highlight=False,
    )
    if stock_status is not None:
        console.print(
            f"stock run: applied={stock_status['applied']} ({stock_status['reason']}); "
            f"sizes > {STOCK_MAX_SIZE} skipped, at most {STOCK_MAX_REPS} reps",
            highlight=False,
        )


def bench_sampling(
    model: str = "builtin:small",
    n_prompts: int = 64,
    batch_size: int = 32,
    max_tokens: int = 128,
    rounds: int = 2,
    seed: int = 0,
) -> dict:
    """sf-mlx rollouts (token ids, text, logprobs, finish reason) vs `mlx_lm.batch_generate` on
    the same model, prompts, batch size and sampler; alternating rounds, best tokens/s of each."""
    import time

    from rich.console import Console
    from rich.table import Table

    from sf_mlx import model as model_io
    from sf_mlx.tasks import get_task

    m, tok = model_io.load(model)
    problems = get_task("countdown").make_problems(
        n_prompts, seed, num_args=3, max_number=10, min_target=10, max_target=50
    )
    prompts = [model_io.chat_prompt(tok, p.question) for p in problems]
    params = model_io.SamplingParams(max_tokens=max_tokens)

    def ours() -> int:
        gens = model_io.generate(m, tok, prompts, params, seed=seed, batch_size=batch_size)
        # the EOS token was decoded too (mlx_lm counts it) though it is not in `tokens`
        return sum(len(g.tokens) + (g.finish_reason == "stop") for g in gens)

    def mlx_lm_batch() -> int:
        import mlx.core as mx
        from mlx_lm import batch_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        mx.random.seed(seed)
        sampler = make_sampler(params.temperature, top_p=params.top_p, top_k=params.top_k)
        procs = make_logits_processors(repetition_penalty=params.repetition_penalty)
        resp = batch_generate(
            m,
            tok,
            prompts,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=procs,
            completion_batch_size=batch_size,
            prefill_batch_size=min(batch_size, 8),
        )
        return int(resp.stats.generation_tokens)

    runners = {"sf-mlx generate": ours, "mlx_lm.batch_generate": mlx_lm_batch}
    best: dict[str, float] = {}
    ours(), mlx_lm_batch()  # warm-up: compile and allocate once for both
    for _ in range(rounds):
        for name, fn in runners.items():
            tic = time.perf_counter()
            n_tokens = fn()
            tps = n_tokens / (time.perf_counter() - tic)
            best[name] = max(best.get(name, 0.0), tps)
    ratio = best["sf-mlx generate"] / best["mlx_lm.batch_generate"]
    table = Table(
        title=f"sampling: {model}, {n_prompts} prompts, batch {batch_size}, "
        f"max {max_tokens} tokens (best of {rounds} rounds)"
    )
    table.add_column("engine")
    table.add_column("tokens/s", justify="right")
    for name, tps in best.items():
        table.add_row(name, f"{tps:.0f}")
    console = Console()
    console.print(table)
    console.print(
        f"sf-mlx / mlx_lm = {ratio:.2f} (sf-mlx also returns logprobs and finish reasons)"
    )
    return {"tokens_per_sec": best, "ratio": ratio}


def make_large_run(path: Path, rollouts: int, group_size: int = 8, steps: int = 100) -> Path:
    """A run directory holding `rollouts` synthetic GRPO rollouts (arm rl_only) for `bench tui`:
    the file sizes a long GRPO run leaves behind, not results."""
    from sf_mlx.records import Rollout
    from sf_mlx.rundir import RunDir, write_jsonl_atomic

    run = RunDir(path).create()
    per_step = max(1, rollouts // steps)
    for step in range(1, steps + 1):
        rows = []
        for i in range(per_step):
            group, index = divmod(i, group_size)
            rows.append(
                Rollout(
                    step=step,
                    group=group,
                    problem_id=f"countdown-3/s0/{group:05d}",
                    index=index,
                    completion=f"Step 1: 7 * 5 = 35\nStep 2: 35 + {i % 9} = {35 + i % 9}\n"
                    f"<answer>7 * 5 + {i % 9}</answer>",
                    reward=float(i % 3 == 0),
                    advantage=0.0,
                    extracted=f"7 * 5 + {i % 9}",
                    num_tokens=40 + i % 50,
                    truncated=False,
                    arm="rl_only",
                )
            )
        write_jsonl_atomic(run.grpo_dir("rl_only") / "rollouts" / f"step_{step}.jsonl", rows)
    return path


def bench_tui(rollouts: int = 100_000) -> dict:
    """Open a run with `rollouts` GRPO rollouts in the trace browser (headless Textual app):
    time until the rows are shown, and how long the help key takes while the rollouts load
    compared with the same key once they are loaded (the ratio is the slowdown a user feels),
    with the records parsed in the app's reader process and, for comparison, in a thread."""
    import asyncio
    import tempfile
    import time

    from rich.console import Console

    from sf_mlx.rundir import RunDir
    from tui.app import SfMlxApp
    from tui.browser import BrowserScreen
    from tui.help import HelpScreen
    from tui.load import load_items
    from tui.reader import RecordReader

    out: dict = {"rollouts": rollouts}
    with tempfile.TemporaryDirectory() as tmp:
        run_path = make_large_run(Path(tmp) / "large", rollouts)
        tic = time.perf_counter()
        loaded = load_items(RunDir(run_path), "rollouts")
        out["read_s"] = time.perf_counter() - tic
        out["items"] = len(loaded.items)
        del loaded

        async def drive(processes: bool) -> dict:
            res: dict = {}
            app = SfMlxApp(run_path, reader=RecordReader(processes=processes))
            async with app.run_test(size=(120, 36)) as pilot:
                await app.workers.wait_for_complete()
                await pilot.pause()
                app.open_run(RunDir(run_path), "traces")
                for _ in range(100):
                    await pilot.pause(0.02)
                    if isinstance(app.screen, BrowserScreen):
                        break
                screen = app.screen
                if not isinstance(screen, BrowserScreen):
                    raise RuntimeError(f"the trace browser did not open (on {screen!r})")
                while screen.busy:  # the samples (none here) load first
                    await pilot.pause(0.05)
                tic = time.perf_counter()
                screen.set_kind("rollouts")
                await pilot.press("question_mark")  # while the reader reads
                res["key_loading_s"] = time.perf_counter() - tic
                res["help_during_load"] = isinstance(app.screen, HelpScreen) and screen.busy
                await pilot.press("escape")
                while screen.busy or screen.matches == 0:
                    await pilot.pause(0.05)
                res["shown_s"] = time.perf_counter() - tic
                res["matches"] = screen.matches
                await pilot.pause(0.2)
                tic = time.perf_counter()
                await pilot.press("question_mark")  # the same key with nothing loading
                res["key_idle_s"] = time.perf_counter() - tic
                await pilot.press("escape")
            res["key_ratio"] = res["key_loading_s"] / res["key_idle_s"]
            return res

        out["process"] = asyncio.run(drive(processes=True))
        out["thread"] = asyncio.run(drive(processes=False))
    console = Console()
    console.print(
        f"{out['items']} rollouts, parsed in {out['read_s']:.2f} s when timed alone. "
        "Trace browser opening them; the help key pressed during the read vs once loaded:"
    )
    for name, where in (("process", "in the reader process (the app)"), ("thread", "in a thread")):
        r = out[name]
        during = "during the read" if r["help_during_load"] else "after the read had finished"
        console.print(
            f"  parsed {where}: first rows after {r['shown_s']:.2f} s; key {during} "
            f"{r['key_loading_s'] * 1000:.0f} ms, once loaded {r['key_idle_s'] * 1000:.0f} ms: "
            f"{r['key_ratio']:.2f}x"
        )
    return out


if __name__ == "__main__":
    bench_matmul(tuple(int(a) for a in sys.argv[1:]) or (256, 512, 1024, 2048))
