/*
 * planes.c — per-plane vector kernels of each kernel set: the 3x3 depthwise convs (stride 1 and
 * 2), stride-2 max pooling and the 3x3/2 conv with few input channels. The body in planes_body.h is written once over a vector type and
 * instantiated here per set (portable GCC vectors, AVX2+FMA, AVX-512, NEON), so every set runs
 * the same blocking. conv.c / ops.c pick the kernel (cpu_isa.dw3x3s1 / dw3x3s2 / maxpool_s2 / conv3x3s2);
 * conv.c owns the zero border of the depthwise padded plane.
 */
#include "cpu.h"

#include <float.h>
#include <string.h>

#if defined(__aarch64__)
#include <arm_neon.h>
#endif
#if defined(CPU_HAVE_X86)
#include <immintrin.h>
#endif

#define DW_SFX(name) name##_portable
#define DW_ATTR
typedef float dwv4 __attribute__((vector_size(16)));
typedef int32_t dwi4 __attribute__((vector_size(16)));
static inline dwv4 dwp_ld(const float *p)
{
    dwv4 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void dwp_st(float *p, dwv4 v) { memcpy(p, &v, sizeof v); }
static inline dwv4 dwp_set1(float x) { return (dwv4){x, x, x, x}; }
/* a if a >= b else b (b also where a is NaN, as maxps) */
static inline dwv4 dwp_max(dwv4 a, dwv4 b)
{
    const dwi4 m = a > b;
    return (dwv4)(((dwi4)a & m) | ((dwi4)b & ~m));
}
static inline dwv4 dwp_min(dwv4 a, dwv4 b)
{
    const dwi4 m = a < b;
    return (dwv4)(((dwi4)a & m) | ((dwi4)b & ~m));
}
static inline dwv4 dwp_ldz0(const float *p)
{
    dwv4 v = dwp_ld(p);
    v[0] = 0.0f;
    return v;
}
static inline dwv4 dwp_ldzl(const float *p)
{
    dwv4 v = dwp_ld(p);
    v[3] = 0.0f;
    return v;
}
#define LDZ0(p) dwp_ldz0(p)
#define LDZL(p) dwp_ldzl(p)
#define ST_SPLIT(e, o, v)                                                                          \
    do {                                                                                           \
        const dwv4 v_ = (v);                                                                       \
        (e)[0] = v_[0], (e)[1] = v_[2], (o)[0] = v_[1], (o)[1] = v_[3];                            \
    } while (0)
#define V dwv4
#define VL 4
#define LD(p) dwp_ld(p)
#define ST(p, v) dwp_st((p), (v))
#define SET1(x) dwp_set1(x)
#define MUL(a, b) ((a) * (b))
#define ADD(a, b) ((a) + (b))
#define FMA(a, b, c) ((a) * (b) + (c))
#define MAX(a, b) dwp_max((a), (b))
#define MIN(a, b) dwp_min((a), (b))
#define DW_MASKED 0
#define DW_ROWS4 1
#define DW_LO_ONLY 0
#define C3_NV 3
/* (element-wise: GCC's __builtin_shuffle and clang's __builtin_shufflevector differ) */
#define SPLIT2V(v0, v1, e, o)                                                                      \
    do {                                                                                           \
        const dwv4 a_ = (v0), b_ = (v1);                                                           \
        (e) = (dwv4){a_[0], a_[2], b_[0], b_[2]};                                                  \
        (o) = (dwv4){a_[1], a_[3], b_[1], b_[3]};                                                  \
    } while (0)
#include "planes_body.h" /* which #undefs the parameters above */

#if defined(__aarch64__)
#define DW_SFX(name) name##_neon
#define DW_ATTR
#define V float32x4_t
#define VL 4
#define LDZ0(p) vsetq_lane_f32(0.0f, vld1q_f32(p), 0)
#define LDZL(p) vsetq_lane_f32(0.0f, vld1q_f32(p), 3)
#define ST_SPLIT(e, o, v)                                                                          \
    do {                                                                                           \
        const float32x4_t v_ = (v);                                                                \
        vst1_f32((e), vget_low_f32(vuzp1q_f32(v_, v_)));                                           \
        vst1_f32((o), vget_low_f32(vuzp2q_f32(v_, v_)));                                           \
    } while (0)
#define LD(p) vld1q_f32(p)
#define ST(p, v) vst1q_f32((p), (v))
#define SET1(x) vdupq_n_f32(x)
#define MUL(a, b) vmulq_f32((a), (b))
#define ADD(a, b) vaddq_f32((a), (b))
#define FMA(a, b, c) vfmaq_f32((c), (a), (b))
#define DW_MASKED 0
#define DW_ROWS4 1
#define DW_LO_ONLY 0
#define C3_NV 3 /* 12 accumulators + 3 taps + 1 weight of the 32 q registers */
#define MAX(a, b) vmaxq_f32((a), (b))
#define MIN(a, b) vminq_f32((a), (b))
#define SPLIT2V(v0, v1, e, o)                                                                      \
    do {                                                                                           \
        const float32x4_t a_ = (v0), b_ = (v1);                                                    \
        (e) = vuzp1q_f32(a_, b_);                                                                  \
        (o) = vuzp2q_f32(a_, b_);                                                                  \
    } while (0)
#include "planes_body.h" /* which #undefs the parameters above */
#endif

#if defined(CPU_HAVE_X86)
#define DW_SFX(name) name##_avx2
#define DW_ATTR __attribute__((target("avx2,fma")))
#define V __m256
#define VL 8
#define LD(p) _mm256_loadu_ps(p)
#define ST(p, v) _mm256_storeu_ps((p), (v))
#define SET1(x) _mm256_set1_ps(x)
#define MUL(a, b) _mm256_mul_ps((a), (b))
#define ADD(a, b) _mm256_add_ps((a), (b))
#define FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define DW_MASKED 1
#define DW_ROWS4 1
#define DW_LO_ONLY 1
#define C3_NV 3 /* 3x3/2 small-C conv: 4 channels x 3 vectors = 12 of the 16 registers */
/* Its 36 FMAs per input row, by hand: 12 accumulators + 3 taps + 1 weight are all 16 registers,
 * and GCC's allocator spilled two accumulators per row and moved the rest around (stem 27.5
 * against 22.2 us by hand). Taps at p + OW (O'[x]), p (E[x]), p + OW + 1 (O'[x+1]), 3 vectors
 * each; weights wq[kx * 4 + j]; ymm12-15 the taps and the broadcast weight. */
#define C3_TAP3(P, O)                                                                              \
    "vmovups " P "(%[p]" O "), %%ymm12\n\t"                                                        \
    "vmovups 32+" P "(%[p]" O "), %%ymm13\n\t"                                                     \
    "vmovups 64+" P "(%[p]" O "), %%ymm14\n\t"
#define C3_W4(W, a0, a1, a2)                                                                       \
    "vbroadcastss " W "(%[w]), %%ymm15\n\t"                                                        \
    "vfmadd231ps %%ymm12, %%ymm15, %[" a0 "]\n\t"                                                  \
    "vfmadd231ps %%ymm13, %%ymm15, %[" a1 "]\n\t"                                                  \
    "vfmadd231ps %%ymm14, %%ymm15, %[" a2 "]\n\t"
#define C3_KX(P, O, W0, W1, W2, W3)                                                                \
    C3_TAP3(P, O) C3_W4(W0, "a00", "a01", "a02") C3_W4(W1, "a10", "a11", "a12")                    \
        C3_W4(W2, "a20", "a21", "a22") C3_W4(W3, "a30", "a31", "a32")
#define C3_ROW_FMAS(acc, p_, OW_, wq_)                                                             \
    do {                                                                                           \
        __asm__(C3_KX("0", ",%[o]", "0", "4", "8", "12") C3_KX("0", "", "16", "20", "24", "28")    \
                    C3_KX("4", ",%[o]", "32", "36", "40", "44")                                    \
                : [a00] "+x"(acc[0][0]), [a01] "+x"(acc[0][1]), [a02] "+x"(acc[0][2]),             \
                  [a10] "+x"(acc[1][0]), [a11] "+x"(acc[1][1]), [a12] "+x"(acc[1][2]),             \
                  [a20] "+x"(acc[2][0]), [a21] "+x"(acc[2][1]), [a22] "+x"(acc[2][2]),             \
                  [a30] "+x"(acc[3][0]), [a31] "+x"(acc[3][1]), [a32] "+x"(acc[3][2])              \
                : [p] "r"(p_), [o] "r"((OW_) * 4), [w] "r"(wq_)                                    \
                : "xmm12", "xmm13", "xmm14", "xmm15", "memory");                                   \
    } while (0)
#define MLD_FIRST0(p) _mm256_maskload_ps((p), _mm256_setr_epi32(0, -1, -1, -1, -1, -1, -1, -1))
#define MLD_LAST0(p) _mm256_maskload_ps((p), _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0))
#define S2_FIRST(p) _mm256_blend_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), 1)
#define S2_LAST(p) _mm256_loadu_ps(p)
/* evens / odds of (v0, v1) per 128-bit lane: outputs in the order 0 1 4 5 2 3 6 7 */
#define S2_EVEN(v0, v1) _mm256_shuffle_ps((v0), (v1), _MM_SHUFFLE(2, 0, 2, 0))
#define S2_ODD(v0, v1) _mm256_shuffle_ps((v0), (v1), _MM_SHUFFLE(3, 1, 3, 1))
#define S2_UNPERM(y) _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(y), 0xD8))
#define ST_SPLIT(e, o, v)                                                                          \
    do {                                                                                           \
        const __m256 p_ = _mm256_castpd_ps(_mm256_permute4x64_pd(                                 \
            _mm256_castps_pd(_mm256_permute_ps((v), _MM_SHUFFLE(3, 1, 2, 0))), 0xD8));             \
        _mm_storeu_ps((e), _mm256_castps256_ps128(p_));                                            \
        _mm_storeu_ps((o), _mm256_extractf128_ps(p_, 1));                                          \
    } while (0)
#define MAX(a, b) _mm256_max_ps((a), (b))
#define MIN(a, b) _mm256_min_ps((a), (b))
/* shuffle_ps picks (even, even) per 128-bit lane of (v0, v1); permute4x64 puts v0's pairs first */
#define SPLIT2V(v0, v1, e, o)                                                                      \
    do {                                                                                           \
        const __m256 v0_ = (v0), v1_ = (v1);                                                       \
        (e) = _mm256_castpd_ps(_mm256_permute4x64_pd(                                             \
            _mm256_castps_pd(_mm256_shuffle_ps(v0_, v1_, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));       \
        (o) = _mm256_castpd_ps(_mm256_permute4x64_pd(                                             \
            _mm256_castps_pd(_mm256_shuffle_ps(v0_, v1_, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));       \
    } while (0)
#include "planes_body.h" /* which #undefs the parameters above */

#define DW_SFX(name) name##_avx512
#define DW_ATTR __attribute__((target("avx512f")))
#define V __m512
#define VL 16
#define LD(p) _mm512_loadu_ps(p)
#define ST(p, v) _mm512_storeu_ps((p), (v))
#define SET1(x) _mm512_set1_ps(x)
#define MUL(a, b) _mm512_mul_ps((a), (b))
#define ADD(a, b) _mm512_add_ps((a), (b))
#define FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define DW_MASKED 1
#define DW_ROWS4 0
#define DW_LO_ONLY 0
#define C3_NV 3
#define MLD_FIRST0(p) _mm512_maskz_loadu_ps((__mmask16)0xFFFE, (p))
#define MLD_LAST0(p) _mm512_maskz_loadu_ps((__mmask16)0x7FFF, (p))
#define S2_FIRST(p) MLD_FIRST0(p)
#define S2_LAST(p) MLD_LAST0(p)
/* per 128-bit lane: outputs 0 1 8 9 | 2 3 10 11 | 4 5 12 13 | 6 7 14 15 */
#define S2_EVEN(v0, v1) _mm512_shuffle_ps((v0), (v1), _MM_SHUFFLE(2, 0, 2, 0))
#define S2_ODD(v0, v1) _mm512_shuffle_ps((v0), (v1), _MM_SHUFFLE(3, 1, 3, 1))
#define S2_UNPERM(y)                                                                               \
    _mm512_castpd_ps(                                                                              \
        _mm512_permutexvar_pd(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), _mm512_castps_pd(y)))
#define ST_SPLIT(e, o, v)                                                                          \
    do {                                                                                           \
        const __m512 p_ = _mm512_permutexvar_ps(                                                   \
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), (v));        \
        _mm256_storeu_ps((e), _mm512_castps512_ps256(p_));                                         \
        _mm256_storeu_ps((o), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p_), 1))); \
    } while (0)
#define MAX(a, b) _mm512_max_ps((a), (b))
#define MIN(a, b) _mm512_min_ps((a), (b))
#define SPLIT2V(v0, v1, e, o)                                                                      \
    do {                                                                                           \
        const __m512 v0_ = (v0), v1_ = (v1);                                                       \
        const __m512i ie_ = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,  \
                                              28, 30);                                             \
        (e) = _mm512_permutex2var_ps(v0_, ie_, v1_);                                               \
        (o) = _mm512_permutex2var_ps(v0_, _mm512_add_epi32(ie_, _mm512_set1_epi32(1)), v1_);       \
    } while (0)
#include "planes_body.h" /* which #undefs the parameters above */
#endif

#if defined(CPU_HAVE_X86)
/* The AVX-512 set's per-plane kernels: rows of fewer than two 16-float vectors run the AVX2
 * ones. There the overlapping last vector and the masked ends are most of each 512-bit row
 * (measured on the edge CNN, AMD EPYC: dw 64x24x24 12.5 -> 8.3 us, 64x24x24/2 20.6 -> 6.6 us). */
#define AVX512_NARROW(ow) ((ow) < 32)
void cpu_dw3x3s1_avx512set(const cpu_dw_args *a)
{
    const int64_t n = a->split ? a->OW / 2 : a->OW; /* row-split: half rows */
    (AVX512_NARROW(n) ? cpu_dw3x3s1_avx2 : cpu_dw3x3s1_avx512)(a);
}
void cpu_dw3x3s2_avx512set(const cpu_dw_args *a)
{
    (AVX512_NARROW(a->OW) ? cpu_dw3x3s2_avx2 : cpu_dw3x3s2_avx512)(a);
}
void cpu_maxpool_s2_avx512set(const struct cpu_pool_geom *g, const float *x, float *y, float *rowm)
{
    (AVX512_NARROW(g->OW) ? cpu_maxpool_s2_avx2 : cpu_maxpool_s2_avx512)(g, x, y, rowm);
}
#endif

int cpu_dw_vl(const cpu_isa *isa, int64_t n)
{
#if defined(CPU_HAVE_X86)
    if (isa == cpu_isa_avx512()) return AVX512_NARROW(n) ? 8 : 16;
    if (isa == cpu_isa_avx2()) return 8;
#endif
    (void)isa;
    (void)n;
    return 4;
}
