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


if __name__ == "__main__":
    bench_matmul(tuple(int(a) for a in sys.argv[1:]) or (256, 512, 1024, 2048))
