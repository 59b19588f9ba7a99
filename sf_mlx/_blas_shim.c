/* LP64 cblas_{s,d,c}gemm forwarding to the ILP64 OpenBLAS that numpy bundles (see sf_mlx/blas.py).
 *
 * Built by setuptools as the extension "sf_mlx._blas_shim" but never imported: blas.py loads it
 * with ctypes, calls sfmlx_blas_init(path) and, only when that returned 0, reloads it RTLD_GLOBAL
 * before mlx.core is imported, so libmlx.so binds its cblas_* imports here instead of to the slow
 * reference BLAS bundled with the mlx[cpu] wheel. Should a gemm run before a successful init
 * anyway, a plain (slow but correct) column-major reference loop computes it: no abort, no junk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <complex.h>
#include <dlfcn.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))
enum { ROW_MAJOR = 101, NO_TRANS = 111, CONJ_TRANS = 113 };
typedef int64_t i64;
typedef float _Complex cfloat;

#define GEMM_ARGS(T, S) int, int, int, i64, i64, i64, S, const T *, i64, const T *, i64, S, T *, i64
typedef void (*sgemm64_t)(GEMM_ARGS(float, float));
typedef void (*dgemm64_t)(GEMM_ARGS(double, double));
typedef void (*cgemm64_t)(GEMM_ARGS(cfloat, const void *));
static sgemm64_t p_sgemm;
static dgemm64_t p_dgemm;
static cgemm64_t p_cgemm;

#define NOCONJ(x) (x)
/* op(X)(r, c) of a column-major X whose op is `t` (NoTrans, Trans or ConjTrans). */
#define OP(X, t, r, c, ld, CJ) \
    ((t) == NO_TRANS ? X[(r) + (i64)(c) * (ld)] \
                     : ((t) == CONJ_TRANS ? CJ(X[(c) + (i64)(r) * (ld)]) : X[(c) + (i64)(r) * (ld)]))
#define REF_GEMM(NAME, T, CJ)                                                                   \
    static void NAME(int ta, int tb, i64 m, i64 n, i64 k, T al, const T *a, i64 lda,           \
                     const T *b, i64 ldb, T be, T *c, i64 ldc) {                               \
        for (i64 j = 0; j < n; j++)                                                            \
            for (i64 i = 0; i < m; i++) {                                                      \
                T acc = 0;                                                                     \
                for (i64 l = 0; l < k; l++)                                                    \
                    acc += OP(a, ta, i, l, lda, CJ) * OP(b, tb, l, j, ldb, CJ);                \
                c[i + j * ldc] = al * acc + (be == (T)0 ? (T)0 : be * c[i + j * ldc]);         \
            }                                                                                  \
    }
REF_GEMM(ref_sgemm, float, NOCONJ)
REF_GEMM(ref_dgemm, double, NOCONJ)
REF_GEMM(ref_cgemm, cfloat, conjf)

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands. */
#define SHIM(NAME, PTR, REF, T, S, AL, BE)                                                      \
    EXPORT void NAME(int o, int ta, int tb, int m, int n, int k, S al, const T *a, int lda,     \
                     const T *b, int ldb, S be, T *c, int ldc) {                               \
        if (PTR) { PTR(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); return; }          \
        if (o == ROW_MAJOR) REF(tb, ta, n, m, k, AL, b, ldb, a, lda, BE, c, ldc);              \
        else REF(ta, tb, m, n, k, AL, a, lda, b, ldb, BE, c, ldc);                             \
    }
SHIM(cblas_sgemm, p_sgemm, ref_sgemm, float, float, al, be)
SHIM(cblas_dgemm, p_dgemm, ref_dgemm, double, double, al, be)
SHIM(cblas_cgemm, p_cgemm, ref_cgemm, cfloat, const void *, *(const cfloat *)al,
     *(const cfloat *)be)

static void *sym(void *h, const char *a, const char *b) {
    void *p = dlsym(h, a);
    return p ? p : dlsym(h, b);
}

/* 0: all three gemms resolved; 1: dlopen failed; 2: a symbol is missing (nothing is changed). */
EXPORT int sfmlx_blas_init(const char *openblas_path) {
    void *h = dlopen(openblas_path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return 1;
    void *s = sym(h, "scipy_cblas_sgemm64_", "cblas_sgemm64_");
    void *d = sym(h, "scipy_cblas_dgemm64_", "cblas_dgemm64_");
    void *c = sym(h, "scipy_cblas_cgemm64_", "cblas_cgemm64_");
    if (!s || !d || !c) { dlclose(h); return 2; }
    p_sgemm = (sgemm64_t)s;
    p_dgemm = (dgemm64_t)d;
    p_cgemm = (cgemm64_t)c;
    return 0;
}

/* Empty module so that setuptools' build_ext (which expects PyInit_<name>) is satisfied. */
static struct PyModuleDef shim_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_blas_shim", .m_size = -1};
PyMODINIT_FUNC PyInit__blas_shim(void) { return PyModule_Create(&shim_module); }
