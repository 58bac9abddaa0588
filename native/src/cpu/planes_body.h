/*
 * planes_body.h — per-plane vector kernels: the 3x3 depthwise convs (stride 1 and 2), max
 * pooling with stride 2 across columns and the dense 3x3/2 conv with few input channels (a first
 * layer), written once over a vector type and included by planes.c
 * once per kernel set, with these defined:
 *   DW_ATTR           function attribute (the target), DW_SFX(name) the per-set name
 *   V, VL             vector type and its lanes
 *   LD(p), ST(p, v)   unaligned load / store;  SET1(x) broadcast
 *   MUL, ADD, MAX, MIN, FMA(a, b, c) = a*b + c (one rounding where the set has an FMA)
 *   SPLIT2V(v0, v1, e, o)  e / o = the even / odd floats of v0:v1 (SPLIT2(p, e, o), defined
 *                     here: of p[0 .. 2*VL))
 *   DW_ROWS4          1: stride 1 runs four output rows per pass where it can (AVX2: 22 % faster
 *                     than two; AVX-512 15 % slower, so it keeps two)
 *   DW_LO_ONLY        1: the depthwise kernels skip the min where there is no upper clamp (Relu;
 *                     AVX2, 16 registers: dw 16x48x48 7.6 -> 7.1 us, 32x48x48/2 9.6 -> 9.2 us;
 *                     AVX-512 5 % slower on the first, so 0)
 *   DW_MASKED         1 if the set has masked loads MLD_FIRST0(p) / MLD_LAST0(p) (p[0..VL) with
 *                     lane 0 / lane VL-1 zero and not read): stride 1 then reads the image in place
 *                     and, with S2_EVEN(v0, v1) / S2_ODD(v0, v1) (the even / odd floats of
 *                     v0:v1 within 128-bit lanes), S2_UNPERM(y) (their lane order back to
 *                     columns) and S2_FIRST(p) / S2_LAST(p) (as MLD_FIRST0 / MLD_LAST0 but
 *                     free to read the unused float), so does stride 2
 *   LDZ0(p), LDZL(p)  (sets without S2_FIRST / MLD_LAST0) p[0..VL) with lane 0 / VL-1 zero
 *   ST_SPLIT(e, o, v) stores v's even lanes at e[0..VL/2), its odd ones at o[0..VL/2)
 *   C3_NV             (optional) vectors per step of the dense 3x3/2 conv with few input
 *                     channels, cpu_conv3x3s2_*: only the sets that define it have that kernel;
 *                     C3_ROW_FMAS(acc, p, OW, wq) (optional) its FMAs of one input row by hand
 * (all #undef'd at the end of this file). The depthwise kernels read the image in place (stride
 * 1, "same" padding, DW_MASKED) or pad / even-odd split their plane into a->pad with full-width
 * copies, keep the nine taps, pre-multiplied by the folded BN scale, in registers and run one FMA
 * chain per output from the BN bias, several output rows per pass sharing the input rows' loads.
 * Rows are done in whole vectors; a row that is not a multiple of VL ends with one more vector
 * over its last VL outputs (recomputing a few, no masks or scalar tail), and a row narrower than
 * VL goes through a local tile. The zero border of a->pad is the caller's (conv.c sets it once
 * per call; the kernels write only image cells), and a->pad has CPU_DW_PAD_SLACK floats of slack
 * for the local tile's reads past the last row.
 */

#define SPLIT2(p, e, o) SPLIT2V(LD(p), LD((p) + VL), e, o)
#ifndef LDZ0 /* p[0..VL) with lane 0 zero (p[0] may be read): the masked sets' S2_FIRST */
#define LDZ0(p) S2_FIRST(p)
#endif
#ifndef LDZL /* p[0..VL) with lane VL-1 zero */
#define LDZL(p) MLD_LAST0(p)
#endif

/* dst[0..n) = src[0..n) in vectors (the last one overlapping), scalars only below VL. Rows are
 * 12-56 floats: the empty asm keeps compilers from making the loop a memmove call, which costs
 * more than the copy. */
DW_ATTR static inline void DW_SFX(dw_copy)(float *restrict dst, const float *restrict src,
                                           int64_t n)
{
    int64_t j = 0;
    for (; j + VL <= n; j += VL) {
        ST(dst + j, LD(src + j));
        __asm__ volatile("" ::: "memory");
    }
    if (j < n && n >= VL)
        ST(dst + n - VL, LD(src + n - VL));
    else
        for (; j < n; j++) dst[j] = src[j];
}

typedef struct DW_SFX(dw_taps) {
    V w[9], b, lo, hi;
} DW_SFX(dw_taps);

DW_ATTR static inline void DW_SFX(dw_taps_of)(const cpu_dw_args *a, DW_SFX(dw_taps) *t)
{
    for (int k = 0; k < 9; k++) t->w[k] = SET1(a->w[k] * a->scale);
    t->b = SET1(a->bias);
    t->lo = SET1(a->lo);
    t->hi = SET1(a->hi);
}

/* acc + the three taps of kernel row k on the vectors x0, x1, x2 (one FMA chain) */
DW_ATTR static inline __attribute__((always_inline)) V
DW_SFX(dw_krow)(const DW_SFX(dw_taps) *t, int k, V x0, V x1, V x2, V acc)
{
    return FMA(t->w[3 * k + 2], x2, FMA(t->w[3 * k + 1], x1, FMA(t->w[3 * k], x0, acc)));
}

/* bias + residual, clamp, store */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_out)(V y, const DW_SFX(dw_taps) *t, const float *q, float *o)
{
    if (q) y = ADD(y, LD(q));
    ST(o, MIN(MAX(y, t->lo), t->hi));
}

/* the same with no upper bound (Relu, or no clamp: lo = -inf) when lo_only, a constant */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_out_lo)(V y, const DW_SFX(dw_taps) *t, const float *q, float *o, const int lo_only)
{
    if (!lo_only) {
        DW_SFX(dw_out)(y, t, q, o);
        return;
    }
    if (q) y = ADD(y, LD(q));
    ST(o, MAX(y, t->lo));
}

/* Output vector y at column x of the output row at o: at o + x, or, with mode bit 4 (a constant
 * like bit 3, no upper clamp), in the row-split layout of a row of 2 h: its even lanes at
 * o + x/2 and its odd ones at o + h + x/2 (ST_SPLIT; x is even) */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_out_at)(V y, const DW_SFX(dw_taps) *t, const float *q, float *o, int64_t x, int64_t h,
                  const int mode)
{
    if (q) y = ADD(y, LD(q));
    y = (mode & 8) ? MAX(y, t->lo) : MIN(MAX(y, t->lo), t->hi);
    if (mode & 16)
        ST_SPLIT(o + x / 2, o + h + x / 2, y);
    else
        ST(o + x, y);
}

/* The three taps of one row at p, p + 1, p + 2; with DW_MASKED, edge bit 0 leaves lane 0 of the
 * first and bit 1 the last lane of the third unread (zero): image rows read in place. */
#if DW_MASKED
#define DW_TAP3(p, edge, x0, x1, x2)                                                               \
    const V x0 = ((edge) & 1) ? MLD_FIRST0(p) : LD(p), x1 = LD((p) + 1),                          \
            x2 = ((edge) & 2) ? MLD_LAST0((p) + 2) : LD((p) + 2)
#else
#define DW_TAP3(p, edge, x0, x1, x2) const V x0 = LD(p), x1 = LD((p) + 1), x2 = LD((p) + 2)
#endif

/* Outputs x .. x+VL-1 of output rows o0 (input rows r0..r2, taps at r + 0, 1, 2) and, if o1, o1
 * (r1..r3): the taps on rows r1 and r2 share their loads. q0/q1: residual rows or NULL. One FMA
 * chain per row from the bias: 9 % faster than three partial sums added at the end (fewer
 * instructions; the two rows and the next vectors hide the chain's latency). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_step)(const DW_SFX(dw_taps) *t, const float *r0, const float *r1, const float *r2,
                   const float *r3, int edge, const float *q0, const float *q1, float *o0,
                   float *o1)
{
#define KROW DW_SFX(dw_krow)
    DW_TAP3(r0, edge, a0, a1, a2);
    DW_TAP3(r1, edge, b0, b1, b2);
    DW_TAP3(r2, edge, c0, c1, c2);
    const V p = KROW(t, 2, c0, c1, c2, KROW(t, 1, b0, b1, b2, KROW(t, 0, a0, a1, a2, t->b)));
    if (o1) {
        DW_TAP3(r3, edge, d0, d1, d2);
        const V s = KROW(t, 2, d0, d1, d2, KROW(t, 1, c0, c1, c2, KROW(t, 0, b0, b1, b2, t->b)));
        DW_SFX(dw_out_lo)(s, t, q1, o1, (edge) & 8);
    }
    DW_SFX(dw_out_lo)(p, t, q0, o0, (edge) & 8);
#undef KROW
}

/* A row of OW < VL outputs: through local tiles (the residual too: its row may end the tensor). */
#define DW_NARROW(STEP, OW, q0, q1, o0, o1, ...)                                                   \
    do {                                                                                           \
        float t0_[VL], t1_[VL], s0_[VL], s1_[VL];                                                  \
        if (q0) memcpy(s0_, q0, (size_t)(OW) * sizeof(float));                                     \
        if (q1) memcpy(s1_, q1, (size_t)(OW) * sizeof(float));                                     \
        STEP(__VA_ARGS__, q0 ? s0_ : NULL, q1 ? s1_ : NULL, t0_, o1 ? t1_ : NULL);                \
        memcpy(o0, t0_, (size_t)(OW) * sizeof(float));                                             \
        if (o1) memcpy(o1, t1_, (size_t)(OW) * sizeof(float));                                     \
    } while (0)

/* Output rows oy (and oy + 1 if two) across the plane; `two`, `res` and `lo` (8: no upper clamp,
 * edge bit 3 of the steps) are constants at each call site, so every variant's loop is
 * straight-line. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_rows)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, int64_t oy, int two, int res,
                   const int lo)
{
    const int64_t OW = a->OW, PW = OW + 2;
    const float *r0 = a->pad + oy * PW, *r1 = r0 + PW, *r2 = r1 + PW, *r3 = two ? r2 + PW : r2;
    float *o0 = a->out + oy * OW, *o1 = two ? o0 + OW : NULL;
    const float *q0 = res ? a->res + oy * OW : NULL, *q1 = (res && two) ? q0 + OW : NULL;
    if (OW < VL) {
        DW_NARROW(DW_SFX(dw_s1_step), OW, q0, q1, o0, o1, t, r0, r1, r2, r3, lo);
        return;
    }
    for (int64_t x = 0;; x += VL) {
        if (x + VL > OW) x = OW - VL; /* the last, overlapping vector */
        DW_SFX(dw_s1_step)(t, r0 + x, r1 + x, r2 + x, r3 + x, lo, res ? q0 + x : NULL,
                           (res && two) ? q1 + x : NULL, o0 + x, two ? o1 + x : NULL);
        if (x + VL >= OW) break;
    }
}

/* Four output rows from six input rows r[0..6) (taps at r + 0, 1, 2): each input row's three
 * vectors feed the up to three outputs that use it, so 18 loads serve 36 FMAs (the two-row step:
 * 12 for 18); one FMA chain per output from the bias. Outputs at o[i] + x, residual q[i] + x. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_step4)(const DW_SFX(dw_taps) *t, const float *const *r, int64_t x, int edge,
                    const float *const *q, float *const *o)
{
    /* input row i feeds output rows i-2 .. i (kernel rows 2 .. 0); p[j] is output row j */
    V p[4];
    for (int i = 0; i < 6; i++) {
        DW_TAP3(r[i] + x, edge, x0, x1, x2);
        for (int j = i - 2; j <= i; j++) {
            if (j < 0 || j > 3) continue;
            p[j] = DW_SFX(dw_krow)(t, i - j, x0, x1, x2, i == j ? t->b : p[j]);
        }
        if (i >= 2)
            DW_SFX(dw_out_lo)(p[i - 2], t, q[i - 2] ? q[i - 2] + x : NULL, o[i - 2] + x, edge & 8);
    }
}

/* Output rows oy .. oy+3 over the padded plane (taps at pad row + x); OW < VL: as 2 x 2 rows. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_rows4)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, int64_t oy, int res,
                    const int lo)
{
    const int64_t OW = a->OW, PW = OW + 2;
    if (OW < VL) {
        DW_SFX(dw_s1_rows)(t, a, oy, 1, res, lo);
        DW_SFX(dw_s1_rows)(t, a, oy + 2, 1, res, lo);
        return;
    }
    const float *r[6], *q[4];
    float *o[4];
    for (int i = 0; i < 6; i++) r[i] = a->pad + (oy + i) * PW;
    for (int i = 0; i < 4; i++) {
        o[i] = a->out + (oy + i) * OW;
        q[i] = res ? a->res + (oy + i) * OW : NULL;
    }
    for (int64_t x = 0;; x += VL) {
        if (x + VL > OW) x = OW - VL; /* the last, overlapping vector */
        DW_SFX(dw_s1_step4)(t, r, x, lo, q, o);
        if (x + VL >= OW) break;
    }
}

#if DW_MASKED
/* "Same" padding (1 on each side, OW == W >= VL) read in place: rows outside the image are a
 * zero row, the columns outside it the unread lanes of the first and last vector (DW_TAP3). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_rows_inplace)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, const float *zero,
                           int64_t oy, int two, int res, const int lo)
{
    const int64_t OW = a->OW, H = a->H;
    const float *rr[4];
    for (int i = 0; i < 4; i++) {
        const int64_t iy = oy - 1 + i;
        rr[i] = (iy >= 0 && iy < H) ? a->in + iy * OW : zero;
    }
    float *o0 = a->out + oy * OW, *o1 = two ? o0 + OW : NULL;
    const float *q0 = res ? a->res + oy * OW : NULL, *q1 = (res && two) ? q0 + OW : NULL;
#define DW_AT(x, edge)                                                                             \
    DW_SFX(dw_s1_step)(t, rr[0] + (x) - 1, rr[1] + (x) - 1, rr[2] + (x) - 1, rr[3] + (x) - 1,     \
                       (edge) | lo, res ? q0 + (x) : NULL, (res && two) ? q1 + (x) : NULL,      \
                       o0 + (x),                                                                   \
                       two ? o1 + (x) : NULL)
    if (OW == VL) {
        DW_AT(0, 3);
        return;
    }
    DW_AT(0, 1);
    for (int64_t x = VL; x + VL < OW; x += VL) DW_AT(x, 0);
    DW_AT(OW - VL, 2);
#undef DW_AT
}

/* The same for output rows oy .. oy+3 (dw_s1_step4). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1_rows4_inplace)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, const float *zero,
                            int64_t oy, int res, const int lo)
{
    const int64_t OW = a->OW, H = a->H;
    const float *r[6], *q[4];
    float *o[4];
    for (int i = 0; i < 6; i++) { /* r[i] - 1: column -1 is the unread lane of the first vector */
        const int64_t iy = oy - 1 + i;
        r[i] = ((iy >= 0 && iy < H) ? a->in + iy * OW : zero) - 1;
    }
    for (int i = 0; i < 4; i++) {
        o[i] = a->out + (oy + i) * OW;
        q[i] = res ? a->res + (oy + i) * OW : NULL;
    }
    if (OW == VL) {
        DW_SFX(dw_s1_step4)(t, r, 0, 3 | lo, q, o);
        return;
    }
    DW_SFX(dw_s1_step4)(t, r, 0, 1 | lo, q, o);
    for (int64_t x = VL; x + VL < OW; x += VL) DW_SFX(dw_s1_step4)(t, r, x, lo, q, o);
    DW_SFX(dw_s1_step4)(t, r, OW - VL, 2 | lo, q, o);
}
#endif

/* Stride 1 from a row-split plane into a row-split plane ("same" padding, W even): output column
 * 2k (E) has the taps O[k-1], E[k], O[k] and column 2k+1 (O) E[k], O[k], E[k+1], all plain
 * loads: no shuffles, and four loads per input row for two output vectors. O[-1] and E[h] (the
 * pads; in memory the row's last E and first O) are zeroed lanes (LDZ0 / LDZL). Rows outside
 * the image are `zero` (W + VL zero floats). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1split_step)(const DW_SFX(dw_taps) *t, const float *const *r, int64_t h, int64_t k,
                        const int edge, float *o)
{
    V pe = t->b, po = t->b;
    for (int i = 0; i < 3; i++) {
        const float *e = r[i] + k, *od = r[i] + h + k;
        const V om = (edge & 1) ? LDZ0(od - 1) : LD(od - 1), e0 = LD(e), o0 = LD(od);
        const V e1 = (edge & 2) ? LDZL(e + 1) : LD(e + 1);
        pe = DW_SFX(dw_krow)(t, i, om, e0, o0, pe);
        po = DW_SFX(dw_krow)(t, i, e0, o0, e1, po);
    }
    if (edge & 8) {
        ST(o + k, MAX(pe, t->lo));
        ST(o + h + k, MAX(po, t->lo));
    } else {
        ST(o + k, MIN(MAX(pe, t->lo), t->hi));
        ST(o + h + k, MIN(MAX(po, t->lo), t->hi));
    }
}

/* Four output rows (input rows r[0..6)) of one half of the row-split layout, columns k .. k+VL-1
 * of it: the E half (odd 0: taps O[k-1], E[k], O[k]) or the O half (odd 1: E[k], O[k], E[k+1]),
 * as dw_s1_step4 (each input row's taps feed the up to three outputs that use it); edge 1: lane
 * 0 of the first tap is the left pad, 2: the last lane of the third the right pad; 8: lo only. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1split_step4)(const DW_SFX(dw_taps) *t, const float *const *r, int64_t h, int64_t k,
                         const int odd, const int edge, float *const *o)
{
    V p[4];
    for (int i = 0; i < 6; i++) {
        const float *q = r[i] + k;
        V x0, x1, x2;
        if (!odd) {
            x0 = (edge & 1) ? LDZ0(q + h - 1) : LD(q + h - 1);
            x1 = LD(q);
            x2 = LD(q + h);
        } else {
            x0 = LD(q);
            x1 = LD(q + h);
            x2 = (edge & 2) ? LDZL(q + 1) : LD(q + 1);
        }
        for (int j = i - 2; j <= i; j++) {
            if (j < 0 || j > 3) continue;
            p[j] = DW_SFX(dw_krow)(t, i - j, x0, x1, x2, i == j ? t->b : p[j]);
        }
        if (i >= 2) {
            const V y = (edge & 8) ? MAX(p[i - 2], t->lo) : MIN(MAX(p[i - 2], t->lo), t->hi);
            ST(o[i - 2] + (odd ? h : 0) + k, y);
        }
    }
}

/* Output rows y .. y+3, both halves. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s1split_rows4)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, const float *zero,
                         int64_t y, const int lo)
{
    const int64_t H = a->H, W = a->W, h = W / 2;
    const float *r[6];
    float *o[4];
    for (int i = 0; i < 6; i++) {
        const int64_t iy = y - 1 + i;
        r[i] = (iy >= 0 && iy < H) ? a->in + iy * W : zero;
    }
    for (int i = 0; i < 4; i++) o[i] = a->out + (y + i) * W;
    if (h == VL) {
        DW_SFX(dw_s1split_step4)(t, r, h, 0, 0, 1 | lo, o);
        DW_SFX(dw_s1split_step4)(t, r, h, 0, 1, 2 | lo, o);
        return;
    }
    DW_SFX(dw_s1split_step4)(t, r, h, 0, 0, 1 | lo, o);
    for (int64_t k = VL;; k += VL) {
        if (k + VL > h) k = h - VL; /* the last, overlapping vector */
        DW_SFX(dw_s1split_step4)(t, r, h, k, 0, lo, o);
        if (k + VL >= h) break;
    }
    for (int64_t k = 0; k + VL < h; k += VL) DW_SFX(dw_s1split_step4)(t, r, h, k, 1, lo, o);
    DW_SFX(dw_s1split_step4)(t, r, h, h - VL, 1, 2 | lo, o);
}

/* The same plane by plane and column by column where the vectors do not fit (h < VL, or a
 * residual, which is in the plain layout). */
static void DW_SFX(dw_s1split_scalar)(const cpu_dw_args *a)
{
    const int64_t H = a->H, W = a->W, h = W / 2;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            float acc = 0.0f;
            for (int ky = 0; ky < 3; ky++) {
                const int64_t iy = y - 1 + ky;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < 3; kx++) {
                    const int64_t ix = x - 1 + kx;
                    if (ix < 0 || ix >= W) continue;
                    acc += a->w[ky * 3 + kx] * a->in[iy * W + (ix & 1) * h + ix / 2];
                }
            }
            float v = acc * a->scale + a->bias;
            if (a->res) v += a->res[y * W + x];
            v = v < a->lo ? a->lo : v;
            v = v > a->hi ? a->hi : v;
            a->out[y * W + (x & 1) * h + x / 2] = v;
        }
}

DW_ATTR static void DW_SFX(dw_s1split)(const cpu_dw_args *a)
{
    const int64_t H = a->H, W = a->W, h = W / 2;
    if (h < VL || a->res) {
        DW_SFX(dw_s1split_scalar)(a);
        return;
    }
    DW_SFX(dw_taps) t;
    DW_SFX(dw_taps_of)(a, &t);
    const float *zero = a->pad + VL; /* the zeroed pad, never written on this path */
#define DW_S1S_ROW(lo)                                                                             \
    do {                                                                                           \
        if (h == VL) {                                                                             \
            DW_SFX(dw_s1split_step)(&t, r, h, 0, 3 | (lo), o);                                     \
            break;                                                                                 \
        }                                                                                          \
        DW_SFX(dw_s1split_step)(&t, r, h, 0, 1 | (lo), o);                                         \
        for (int64_t k = VL; k + VL < h; k += VL) DW_SFX(dw_s1split_step)(&t, r, h, k, (lo), o);   \
        DW_SFX(dw_s1split_step)(&t, r, h, h - VL, 2 | (lo), o);                                    \
    } while (0)
    const int lo_only = DW_LO_ONLY && a->hi == __builtin_inff();
    int64_t y = 0;
    for (; y + 3 < H; y += 4) {
        if (lo_only)
            DW_SFX(dw_s1split_rows4)(&t, a, zero, y, 8);
        else
            DW_SFX(dw_s1split_rows4)(&t, a, zero, y, 0);
    }
    for (; y < H; y++) {
        const float *r[3];
        for (int i = 0; i < 3; i++) {
            const int64_t iy = y - 1 + i;
            r[i] = (iy >= 0 && iy < H) ? a->in + iy * W : zero;
        }
        float *o = a->out + y * W;
        if (lo_only)
            DW_S1S_ROW(8);
        else
            DW_S1S_ROW(0);
    }
#undef DW_S1S_ROW
}

DW_ATTR void DW_SFX(cpu_dw3x3s1)(const cpu_dw_args *a)
{
    if (a->split) { /* in and out (cpu_dw_split_ok) */
        DW_SFX(dw_s1split)(a);
        return;
    }
    const int64_t OH = a->OH, PW = a->OW + 2, PH = OH + 2;
    DW_SFX(dw_taps) t;
    DW_SFX(dw_taps_of)(a, &t);
    int64_t oy = 0;
    /* lo: 8 where there is no upper clamp (Relu) and DW_LO_ONLY: the steps skip its min */
#define DW_S1_ROWS(ROWS4, ROWS, res, lo, ...)                                                      \
    do {                                                                                           \
        for (; DW_ROWS4 && oy + 3 < OH; oy += 4) ROWS4(&t, a, __VA_ARGS__ oy, res, lo);            \
        for (; oy + 1 < OH; oy += 2) ROWS(&t, a, __VA_ARGS__ oy, 1, res, lo);                      \
        if (oy < OH) ROWS(&t, a, __VA_ARGS__ oy, 0, res, lo);                                      \
    } while (0)
#define DW_S1_ALL(ROWS4, ROWS, ...)                                                                \
    do {                                                                                           \
        const int hi_ = !DW_LO_ONLY || a->hi != __builtin_inff();                                  \
        if (a->res && hi_)                                                                         \
            DW_S1_ROWS(ROWS4, ROWS, 1, 0, __VA_ARGS__);                                            \
        else if (a->res)                                                                           \
            DW_S1_ROWS(ROWS4, ROWS, 1, 8, __VA_ARGS__);                                            \
        else if (hi_)                                                                              \
            DW_S1_ROWS(ROWS4, ROWS, 0, 0, __VA_ARGS__);                                            \
        else                                                                                       \
            DW_S1_ROWS(ROWS4, ROWS, 0, 8, __VA_ARGS__);                                            \
    } while (0)
#if DW_MASKED
    if (a->pt == 1 && a->pl == 1 && a->OW == a->W && OH == a->H && a->W >= VL) {
        const float *zero = a->pad + VL; /* the zeroed pad, never written on this path */
        DW_S1_ALL(DW_SFX(dw_s1_rows4_inplace), DW_SFX(dw_s1_rows_inplace), zero, );
        return;
    }
#endif
    const int64_t n = a->W < PW - a->pl ? a->W : PW - a->pl;
    for (int64_t iy = 0; iy < a->H && iy + a->pt < PH; iy++)
        DW_SFX(dw_copy)(a->pad + (iy + a->pt) * PW + a->pl, a->in + iy * a->W, n);
    DW_S1_ALL(DW_SFX(dw_s1_rows4), DW_SFX(dw_s1_rows), );
#undef DW_S1_ALL
#undef DW_S1_ROWS
}

/* Stride 2: input row iy into the even / odd column planes of the padded plane (padded column
 * p = ix + pl goes to e[p/2] if p is even, else o[p/2]), p < PW. */
DW_ATTR static inline void DW_SFX(dw_split)(const float *restrict src, int64_t W, int64_t pl,
                                            int64_t PW, float *restrict e, float *restrict o)
{
    const int64_t n = W < PW - pl ? W : PW - pl; /* image columns that land in the plane */
    float *d0 = (pl & 1) ? o + (pl - 1) / 2 : e + pl / 2; /* where X[2i] goes */
    float *d1 = (pl & 1) ? e + (pl + 1) / 2 : o + pl / 2; /* where X[2i+1] goes */
    int64_t i = 0;
    for (; 2 * i + 2 * VL <= n; i += VL) {
        V ev, od;
        SPLIT2(src + 2 * i, ev, od);
        ST(d0 + i, ev);
        ST(d1 + i, od);
    }
    if (2 * i < n && i > 0) { /* one more pair of vectors over the last whole pairs, overlapping */
        i = (n - 2 * VL) / 2;
        V ev, od;
        SPLIT2(src + 2 * i, ev, od);
        ST(d0 + i, ev);
        ST(d1 + i, od);
        i += VL;
    }
    for (; 2 * i < n; i++) { /* rows under 2 VL; else at most the odd last column */
        d0[i] = src[2 * i];
        if (2 * i + 1 < n) d1[i] = src[2 * i + 1];
    }
}

/* Outputs x .. x+VL-1 of one row: E[x], O[x], E[x+1] on padded rows 2oy .. 2oy+2 (O row r is
 * E row r + eo). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2_step)(const DW_SFX(dw_taps) *t, const float *e0, const float *e1, const float *e2,
                   int64_t eo, const float *q0, const float *q1, float *o0, float *o1)
{
    (void)q1;
    (void)o1;
    V p = DW_SFX(dw_krow)(t, 0, LD(e0), LD(e0 + eo), LD(e0 + 1), t->b);
    p = DW_SFX(dw_krow)(t, 1, LD(e1), LD(e1 + eo), LD(e1 + 1), p);
    p = DW_SFX(dw_krow)(t, 2, LD(e2), LD(e2 + eo), LD(e2 + 1), p);
    DW_SFX(dw_out)(p, t, q0, o0);
}

/* Two output rows (padded rows 2oy .. 2oy+4): the shared row 2oy+2 is loaded once. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2_step2)(const DW_SFX(dw_taps) *t, const float *e0, int64_t PE, int64_t eo,
                    const float *q0, const float *q1, float *o0, float *o1)
{
    const float *e1 = e0 + PE, *e2 = e1 + PE, *e3 = e2 + PE, *e4 = e3 + PE;
    const V m0 = LD(e2), m1 = LD(e2 + eo), m2 = LD(e2 + 1);
    V p = DW_SFX(dw_krow)(t, 0, LD(e0), LD(e0 + eo), LD(e0 + 1), t->b);
    V r = DW_SFX(dw_krow)(t, 0, m0, m1, m2, t->b);
    p = DW_SFX(dw_krow)(t, 1, LD(e1), LD(e1 + eo), LD(e1 + 1), p);
    r = DW_SFX(dw_krow)(t, 1, LD(e3), LD(e3 + eo), LD(e3 + 1), r);
    p = DW_SFX(dw_krow)(t, 2, m0, m1, m2, p);
    r = DW_SFX(dw_krow)(t, 2, LD(e4), LD(e4 + eo), LD(e4 + 1), r);
    DW_SFX(dw_out)(p, t, q0, o0);
    DW_SFX(dw_out)(r, t, q1, o1);
}

#if DW_MASKED
/* Stride 2 read in place, no split pass: the taps at columns 2x, 2x+1, 2x+2 of the row at p
 * (p = image row - 1, column -1 being the left pad) come from two pairs of loads, at p and
 * p + 2, each deinterleaved in registers by S2_EVEN / S2_ODD. Those pick within 128-bit lanes
 * (one cheap shuffle each, no lane crossing), so the three tap vectors, and every output computed
 * from them, hold outputs x.. in one fixed lane order that S2_UNPERM undoes once per output
 * vector. Edge bit 0: lane 0 of the first load is column -1 (the left pad, zero), S2_FIRST;
 * bit 1: the last lane of the load at p + 2 is one past the row (S2_EVEN does not use it),
 * S2_LAST. AVX2 reads those floats (the neighbouring row or plane, or a copy of the row where
 * that would be outside the input tensor, see dw_s2_rows_inplace) and zeroes lane 0 by a blend:
 * 13-17 % faster than its masked loads (dw 32x48x48 / 64x24x24); AVX-512's masked loads are
 * cheaper than load + blend (dw 32x48x48: 9.7 against 10.6 us), so it keeps them. */
#define DW_S2TAP(p, edge, x0, x1, x2)                                                              \
    V x0, x1, x2;                                                                                  \
    do {                                                                                           \
        const V v0_ = ((edge) & 1) ? S2_FIRST(p) : LD(p), v1_ = LD((p) + VL);                      \
        const V w0_ = LD((p) + 2), w1_ = ((edge) & 2) ? S2_LAST((p) + VL + 2) : LD((p) + VL + 2); \
        x0 = S2_EVEN(v0_, v1_);                                                                    \
        x1 = S2_ODD(v0_, v1_);                                                                     \
        x2 = S2_EVEN(w0_, w1_);                                                                    \
    } while (0)

/* Outputs x .. x+VL-1 of output row o0 from rows r[0..3) and, if o1, of o1 from r[2..5) (the
 * shared row's taps computed once); taps of row r[i] at r[i] + 2x. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2_step_inplace)(const DW_SFX(dw_taps) *t, const float *const *r, int64_t x, int edge,
                           const float *q0, const float *q1, float *o0, float *o1,
                           const int lo_only)
{
#define KROW DW_SFX(dw_krow)
    DW_S2TAP(r[0] + 2 * x, edge, a0, a1, a2);
    DW_S2TAP(r[1] + 2 * x, edge, b0, b1, b2);
    DW_S2TAP(r[2] + 2 * x, edge, c0, c1, c2);
    const V p = KROW(t, 2, c0, c1, c2, KROW(t, 1, b0, b1, b2, KROW(t, 0, a0, a1, a2, t->b)));
    if (o1) {
        DW_S2TAP(r[3] + 2 * x, edge, d0, d1, d2);
        DW_S2TAP(r[4] + 2 * x, edge, e0, e1, e2);
        const V s = KROW(t, 2, e0, e1, e2, KROW(t, 1, d0, d1, d2, KROW(t, 0, c0, c1, c2, t->b)));
        DW_SFX(dw_out_lo)(S2_UNPERM(s), t, q1 ? q1 + x : NULL, o1 + x, lo_only);
    }
    DW_SFX(dw_out_lo)(S2_UNPERM(p), t, q0 ? q0 + x : NULL, o0 + x, lo_only);
#undef KROW
}

/* Output rows oy (and oy + 1 if two) of a plane with pl == 1, W == 2 OW >= 2 VL, reading each
 * row's columns -1 .. W: rows outside the image are `zero`; the first and last image rows are
 * read at top / bot (copies where their neighbouring floats lie outside the input tensor). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2_rows_inplace)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, const float *zero,
                           const float *top, const float *bot, int64_t oy, int two,
                           const int lo_only)
{
    const int64_t OW = a->OW, W = a->W;
    const float *r[5];
    for (int i = 0; i < (two ? 5 : 3); i++) {
        const int64_t iy = 2 * oy - a->pt + i;
        const float *row = (iy > 0 && iy < a->H - 1) ? a->in + iy * W : zero;
        if (iy == 0) row = top;
        if (iy == a->H - 1) row = bot;
        r[i] = row - 1;
    }
    float *o0 = a->out + oy * OW, *o1 = two ? o0 + OW : NULL;
    const float *q0 = a->res ? a->res + oy * OW : NULL, *q1 = (a->res && two) ? q0 + OW : NULL;
    if (OW == VL) {
        DW_SFX(dw_s2_step_inplace)(t, r, 0, 3, q0, q1, o0, o1, lo_only);
        return;
    }
    DW_SFX(dw_s2_step_inplace)(t, r, 0, 1, q0, q1, o0, o1, lo_only);
    for (int64_t x = VL; x + VL < OW; x += VL)
        DW_SFX(dw_s2_step_inplace)(t, r, x, 0, q0, q1, o0, o1, lo_only);
    DW_SFX(dw_s2_step_inplace)(t, r, OW - VL, 2, q0, q1, o0, o1, lo_only);
}

#undef DW_S2TAP
#endif

/* ---- the row-split layout (CPU_SPLIT_IN / CPU_SPLIT_OUT, cpu.h) ---- */

/* Outputs x .. x+VL-1 of output row o0 from the row-split rows r[0..3) and, if o1, of o1 from
 * r[2..5): the taps at columns 2x-1, 2x, 2x+1 are O[x-1], E[x], O[x] (E = r, O = r + OW), plain
 * loads; at x == 0 lane 0 of O[x-1] is the left pad, zeroed by LDZ0. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2split_step)(const DW_SFX(dw_taps) *t, const float *const *r, int64_t OW, int64_t x,
                        const int first, const float *q0, const float *q1, float *o0, float *o1,
                        const int mode)
{
#define KROW DW_SFX(dw_krow)
#define SPTAP(p, x0, x1, x2)                                                                       \
    const V x0 = first ? LDZ0((p) + OW - 1) : LD((p) + OW + x - 1), x1 = LD((p) + x),             \
            x2 = LD((p) + OW + x)
    SPTAP(r[0], a0, a1, a2);
    SPTAP(r[1], b0, b1, b2);
    SPTAP(r[2], c0, c1, c2);
    const V p = KROW(t, 2, c0, c1, c2, KROW(t, 1, b0, b1, b2, KROW(t, 0, a0, a1, a2, t->b)));
    if (o1) {
        SPTAP(r[3], d0, d1, d2);
        SPTAP(r[4], e0, e1, e2);
        const V s = KROW(t, 2, e0, e1, e2, KROW(t, 1, d0, d1, d2, KROW(t, 0, c0, c1, c2, t->b)));
        DW_SFX(dw_out_at)(s, t, q1 ? q1 + x : NULL, o1, x, OW / 2, mode);
    }
    DW_SFX(dw_out_at)(p, t, q0 ? q0 + x : NULL, o0, x, OW / 2, mode);
#undef SPTAP
#undef KROW
}

/* Output rows oy (and oy + 1 if two) of a row-split plane, pl == 1, W == 2 OW >= 2 VL; rows
 * outside the image are `zero` (2 OW + VL zero floats). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(dw_s2split_rows)(const DW_SFX(dw_taps) *t, const cpu_dw_args *a, const float *zero,
                        int64_t oy, int two, const int mode)
{
    const int64_t OW = a->OW, W = a->W;
    const float *r[5];
    for (int i = 0; i < (two ? 5 : 3); i++) {
        const int64_t iy = 2 * oy - a->pt + i;
        r[i] = (iy >= 0 && iy < a->H) ? a->in + iy * W : zero;
    }
    float *o0 = a->out + oy * OW, *o1 = two ? o0 + OW : NULL;
    const float *q0 = a->res ? a->res + oy * OW : NULL, *q1 = (a->res && two) ? q0 + OW : NULL;
    DW_SFX(dw_s2split_step)(t, r, OW, 0, 1, q0, q1, o0, o1, mode);
    for (int64_t x = VL; x < OW; x += VL) {
        if (x + VL > OW) x = OW - VL; /* the last, overlapping vector */
        DW_SFX(dw_s2split_step)(t, r, OW, x, 0, q0, q1, o0, o1, mode);
    }
}

/* A row-split plane read by a stride-2 kernel: the plain one over the plane put back in a->tmp
 * where the geometry is not dw_s2split_rows' (rows under VL outputs; the plan never asks such a
 * conv to write the layout, backend.c split_from). */
DW_ATTR static void DW_SFX(dw_s2_from_split)(const cpu_dw_args *a,
                                             void (*plain)(const cpu_dw_args *))
{
    const int64_t W = a->W, h = W / 2;
    for (int64_t y = 0; y < a->H; y++)
        for (int64_t j = 0; j < h; j++) {
            a->tmp[y * W + 2 * j] = a->in[y * W + j];
            a->tmp[y * W + 2 * j + 1] = a->in[y * W + h + j];
        }
    cpu_dw_args b = *a;
    b.in = b.in_lo = a->tmp;
    b.in_hi = a->tmp + a->H * W;
    b.split = 0;
    plain(&b);
}

#ifdef C3_NV
/* Dense 3x3/2 conv, few input channels (a first layer), pl == 1, W == 2 OW. The image is split
 * once into per-row column planes (c3s2_split) so that output x's taps at image columns 2x-1,
 * 2x, 2x+1 are O'[x], E[x], O'[x+1]: plain unit-stride loads, no shuffles between the FMAs.
 * Each step computes C3_NC output channels x C3_NV vectors of columns (AVX2: 4 x 3 = 12
 * accumulators + 3 taps + 1 broadcast weight = its 16 registers), each tap vector feeding C3_NC
 * FMAs and each broadcast weight C3_NV. */
#define C3_NC 4

/* Split row layout, RS = 2 OW + 1 floats: E[j] = X[2j] at [0, OW), O'[j] = X[2j-1] at
 * [OW, 2 OW] with O'[0] = 0 (the left pad). */
DW_ATTR static inline void DW_SFX(c3s2_split)(const float *restrict src, int64_t OW,
                                              float *restrict d)
{
    float *e = d, *o = d + OW + 1; /* o[j] = O'[j + 1] = X[2j + 1] */
    d[OW] = 0.0f;
    for (int64_t i = 0;; i += VL) { /* OW >= VL: the last pair of vectors overlaps */
        if (i + VL > OW) i = OW - VL;
        V ev, od;
        SPLIT2(src + 2 * i, ev, od);
        ST(e + i, ev);
        ST(o + i, od);
        if (i + VL >= OW) break;
    }
}

/* Output channels m .. m+C3_NC-1, columns x0 .. x0 + nv VL - 1 of output row oy (nv: C3_NV, or 1
 * for rows narrower than C3_NV vectors; a constant at each call); r[c*3+ky]
 * are the split input rows (a zero row outside the image), wq the group's weights as
 * wq[(c*9 + ky*3 + kx) * C3_NC + j]: every load is a base plus a constant, so the loop needs no
 * more general registers than it has (with a runtime stride per channel GCC spilled). */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(c3s2_step)(const cpu_c3s2_args *a, const float *const *r, const float *wq, int64_t m,
                  int64_t oy, int64_t x0, const int nv, const int split)
{
    V acc[C3_NC][C3_NV];
    for (int j = 0; j < C3_NC; j++)
        for (int v = 0; v < nv; v++) acc[j][v] = SET1(a->bias ? a->bias[m + j] : 0.0f);
    const int64_t OW = a->OW;
    for (int64_t ck = 0; ck < 3 * a->C; ck++, wq += 3 * C3_NC) {
        const float *p = r[ck] + x0;
#ifdef C3_ROW_FMAS
        if (nv == C3_NV) {
            C3_ROW_FMAS(acc, p, OW, wq);
            continue;
        }
#endif
        for (int kx = 0; kx < 3; kx++) {
            const int64_t off = kx == 0 ? OW : (kx == 1 ? 0 : OW + 1);
            V t[C3_NV];
            for (int v = 0; v < nv; v++) t[v] = LD(p + off + v * VL);
            for (int j = 0; j < C3_NC; j++) {
                const V w = SET1(wq[kx * C3_NC + j]);
                for (int v = 0; v < nv; v++) acc[j][v] = FMA(w, t[v], acc[j][v]);
            }
        }
    }
    const V lo = SET1(a->lo), hi = SET1(a->hi);
    /* the row-split layout (cpu.h) through a local tile: permuting the accumulators on the way
     * out took registers the K loop needs (GCC then kept them in memory: stem 23 -> 30 us) */
    float tile[C3_NC * C3_NV * VL];
    for (int j = 0; j < C3_NC; j++) {
        const int64_t row = (m + j) * a->OH * OW + oy * OW + x0;
        for (int v = 0; v < nv; v++) {
            V y = acc[j][v];
            if (a->res) y = ADD(y, LD(a->res + row + v * VL));
            ST(split ? tile + (j * C3_NV + v) * VL : a->out + row + v * VL, MIN(MAX(y, lo), hi));
        }
    }
    for (int j = 0; split && j < C3_NC; j++) {
        float *o = a->out + (m + j) * a->OH * OW + oy * OW;
        const float *tj = tile + j * C3_NV * VL;
        int v = 0;
        for (; v + 1 < nv; v += 2) { /* x is even */
            const int64_t x = x0 + v * VL;
            V e, od;
            SPLIT2(tj + v * VL, e, od);
            ST(o + x / 2, e);
            ST(o + OW / 2 + x / 2, od);
        }
        for (; v < nv; v++) {
            const int64_t x = x0 + v * VL;
            ST_SPLIT(o + x / 2, o + OW / 2 + x / 2, LD(tj + v * VL));
        }
    }
}

DW_ATTR int DW_SFX(cpu_conv3x3s2)(const cpu_c3s2_args *a)
{
    const int64_t OW = a->OW, W = a->W, H = a->H, C = a->C, RS = 2 * OW + 1, K = C * 9;
    if (OW < VL || W != 2 * OW || C > CPU_C3S2_MAX_C || a->M % C3_NC) return 0;
    if (!a->out) return 1;
    float *zero = a->split + C * H * RS, *wq = zero + RS;
    for (int64_t i = 0; i < RS; i++) zero[i] = 0.0f;
    for (int64_t cy = 0; cy < C * H; cy++)
        DW_SFX(c3s2_split)(a->in + cy * W, OW, a->split + cy * RS);
    for (int64_t m = 0; m < a->M; m += C3_NC)
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < C3_NC; j++) /* the scale in the weights, the bias in the start */
                wq[(m * K) + k * C3_NC + j] =
                    a->w[(m + j) * K + k] * (a->scale ? a->scale[m + j] : 1.0f);
    /* steps of nv vectors at x0 = 0, nv VL, ..., the last at OW - nv VL (overlapping) */
    const int nv = OW >= C3_NV * VL ? C3_NV : 1;
    const int64_t step = nv * VL;
    for (int64_t oy = 0; oy < a->OH; oy++) {
        const float *r[3 * CPU_C3S2_MAX_C];
        for (int64_t c = 0; c < C; c++)
            for (int ky = 0; ky < 3; ky++) {
                const int64_t iy = 2 * oy - a->pt + ky;
                r[c * 3 + ky] = (iy >= 0 && iy < H) ? a->split + (c * H + iy) * RS : zero;
            }
        for (int64_t m = 0; m < a->M; m += C3_NC)
            for (int64_t x0 = 0;; x0 += step) {
                if (x0 + step > OW) x0 = OW - step;
                if (nv == C3_NV && a->split_out)
                    DW_SFX(c3s2_step)(a, r, wq + m * K, m, oy, x0, C3_NV, 1);
                else if (nv == C3_NV)
                    DW_SFX(c3s2_step)(a, r, wq + m * K, m, oy, x0, C3_NV, 0);
                else
                    DW_SFX(c3s2_step)(a, r, wq + m * K, m, oy, x0, 1, a->split_out);
                if (x0 + step >= OW) break;
            }
    }
    return 1;
}
#undef C3_NC
#endif

/* Over the even columns E (PH rows of OW + 1) then the odd columns O (PH rows of OW + 1, the
 * last unused) of the padded plane, so output x reads E[x], O[x], E[x+1]: unit-stride loads. */
DW_ATTR void DW_SFX(cpu_dw3x3s2)(const cpu_dw_args *a)
{
    const int64_t OH = a->OH, OW = a->OW, PE = OW + 1, PH = 2 * OH + 1, PW = 2 * OW + 1;
    const int64_t eo = PH * PE;
    DW_SFX(dw_taps) t;
    DW_SFX(dw_taps_of)(a, &t);
    int64_t oy = 0;
    if (a->split & CPU_SPLIT_IN) {
        if (!(a->pl == 1 && a->W == 2 * OW && OW >= VL)) {
            DW_SFX(dw_s2_from_split)(a, DW_SFX(cpu_dw3x3s2));
            return;
        }
        const float *zero = a->pad + VL; /* the zeroed pad, never written on this path */
        /* mode: 8 no upper clamp (DW_LO_ONLY), 16 the output row-split too (dw_out_at) */
#define DW_S2S_ALL(mode)                                                                           \
    do {                                                                                           \
        for (; oy + 1 < OH; oy += 2) DW_SFX(dw_s2split_rows)(&t, a, zero, oy, 1, mode);            \
        if (oy < OH) DW_SFX(dw_s2split_rows)(&t, a, zero, oy, 0, mode);                            \
    } while (0)
        const int lo_only = DW_LO_ONLY && a->hi == __builtin_inff();
        if (a->split & CPU_SPLIT_OUT) {
            if (lo_only)
                DW_S2S_ALL(24);
            else
                DW_S2S_ALL(16);
        } else if (lo_only) {
            DW_S2S_ALL(8);
        } else {
            DW_S2S_ALL(0);
        }
#undef DW_S2S_ALL
        return;
    }
#if DW_MASKED
    if (a->pl == 1 && a->W == 2 * OW && OW >= VL) {
        const float *zero = a->pad + VL; /* the zeroed pad, never written on this path */
        /* the rows whose column -1 / W are outside the input tensor, copied (CPU_DW_EDGE_FLOATS) */
        float *edge = a->pad + PH * (PW + 1) + CPU_DW_PAD_SLACK + 16;
        const int64_t W = a->W;
        const float *top = a->in, *bot = a->in + (a->H - 1) * W;
        if (top - 1 < a->in_lo) {
            memcpy(edge, top, (size_t)W * sizeof(float));
            top = edge;
        }
        if (bot + W + 1 > a->in_hi) {
            memcpy(edge + W + 32, bot, (size_t)W * sizeof(float));
            bot = edge + W + 32;
        }
        /* Relu / no clamp without the upper bound's min: 3-5 % (dw 32x48x48, 64x24x24) */
#define DW_S2_ALL(lo_only)                                                                         \
    do {                                                                                           \
        for (; oy + 1 < OH; oy += 2)                                                               \
            DW_SFX(dw_s2_rows_inplace)(&t, a, zero, top, bot, oy, 1, lo_only);                     \
        if (oy < OH) DW_SFX(dw_s2_rows_inplace)(&t, a, zero, top, bot, oy, 0, lo_only);            \
    } while (0)
        if (DW_LO_ONLY && a->hi == __builtin_inff())
            DW_S2_ALL(1);
        else
            DW_S2_ALL(0);
#undef DW_S2_ALL
        return;
    }
#endif
    for (int64_t iy = 0; iy < a->H && iy + a->pt < PH; iy++) {
        float *e = a->pad + (iy + a->pt) * PE;
        DW_SFX(dw_split)(a->in + iy * a->W, a->W, a->pl, PW, e, e + eo);
    }
    if (OW >= VL)
        for (; oy + 1 < OH; oy += 2) {
            const float *e0 = a->pad + 2 * oy * PE;
            float *o0 = a->out + oy * OW;
            const float *q0 = a->res ? a->res + oy * OW : NULL;
            for (int64_t x = 0;; x += VL) {
                if (x + VL > OW) x = OW - VL;
                DW_SFX(dw_s2_step2)(&t, e0 + x, PE, eo, q0 ? q0 + x : NULL,
                                    q0 ? q0 + OW + x : NULL, o0 + x, o0 + OW + x);
                if (x + VL >= OW) break;
            }
        }
    for (; oy < OH; oy++) {
        const float *e0 = a->pad + 2 * oy * PE, *e1 = e0 + PE, *e2 = e1 + PE;
        float *o0 = a->out + oy * OW;
        const float *q0 = a->res ? a->res + oy * OW : NULL;
        if (OW < VL) {
            const float *q1 = NULL;
            float *o1 = NULL;
            DW_NARROW(DW_SFX(dw_s2_step), OW, q0, q1, o0, o1, &t, e0, e1, e2, eo);
            continue;
        }
        for (int64_t x = 0;; x += VL) {
            if (x + VL > OW) x = OW - VL;
            DW_SFX(dw_s2_step)(&t, e0 + x, e1 + x, e2 + x, eo, q0 ? q0 + x : NULL, NULL, o0 + x,
                               NULL);
            if (x + VL >= OW) break;
        }
    }
}


/* d[0..n) = max over the rows r[0 .. nr) (nr >= 1) in one pass, in vectors (the last one
 * overlapping), scalars only below VL. */
DW_ATTR static inline void DW_SFX(pool_rows_max)(float *restrict d, const float *const *r, int nr,
                                                 int64_t n)
{
    int64_t j = 0;
    /* Windows of 2 and 3 rows (all the models') straight-line: a loop over the rows per vector
     * ran at half the speed. */
#define DW_POOL_ROWS(EXPR)                                                                         \
    for (;; j += VL) {                                                                             \
        if (j + VL > n) j = n - VL;                                                                \
        ST(d + j, EXPR);                                                                           \
        if (j + VL >= n) return;                                                                   \
    }
    if (n >= VL) {
        if (nr == 2) DW_POOL_ROWS(MAX(LD(r[1] + j), LD(r[0] + j)))
        if (nr == 3) DW_POOL_ROWS(MAX(LD(r[2] + j), MAX(LD(r[1] + j), LD(r[0] + j))))
        for (;; j += VL) {
            if (j + VL > n) j = n - VL;
            V v = LD(r[0] + j);
            for (int t = 1; t < nr; t++) v = MAX(LD(r[t] + j), v);
            ST(d + j, v);
            if (j + VL >= n) return;
        }
    }
#undef DW_POOL_ROWS
    for (; j < n; j++) {
        float v = r[0][j];
        for (int t = 1; t < nr; t++) v = r[t][j] > v ? r[t][j] : v;
        d[j] = v;
    }
}

/* Outputs x .. x+VL-1 of a row from the row max q: max(q[2x], q[2x+1] (, q[2x+2])). */
DW_ATTR static inline __attribute__((always_inline)) void DW_SFX(pool_s2_step)(const float *q,
                                                                              int k3, float *o)
{
    V e, od, m;
    SPLIT2(q, e, od);
    m = MAX(e, od);
    if (k3) {
        V e1;
        SPLIT2(q + 2, e1, od);
        m = MAX(e1, m);
    }
    ST(o, m);
}

/* Outputs 0 .. VL-1 of a row straight from the window's input rows r[0 .. nr) (nr a constant
 * at the call where it can be): the max down the rows over two vectors (and, kw 3, the two at
 * + 2), then across each output's columns from their even / odd split, all in registers. */
DW_ATTR static inline __attribute__((always_inline)) void
DW_SFX(pool_direct_step)(const float *const *r, const int nr, const int k3, float *o)
{
    V a = LD(r[0]), b = LD(r[0] + VL), c = a, d = b, e, od;
    if (k3) {
        c = LD(r[0] + 2);
        d = LD(r[0] + 2 + VL);
    }
    for (int t = 1; t < nr; t++) {
        a = MAX(LD(r[t]), a);
        b = MAX(LD(r[t] + VL), b);
        if (k3) {
            c = MAX(LD(r[t] + 2), c);
            d = MAX(LD(r[t] + 2 + VL), d);
        }
    }
    SPLIT2V(a, b, e, od);
    V m = MAX(e, od);
    if (k3) {
        SPLIT2V(c, d, e, od);
        m = MAX(e, m);
    }
    ST(o, m);
}

/* Stride-2 MaxPool over rows narrower than a vector (OW < VL) with no column padding: each output
 * row straight from its input rows, one vector stored over the OW outputs (the next row's store
 * overwrites the rest; output rows are contiguous), no row buffer. Reads run up to 2 VL + 2 floats
 * from a row's start, into the rows after it; the rows that would read or write past the tensor
 * go through local tiles. 128x12x12 2x2/2 (the edge CNN): the row-buffer path's two passes cost
 * more in per-row overhead than the maxima themselves. */
DW_ATTR static void DW_SFX(maxpool_s2_narrow)(const cpu_pool_geom *g, const float *x, float *y)
{
    const int64_t OW = g->OW, OH = g->OH, W = g->W, NC = g->N * g->C, TW = 2 * VL + 4;
    const float *const xend = x + NC * g->H * W;
    float *const yend = y + NC * OH * OW;
    const int k3 = g->kw == 3;
    float tile[CPU_POOL_MAX_KH][2 * VL + 4], to[VL];
    for (int64_t i = 0; i < CPU_POOL_MAX_KH; i++)
        for (int64_t j = 0; j < TW; j++) tile[i][j] = -FLT_MAX;
    for (int64_t nc = 0; nc < NC; nc++) {
        const float *p = x + nc * g->H * W;
        for (int64_t oy = 0; oy < OH; oy++) {
            const float *r[CPU_POOL_MAX_KH];
            int nr = 0;
            for (int64_t ky = 0; ky < g->kh; ky++) {
                const int64_t iy = oy * g->sh - g->pt + ky * g->dh;
                if (iy >= 0 && iy < g->H) r[nr++] = p + iy * W;
            }
            float *o = y + (nc * OH + oy) * OW;
            if (!nr) {
                for (int64_t ox = 0; ox < OW; ox++) o[ox] = -FLT_MAX;
                continue;
            }
            if (r[nr - 1] + TW > xend) /* W <= 2 VL here: a row fits a tile row */
                for (int t = 0; t < nr; t++) {
                    memcpy(tile[t], r[t], (size_t)W * sizeof(float));
                    r[t] = tile[t];
                }
            float *d = o + VL > yend ? to : o;
            if (nr == 2)
                DW_SFX(pool_direct_step)(r, 2, k3, d);
            else if (nr == 3)
                DW_SFX(pool_direct_step)(r, 3, k3, d);
            else
                DW_SFX(pool_direct_step)(r, nr, k3, d);
            if (d == to) memcpy(o, to, (size_t)OW * sizeof(float));
        }
    }
}

/* MaxPool with column stride 2, a window 2 or 3 columns and at most CPU_POOL_MAX_KH rows (no
 * dilation), a chunk of
 * planes at a time: first the max over each output row's window rows into rowm (rows of PW,
 * -FLT_MAX where padded, see cpu_maxpool_scratch), then over each output's columns from the
 * even / odd split of those rows. Two passes over the chunk rather than one per row: a row read
 * right after its (overlapping) vector stores would stall on store-to-load forwarding. */
DW_ATTR void DW_SFX(cpu_maxpool_s2)(const cpu_pool_geom *g, const float *x, float *y, float *rowm)
{
    const int64_t OW = g->OW, OH = g->OH, PW = (OW - 1) * 2 + g->kw, NC = g->N * g->C;
    if (OW < VL && g->pl == 0 && PW <= g->W && g->W <= 2 * VL) { /* narrow, no column padding */
        DW_SFX(maxpool_s2_narrow)(g, x, y);
        return;
    }
    const int64_t px0 = g->pl < PW ? g->pl : PW;
    const int64_t px1 = (g->W + g->pl) < PW ? (g->W + g->pl) : PW;
    const int64_t nin = px1 > px0 ? px1 - px0 : 0;
    const int64_t chunk = cpu_maxpool_chunk(g), rows = chunk * OH;
    const int k3 = g->kw == 3;
    for (int64_t r = 0; r < rows; r++) { /* borders: the same for every chunk */
        for (int64_t px = 0; px < px0; px++) rowm[r * PW + px] = -FLT_MAX;
        for (int64_t px = px0 + nin; px < PW; px++) rowm[r * PW + px] = -FLT_MAX;
    }
    for (int64_t px = rows * PW; px < rows * PW + CPU_POOL_SLACK; px++) rowm[px] = -FLT_MAX;
    for (int64_t nc0 = 0; nc0 < NC; nc0 += chunk) {
        const int64_t nk = NC - nc0 < chunk ? NC - nc0 : chunk;
        for (int64_t k = 0; k < nk; k++) {
            const float *p = x + (nc0 + k) * g->H * g->W;
            for (int64_t oy = 0; oy < OH; oy++) {
                float *rm = rowm + (k * OH + oy) * PW + px0;
                const float *r[CPU_POOL_MAX_KH];
                int nr = 0;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->pt + ky * g->dh;
                    if (iy >= 0 && iy < g->H) r[nr++] = p + iy * g->W + (px0 - g->pl);
                }
                if (nr)
                    DW_SFX(pool_rows_max)(rm, r, nr, nin);
                else
                    for (int64_t t = 0; t < nin; t++) rm[t] = -FLT_MAX;
            }
        }
        /* Output rows are contiguous: a row narrower than VL is stored whole, its tail
         * overwritten by the next row; the rows within VL of the tensor's end go through a local tile. */
        float *o = y + nc0 * OH * OW, *const end = y + NC * OH * OW;
        for (int64_t r = 0; r < nk * OH; r++, o += OW) {
            const float *q = rowm + r * PW;
            if (OW < VL) {
                if (end - o >= VL) {
                    DW_SFX(pool_s2_step)(q, k3, o);
                } else {
                    float t_[VL];
                    DW_SFX(pool_s2_step)(q, k3, t_);
                    for (int64_t ox = 0; ox < OW; ox++) o[ox] = t_[ox];
                }
                continue;
            }
            for (int64_t ox = 0;; ox += VL) {
                if (ox + VL > OW) ox = OW - VL;
                DW_SFX(pool_s2_step)(q + 2 * ox, k3, o + ox);
                if (ox + VL >= OW) break;
            }
        }
    }
}

#undef DW_NARROW
#undef DW_TAP3

/* The parameters are the includer's, set anew for each kernel set. */
#undef DW_SFX
#undef DW_ATTR
#undef V
#undef VL
#undef LD
#undef ST
#undef SET1
#undef MUL
#undef ADD
#undef FMA
#undef MAX
#undef MIN
#undef SPLIT2
#undef SPLIT2V
#undef DW_MASKED
#undef DW_ROWS4
#undef DW_LO_ONLY
#undef MLD_FIRST0
#undef MLD_LAST0
#undef S2_FIRST
#undef S2_LAST
#undef S2_EVEN
#undef S2_ODD
#undef S2_UNPERM
#undef C3_NV
#undef C3_ROW_FMAS
#undef LDZ0
#undef LDZL
#undef ST_SPLIT
