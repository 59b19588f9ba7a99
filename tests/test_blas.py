"""sf_mlx.blas: MLX CPU matmul bound to OpenBLAS (fails loudly if the fix is lost); the C shim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only fix")


def run_child(code: str, **env_vars: str) -> dict:
    """Run code in a fresh interpreter (mlx.core not yet imported); parse its last stdout line."""
    env = dict(os.environ, **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


FIX_ON_CHILD = """
import json, time
from sf_mlx.blas import apply_blas_fix
st = apply_blas_fix()
import mlx.core as mx
import numpy as np

n = 1024
a = mx.random.normal((n, n), stream=mx.cpu)
b = mx.random.normal((n, n), stream=mx.cpu)
mx.eval(a, b)
an, bn = np.array(a), np.array(b)

def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

run_mlx = lambda: mx.eval(mx.matmul(a, b, stream=mx.cpu))
run_np = lambda: an @ bn
run_mlx(); run_np()
# Interleaved best-of-N: a load spike on a busy machine hits both sides alike.
best_mlx = best_np = float("inf")
stop = time.perf_counter() + 5.0
for i in range(8):
    best_mlx = min(best_mlx, timed(run_mlx))
    best_np = min(best_np, timed(run_np))
    if i >= 2 and time.perf_counter() > stop:
        break

# Correctness through the shim: transposed operands, float64 (dgemm), complex64 (cgemm).
rng = np.random.default_rng(0)
errs = {}
x, y = rng.standard_normal((70, 50)), rng.standard_normal((70, 30))
for name, dt, mdt in (("f32", np.float32, mx.float32), ("f64", np.float64, mx.float64)):
    xm, ym = mx.array(x.astype(dt), dtype=mdt), mx.array(y.astype(dt), dtype=mdt)
    got = np.array(mx.matmul(xm.T, ym, stream=mx.cpu))
    ref = x.astype(dt).T @ y.astype(dt)
    errs[name] = float(np.abs(got - ref).max() / np.abs(ref).max())
xc = (x + 1j * rng.standard_normal(x.shape)).astype(np.complex64)
yc = (y + 1j * rng.standard_normal(y.shape)).astype(np.complex64)
got = np.array(mx.matmul(mx.array(yc).T, mx.array(xc), stream=mx.cpu))
errs["c64"] = float(np.abs(got - yc.T @ xc).max() / np.abs(yc.T @ xc).max())
flop = 2.0 * n**3
print(json.dumps({"status": st.__dict__, "mlx": flop / best_mlx / 1e9,
                  "numpy": flop / best_np / 1e9, "errs": errs}))
"""


@linux_only
def test_fix_makes_mlx_matmul_as_fast_as_numpy() -> None:
    out = run_child(FIX_ON_CHILD, SF_MLX_BLAS="on")
    st = out["status"]
    assert st["applied"], (
        f"BLAS fix not applied: {st['reason']} (build the shim: pip install -e . --no-deps)"
    )
    mlx_g, np_g = out["mlx"], out["numpy"]
    assert mlx_g * 3 >= np_g, (
        f"MLX 1024^3 float32 matmul at {mlx_g:.1f} GFLOP/s vs numpy {np_g:.1f} GFLOP/s in the "
        f"same process (ratio {mlx_g / np_g:.3f} < 1/3): the BLAS fix is lost; status={st}"
    )
    for name, err in out["errs"].items():
        tol = 1e-12 if name == "f64" else 1e-5
        assert err < tol, f"{name} matmul through the shim: relative error {err:.2e} >= {tol}"


STATUS_CHILD = """
import json, sys
{pre}
from sf_mlx.blas import apply_blas_fix, blas_status
st = apply_blas_fix()
assert apply_blas_fix() is st is blas_status()
print(json.dumps(st.__dict__))
"""


@linux_only
def test_env_off_leaves_stock_blas() -> None:
    st = run_child(STATUS_CHILD.format(pre=""), SF_MLX_BLAS="off")
    assert st["applied"] is False, f"SF_MLX_BLAS=off but status={st}"
    assert st["reason"] == "disabled by SF_MLX_BLAS=off", f"status={st}"


@linux_only
def test_mlx_imported_first_is_reported() -> None:
    st = run_child(STATUS_CHILD.format(pre="import mlx.core"), SF_MLX_BLAS="on")
    assert st["applied"] is False, f"mlx.core came first but status={st}"
    assert st["reason"] == "mlx.core imported before sf_mlx.blas; fix not applied", f"{st}"


def test_import_and_apply_do_not_import_mlx_or_numpy() -> None:
    code = (
        "import json, sys\n"
        "import sf_mlx.blas\n"
        "seen = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'numpy'))\n"
        "after_import = seen()\n"
        "sf_mlx.blas.apply_blas_fix()\n"
        "print(json.dumps([after_import, seen()]))\n"
    )
    after_import, after_apply = run_child(code)
    assert after_import == [], f"importing sf_mlx.blas imported {after_import}"
    assert after_apply == [], f"apply_blas_fix() imported {after_apply}"


SHIM_CHILD = """
import ctypes, json, os
import numpy as np
from sf_mlx.blas import numpy_openblas_paths, shim_path

lib = ctypes.CDLL(str(shim_path()), mode=os.RTLD_LOCAL)
rng = np.random.default_rng(1)
ROW, COL, NT, T, CT = 101, 102, 111, 112, 113
I, P = ctypes.c_int, ctypes.c_void_p

def store(m, order, pad=2):
    # Padded buffer holding logical matrix m in the given order; returns (buffer, ld).
    r, c = m.shape
    if order == ROW:
        buf = np.zeros((r, c + pad), m.dtype); buf[:, :c] = m
    else:
        buf = np.zeros((c, r + pad), m.dtype); buf[:, :r] = m.T
    return buf, buf.shape[1]

def load(buf, order, r, c):
    return buf[:, :c] if order == ROW else buf[:, :r].T

def stored_for(op_m, t):
    return op_m if t == NT else (op_m.T if t == T else op_m.conj().T)

def check_all():
    worst = 0.0
    for name, dt, scal in (("sgemm", np.float32, ctypes.c_float),
                           ("dgemm", np.float64, ctypes.c_double),
                           ("cgemm", np.complex64, None)):
        fn = getattr(lib, "cblas_" + name)
        s = P if scal is None else scal
        fn.argtypes = [I, I, I, I, I, I, s, P, I, P, I, s, P, I]
        fn.restype = None
        for order in (ROW, COL):
            for ta in (NT, T, CT):
                for tb in (NT, T, CT):
                    m, n, k = 5, 4, 3
                    def rnd(*shape):
                        x = rng.standard_normal(shape)
                        if dt == np.complex64:
                            x = x + 1j * rng.standard_normal(shape)
                        return x.astype(dt)
                    opa, opb, c0 = rnd(m, k), rnd(k, n), rnd(m, n)
                    al, be = dt(1.5), dt(-0.5)
                    if dt == np.complex64:
                        al, be = np.complex64(1.5 - 0.5j), np.complex64(-0.5 + 2j)
                    abuf, lda = store(stored_for(opa, ta), order)
                    bbuf, ldb = store(stored_for(opb, tb), order)
                    cbuf, ldc = store(c0, order)
                    if scal is None:
                        al_a, be_a = np.array([al]), np.array([be])
                        av, bv = al_a.ctypes.data, be_a.ctypes.data
                    else:
                        av, bv = al, be
                    fn(order, ta, tb, m, n, k, av, abuf.ctypes.data, lda, bbuf.ctypes.data,
                       ldb, bv, cbuf.ctypes.data, ldc)
                    want = al * (opa @ opb) + be * c0
                    got = load(cbuf, order, m, n)
                    worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    return worst

before = check_all()  # no init yet: the built-in reference loops
init = lib.sfmlx_blas_init
init.argtypes, init.restype = [ctypes.c_char_p], ctypes.c_int
rc_bad = init(b"/nonexistent/libopenblas.so")
rc = init(os.fsencode(numpy_openblas_paths()[0]))
print(json.dumps({"before": before, "rc_bad": rc_bad, "rc": rc, "after": check_all()}))
"""


@linux_only
def test_shim_gemm_semantics() -> None:
    from sf_mlx.blas import numpy_openblas_paths, shim_path

    if shim_path() is None or not numpy_openblas_paths():
        pytest.fail("shim not built or numpy has no bundled OpenBLAS (pip install -e . --no-deps)")
    out = run_child(SHIM_CHILD)
    assert out["rc_bad"] == 1, f"init on a missing library returned {out['rc_bad']}, not 1"
    assert out["rc"] == 0, f"init on numpy's OpenBLAS returned {out['rc']}"
    assert out["before"] < 1e-5, f"reference fallback gemm relative error {out['before']:.2e}"
    assert out["after"] < 1e-5, f"forwarded OpenBLAS gemm relative error {out['after']:.2e}"
