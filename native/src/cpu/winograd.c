/*
 * winograd.c — 3x3 stride-1 convolution as Winograd F(2x2, 3x3) for the reference CPU backend.
 *
 * Each 2x2 output tile comes from a 4x4 input tile: Y = A^T [ (G g G^T) . (B^T d B) ] A, so the
 * 9 multiply-adds per output pixel and input channel become 16 per 4 pixels (2.25x fewer). The
 * products summed over channels are 16 GEMMs, U[e] (M x C) x V[e] (C x tiles), on the packed
 * SGEMM (B read in place where the ISA's kernel can). The weight transform U = G g G^T, packed
 * for the SGEMM, is done once per weight set (cpu_wino_prepare, called from weights_prepare); a
 * call without prepared weights still does it inline. The transforms only add, subtract and halve, so results stay within float
 * rounding of the direct conv (the tests hold it to the same tolerance).
 *
 * Layout: tiles are numbered t = ty*TWp + tx with TWp = TW + 1 (one junk tile per tile row), and
 * the padded input is split into 2x2 polyphase planes P[rp][cp][i][j] = Xpad[2i+rp][2j+cp] with
 * rows TWp long. Then input (r, k) of tile t is P[r&1][k&1][t + (r>>1)*TWp + (k>>1)]: every
 * transform is element-wise over contiguous arrays of tiles and vectorises fully. Transforms are
 * compiled per ISA.
 */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

static int64_t a16(int64_t x) { return (x + 15) / 16 * 16; }

typedef struct wgeo {
    int64_t TH, TW, TWp, Tp; /* tiles; Tp = TH * TWp (with the junk column of tiles) */
    int64_t PP;              /* floats per polyphase plane: (TH + 1) * TWp, + slack */
    int64_t es_u, es_v, es_m; /* element strides of U[e], V[e], Mo[e] (padded: 16 streams a power
                                  of two apart would conflict in the cache sets) */
} wgeo;

/* Tile rows per band: V and Mo of one band stay within ~2 MB (large images are done in bands of
 * tile rows, so scratch does not grow with the image). */
static int64_t wino_band_rows(const cpu_conv_geom *g)
{
    const int64_t TH = (g->OH + 1) / 2, TWp = (g->OW + 1) / 2 + 1;
    int64_t tb = (512 * 1024) / (16 * (g->C + g->M) * TWp);
    if (tb < 1) tb = 1;
    return tb < TH ? tb : TH;
}

/* Geometry of a band of th tile rows (strides sized for the largest band). */
static wgeo wino_geo(const cpu_conv_geom *g)
{
    wgeo o;
    o.TH = wino_band_rows(g);
    o.TW = (g->OW + 1) / 2;
    o.TWp = o.TW + 1;
    o.Tp = o.TH * o.TWp;
    o.PP = a16((o.TH + 1) * o.TWp + 1);
    o.es_u = a16(g->M * g->C) + 16;
    o.es_v = a16(g->C * o.Tp) + 16;
    o.es_m = a16(g->M * o.Tp) + 16;
    return o;
}

int cpu_wino_ok(const cpu_conv_geom *g)
{
    return g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->dh == 1 && g->dw == 1 &&
           g->group == 1 && g->C >= 16 && g->M >= 16 && g->OH >= 4 && g->OW >= 4;
}

size_t cpu_wino_scratch(const cpu_isa *isa, const cpu_conv_geom *g)
{
    const wgeo o = wino_geo(g);
    return (size_t)(16 * o.es_u + 16 * o.es_v + 16 * o.es_m + 4 * o.PP +
                    a16(9 * g->C) + 4 * a16(o.Tp) + a16(2 * g->C)) +
           cpu_sgemm_scratch(isa, g->M, o.Tp, g->C);
}

#define LDV(x, p) memcpy(&(x), (p), sizeof(x))
#define STV(p, x) memcpy((p), &(x), sizeof(x))

/* U[e][m][c] for one m from wt[j][c] (the m's 3x3 kernels, transposed), G = [[1,0,0],
 * [.5,.5,.5],[.5,-.5,.5],[0,0,1]]: U = G g G^T. Vectorised over c like the transforms below. */
#define WT_XFORM_STEP(VT, c)                                                                       \
    do {                                                                                           \
        VT k[9], r;                                                                                \
        for (int jj = 0; jj < 9; jj++) LDV(k[jj], wt + jj * C + (c));                              \
        VT g[4][3];                                                                                \
        for (int jj = 0; jj < 3; jj++) {                                                           \
            g[0][jj] = k[jj];                                                                      \
            g[1][jj] = (k[jj] + k[3 + jj] + k[6 + jj]) * 0.5f;                                     \
            g[2][jj] = (k[jj] - k[3 + jj] + k[6 + jj]) * 0.5f;                                     \
            g[3][jj] = k[6 + jj];                                                                  \
        }                                                                                          \
        for (int ii = 0; ii < 4; ii++) {                                                           \
            r = g[ii][0];                                                                          \
            STV(U + (4 * ii + 0) * es + mC + (c), r);                                              \
            r = (g[ii][0] + g[ii][1] + g[ii][2]) * 0.5f;                                           \
            STV(U + (4 * ii + 1) * es + mC + (c), r);                                              \
            r = (g[ii][0] - g[ii][1] + g[ii][2]) * 0.5f;                                           \
            STV(U + (4 * ii + 2) * es + mC + (c), r);                                              \
            r = g[ii][2];                                                                          \
            STV(U + (4 * ii + 3) * es + mC + (c), r);                                              \
        }                                                                                          \
    } while (0)

#define DEF_WT_XFORM(NAME, ATTR, VT)                                                               \
    ATTR static void NAME(const float *wt, int64_t C, float *U, int64_t es, int64_t m)            \
    {                                                                                              \
        const int64_t VL = (int64_t)(sizeof(VT) / sizeof(float)), mC = m * C;                      \
        int64_t c = 0;                                                                             \
        for (; c + VL <= C; c += VL) WT_XFORM_STEP(VT, c);                                         \
        for (; c < C; c++) WT_XFORM_STEP(float, c);                                                \
    }

/* V[e][c][t] = (B^T d B)[e] for all tiles of channel c, from its polyphase planes P. Written once
 * over a type VT (a GCC vector or plain float: the same operators, memcpy loads and stores), so
 * each ISA gets full-width vectors plus a scalar tail; 32 pointer streams are too many for the
 * auto-vectoriser's alias checks. */
#define IN_XFORM_STEP(VT, t)                                                                       \
    do {                                                                                           \
        VT d[4][4], x[4][4], r;                                                                    \
        for (int rr = 0; rr < 4; rr++)                                                             \
            for (int kk = 0; kk < 4; kk++)                                                         \
                LDV(d[rr][kk], P + ((rr & 1) * 2 + (kk & 1)) * PP + (rr >> 1) * TWp + (kk >> 1) +  \
                                   (t));                                                           \
        for (int kk = 0; kk < 4; kk++) {                                                           \
            x[0][kk] = d[0][kk] - d[2][kk];                                                        \
            x[1][kk] = d[1][kk] + d[2][kk];                                                        \
            x[2][kk] = d[2][kk] - d[1][kk];                                                        \
            x[3][kk] = d[1][kk] - d[3][kk];                                                        \
        }                                                                                          \
        for (int ii = 0; ii < 4; ii++) {                                                           \
            r = x[ii][0] - x[ii][2];                                                               \
            STV(V + (4 * ii + 0) * es + cT + (t), r);                                              \
            r = x[ii][1] + x[ii][2];                                                               \
            STV(V + (4 * ii + 1) * es + cT + (t), r);                                              \
            r = x[ii][2] - x[ii][1];                                                               \
            STV(V + (4 * ii + 2) * es + cT + (t), r);                                              \
            r = x[ii][1] - x[ii][3];                                                               \
            STV(V + (4 * ii + 3) * es + cT + (t), r);                                              \
        }                                                                                          \
    } while (0)

#define DEF_IN_XFORM(NAME, ATTR, VT)                                                               \
    ATTR static void NAME(const float *P, const wgeo *o, float *V, int64_t c)                      \
    {                                                                                              \
        const int64_t TWp = o->TWp, Tp = o->Tp, PP = o->PP, es = o->es_v, cT = c * Tp;             \
        const int64_t VL = (int64_t)(sizeof(VT) / sizeof(float));                                  \
        int64_t t = 0;                                                                             \
        for (; t + VL <= Tp; t += VL) IN_XFORM_STEP(VT, t);                                        \
        for (; t < Tp; t++) IN_XFORM_STEP(float, t);                                               \
    }

/* Output transform, first half: A^T Mo A plus the bias (the scale is in U) for every tile of
 * channel m into yb[2r + c][t] (rows a16(Tp) apart). */
#define OUT_XFORM_STEP(VT, t)                                                                      \
    do {                                                                                           \
        VT q[16], sv[4], dv[4], r;                                                                 \
        for (int e = 0; e < 16; e++) LDV(q[e], Mo + e * es + mT + (t));                            \
        for (int jj = 0; jj < 4; jj++) {                                                           \
            sv[jj] = q[jj] + q[4 + jj] + q[8 + jj];                                                \
            dv[jj] = q[4 + jj] - q[8 + jj] - q[12 + jj];                                           \
        }                                                                                          \
        r = (sv[0] + sv[1] + sv[2]) + b;                                                           \
        STV(yb + (t), r);                                                                          \
        r = (sv[1] - sv[2] - sv[3]) + b;                                                           \
        STV(yb + ys + (t), r);                                                                     \
        r = (dv[0] + dv[1] + dv[2]) + b;                                                           \
        STV(yb + 2 * ys + (t), r);                                                                 \
        r = (dv[1] - dv[2] - dv[3]) + b;                                                           \
        STV(yb + 3 * ys + (t), r);                                                                 \
    } while (0)

#define DEF_OUT_XFORM(NAME, ATTR, VT)                                                              \
    ATTR static void NAME(const float *Mo, const wgeo *o, int64_t m, float b, float *yb)           \
    {                                                                                              \
        const int64_t Tp = o->Tp, es = o->es_m, mT = m * Tp, ys = a16(Tp);                         \
        const int64_t VL = (int64_t)(sizeof(VT) / sizeof(float));                                  \
        int64_t t = 0;                                                                             \
        for (; t + VL <= Tp; t += VL) OUT_XFORM_STEP(VT, t);                                       \
        for (; t < Tp; t++) OUT_XFORM_STEP(float, t);                                              \
    }

/* Output transform, second half: interleave yb's four tile planes into the output rows of
 * channel m, adding the residual and clamping. */
static inline __attribute__((always_inline)) void out_store_body(const wgeo *o, float *y,
                                                                 int64_t OH, int64_t OW,
                                                                 const float *res, float lo,
                                                                 float hi, const float *yb)
{
    const int64_t TWp = o->TWp, ys = a16(o->Tp);
    const float *y00 = yb, *y01 = yb + ys, *y10 = yb + 2 * ys, *y11 = yb + 3 * ys;
    const int64_t full = OW / 2;
    for (int64_t oy = 0; oy < OH; oy++) {
        const int64_t ty = oy >> 1;
        const float *restrict ya = ((oy & 1) ? y10 : y00) + ty * TWp;
        const float *restrict yc = ((oy & 1) ? y11 : y01) + ty * TWp;
        float *restrict orow = y + oy * OW;
        const float *restrict rr = res ? res + oy * OW : NULL;
        if (rr) {
            for (int64_t tx = 0; tx < full; tx++) {
                float u = ya[tx] + rr[2 * tx], v = yc[tx] + rr[2 * tx + 1];
                u = u < lo ? lo : u;
                v = v < lo ? lo : v;
                orow[2 * tx] = u > hi ? hi : u;
                orow[2 * tx + 1] = v > hi ? hi : v;
            }
        } else {
            for (int64_t tx = 0; tx < full; tx++) {
                float u = ya[tx], v = yc[tx];
                u = u < lo ? lo : u;
                v = v < lo ? lo : v;
                orow[2 * tx] = u > hi ? hi : u;
                orow[2 * tx + 1] = v > hi ? hi : v;
            }
        }
        if (OW & 1) {
            float u = ya[full] + (rr ? rr[2 * full] : 0.0f);
            u = u < lo ? lo : u;
            orow[2 * full] = u > hi ? hi : u;
        }
    }
}

#define WT_ARGS const float *wt, int64_t C, float *U, int64_t es, int64_t m
#define OUT_ARGS                                                                                   \
    const wgeo *o, float *y, int64_t OH, int64_t OW, const float *res, float lo, float hi,         \
        const float *yb
#define OUT_PASS o, y, OH, OW, res, lo, hi, yb

typedef float wv4 __attribute__((vector_size(16)));
DEF_WT_XFORM(wt_xform_portable, , wv4)
DEF_IN_XFORM(in_xform_portable, , wv4)
DEF_OUT_XFORM(out_xform_portable, , wv4)
static void out_store_portable(OUT_ARGS) { out_store_body(OUT_PASS); }
#if defined(CPU_HAVE_X86)
typedef float wv8 __attribute__((vector_size(32)));
typedef float wv16 __attribute__((vector_size(64)));
DEF_WT_XFORM(wt_xform_avx512, __attribute__((target("avx512f"))), wv16)
DEF_IN_XFORM(in_xform_avx512, __attribute__((target("avx512f"))), wv16)
DEF_OUT_XFORM(out_xform_avx512, __attribute__((target("avx512f"))), wv16)
__attribute__((target("avx512f"))) static void out_store_avx512(OUT_ARGS)
{
    out_store_body(OUT_PASS);
}
DEF_WT_XFORM(wt_xform_avx2, __attribute__((target("avx2,fma"))), wv8)
DEF_IN_XFORM(in_xform_avx2, __attribute__((target("avx2,fma"))), wv8)
DEF_OUT_XFORM(out_xform_avx2, __attribute__((target("avx2,fma"))), wv8)
__attribute__((target("avx2,fma"))) static void out_store_avx2(OUT_ARGS)
{
    out_store_body(OUT_PASS);
}
#endif

typedef void (*wt_xform_fn)(WT_ARGS);

static wt_xform_fn wt_xform_for(const cpu_isa *isa)
{
#if defined(CPU_HAVE_X86)
    if (isa == cpu_isa_avx512()) return wt_xform_avx512;
    if (isa == cpu_isa_avx2()) return wt_xform_avx2;
#endif
    (void)isa;
    return wt_xform_portable;
}

/* U[e] = (G g G^T)[e] for every (m, c): M x C matrices es_u apart. wt: 9*C floats of scratch. */
static void wino_weights(const cpu_isa *isa, const cpu_conv_geom *g, const float *w, float *U,
                         int64_t es_u, float *wt)
{
    const wt_xform_fn wt_x = wt_xform_for(isa);
    const int64_t C = g->C;
    for (int64_t m = 0; m < g->M; m++) {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < 9; j++) wt[j * C + c] = w[(m * C + c) * 9 + j];
        wt_x(wt, C, U, es_u, m);
    }
}

size_t cpu_wino_prepared_floats(const cpu_isa *isa, const cpu_conv_geom *g)
{
    return 16 * cpu_sgemm_packed_a_floats(isa, g->M, g->C);
}

int cpu_wino_prepare(const cpu_isa *isa, const cpu_conv_geom *g, const float *w,
                     const float *row_scale, float *dst)
{
    const wgeo o = wino_geo(g);
    float *U = malloc((size_t)(16 * o.es_u + a16(9 * g->C)) * sizeof(float));
    if (!U) return -1;
    wino_weights(isa, g, w, U, o.es_u, U + 16 * o.es_u);
    const size_t pa = cpu_sgemm_packed_a_floats(isa, g->M, g->C);
    for (int e = 0; e < 16; e++)
        cpu_sgemm_pack_a(isa, U + e * o.es_u, g->C, 1, g->M, g->C, row_scale, dst + e * pa);
    free(U);
    return 0;
}

void cpu_conv_wino(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                   const float *wp, float *y, const cpu_epi *epi, float *scratch)
{
    void (*in_x)(const float *, const wgeo *, float *, int64_t) = in_xform_portable;
    void (*out_x)(const float *, const wgeo *, int64_t, float, float *) = out_xform_portable;
    void (*out_st)(OUT_ARGS) = out_store_portable;
#if defined(CPU_HAVE_X86)
    if (isa == cpu_isa_avx512()) {
        in_x = in_xform_avx512;
        out_x = out_xform_avx512;
        out_st = out_store_avx512;
    } else if (isa == cpu_isa_avx2()) {
        in_x = in_xform_avx2;
        out_x = out_xform_avx2;
        out_st = out_store_avx2;
    }
#endif
    const wgeo o = wino_geo(g);
    const int64_t C = g->C, M = g->M, TWp = o.TWp, PP = o.PP;
    float *U = scratch;
    float *V = U + 16 * o.es_u;
    float *Mo = V + 16 * o.es_v;
    float *P = Mo + 16 * o.es_m;
    float *wt = P + 4 * PP;
    float *yb = wt + a16(9 * C);
    int64_t *boff = (int64_t *)(void *)(yb + 4 * a16(o.Tp));
    float *gs = yb + 4 * a16(o.Tp) + a16(2 * C);

    const size_t pa = cpu_sgemm_packed_a_floats(isa, M, C);
    if (!wp) wino_weights(isa, g, w, U, o.es_u, wt);
    const float lo = epi ? epi->lo : -__builtin_inff(), hi = epi ? epi->hi : __builtin_inff();
    cpu_epi uscale; /* U = G g G^T is linear in g: the BN scale goes into the GEMM's A */
    memset(&uscale, 0, sizeof uscale);
    uscale.row_scale = epi ? epi->row_scale : NULL;
    uscale.lo = -__builtin_inff();
    uscale.hi = __builtin_inff();
    const int64_t HW = g->H * g->W, OHW = g->OH * g->OW, THall = (g->OH + 1) / 2;
    memset(P, 0, (size_t)(4 * PP) * sizeof(float));
    for (int64_t n = 0; n < g->N; n++) {
        const float *xn = x + n * C * HW;
        float *yn = y + n * M * OHW;
        const float *resn = (epi && epi->res) ? epi->res + n * M * OHW : NULL;
        for (int64_t ty0 = 0; ty0 < THall; ty0 += o.TH) {
            wgeo ob = o; /* this band: tile rows ty0 .. ty0 + ob.TH - 1 */
            ob.TH = THall - ty0 < o.TH ? THall - ty0 : o.TH;
            ob.Tp = ob.TH * TWp;
            const int64_t Tp = ob.Tp, pt = g->pt - 2 * ty0;
            const int64_t OHb = g->OH - 2 * ty0 < 2 * ob.TH ? g->OH - 2 * ty0 : 2 * ob.TH;
            for (int64_t k = 0; k < C; k++) boff[k] = k * Tp;
            for (int64_t c = 0; c < C; c++) {
                /* polyphase planes of the zero-padded channel: rows i <= TH, cols j < TWp */
                const float *xc = xn + c * HW;
                for (int rp = 0; rp < 2; rp++)
                    for (int cp = 0; cp < 2; cp++) {
                        float *pl = P + (rp * 2 + cp) * PP;
                        /* input column 2j + cp - pl is inside for j in [j0, j1) */
                        int64_t j0 = (g->pl - cp + 1) / 2, j1 = (g->W - 1 - cp + g->pl) / 2 + 1;
                        if (g->W - 1 - cp + g->pl < 0) j1 = 0;
                        if (j0 < 0) j0 = 0;
                        if (j1 > TWp) j1 = TWp;
                        if (j1 < j0) j1 = j0;
                        for (int64_t i = 0; i <= ob.TH; i++) {
                            const int64_t iy = 2 * i + rp - pt;
                            float *row = pl + i * TWp;
                            if (iy < 0 || iy >= g->H) {
                                for (int64_t j = 0; j < TWp; j++) row[j] = 0.0f;
                                continue;
                            }
                            const float *src = xc + iy * g->W + cp - g->pl;
                            for (int64_t j = 0; j < j0; j++) row[j] = 0.0f;
                            for (int64_t j = j0; j < j1; j++) row[j] = src[2 * j];
                            for (int64_t j = j1; j < TWp; j++) row[j] = 0.0f;
                        }
                    }
                in_x(P, &ob, V, c);
            }
            for (int e = 0; e < 16; e++) {
                cpu_bsrc b;
                memset(&b, 0, sizeof b);
                b.is_conv = 2; /* row k of V[e] at V[e] + k*Tp: read in place where possible */
                b.img = V + e * ob.es_v;
                b.boff = boff;
                if (wp)
                    cpu_sgemm(isa, M, Tp, C, wp + e * pa, 0, CPU_A_PACKED, &b, Mo + e * ob.es_m, Tp,
                              NULL, gs);
                else /* the scale multiplied into the packed U, as cpu_wino_prepare does */
                    cpu_sgemm(isa, M, Tp, C, U + e * ob.es_u, C, 1, &b, Mo + e * ob.es_m, Tp,
                              &uscale, gs);
            }
            for (int64_t m = 0; m < M; m++) {
                const float bb = (epi && epi->row_bias) ? epi->row_bias[m] : 0.0f;
                const int64_t off = m * OHW + 2 * ty0 * g->OW;
                out_x(Mo, &ob, m, bb, yb);
                out_st(&ob, yn + off, OHb, g->OW, resn ? resn + off : NULL, lo, hi, yb);
            }
        }
    }
}
