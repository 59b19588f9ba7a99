"""Fast MLX CPU matmul on Linux: bind libmlx's cblas_* imports to a real OpenBLAS before mlx loads.

Call apply_blas_fix() before mlx.core is first imported; set SF_MLX_BLAS=off (or 0, stock) to skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Why: the Linux mlx[cpu] wheel's libmlx.so imports cblas_sgemm/dgemm/cgemm and resolves them to
# a bundled reference BLAS (mlx_cpu.libs/libblas-*.so, ~5 GFLOP/s). The dynamic linker looks in the
# global scope first, so a library exporting those names that is loaded RTLD_GLOBAL *before*
# mlx.core wins. numpy ships an ILP64 OpenBLAS with prefixed names (scipy_cblas_sgemm64_), so the
# C shim sf_mlx/_blas_shim.c exports the LP64 names and forwards to it. Fallback: a system
# libopenblas.so.0 (LP64, unprefixed names) loaded RTLD_GLOBAL as is.

ENV_VAR = "SF_MLX_BLAS"
_OFF_VALUES = frozenset({"off", "0", "stock", "false", "no"})
_MLX_FIRST = "mlx.core imported before sf_mlx.blas; fix not applied"
_NUMPY_OPENBLAS_GLOBS = ("libscipy_openblas64_*.so*", "libopenblas64_*.so*")
_SYSTEM_OPENBLAS_PATHS = (
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
_GEMMS = ("cblas_sgemm", "cblas_dgemm", "cblas_cgemm")


@dataclass(frozen=True)
class BlasStatus:
    """What apply_blas_fix() did: applied, which BLAS MLX now uses (source), and why."""

    applied: bool
    source: str
    reason: str


_status = BlasStatus(False, "stock", "apply_blas_fix() has not run")
_attempted = False
_loaded: list[ctypes.CDLL] = []  # keep the libraries referenced for the life of the process
_openblas: list[ctypes.CDLL] = []  # numpy's OpenBLAS once bound, for its thread-count calls


def blas_status() -> BlasStatus:
    """The status recorded by the last apply_blas_fix() (or 'has not run')."""
    return _status


def fix_disabled() -> bool:
    """True when SF_MLX_BLAS asks for the stock BLAS."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _OFF_VALUES


def numpy_openblas_paths() -> list[Path]:
    """ILP64 OpenBLAS libraries in numpy's wheel (numpy.libs/), found without importing numpy."""
    try:
        spec = importlib.util.find_spec("numpy")
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    found: list[Path] = []
    for pkg_dir in dirs:
        libs = Path(pkg_dir).parent / "numpy.libs"
        for pattern in _NUMPY_OPENBLAS_GLOBS:
            found.extend(sorted(libs.glob(pattern)))
    return found


def shim_path() -> Path | None:
    """The compiled sf_mlx._blas_shim extension, or None when it was not built."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_blas_shim{suffix}"
        if candidate.is_file():
            return candidate
    try:
        spec = importlib.util.find_spec(f"{__package__ or 'sf_mlx'}._blas_shim")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


def system_openblas_paths() -> list[str]:
    """Candidate LP64 system OpenBLAS libraries (e.g. Debian's libopenblas.so.0)."""
    arch = os.uname().machine
    candidates = [p.format(arch=arch) for p in _SYSTEM_OPENBLAS_PATHS]
    found = [p for p in candidates if os.path.exists(p)]
    name = ctypes.util.find_library("openblas")
    if name and name not in found:
        found.append(name)
    return found


def _try_numpy_openblas() -> tuple[BlasStatus | None, str]:
    """Bind via the shim to numpy's OpenBLAS; (status, '') on success, (None, why) otherwise."""
    libs = numpy_openblas_paths()
    if not libs:
        return None, "no numpy.libs/libscipy_openblas64_*.so (numpy missing or not a wheel)"
    shim = shim_path()
    if shim is None:
        return None, "sf_mlx._blas_shim not built (reinstall: pip install -e . --no-deps)"
    errors = []
    for lib in libs:
        try:
            handle = ctypes.CDLL(str(shim), mode=os.RTLD_LOCAL)
            init = handle.sfmlx_blas_init
        except (OSError, AttributeError) as exc:
            return None, f"cannot load shim {shim}: {exc}"
        init.argtypes = [ctypes.c_char_p]
        init.restype = ctypes.c_int
        rc = init(os.fsencode(lib))
        if rc != 0:
            what = "dlopen failed" if rc == 1 else "gemm symbols missing"
            errors.append(f"sfmlx_blas_init({lib.name}) returned {rc} ({what})")
            continue
        # Promote the already-loaded shim to the global scope, now that it forwards for real.
        _loaded.append(ctypes.CDLL(str(shim), mode=os.RTLD_GLOBAL))
        _openblas.append(ctypes.CDLL(str(lib), mode=os.RTLD_LOCAL))  # same handle: thread control
        source = f"numpy {lib.name} via sf_mlx._blas_shim"
        return BlasStatus(True, source, "cblas_*gemm bound before mlx.core import"), ""
    return None, "; ".join(errors)


def _try_system_openblas() -> tuple[BlasStatus | None, str]:
    """Load a system LP64 libopenblas RTLD_GLOBAL; (status, '') on success, (None, why)."""
    paths = system_openblas_paths()
    if not paths:
        return None, "no system libopenblas.so.0"
    errors = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        except OSError as exc:
            errors.append(f"cannot load {path}: {exc}")
            continue
        missing = [name for name in _GEMMS if not hasattr(lib, name)]
        if missing:
            errors.append(f"{path} lacks {', '.join(missing)}")
            continue
        _loaded.append(ctypes.CDLL(path, mode=os.RTLD_GLOBAL))
        return BlasStatus(True, f"system OpenBLAS {path}", "loaded RTLD_GLOBAL before mlx.core"), ""
    return None, "; ".join(errors)


def apply_blas_fix() -> BlasStatus:
    """Bind MLX's CPU gemm to OpenBLAS if possible (Linux, before mlx.core import); idempotent."""
    global _status, _attempted
    if _attempted:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus(False, "stock", f"platform {sys.platform!r}: the fix is Linux-only")
    elif fix_disabled():
        value = os.environ.get(ENV_VAR, "")
        _status = BlasStatus(False, "stock", f"disabled by {ENV_VAR}={value}")
    elif "mlx.core" in sys.modules:
        _status = BlasStatus(False, "stock", _MLX_FIRST)
    else:
        status, why_numpy = _try_numpy_openblas()
        why_system = ""
        if status is None:
            status, why_system = _try_system_openblas()
        if status is None:
            status = BlasStatus(False, "stock", f"{why_numpy}; {why_system}")
        _status = status
    _attempted = True
    return _status


def _best_seconds(fn: Callable[[], object], reps: int, budget_s: float) -> float:
    """Best wall time of fn over up to reps runs (after one warm-up), stopping after budget_s."""
    fn()
    best = float("inf")
    spent = 0.0
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > budget_s:
            break
    return best


def mlx_matmul_gflops(n: int, reps: int = 5, budget_s: float = 3.0) -> float:
    """Best-of-reps GFLOP/s of an n x n x n float32 matmul on MLX's CPU stream."""
    import mlx.core as mx

    a = mx.random.normal((n, n), dtype=mx.float32, stream=mx.cpu)
    b = mx.random.normal((n, n), dtype=mx.float32, stream=mx.cpu)
    mx.eval(a, b)
    seconds = _best_seconds(lambda: mx.eval(mx.matmul(a, b, stream=mx.cpu)), reps, budget_s)
    return 2.0 * n**3 / seconds / 1e9


def numpy_matmul_gflops(n: int, reps: int = 5, budget_s: float = 3.0) -> float:
    """Best-of-reps GFLOP/s of an n x n x n float32 matmul in numpy."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: a @ b, reps, budget_s)
    return 2.0 * n**3 / seconds / 1e9


def verify_blas(min_gflops: float = 30.0) -> float:
    """Measure MLX CPU float32 matmul (512^3) in GFLOP/s; warn on stderr if below min_gflops."""
    gflops = mlx_matmul_gflops(512, reps=3, budget_s=2.0)
    if gflops < min_gflops:
        st = _status
        # Multi-threaded OpenBLAS crawls when other processes hold the cores (measured: 2 threads
        # at ~11 GFLOP/s vs 1 thread at ~150 on a busy 2-core VM).
        hint = "; CPU busy? try OPENBLAS_NUM_THREADS=1" if st.applied else ""
        print(
            f"sf-mlx warning: MLX CPU matmul runs at {gflops:.1f} GFLOP/s (< {min_gflops:.0f}); "
            f"BLAS fix applied={st.applied}, source={st.source!r}, reason={st.reason!r}{hint}",
            file=sys.stderr,
        )
    return gflops


def ensure_fast_blas(min_gflops: float = 30.0) -> BlasStatus:
    """Apply the fix; warn (one stderr line) if it failed unasked on Linux or MLX is still slow."""
    status = apply_blas_fix()
    if status.applied:
        verify_blas(min_gflops)
    elif sys.platform.startswith("linux") and not fix_disabled():
        print(
            f"sf-mlx warning: MLX CPU matmul uses the slow stock BLAS ({status.reason}); "
            f"expect ~50x slower training",
            file=sys.stderr,
        )
    return status


def matmul_bench(
    sizes: tuple[int, ...] = (256, 512, 1024, 2048), reps: int = 5, budget_s: float = 3.0
) -> list[dict]:
    """Per size: MLX and numpy float32 matmul GFLOP/s (best of reps) in this process, and ratio."""
    rows = []
    for n in sizes:
        mlx_g = mlx_matmul_gflops(n, reps, budget_s)
        np_g = numpy_matmul_gflops(n, reps, budget_s)
        rows.append({"size": n, "mlx_gflops": mlx_g, "numpy_gflops": np_g, "ratio": mlx_g / np_g})
    return rows


def _thread_fns() -> tuple[Callable[..., int], Callable[..., None]] | None:
    if not _openblas:
        return None
    lib = _openblas[0]
    get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    put = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get is None or put is None:
        return None
    get.restype = ctypes.c_int
    put.argtypes = [ctypes.c_int]
    return get, put


def set_blas_threads(n: int) -> bool:
    """Use `n` OpenBLAS threads from now on; False when the fix is not applied."""
    fns = _thread_fns()
    if fns is None:
        return False
    fns[1](n)
    return True


@contextlib.contextmanager
def blas_threads(n: int):
    """Run a block with `n` OpenBLAS threads (no-op when the fix is not applied).

    Decoding multiplies tiny matrices (a batch of single tokens). On an idle 2-core machine two
    threads decode faster; on a loaded one spinning OpenBLAS threads slow decoding ~7x, and one
    thread is far better (`SF_MLX_DECODE_THREADS=1`).
    """
    fns = _thread_fns()
    if fns is None:
        yield
        return
    get, put = fns
    old = get()
    put(n)
    try:
        yield
    finally:
        put(old)
