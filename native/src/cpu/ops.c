/*
 * ops.c — the non-GEMM kernels of the reference CPU backend: broadcasting binary ops,
 * activations, BatchNorm, pooling, Softmax, ReduceMean, Concat. Plain C11 loops written so the
 * compiler can vectorise the inner ones; none of these dominate the models refitd targets.
 */
#include "cpu.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- binary ops with numpy broadcasting ------------------------------------------------------ */

#define BIN_LOOP(EXPR)                                                                             \
    do {                                                                                           \
        if (sa == 1 && sb == 1)                                                                    \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const float x = pa[i], z = pb[i];                                                  \
                py[i] = (EXPR);                                                                    \
            }                                                                                      \
        else if (sa == 1 && sb == 0) {                                                             \
            const float z = pb[0];                                                                 \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const float x = pa[i];                                                             \
                py[i] = (EXPR);                                                                    \
            }                                                                                      \
        } else if (sa == 0 && sb == 1) {                                                           \
            const float x = pa[0];                                                                 \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const float z = pb[i];                                                             \
                py[i] = (EXPR);                                                                    \
            }                                                                                      \
        } else {                                                                                   \
            const float x = pa[0], z = pb[0];                                                      \
            for (int64_t i = 0; i < n; i++) py[i] = (EXPR);                                        \
        }                                                                                          \
    } while (0)

static void bin_inner(int op, const float *pa, int64_t sa, const float *pb, int64_t sb, float *py,
                      int64_t n)
{
    switch (op) {
    case CPU_BIN_ADD: BIN_LOOP(x + z); break;
    case CPU_BIN_SUB: BIN_LOOP(x - z); break;
    case CPU_BIN_MUL: BIN_LOOP(x * z); break;
    default: BIN_LOOP(x / z); break;
    }
}

void cpu_binary(int op, int nd, const int64_t *out_shape, const float *a, const int64_t *a_shape,
                const float *b, const int64_t *b_shape, float *y)
{
    /* Strides (0 where broadcast), then merge neighbouring dims that stay contiguous. */
    int64_t shp[16], sa[16], sb[16];
    int m = 0;
    int64_t ra = 1, rb = 1;
    int64_t tsa[16], tsb[16];
    for (int i = nd - 1; i >= 0; i--) {
        tsa[i] = a_shape[i] == 1 ? 0 : ra;
        tsb[i] = b_shape[i] == 1 ? 0 : rb;
        ra *= a_shape[i];
        rb *= b_shape[i];
    }
    for (int i = 0; i < nd; i++) {
        if (out_shape[i] == 1) continue;
        if (m > 0 && sa[m - 1] == tsa[i] * out_shape[i] && sb[m - 1] == tsb[i] * out_shape[i]) {
            shp[m - 1] *= out_shape[i];
            sa[m - 1] = tsa[i];
            sb[m - 1] = tsb[i];
            continue;
        }
        shp[m] = out_shape[i];
        sa[m] = tsa[i];
        sb[m] = tsb[i];
        m++;
    }
    if (m == 0) {
        bin_inner(op, a, 0, b, 0, y, 1);
        return;
    }
    const int64_t n = shp[m - 1];
    int64_t outer = 1;
    for (int i = 0; i < m - 1; i++) outer *= shp[i];
    int64_t idx[16] = {0};
    int64_t offa = 0, offb = 0;
    for (int64_t o = 0; o < outer; o++) {
        bin_inner(op, a + offa, sa[m - 1], b + offb, sb[m - 1], y + o * n, n);
        for (int d = m - 2; d >= 0; d--) {
            idx[d]++;
            offa += sa[d];
            offb += sb[d];
            if (idx[d] < shp[d]) break;
            offa -= sa[d] * shp[d];
            offb -= sb[d] * shp[d];
            idx[d] = 0;
        }
    }
}

/* ---- activations ----------------------------------------------------------------------------- */

void cpu_clamp(const float *x, float *y, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < lo ? lo : x[i];
        y[i] = v > hi ? hi : v;
    }
}

typedef float ops_v4 __attribute__((vector_size(16)));
typedef int32_t ops_i4 __attribute__((vector_size(16)));

static inline ops_v4 ops_set1(float v) { return (ops_v4){v, v, v, v}; }
static inline ops_v4 ops_sel(ops_i4 m, ops_v4 a, ops_v4 b)
{
    return (ops_v4)(((ops_i4)a & m) | ((ops_i4)b & ~m));
}

/* e^x for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r,
 * 2^n through the exponent bits; ~1 ulp), 0 below -87.33 (results under FLT_MIN, which 2^n
 * cannot make, are flushed to zero). */
static inline ops_v4 ops_exp_neg(ops_v4 x)
{
    const ops_i4 under = x < ops_set1(-87.33f);
    x = ops_sel(under, ops_set1(-87.33f), x);
    const ops_v4 fx = x * ops_set1(1.44269504088896341f) + ops_set1(0.5f);
    ops_i4 n = __builtin_convertvector(fx, ops_i4);             /* toward zero, then */
    n -= (ops_i4)(__builtin_convertvector(n, ops_v4) > fx) & 1; /* floor: n = round(x log2 e) */
    const ops_v4 nf = __builtin_convertvector(n, ops_v4);
    const ops_v4 r = x - nf * ops_set1(0.693359375f) + nf * ops_set1(2.12194440e-4f);
    ops_v4 p = ops_set1(1.9875691500e-4f);
    p = p * r + ops_set1(1.3981999507e-3f);
    p = p * r + ops_set1(8.3334519073e-3f);
    p = p * r + ops_set1(4.1665795894e-2f);
    p = p * r + ops_set1(1.6666665459e-1f);
    p = p * r + ops_set1(5.0000001201e-1f);
    p = p * r * r + r + ops_set1(1.0f);
    const ops_v4 e = p * (ops_v4)((n + 127) << 23);
    return ops_sel(under, ops_set1(0.0f), e);
}

void cpu_sigmoid(const float *x, float *y, size_t n)
{
    /* Four at a time (the scalar loop called expf per element and branched on the sign: 7 ns
     * an element): e = e^-|x|, then 1 / (1 + e) for x >= 0 and e / (1 + e) below, both without
     * cancellation. */
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        ops_v4 v;
        memcpy(&v, x + i, sizeof v);
        const ops_i4 neg = v < 0;
        const ops_v4 a = ops_sel(neg, -v, v);
        const ops_v4 e = ops_exp_neg(-a);
        const ops_v4 s = ops_set1(1.0f) / (ops_set1(1.0f) + e);
        const ops_v4 r = ops_sel(neg, e * s, s); /* NaN: NaN through every step */
        memcpy(y + i, &r, sizeof r);
    }
    for (; i < n; i++) {
        const float v = x[i];
        if (v >= 0) {
            y[i] = 1.0f / (1.0f + expf(-v));
        } else {
            const float e = expf(v);
            y[i] = e / (1.0f + e);
        }
    }
}

void cpu_leakyrelu(const float *x, float *y, size_t n, float alpha)
{
    /* Four at a time, the product for every element and a bitwise select: as a scalar loop GCC
     * kept a branch on each sign (it only multiplies where x < 0), which random signs
     * mispredict half the time (16x128x128: 1255 us). */
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        ops_v4 v;
        memcpy(&v, x + i, sizeof v);
        const ops_i4 pos = v >= 0; /* NaN: not >= 0, so NaN * alpha, as the scalar tail */
        const ops_v4 r = (ops_v4)(((ops_i4)v & pos) | ((ops_i4)(v * alpha) & ~pos));
        memcpy(y + i, &r, sizeof r);
    }
    for (; i < n; i++) y[i] = x[i] >= 0 ? x[i] : x[i] * alpha;
}

void cpu_channel_affine(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                        const float *scale, const float *bias, float lo, float hi)
{
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float s = scale[c], b = bias[c];
            const float *xc = x + (n * C + c) * S;
            float *yc = y + (n * C + c) * S;
            for (int64_t i = 0; i < S; i++) {
                float v = xc[i] * s + b;
                v = v < lo ? lo : v;
                yc[i] = v > hi ? hi : v;
            }
        }
}

void cpu_bn_fold(int64_t C, const float *g, const float *b, const float *m, const float *v,
                 float eps, const float *cbias, float *scale, float *bias)
{
    for (int64_t c = 0; c < C; c++) {
        const float s = g[c] / sqrtf(v[c] + eps);
        scale[c] = s;
        bias[c] = b[c] + ((cbias ? cbias[c] : 0.0f) - m[c]) * s;
    }
}

/* ---- pooling --------------------------------------------------------------------------------- */

/* Padding counts as -FLT_MAX (onnxruntime ignores it; an all-padding window yields the lowest
 * float as there). Per output row: the max over the kh input rows into a row buffer of the padded
 * width, then the max over kw along it. Compiled once per ISA so both passes vectorise. */
static void pool_row_dims(const cpu_pool_geom *g, int64_t *PW)
{
    *PW = (g->OW - 1) * g->sw + (g->kw - 1) * g->dw + 1;
}

/* Planes the stride-2 kernel takes per pass: ~16 KB of row maxima (L1), at least one plane. */
int64_t cpu_maxpool_chunk(const cpu_pool_geom *g)
{
    int64_t PW;
    pool_row_dims(g, &PW);
    const int64_t per = g->OH * PW, nc = g->N * g->C;
    const int64_t k = per > 0 ? 4096 / per : 1;
    return k < 1 ? 1 : (k > nc ? nc : k);
}

size_t cpu_maxpool_scratch(const cpu_pool_geom *g)
{
    int64_t PW;
    pool_row_dims(g, &PW);
    const int64_t rows = g->sw == 2 ? cpu_maxpool_chunk(g) * g->OH : 1;
    return (size_t)(rows * PW) + CPU_POOL_SLACK;
}

static inline __attribute__((always_inline)) void maxpool_body(const cpu_pool_geom *g,
                                                               const float *x, float *y,
                                                               float *rowm)
{
    int64_t PW;
    pool_row_dims(g, &PW);
    const int64_t px0 = g->pl < PW ? g->pl : PW;
    const int64_t px1 = (g->W + g->pl) < PW ? (g->W + g->pl) : PW;
    const int64_t nin = px1 > px0 ? px1 - px0 : 0;
    const int s2k3 = g->sw == 2 && g->kw == 3 && g->dw == 1;
    for (int64_t px = 0; px < px0; px++) rowm[px] = -FLT_MAX;
    for (int64_t px = px0 + nin; px < PW; px++) rowm[px] = -FLT_MAX;
    float *restrict rm = rowm + px0;
    for (int64_t nc = 0; nc < g->N * g->C; nc++) {
        const float *p = x + nc * g->H * g->W;
        float *o = y + nc * g->OH * g->OW;
        for (int64_t oy = 0; oy < g->OH; oy++) {
            int first = 1;
            for (int64_t ky = 0; ky < g->kh; ky++) {
                const int64_t iy = oy * g->sh - g->pt + ky * g->dh;
                if (iy < 0 || iy >= g->H) continue;
                const float *restrict r = p + iy * g->W + (px0 - g->pl);
                if (first) {
                    for (int64_t t = 0; t < nin; t++) rm[t] = r[t];
                    first = 0;
                } else {
                    for (int64_t t = 0; t < nin; t++) rm[t] = r[t] > rm[t] ? r[t] : rm[t];
                }
            }
            if (first)
                for (int64_t t = 0; t < nin; t++) rm[t] = -FLT_MAX;
            float *restrict orow = o + oy * g->OW;
            const float *restrict q = rowm;
            if (s2k3) {
                for (int64_t ox = 0; ox < g->OW; ox++) {
                    const float a = q[2 * ox], b = q[2 * ox + 1], c = q[2 * ox + 2];
                    const float m = a > b ? a : b;
                    orow[ox] = c > m ? c : m;
                }
            } else {
                for (int64_t ox = 0; ox < g->OW; ox++) {
                    const float *qq = q + ox * g->sw;
                    float mx = qq[0];
                    for (int64_t kx = 1; kx < g->kw; kx++)
                        mx = qq[kx * g->dw] > mx ? qq[kx * g->dw] : mx;
                    orow[ox] = mx;
                }
            }
        }
    }
}

static void maxpool_portable(const cpu_pool_geom *g, const float *x, float *y, float *s)
{
    maxpool_body(g, x, y, s);
}
#if defined(CPU_HAVE_X86)
__attribute__((target("avx512f"))) static void
maxpool_avx512(const cpu_pool_geom *g, const float *x, float *y, float *s)
{
    maxpool_body(g, x, y, s);
}
__attribute__((target("avx2,fma"))) static void maxpool_avx2(const cpu_pool_geom *g,
                                                              const float *x, float *y, float *s)
{
    maxpool_body(g, x, y, s);
}
#endif

void cpu_maxpool(const cpu_isa *isa, const cpu_pool_geom *g, const float *x, float *y,
                 float *scratch)
{
    if (g->sw == 2 && (g->kw == 2 || g->kw == 3) && g->dw == 1 && g->kh <= CPU_POOL_MAX_KH) {
        isa->maxpool_s2(g, x, y, scratch);
        return;
    }
#if defined(CPU_HAVE_X86)
    if (isa == cpu_isa_avx512()) {
        maxpool_avx512(g, x, y, scratch);
        return;
    }
    if (isa == cpu_isa_avx2()) {
        maxpool_avx2(g, x, y, scratch);
        return;
    }
#endif
    (void)isa;
    maxpool_portable(g, x, y, scratch);
}

/* onnxruntime's rule: with count_include_pad the divisor counts the padded window, clipped to the
 * end padding (a ceil_mode window running past it does not count the overhang). */
void cpu_avgpool(const cpu_pool_geom *g, const float *x, float *y)
{
    for (int64_t nc = 0; nc < g->N * g->C; nc++) {
        const float *p = x + nc * g->H * g->W;
        float *o = y + nc * g->OH * g->OW;
        for (int64_t oy = 0; oy < g->OH; oy++) {
            int64_t hs = oy * g->sh - g->pt;
            int64_t he = hs + g->kh < g->H + g->pb ? hs + g->kh : g->H + g->pb;
            const int64_t ph = he - hs;
            hs = hs < 0 ? 0 : hs;
            he = he > g->H ? g->H : he;
            for (int64_t ox = 0; ox < g->OW; ox++) {
                int64_t ws = ox * g->sw - g->pl;
                int64_t we = ws + g->kw < g->W + g->pr ? ws + g->kw : g->W + g->pr;
                const int64_t pw = we - ws;
                ws = ws < 0 ? 0 : ws;
                we = we > g->W ? g->W : we;
                float sum = 0.0f;
                for (int64_t iy = hs; iy < he; iy++)
                    for (int64_t ix = ws; ix < we; ix++) sum += p[iy * g->W + ix];
                const int64_t cnt = g->count_include_pad ? ph * pw : (he - hs) * (we - ws);
                o[oy * g->OW + ox] = cnt > 0 ? sum / (float)cnt : 0.0f;
            }
        }
    }
}

void cpu_global_avgpool(const float *x, float *y, int64_t NC, int64_t S)
{
    for (int64_t i = 0; i < NC; i++) {
        const float *p = x + i * S;
        float acc[8] = {0};
        int64_t k = 0;
        for (; k + 8 <= S; k += 8)
            for (int l = 0; l < 8; l++) acc[l] += p[k + l];
        float s = 0.0f;
        for (; k < S; k++) s += p[k];
        for (int l = 0; l < 8; l++) s += acc[l];
        y[i] = s / (float)S;
    }
}

/* ---- Softmax, ReduceMean, Concat ------------------------------------------------------------- */

void cpu_softmax(const float *x, float *y, int64_t outer, int64_t n, int64_t inner)
{
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const float *xp = x + o * n * inner + i;
            float *yp = y + o * n * inner + i;
            float mx = -INFINITY;
            for (int64_t k = 0; k < n; k++) mx = xp[k * inner] > mx ? xp[k * inner] : mx;
            float sum = 0.0f;
            for (int64_t k = 0; k < n; k++) {
                const float e = expf(xp[k * inner] - mx);
                yp[k * inner] = e;
                sum += e;
            }
            const float inv = 1.0f / sum;
            for (int64_t k = 0; k < n; k++) yp[k * inner] *= inv;
        }
    }
}

void cpu_reduce_mean(const float *x, float *y, int nd, const int64_t *shape, uint32_t mask)
{
    int64_t ostride[RT_MAX_DIMS_CPU], total = 1, out_n = 1, cnt = 1;
    for (int i = nd - 1; i >= 0; i--) {
        if (mask & (1u << i)) {
            ostride[i] = 0;
            cnt *= shape[i];
        } else {
            ostride[i] = out_n;
            out_n *= shape[i];
        }
        total *= shape[i];
    }
    for (int64_t i = 0; i < out_n; i++) y[i] = 0.0f;
    int64_t idx[RT_MAX_DIMS_CPU] = {0};
    int64_t off = 0;
    for (int64_t i = 0; i < total; i++) {
        y[off] += x[i];
        for (int d = nd - 1; d >= 0; d--) {
            idx[d]++;
            off += ostride[d];
            if (idx[d] < shape[d]) break;
            off -= ostride[d] * shape[d];
            idx[d] = 0;
        }
    }
    const float inv = cnt > 0 ? 1.0f / (float)cnt : 0.0f;
    for (int64_t i = 0; i < out_n; i++) y[i] *= inv;
}

void cpu_concat(int n_in, const float *const *xs, const int64_t *inner, int64_t outer, float *y)
{
    for (int64_t o = 0; o < outer; o++)
        for (int i = 0; i < n_in; i++) {
            memcpy(y, xs[i] + o * inner[i], (size_t)inner[i] * sizeof(float));
            y += inner[i];
        }
}
