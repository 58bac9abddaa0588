/*
 * gemm.c — packed, register-blocked SGEMM for the reference CPU backend.
 *
 * C[M x N] = epi(A[M x K] * B[K x N]), C row-major. A (weights for conv, activations for Gemm) is
 * packed whole into MR-row panels ([tile][k][MR]) on every call (weights may have changed), or
 * once per weight set (cpu_sgemm_pack_a, prepared weights); either way a per-row scale of the
 * epilogue is multiplied into the packed rows, so the kernels never see it. B comes from a
 * strided matrix, an implicit im2col view of an image (the packer *is* im2col, no im2col matrix
 * is materialised), or rows at img + boff[k] (wide conv, 1x1 conv, Winograd) which the AVX-512
 * kernel reads in place without packing. Packed-B loop order is BLIS's jc / pc / ir / jr: one A
 * micro-panel (MR x kc) stays in L1 while the B block streams from L2; in-place B runs every M
 * tile over one NR panel while its rows are in L1. The micro-kernel keeps the MR x NR tile in
 * registers, starting from the row bias (a later K block starts from 0 and adds C), and applies
 * the rest of the epilogue (residual, Relu/Clip) before the single store of the tile.
 *
 * Micro-kernels: AVX-512 8x32 and AVX2+FMA 6x16 (x86-64, per-function target attributes, chosen
 * at plan time), NEON 8x8 on aarch64 and a GCC-vector-extension 4x8 everywhere else, each
 * compiled once per epilogue shape (epi_shape). The driver is instantiated once per ISA and shape
 * so its packers vectorise to that width and the micro-kernel call is direct.
 */
#include "cpu.h"
#include "cpuinfo.h"

#include <stdlib.h>
#include <string.h>

#if defined(__aarch64__)
#include <arm_neon.h>
#endif
#if defined(CPU_HAVE_X86)
#include <cpuid.h>
#include <immintrin.h>
#endif

#define CPU_MAX_MR 16
#define CPU_MAX_NR 32
#define KC_MAX 640
#define B_BLOCK_FLOATS (128 * 1024) /* 512 KB of packed B per block: half of L2 */

/* Epilogue shapes, one instantiation of every kernel each, chosen once per GEMM call. EPI_FULL
 * (a row scale that is not in the packed A, or a column bias): the accumulators start from zero
 * and the epilogue is acc * rs + rb + cb (+ res), max lo, min hi. Every other shape starts the
 * accumulators from the row bias, so only (+ res) and the clamp are left: EPI_NONE none of it,
 * EPI_LO the max (Relu), EPI_LOHI max and min (Clip). On K = 16 (the edge CNN's pw0) the full
 * epilogue was 4 FP ops per accumulator against 16 FMAs. */
enum { EPI_FULL, EPI_NONE, EPI_LO, EPI_LOHI };
#define EPI_HAS_LO(S) ((S) == EPI_FULL || (S) == EPI_LO || (S) == EPI_LOHI)
#define EPI_HAS_HI(S) ((S) == EPI_FULL || (S) == EPI_LOHI)

/* The shape of a call's epilogue; `acs` as cpu_sgemm's (a packed A carries no row scale of epi:
 * a scale there is applied by the kernel). */
static int epi_shape(const cpu_epi *epi, int64_t acs)
{
    if (!epi) return EPI_NONE;
    if ((epi->row_scale && acs == CPU_A_PACKED) || epi->col_bias) return EPI_FULL;
    if (epi->hi < __builtin_inff()) return EPI_LOHI;
    return epi->lo > -__builtin_inff() ? EPI_LO : EPI_NONE;
}

/* ---- portable micro-kernels ---------------------------------------------------------------- */

/* The kernel signatures, for the per-shape wrappers below. */
#define UK_PARAMS                                                                                  \
    int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int flags, const float *rs, \
        const float *rb, const float *cb, const float *res, int64_t ldr, float lo, float hi
#define UK_IND_PARAMS                                                                              \
    int64_t kc, const float *a, const float *b, const int64_t *boff, float *c, int64_t ldc,        \
        int flags, const float *rs, const float *rb, const float *cb, const float *res,            \
        int64_t ldr, float lo, float hi
#define UK_TAIL c, ldc, flags, rs, rb, cb, res, ldr, lo, hi


/* Scalar epilogue of shape S over a tile held in t[MR][NR] (C added first for a later K block):
 * shared by the portable kernels. */
static inline __attribute__((always_inline)) void
epi_store(const int S, const float *t, int mr, int nr, float *c, int64_t ldc, int flags,
          const float *rs, const float *rb, const float *cb, const float *res, int64_t ldr,
          float lo, float hi)
{
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        const float *ti = t + i * nr;
        const int load = flags & CPU_UK_LOAD;
        if (!(flags & CPU_UK_EPI)) {
            for (int j = 0; j < nr; j++) ci[j] = load ? ci[j] + ti[j] : ti[j];
            continue;
        }
        const float *ri = res ? res + i * ldr : NULL;
        for (int j = 0; j < nr; j++) {
            float y = load ? ci[j] + ti[j] : ti[j];
            if (S == EPI_FULL) y = y * rs[i] + rb[i] + cb[j];
            if (ri) y += ri[j];
            if (EPI_HAS_LO(S)) y = y < lo ? lo : y;
            if (EPI_HAS_HI(S)) y = y > hi ? hi : y;
            ci[j] = y;
        }
    }
}

#if defined(__aarch64__)
/* NEON 8x8: 16 accumulators of the 32 q registers (named, so none lives in memory). */
#define P_MR 8
#define P_NR 8
static inline __attribute__((always_inline)) void
uk_neon_impl(const int S, int64_t kc, const float *a, const float *b, const int64_t *boff,
             float *c, int64_t ldc, int flags, const float *rs, const float *rb, const float *cb,
             const float *res, int64_t ldr, float lo, float hi)
{
    const int r0 = S != EPI_FULL && !(flags & CPU_UK_LOAD); /* start from the row bias */
#define NROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define NDECL(i) float32x4_t c##i##0 = vdupq_n_f32(r0 ? rb[i] : 0.0f), c##i##1 = c##i##0;
    NROWS8(NDECL)
#undef NDECL
#pragma GCC unroll 4 /* as the x86 kernels: fewer loop branches per FMA */
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = boff ? b + boff[k] : b + P_NR * k;
        const float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4);
        const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
#define NFMA(i, av, lane)                                                                          \
    c##i##0 = vfmaq_laneq_f32(c##i##0, b0, av, lane);                                              \
    c##i##1 = vfmaq_laneq_f32(c##i##1, b1, av, lane);
        NFMA(0, a0, 0) NFMA(1, a0, 1) NFMA(2, a0, 2) NFMA(3, a0, 3)
        NFMA(4, a1, 0) NFMA(5, a1, 1) NFMA(6, a1, 2) NFMA(7, a1, 3)
#undef NFMA
        a += P_MR;
    }
    float t[P_MR * P_NR];
#define NST(i)                                                                                     \
    vst1q_f32(t + (i) * P_NR, c##i##0);                                                            \
    vst1q_f32(t + (i) * P_NR + 4, c##i##1);
    NROWS8(NST)
#undef NST
#undef NROWS8
    epi_store(S, t, P_MR, P_NR, c, ldc, flags, rs, rb, cb, res, ldr, lo, hi);
}
#define PORTABLE_SHAPE(sfx, S)                                                                     \
    static void uk_portable##sfx(UK_PARAMS) { uk_neon_impl(S, kc, a, b, NULL, UK_TAIL); }          \
    static void uk_portable_ind##sfx(UK_IND_PARAMS) { uk_neon_impl(S, kc, a, b, boff, UK_TAIL); }
#define KS_PORTABLE(sfx) uk_portable##sfx, uk_portable_ind##sfx, NULL, NULL, NULL
#else
/* GCC vector extensions, 4x8: compiles to SSE on plain x86-64 and to whatever 16-byte vectors
 * other targets have. */
#define P_MR 4
#define P_NR 8
typedef float v4f __attribute__((vector_size(16)));
static inline __attribute__((always_inline)) void
uk_vec_impl(const int S, int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
            int flags, const float *rs, const float *rb, const float *cb, const float *res,
            int64_t ldr, float lo, float hi)
{
    v4f acc[P_MR][2];
    const int r0 = S != EPI_FULL && !(flags & CPU_UK_LOAD); /* start from the row bias */
    for (int i = 0; i < P_MR; i++) {
        const float v = r0 ? rb[i] : 0.0f;
        acc[i][0] = acc[i][1] = (v4f){v, v, v, v};
    }
    for (int64_t k = 0; k < kc; k++) {
        v4f b0, b1;
        memcpy(&b0, b, sizeof b0);
        memcpy(&b1, b + 4, sizeof b1);
        for (int i = 0; i < P_MR; i++) {
            const v4f ai = (v4f){a[i], a[i], a[i], a[i]};
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
        a += P_MR;
        b += P_NR;
    }
    float t[P_MR * P_NR];
    for (int i = 0; i < P_MR; i++) {
        memcpy(t + i * P_NR, &acc[i][0], sizeof acc[i][0]);
        memcpy(t + i * P_NR + 4, &acc[i][1], sizeof acc[i][1]);
    }
    epi_store(S, t, P_MR, P_NR, c, ldc, flags, rs, rb, cb, res, ldr, lo, hi);
}
#define PORTABLE_SHAPE(sfx, S)                                                                     \
    static void uk_portable##sfx(UK_PARAMS) { uk_vec_impl(S, kc, a, b, UK_TAIL); }
#define KS_PORTABLE(sfx) uk_portable##sfx, NULL, NULL, NULL, NULL
#endif
PORTABLE_SHAPE(_full, EPI_FULL)
PORTABLE_SHAPE(_none, EPI_NONE)
PORTABLE_SHAPE(_lo, EPI_LO)
PORTABLE_SHAPE(_lohi, EPI_LOHI)
#undef PORTABLE_SHAPE

/* ---- x86-64 micro-kernels ------------------------------------------------------------------ */
#if defined(CPU_HAVE_X86)

#define ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)

/* AVX-512 8x32: 16 zmm accumulators, 2 B loads and one broadcast per row and k. With boff, B row
 * k is read in place at b + boff[k] (the wide conv's image) instead of from a packed panel. */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
uk_avx512_impl(const int nv, const int S, int64_t kc, const float *a, const float *b, const int64_t *boff,
               float *c, int64_t ldc, int flags, const float *rs, const float *rb, const float *cb,
               const float *res, int64_t ldr, float lo, float hi)
{
    const int r0 = S != EPI_FULL && !(flags & CPU_UK_LOAD); /* start from the row bias */
#define DECL(i) __m512 c##i##0 = r0 ? _mm512_set1_ps(rb[i]) : _mm512_setzero_ps(), c##i##1 = c##i##0;
    ROWS8(DECL)
#undef DECL
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = boff ? b + boff[k] : b + 32 * k;
        const __m512 b0 = _mm512_loadu_ps(bk), b1 = nv == 2 ? _mm512_loadu_ps(bk + 16) : b0;
#define FMA(i)                                                                                     \
    {                                                                                              \
        const __m512 ai = _mm512_set1_ps(a[i]);                                                    \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                                                \
        if (nv == 2) c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                                   \
    }
        ROWS8(FMA)
#undef FMA
        a += 8;
    }
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
#define OUTV(i, v)                                                                                 \
    if ((v) < nv) {                                                                                \
        if (flags & CPU_UK_LOAD) c##i##v = _mm512_add_ps(c##i##v, _mm512_loadu_ps(ci + 16 * (v))); \
        if (flags & CPU_UK_EPI) {                                                                  \
            if (S == EPI_FULL)                                                                     \
                c##i##v = _mm512_add_ps(_mm512_fmadd_ps(c##i##v, _mm512_set1_ps(rs[i]),           \
                                                        _mm512_set1_ps(rb[i])),                    \
                                        _mm512_loadu_ps(cb + 16 * (v)));                           \
            if (res)                                                                               \
                c##i##v = _mm512_add_ps(c##i##v, _mm512_loadu_ps(res + (i) * ldr + 16 * (v)));     \
            if (EPI_HAS_LO(S)) c##i##v = _mm512_max_ps(c##i##v, vlo);                              \
            if (EPI_HAS_HI(S)) c##i##v = _mm512_min_ps(c##i##v, vhi);                              \
        }                                                                                          \
        _mm512_storeu_ps(ci + 16 * (v), c##i##v);                                                  \
    }
#define OUT(i)                                                                                     \
    {                                                                                              \
        float *ci = c + (i) * ldc;                                                                 \
        OUTV(i, 0) OUTV(i, 1)                                                                      \
    }
    ROWS8(OUT)
#undef OUT
#undef OUTV
}
/* Per shape: 8x32, B packed and in place, and 8x16 in place (a last half panel, N % 32 == 16:
 * read in place like the others instead of packed and computed on a local 8x32 tile). */
#define AVX512_SHAPE(sfx, S)                                                                       \
    __attribute__((target("avx512f"))) static void uk_avx512##sfx(UK_PARAMS)                       \
    {                                                                                              \
        uk_avx512_impl(2, S, kc, a, b, NULL, UK_TAIL);                                             \
    }                                                                                              \
    __attribute__((target("avx512f"))) static void uk_avx512_ind##sfx(UK_IND_PARAMS)               \
    {                                                                                              \
        uk_avx512_impl(2, S, kc, a, b, boff, UK_TAIL);                                             \
    }                                                                                              \
    __attribute__((target("avx512f"))) static void uk_avx512_half##sfx(UK_IND_PARAMS)              \
    {                                                                                              \
        uk_avx512_impl(1, S, kc, a, b, boff, UK_TAIL);                                             \
    }
AVX512_SHAPE(_full, EPI_FULL)
AVX512_SHAPE(_none, EPI_NONE)
AVX512_SHAPE(_lo, EPI_LO)
AVX512_SHAPE(_lohi, EPI_LOHI)
#undef AVX512_SHAPE
#define KS_AVX512(sfx) uk_avx512##sfx, uk_avx512_ind##sfx, NULL, uk_avx512_half##sfx, NULL

/* AVX2+FMA 6x16 and 4x24: 12 ymm accumulators, `rows` x `nv` vectors (constants in every
 * instantiation). rows < 6 of the 6x16 tile are the M edge: only those rows of C are computed
 * and stored, the A panel keeps its 6-row layout. Like MLAS's FMA3 kernel, the M edge then costs
 * only its own rows; but it is latency-bound (2 rows: 4 FMA chains for 2 pipes x 4 cycles), so
 * an M that is a multiple of 4 and not of 6 (16, 32, 64, 128: most channel counts) runs 4x24
 * tiles instead (A in 4-row panels, sgemm_tile), which have no M edge. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
uk_avx2_tile(const int rows, const int nv, const int S, int64_t kc, const float *a,
             const float *b, const int64_t *boff, float *c, int64_t ldc, int flags,
             const float *rs, const float *rb, const float *cb, const float *res, int64_t ldr,
             float lo, float hi)
{
    const int mr = nv == 3 ? 4 : 6;
    const int r0 = S != EPI_FULL && !(flags & CPU_UK_LOAD); /* start from the row bias */
    /* lo/hi go through memory: kept in xmm registers across the loop they would push one of the
     * 12 accumulators onto the stack (16 ymm registers: 12 + 2-3 B + 1 broadcast). */
    volatile float lohi[2];
    lohi[0] = lo;
    lohi[1] = hi;
#define VECS(X, i) X(i, 0) X(i, 1) X(i, 2)
#define INIT(i, v)                                                                                 \
    __m256 c##i##v = _mm256_setzero_ps();                                                          \
    if ((i) < rows && (v) < nv && r0) c##i##v = _mm256_broadcast_ss(rb + (i));
#define DECL(i) VECS(INIT, i)
    ROWS6(DECL)
#undef DECL
#undef INIT
#pragma GCC unroll 4 /* 1x1 convs have K 16-192: 3-8 % faster than the rolled loop (AVX2) */
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = boff ? b + boff[k] : b + 8 * nv * k;
        const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
        const __m256 b2 = nv == 3 ? _mm256_loadu_ps(bk + 16) : b1;
#define FMAV(i, v)                                                                                 \
    if ((v) < nv) c##i##v = _mm256_fmadd_ps(ai, b##v, c##i##v);
#define FMA(i)                                                                                     \
    if ((i) < rows) {                                                                              \
        const __m256 ai = _mm256_broadcast_ss(a + i);                                              \
        VECS(FMAV, i)                                                                              \
    }
        ROWS6(FMA)
#undef FMA
#undef FMAV
        a += mr;
    }
    const __m256 vlo = _mm256_set1_ps(lohi[0]), vhi = _mm256_set1_ps(lohi[1]);
#define OUTV(i, v)                                                                                 \
    if ((v) < nv) {                                                                                \
        if (flags & CPU_UK_LOAD) c##i##v = _mm256_add_ps(c##i##v, _mm256_loadu_ps(ci + 8 * (v)));  \
        if (flags & CPU_UK_EPI) {                                                                  \
            if (S == EPI_FULL)                                                                     \
                c##i##v = _mm256_add_ps(_mm256_fmadd_ps(c##i##v, _mm256_set1_ps(rs[i]),           \
                                                        _mm256_set1_ps(rb[i])),                    \
                                        _mm256_loadu_ps(cb + 8 * (v)));                            \
            if (res) c##i##v = _mm256_add_ps(c##i##v, _mm256_loadu_ps(res + (i) * ldr + 8 * (v))); \
            if (EPI_HAS_LO(S)) c##i##v = _mm256_max_ps(c##i##v, vlo);                              \
            if (EPI_HAS_HI(S)) c##i##v = _mm256_min_ps(c##i##v, vhi);                              \
        }                                                                                          \
        _mm256_storeu_ps(ci + 8 * (v), c##i##v);                                                   \
    }
#define OUT(i)                                                                                     \
    if ((i) < rows) {                                                                              \
        float *ci = c + (i) * ldc;                                                                 \
        VECS(OUTV, i)                                                                              \
    }
    ROWS6(OUT)
#undef OUT
#undef OUTV
#undef VECS
}

/* nt tiles stacked along M in one call (B read in place, the same NR columns): A, C, the row
 * bias and the residual advance by one tile's rows each time. A call per tile cost ~20 cycles
 * of set-up and drain against the 192 FMAs of a K = 16 tile (edge CNN pw0: 82 % of the FMA
 * peak, the K = 64 layers 95 %). */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
uk_avx2_impl(const int rows, const int nv, const int S, int64_t nt, int64_t kc, const float *a,
             const float *b, const int64_t *boff, float *c, int64_t ldc, int flags,
             const float *rs, const float *rb, const float *cb, const float *res, int64_t ldr,
             float lo, float hi)
{
    const int mr = nv == 3 ? 4 : 6;
    for (int64_t t = 0; t < nt; t++)
        uk_avx2_tile(rows, nv, S, kc, a + t * mr * kc, b, boff, c + t * mr * ldc, ldc, flags,
                     rs + t * mr, rb + t * mr, cb, res ? res + t * mr * ldr : NULL, ldr, lo, hi);
}
/* Per shape: the full 6x16 tile, B packed and in place; fewer than 6 rows (the M edge), B packed
 * (boff NULL) or in place; the 4x24 tile, B packed and in place. */
#define AVX2_SHAPE(sfx, S)                                                                         \
    __attribute__((target("avx2,fma"))) static void uk_avx2##sfx(UK_PARAMS)                        \
    {                                                                                              \
        uk_avx2_impl(6, 2, S, 1, kc, a, b, NULL, UK_TAIL);                                         \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_ind##sfx(UK_IND_PARAMS)                \
    {                                                                                              \
        uk_avx2_impl(6, 2, S, 1, kc, a, b, boff, UK_TAIL);                                         \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_rows##sfx(int rows, UK_IND_PARAMS)     \
    {                                                                                              \
        switch (rows) {                                                                            \
        case 1: uk_avx2_impl(1, 2, S, 1, kc, a, b, boff, UK_TAIL); break;                          \
        case 2: uk_avx2_impl(2, 2, S, 1, kc, a, b, boff, UK_TAIL); break;                          \
        case 3: uk_avx2_impl(3, 2, S, 1, kc, a, b, boff, UK_TAIL); break;                          \
        case 4: uk_avx2_impl(4, 2, S, 1, kc, a, b, boff, UK_TAIL); break;                          \
        default: uk_avx2_impl(5, 2, S, 1, kc, a, b, boff, UK_TAIL); break;                         \
        }                                                                                          \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_4x24##sfx(UK_PARAMS)                   \
    {                                                                                              \
        uk_avx2_impl(4, 3, S, 1, kc, a, b, NULL, UK_TAIL);                                         \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_4x24_ind##sfx(UK_IND_PARAMS)           \
    {                                                                                              \
        uk_avx2_impl(4, 3, S, 1, kc, a, b, boff, UK_TAIL);                                         \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_col##sfx(int64_t nt, UK_IND_PARAMS)   \
    {                                                                                              \
        uk_avx2_impl(6, 2, S, nt, kc, a, b, boff, UK_TAIL);                                        \
    }                                                                                              \
    __attribute__((target("avx2,fma"))) static void uk_avx2_4x24_col##sfx(int64_t nt,             \
                                                                          UK_IND_PARAMS)           \
    {                                                                                              \
        uk_avx2_impl(4, 3, S, nt, kc, a, b, boff, UK_TAIL);                                        \
    }
AVX2_SHAPE(_full, EPI_FULL)
AVX2_SHAPE(_none, EPI_NONE)
AVX2_SHAPE(_lo, EPI_LO)
AVX2_SHAPE(_lohi, EPI_LOHI)
#undef AVX2_SHAPE
#define KS_AVX2(sfx) uk_avx2##sfx, uk_avx2_ind##sfx, uk_avx2_rows##sfx, NULL, uk_avx2_col##sfx
#define KS_AVX2_4X24(sfx)                                                                          \
    uk_avx2_4x24##sfx, uk_avx2_4x24_ind##sfx, NULL, NULL, uk_avx2_4x24_col##sfx

#endif /* CPU_HAVE_X86 */

/* ---- packing --------------------------------------------------------------------------------- */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* K is split into equal blocks of at most KC_MAX (multiple of 4). */
static int64_t pick_kc(int64_t K)
{
    if (K <= KC_MAX) return K;
    int64_t nb = (K + KC_MAX - 1) / KC_MAX;
    return round_up((K + nb - 1) / nb, 4);
}

static int64_t pick_nc(int64_t kc, int64_t N, int nr)
{
    int64_t nc = B_BLOCK_FLOATS / (kc > 0 ? kc : 1);
    nc = nc / nr * nr;
    if (nc < nr) nc = nr;
    int64_t nfull = round_up(N, nr);
    return nc < nfull ? nc : nfull;
}

/* The register tile (MR x NR) cpu_sgemm runs for M rows with this kernel set (uk_avx2_impl). */
static void sgemm_tile(const cpu_isa *isa, int64_t M, int *mr, int *nr)
{
    *mr = isa->mr;
    *nr = isa->nr;
#if defined(CPU_HAVE_X86)
    if (isa == cpu_isa_avx2() && M % 6 && M % 4 == 0) {
        *mr = 4;
        *nr = 24;
    }
#endif
}

size_t cpu_sgemm_scratch(const cpu_isa *isa, int64_t M, int64_t N, int64_t K)
{
    int mr, nr;
    sgemm_tile(isa, M, &mr, &nr);
    int64_t kc = pick_kc(K), nc = pick_nc(kc, N, nr);
    return (size_t)(round_up(M, mr) * K + kc * nc + 2 * round_up(M, mr)) + 32;
}

/* A into MR-row panels, row i multiplied by rs[i] (rs NULL: by 1). */
static inline __attribute__((always_inline)) void pack_a(const float *a, int64_t ars, int64_t acs,
                                                         int64_t M, int64_t K, const float *rs,
                                                         int mr, float *dst)
{
    for (int64_t i0 = 0; i0 < M; i0 += mr) {
        const int64_t mi = M - i0 < mr ? M - i0 : mr;
        float *d = dst + i0 * K;
        if (acs == 1) {
            for (int64_t i = 0; i < mi; i++) {
                const float *s = a + (i0 + i) * ars;
                const float sc = rs ? rs[i0 + i] : 1.0f;
                for (int64_t k = 0; k < K; k++) d[k * mr + i] = s[k] * sc;
            }
            for (int64_t i = mi; i < mr; i++)
                for (int64_t k = 0; k < K; k++) d[k * mr + i] = 0.0f;
        } else {
            for (int64_t k = 0; k < K; k++) {
                for (int64_t i = 0; i < mi; i++)
                    d[k * mr + i] = a[(i0 + i) * ars + k * acs] * (rs ? rs[i0 + i] : 1.0f);
                for (int64_t i = mi; i < mr; i++) d[k * mr + i] = 0.0f;
            }
        }
    }
}

/* One NR panel of a strided matrix: rows k0..k0+kc, columns n0..n0+nw (nw <= nr). */
static inline __attribute__((always_inline)) void pack_b_mat(const cpu_bsrc *s, int64_t k0, int64_t kc, int64_t n0, int64_t nw, int nr,
                       float *dst)
{
    if (s->cs == 1) {
        for (int64_t k = 0; k < kc; k++) {
            const float *src = s->b + (k0 + k) * s->rs + n0;
            float *d = dst + k * nr;
            if (nw == nr) {
                for (int j = 0; j < nr; j++) d[j] = src[j];
            } else {
                for (int64_t j = 0; j < nw; j++) d[j] = src[j];
                for (int64_t j = nw; j < nr; j++) d[j] = 0.0f;
            }
        }
    } else {
        for (int64_t k = 0; k < kc; k++) {
            const float *src = s->b + (k0 + k) * s->rs + n0 * s->cs;
            float *d = dst + k * nr;
            for (int64_t j = 0; j < nw; j++) d[j] = src[j * s->cs];
            for (int64_t j = nw; j < nr; j++) d[j] = 0.0f;
        }
    }
}

/* One NR panel of the implicit im2col matrix: row k = (c, ky, kx), column n = (oy, ox). The
 * panel's columns are split once into runs within one output row; each (k, run) is then a
 * zero-fill / strided-copy / zero-fill of one input row. */
static inline __attribute__((always_inline)) void pack_b_conv(const cpu_bsrc *s, int64_t k0, int64_t kc, int64_t n0, int64_t nw, int nr,
                        float *dst)
{
    int64_t seg_oy[CPU_MAX_NR], seg_ox[CPU_MAX_NR], seg_len[CPU_MAX_NR], seg_j[CPU_MAX_NR];
    int nseg = 0;
    for (int64_t j = 0, n = n0; j < nw; nseg++) {
        const int64_t oy = n / s->OW, ox = n % s->OW;
        const int64_t len = (s->OW - ox) < (nw - j) ? (s->OW - ox) : (nw - j);
        seg_oy[nseg] = oy;
        seg_ox[nseg] = ox;
        seg_len[nseg] = len;
        seg_j[nseg] = j;
        j += len;
        n += len;
    }
    const int64_t khw = s->kh * s->kw, H = s->H, W = s->W, sw = s->sw;
    int64_t c = k0 / khw, r = k0 % khw, ky = r / s->kw, kx = r % s->kw;
    for (int64_t k = 0; k < kc; k++) {
        float *d = dst + k * nr;
        const float *plane = s->img + c * H * W;
        for (int q = 0; q < nseg; q++) {
            float *dq = d + seg_j[q];
            const int64_t len = seg_len[q];
            const int64_t iy = seg_oy[q] * s->sh - s->pt + ky * s->dh;
            if (iy < 0 || iy >= H) {
                for (int64_t t = 0; t < len; t++) dq[t] = 0.0f;
                continue;
            }
            const float *row = plane + iy * W;
            const int64_t ix0 = seg_ox[q] * sw - s->pl + kx * s->dw;
            int64_t tlo, thi;
            if (sw == 1) {
                tlo = ix0 >= 0 ? 0 : -ix0;
                thi = W - ix0;
            } else if (sw == 2) {
                tlo = ix0 >= 0 ? 0 : (1 - ix0) >> 1;
                thi = (W - 1 - ix0) < 0 ? 0 : ((W - 1 - ix0) >> 1) + 1;
            } else {
                tlo = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;
                thi = (W - 1 - ix0) < 0 ? 0 : (W - 1 - ix0) / sw + 1;
            }
            if (tlo > len) tlo = len;
            if (thi > len) thi = len;
            if (thi < tlo) thi = tlo;
            for (int64_t t = 0; t < tlo; t++) dq[t] = 0.0f;
            if (sw == 1) {
                for (int64_t t = tlo; t < thi; t++) dq[t] = row[ix0 + t];
            } else if (s->phase && thi > tlo) {
                /* columns ix0 + t*sw are contiguous in phase (ix0 mod sw) */
                int64_t ph, j0;
                if (sw == 2) { /* no division in this loop: it runs per (k, run) */
                    ph = ix0 & 1;
                    j0 = (ix0 - ph) / 2;
                } else {
                    ph = ((ix0 % sw) + sw) % sw;
                    j0 = (ix0 - ph) / sw;
                }
                const float *rp = s->phase + ((ph * s->C + c) * H + iy) * s->Wp + j0;
                for (int64_t t = tlo; t < thi; t++) dq[t] = rp[t];
            } else {
                for (int64_t t = tlo; t < thi; t++) dq[t] = row[ix0 + t * sw];
            }
            for (int64_t t = thi; t < len; t++) dq[t] = 0.0f;
        }
        for (int64_t j = nw; j < nr; j++) d[j] = 0.0f;
        if (++kx == s->kw) {
            kx = 0;
            if (++ky == s->kh) {
                ky = 0;
                c++;
            }
        }
    }
}

/* One NR panel of the "wide" conv matrix (conv.c: conv_wide): B[k][n] = img[boff[k] + n], one
 * contiguous copy per (k, panel). */
static inline __attribute__((always_inline)) void pack_b_wide(const cpu_bsrc *s, int64_t k0,
                                                              int64_t kc, int64_t n0, int64_t nw,
                                                              int nr, float *dst)
{
    for (int64_t k = 0; k < kc; k++) {
        const float *src = s->img + s->boff[k0 + k] + n0;
        float *d = dst + k * nr;
        if (nw == nr) {
            for (int j = 0; j < nr; j++) d[j] = src[j];
        } else {
            for (int64_t j = 0; j < nw; j++) d[j] = src[j];
            for (int64_t j = nw; j < nr; j++) d[j] = 0.0f;
        }
    }
}

/* ---- driver ---------------------------------------------------------------------------------- */

/* A micro-kernel for the first `rows` (< MR) rows of a tile, B packed (boff NULL) or in place. */
/* nt full tiles down M at one NR panel, B in place, one K block (A tiles kc * MR apart). */
typedef void (*cpu_ukcol_fn)(int64_t nt, int64_t kc, const float *a, const float *b,
                             const int64_t *boff, float *c, int64_t ldc, int flags,
                             const float *rs, const float *rb, const float *cb, const float *res,
                             int64_t ldr, float lo, float hi);
typedef void (*cpu_ukrows_fn)(int rows, int64_t kc, const float *a, const float *b,
                              const int64_t *boff, float *c, int64_t ldc, int flags, const float *rs,
                              const float *rb, const float *cb, const float *res, int64_t ldr,
                              float lo, float hi);

/* The driver body, inlined into one function per ISA so the packers vectorise to its width and
 * the micro-kernel call is direct. ukrows (may be NULL) runs M-edge tiles of full panels in
 * place; without it they run the full kernel on a local tile. ukhalf (may be NULL) runs full-M
 * tiles of a last panel exactly NR/2 wide in place (B read in place only). */
static inline __attribute__((always_inline)) void
sgemm_body(int64_t M, int64_t N, int64_t K, const float *a, int64_t ars, int64_t acs,
           const cpu_bsrc *bsrc, float *c, int64_t ldc, const cpu_epi *epi, float *scratch,
           const int mr, const int nr, cpu_ukernel_fn ukernel, cpu_ukind_fn ukind,
           cpu_ukrows_fn ukrows, cpu_ukind_fn ukhalf, cpu_ukcol_fn ukcol)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) c[i * ldc + j] = 0.0f;
        cpu_epi_apply(c, M, N, ldc, epi);
        return;
    }
    const int64_t kcb = pick_kc(K), ncb = pick_nc(kcb, N, nr);
    /* acs == CPU_A_PACKED: prepared by cpu_sgemm_pack_a, off the hot path; otherwise packed
     * here with epi's row scale multiplied in (the kernels then start from the row bias). */
    const float *pa = a;
    float *pb = scratch + round_up(M, mr) * K;
    const int scale_in_a = acs != CPU_A_PACKED;
    if (scale_in_a) {
        pack_a(a, ars, acs, M, K, epi ? epi->row_scale : NULL, mr, scratch);
        pa = scratch;
    }
    const int direct = ukind && bsrc->is_conv == 2;
    /* Row scale / bias padded to whole M tiles, once per call rather than once per tile. */
    float *rs_all = pb + kcb * ncb, *rb_all = rs_all + round_up(M, mr);
    for (int64_t i = 0; i < round_up(M, mr); i++) {
        rs_all[i] = (i < M && epi && epi->row_scale && !scale_in_a) ? epi->row_scale[i] : 1.0f;
        rb_all[i] = (i < M && epi && epi->row_bias) ? epi->row_bias[i] : 0.0f;
    }

    float zeros[CPU_MAX_NR];
    float cbt[CPU_MAX_NR];
    float tile[CPU_MAX_MR * CPU_MAX_NR], rtile[CPU_MAX_MR * CPU_MAX_NR];
    for (int j = 0; j < CPU_MAX_NR; j++) zeros[j] = 0.0f;
    memset(tile, 0, sizeof tile);
    const float lo = epi ? epi->lo : -__builtin_inff(), hi = epi ? epi->hi : __builtin_inff();

    if (direct) {
        /* B read in place: per panel of NR columns, every M tile while the panel's rows are in
         * L1. A last partial panel is packed instead, so nothing is read past column N-1. */
        for (int64_t pc = 0; pc < K; pc += kcb) {
            const int64_t kc = K - pc < kcb ? K - pc : kcb;
            const int flags = (pc > 0 ? CPU_UK_LOAD : 0) | (pc + kc == K ? CPU_UK_EPI : 0);
            const int64_t *boff = bsrc->boff + pc;
            for (int64_t n0 = 0; n0 < N; n0 += nr) {
                const int64_t nw = N - n0 < nr ? N - n0 : nr;
                const float *bp = bsrc->img + n0;
                int packed = 0; /* this panel packed into pb (for edge tiles) */
                const float *cbp = zeros;
                if (epi && epi->col_bias) {
                    for (int j = 0; j < nr; j++) cbt[j] = j < nw ? epi->col_bias[n0 + j] : 0.0f;
                    cbp = cbt;
                }
                int64_t ir = 0;
                if (ukcol && nw == nr && kc == K && M >= mr) { /* the full tiles in one call */
                    const int64_t nt = M / mr;
                    ukcol(nt, kc, pa, bp, boff, c + n0, ldc, flags, rs_all, rb_all, cbp,
                          (epi && epi->res) ? epi->res + n0 : NULL, epi && epi->res ? epi->ldr : 0,
                          lo, hi);
                    ir = nt * mr;
                }
                for (; ir < M; ir += mr) {
                    const int64_t mi = M - ir < mr ? M - ir : mr;
                    const float *ap = pa + ir * K + pc * mr;
                    const float *rsp = rs_all + ir, *rbp = rb_all + ir;
                    const float *res = (epi && epi->res) ? epi->res + ir * epi->ldr + n0 : NULL;
                    float *cp = c + ir * ldc + n0;
                    if (ukhalf && mi == mr && 2 * nw == nr) { /* exactly half a panel: in place */
                        ukhalf(kc, ap, bp, boff, cp, ldc, flags, rsp, rbp, cbp, res,
                               res ? epi->ldr : 0, lo, hi);
                        continue;
                    }
                    if (mi == mr && nw == nr) {
                        ukind(kc, ap, bp, boff, cp, ldc, flags, rsp, rbp, cbp, res,
                              res ? epi->ldr : 0, lo, hi);
                        continue;
                    }
                    if (ukrows && nw == nr) {
                        ukrows((int)mi, kc, ap, bp, boff, cp, ldc, flags, rsp, rbp, cbp, res,
                               res ? epi->ldr : 0, lo, hi);
                        continue;
                    }
                    /* Edge: a local tile; the last partial panel is packed first (no reads past
                     * the last column), a full panel with fewer rows is still read in place. */
                    if (nw < nr && !packed) {
                        pack_b_wide(bsrc, pc, kc, n0, nw, nr, pb);
                        packed = 1;
                    }
                    if (flags & CPU_UK_LOAD)
                        for (int64_t i = 0; i < mi; i++)
                            for (int64_t j = 0; j < nw; j++) tile[i * nr + j] = cp[i * ldc + j];
                    if (res && (flags & CPU_UK_EPI)) {
                        for (int64_t i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nr; j++)
                                rtile[i * nr + j] =
                                    (i < mi && j < nw) ? res[i * epi->ldr + j] : 0.0f;
                    }
                    if (nw == nr)
                        ukind(kc, ap, bp, boff, tile, nr, flags, rsp, rbp, cbp, res ? rtile : NULL,
                              nr, lo, hi);
                    else
                        ukernel(kc, ap, pb, tile, nr, flags, rsp, rbp, cbp, res ? rtile : NULL, nr,
                                lo, hi);
                    for (int64_t i = 0; i < mi; i++)
                        for (int64_t j = 0; j < nw; j++) cp[i * ldc + j] = tile[i * nr + j];
                }
            }
        }
        return;
    }
    for (int64_t jc = 0; jc < N; jc += ncb) {
        const int64_t nc = N - jc < ncb ? N - jc : ncb;
        for (int64_t pc = 0; pc < K; pc += kcb) {
            const int64_t kc = K - pc < kcb ? K - pc : kcb;
            for (int64_t p = 0; p * nr < nc; p++) {
                const int64_t nw = nc - p * nr < nr ? nc - p * nr : nr;
                if (bsrc->is_conv == 2)
                    pack_b_wide(bsrc, pc, kc, jc + p * nr, nw, nr, pb + p * kc * nr);
                else if (bsrc->is_conv)
                    pack_b_conv(bsrc, pc, kc, jc + p * nr, nw, nr, pb + p * kc * nr);
                else
                    pack_b_mat(bsrc, pc, kc, jc + p * nr, nw, nr, pb + p * kc * nr);
            }
            const int flags = (pc > 0 ? CPU_UK_LOAD : 0) | (pc + kc == K ? CPU_UK_EPI : 0);
            for (int64_t ir = 0; ir < M; ir += mr) {
                const int64_t mi = M - ir < mr ? M - ir : mr;
                const float *ap = pa + ir * K + pc * mr;
                const float *rsp = rs_all + ir, *rbp = rb_all + ir;
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    const int64_t n0 = jc + jr;
                    const int64_t nw = nc - jr < nr ? nc - jr : nr;
                    const float *bp = pb + (jr / nr) * kc * nr;
                    const float *res = (epi && epi->res) ? epi->res + ir * epi->ldr + n0 : NULL;
                    const float *cbp = zeros;
                    float *cp = c + ir * ldc + n0;
                    if (nw == nr && (mi == mr || ukrows)) {
                        if (epi && epi->col_bias) cbp = epi->col_bias + n0;
                        if (mi == mr)
                            ukernel(kc, ap, bp, cp, ldc, flags, rsp, rbp, cbp, res,
                                    res ? epi->ldr : 0, lo, hi);
                        else
                            ukrows((int)mi, kc, ap, bp, NULL, cp, ldc, flags, rsp, rbp, cbp, res,
                                   res ? epi->ldr : 0, lo, hi);
                        continue;
                    }
                    /* Edge tile: run the kernel on a full tile in local memory. */
                    if (epi && epi->col_bias) {
                        for (int j = 0; j < nr; j++) cbt[j] = j < nw ? epi->col_bias[n0 + j] : 0.0f;
                        cbp = cbt;
                    }
                    if (flags & CPU_UK_LOAD)
                        for (int64_t i = 0; i < mi; i++)
                            for (int64_t j = 0; j < nw; j++) tile[i * nr + j] = cp[i * ldc + j];
                    if (res && (flags & CPU_UK_EPI)) {
                        for (int64_t i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nr; j++)
                                rtile[i * nr + j] =
                                    (i < mi && j < nw) ? res[i * epi->ldr + j] : 0.0f;
                    }
                    ukernel(kc, ap, bp, tile, nr, flags, rsp, rbp, cbp,
                                 res ? rtile : NULL, nr, lo, hi);
                    for (int64_t i = 0; i < mi; i++)
                        for (int64_t j = 0; j < nw; j++) cp[i * ldc + j] = tile[i * nr + j];
                }
            }
        }
    }
}

#define SGEMM_ARGS                                                                                 \
    int64_t M, int64_t N, int64_t K, const float *a, int64_t ars, int64_t acs,                     \
        const cpu_bsrc *bsrc, float *c, int64_t ldc, const cpu_epi *epi, float *scratch
#define SGEMM_PASS M, N, K, a, ars, acs, bsrc, c, ldc, epi, scratch

/* The driver with the kernels (KS: full, in place, M-edge rows) of this call's epilogue shape. */
#define SGEMM_BY_SHAPE(MR, NR, KS)                                                                 \
    switch (epi_shape(epi, acs)) {                                                                 \
    case EPI_NONE: sgemm_body(SGEMM_PASS, MR, NR, KS(_none)); break;                               \
    case EPI_LO: sgemm_body(SGEMM_PASS, MR, NR, KS(_lo)); break;                                   \
    case EPI_LOHI: sgemm_body(SGEMM_PASS, MR, NR, KS(_lohi)); break;                               \
    default: sgemm_body(SGEMM_PASS, MR, NR, KS(_full)); break;                                     \
    }

static void sgemm_portable(SGEMM_ARGS) { SGEMM_BY_SHAPE(P_MR, P_NR, KS_PORTABLE) }
#if defined(CPU_HAVE_X86)
__attribute__((target("avx512f"))) static void sgemm_avx512(SGEMM_ARGS)
{
    SGEMM_BY_SHAPE(8, 32, KS_AVX512)
}
__attribute__((target("avx2,fma"))) static void sgemm_avx2(SGEMM_ARGS)
{
    if (M % 6 && M % 4 == 0) {
        SGEMM_BY_SHAPE(4, 24, KS_AVX2_4X24) /* as sgemm_tile */
    } else {
        SGEMM_BY_SHAPE(6, 16, KS_AVX2)
    }
}
#endif

size_t cpu_sgemm_packed_a_floats(const cpu_isa *isa, int64_t M, int64_t K)
{
    int mr, nr;
    sgemm_tile(isa, M, &mr, &nr);
    return (size_t)(round_up(M, mr) * K);
}

void cpu_sgemm_pack_a(const cpu_isa *isa, const float *a, int64_t ars, int64_t acs, int64_t M,
                      int64_t K, const float *row_scale, float *dst)
{
    int mr, nr;
    sgemm_tile(isa, M, &mr, &nr);
    pack_a(a, ars, acs, M, K, row_scale, mr, dst);
}

void cpu_sgemm(const cpu_isa *isa, int64_t M, int64_t N, int64_t K, const float *a, int64_t ars,
               int64_t acs, const cpu_bsrc *bsrc, float *c, int64_t ldc, const cpu_epi *epi,
               float *scratch)
{
    isa->sgemm(SGEMM_PASS);
}

void cpu_epi_apply(float *c, int64_t M, int64_t N, int64_t ldc, const cpu_epi *epi)
{
    if (!epi) return;
    for (int64_t i = 0; i < M; i++) {
        const float s = epi->row_scale ? epi->row_scale[i] : 1.0f;
        const float b = epi->row_bias ? epi->row_bias[i] : 0.0f;
        float *ci = c + i * ldc;
        const float *ri = epi->res ? epi->res + i * epi->ldr : NULL;
        for (int64_t j = 0; j < N; j++) {
            float y = ci[j] * s + b;
            if (epi->col_bias) y += epi->col_bias[j];
            if (ri) y += ri[j];
            y = y < epi->lo ? epi->lo : y;
            ci[j] = y > epi->hi ? epi->hi : y;
        }
    }
}

void cpu_gemv(int64_t N, int64_t K, const float *x, const float *b, int64_t brs, int64_t bcs,
              float *y, const cpu_epi *epi)
{
    if (brs == 1) {
        /* B[k][n] = b[n*bcs + k]: one dot product per output, 16 independent lanes. */
        for (int64_t n = 0; n < N; n++) {
            const float *w = b + n * bcs;
            float acc[16] = {0};
            int64_t k = 0;
            for (; k + 16 <= K; k += 16)
                for (int l = 0; l < 16; l++) acc[l] += x[k + l] * w[k + l];
            float sum = 0.0f;
            for (; k < K; k++) sum += x[k] * w[k];
            for (int l = 0; l < 16; l++) sum += acc[l];
            y[n] = sum;
        }
    } else {
        /* B[k][n] = b[k*brs + n*bcs]: axpy over rows. */
        for (int64_t n = 0; n < N; n++) y[n] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const float xk = x[k];
            const float *row = b + k * brs;
            if (bcs == 1)
                for (int64_t n = 0; n < N; n++) y[n] += xk * row[n];
            else
                for (int64_t n = 0; n < N; n++) y[n] += xk * row[n * bcs];
        }
    }
    cpu_epi_apply(y, 1, N, N, epi);
}

/* ---- kernel sets ------------------------------------------------------------------------------ */

static const cpu_isa isa_portable = {
#if defined(__aarch64__)
    "neon",
#else
    "generic",
#endif
    #if defined(__aarch64__)
    P_MR, P_NR, sgemm_portable, cpu_dw3x3s1_neon, cpu_dw3x3s2_neon,
    cpu_maxpool_s2_neon, cpu_conv3x3s2_neon};
#else
    P_MR, P_NR, sgemm_portable, cpu_dw3x3s1_portable,
    cpu_dw3x3s2_portable, cpu_maxpool_s2_portable, cpu_conv3x3s2_portable};
#endif
const cpu_isa *cpu_isa_portable(void) { return &isa_portable; }

#if defined(CPU_HAVE_X86)
static const cpu_isa isa_avx512 = {"avx512f", 8, 32, sgemm_avx512,
                                   cpu_dw3x3s1_avx512set, cpu_dw3x3s2_avx512set,
                                   cpu_maxpool_s2_avx512set, cpu_conv3x3s2_avx512};
static const cpu_isa isa_avx2 = {"avx2+fma", 6, 16, sgemm_avx2, cpu_dw3x3s1_avx2,
                                 cpu_dw3x3s2_avx2, cpu_maxpool_s2_avx2, cpu_conv3x3s2_avx2};
const cpu_isa *cpu_isa_avx512(void) { return &isa_avx512; }
const cpu_isa *cpu_isa_avx2(void) { return &isa_avx2; }
#endif

/* The kernel set for this CPU (cpuinfo.c; REFIT_CPU_ISA=generic|avx2 forces a smaller one). */
const cpu_isa *cpu_isa_select(void)
{
#if defined(CPU_HAVE_X86)
    const int f = rt_cpu_features();
    if (f & RT_CPU_AVX512) return &isa_avx512;
    if (f & RT_CPU_AVX2) return &isa_avx2;
#endif
    return &isa_portable;
}

