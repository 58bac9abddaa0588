/*
 * conv.c — 2-D convolution for the reference CPU backend (NCHW, float32).
 *
 * Three paths, chosen at plan time from the geometry alone:
 *   1x1, stride 1, no padding, group 1  -> one GEMM per image, the image *is* the B matrix;
 *   depthwise (group == C == M)         -> direct kernel per channel over a zero-padded copy of
 *                                          the plane (3x3/s1/d1 has a vectorised kernel per ISA);
 *   everything else                     -> implicit-im2col GEMM per group (the B packer reads the
 *                                          image directly, see gemm.c).
 * All paths apply the same epilogue (folded BatchNorm, residual, Relu/Clip) on the way out.
 */
#include "cpu.h"

#include <string.h>

int cpu_conv_kind(const cpu_conv_geom *g)
{
    if (g->group == 1 && g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->pt == 0 &&
        g->pl == 0 && g->OH == g->H && g->OW == g->W)
        return CPU_CONV_1X1;
    if (g->group > 1 && g->group == g->C && g->M == g->C) return CPU_CONV_DW;
    /* Stride 1: the "wide" GEMM over a zero-padded copy computes (kw-1)*dw junk columns per
     * output row; worth it while they are at most a quarter of the row. */
    if (g->sh == 1 && g->sw == 1 && 4 * (g->kw - 1) * g->dw <= g->OW) return CPU_CONV_WIDE;
    return CPU_CONV_GEMM;
}

static int64_t a16(int64_t x) { return (x + 15) / 16 * 16; }

static void wide_dims(const cpu_conv_geom *g, int64_t *PH, int64_t *PW)
{
    *PH = g->OH + (g->kh - 1) * g->dh + 1; /* + one slack row for the junk columns' reads */
    *PW = g->OW + (g->kw - 1) * g->dw;
}

static void dw_pad_dims(const cpu_conv_geom *g, int64_t *PH, int64_t *PW)
{
    *PH = (g->OH - 1) * g->sh + (g->kh - 1) * g->dh + 1;
    *PW = (g->OW - 1) * g->sw + (g->kw - 1) * g->dw + 1;
}

size_t cpu_conv_scratch(const cpu_isa *isa, const cpu_conv_geom *g)
{
    switch (cpu_conv_kind(g)) {
    case CPU_CONV_1X1:
        return cpu_sgemm_scratch(isa, g->M, g->H * g->W, g->C);
    case CPU_CONV_WIDE: {
        int64_t PH, PW;
        wide_dims(g, &PH, &PW);
        const int64_t Cg = g->C / g->group, Mg = g->M / g->group;
        return (size_t)(a16(Cg * PH * PW) + a16(Mg * g->OH * PW)) +
               cpu_sgemm_scratch(isa, Mg, g->OH * PW, Cg * g->kh * g->kw);
    }
    case CPU_CONV_DW: {
        int64_t PH, PW;
        dw_pad_dims(g, &PH, &PW);
        return (size_t)(PH * PW) + 16;
    }
    default:
        return cpu_sgemm_scratch(isa, g->M / g->group, g->OH * g->OW,
                                 (g->C / g->group) * g->kh * g->kw);
    }
}

/* Any kernel size / stride / dilation, over the padded plane. */
static void dw_generic(const cpu_dw_args *a)
{
    const int64_t PW = (a->OW - 1) * a->sw + (a->kw - 1) * a->dw + 1;
    for (int64_t oy = 0; oy < a->OH; oy++) {
        float *o = a->out + oy * a->OW;
        for (int64_t ox = 0; ox < a->OW; ox++) o[ox] = 0.0f;
        for (int64_t ky = 0; ky < a->kh; ky++) {
            const float *row = a->pad + (oy * a->sh + ky * a->dh) * PW;
            for (int64_t kx = 0; kx < a->kw; kx++) {
                const float wv = a->w[ky * a->kw + kx];
                const float *r = row + kx * a->dw;
                if (a->sw == 1)
                    for (int64_t ox = 0; ox < a->OW; ox++) o[ox] += wv * r[ox];
                else
                    for (int64_t ox = 0; ox < a->OW; ox++) o[ox] += wv * r[ox * a->sw];
            }
        }
        const float *rr = a->res ? a->res + oy * a->OW : NULL;
        for (int64_t ox = 0; ox < a->OW; ox++) {
            float v = o[ox] * a->scale + a->bias;
            if (rr) v += rr[ox];
            v = v < a->lo ? a->lo : v;
            o[ox] = v > a->hi ? a->hi : v;
        }
    }
}

static void conv_dw(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                    float *y, const cpu_epi *epi, float *pad)
{
    int64_t PH, PW;
    dw_pad_dims(g, &PH, &PW);
    /* The border of the padded plane is the same for every channel: zero it once. */
    memset(pad, 0, (size_t)(PH * PW) * sizeof(float));
    const int64_t px0 = g->pl, px1 = (g->W + g->pl) < PW ? (g->W + g->pl) : PW;
    const int fast = g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->dh == 1 &&
                     g->dw == 1;
    const int64_t OHW = g->OH * g->OW;
    cpu_dw_args a;
    a.H = g->H;
    a.W = g->W;
    a.kh = g->kh;
    a.kw = g->kw;
    a.sh = g->sh;
    a.sw = g->sw;
    a.dh = g->dh;
    a.dw = g->dw;
    a.pt = g->pt;
    a.pl = g->pl;
    a.OH = g->OH;
    a.OW = g->OW;
    a.lo = epi ? epi->lo : -__builtin_inff();
    a.hi = epi ? epi->hi : __builtin_inff();
    a.pad = pad;
    for (int64_t n = 0; n < g->N; n++) {
        for (int64_t c = 0; c < g->C; c++) {
            const float *plane = x + (n * g->C + c) * g->H * g->W;
            if (px1 > px0) {
                for (int64_t iy = 0; iy < g->H; iy++) {
                    const int64_t py = iy + g->pt;
                    if (py >= PH) break;
                    memcpy(pad + py * PW + px0, plane + iy * g->W,
                           (size_t)(px1 - px0) * sizeof(float));
                }
            }
            a.in = plane;
            a.w = w + c * g->kh * g->kw;
            a.out = y + (n * g->M + c) * OHW;
            a.scale = (epi && epi->row_scale) ? epi->row_scale[c] : 1.0f;
            a.bias = (epi && epi->row_bias) ? epi->row_bias[c] : 0.0f;
            a.res = (epi && epi->res) ? epi->res + (n * g->M + c) * OHW : NULL;
            if (fast)
                isa->dw3x3s1(&a);
            else
                dw_generic(&a);
        }
    }
}

/* Stride-1 conv as one GEMM over a zero-padded copy of the image whose rows keep their padded
 * width PW: output (oy, ox) is column oy*PW + ox, and B row (c, ky, kx) is the padded image
 * shifted by ky*dh*PW + kx*dw, so packing B is contiguous copies (no im2col index math). The
 * PW - OW junk columns per row are dropped when the result is copied out; a residual and the
 * clamp after it are applied in that copy. */
static void conv_wide(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                      float *y, const cpu_epi *epi, float *scratch)
{
    int64_t PH, PW;
    wide_dims(g, &PH, &PW);
    const int64_t Cg = g->C / g->group, Mg = g->M / g->group, Kg = Cg * g->kh * g->kw;
    const int64_t HW = g->H * g->W, OHW = g->OH * g->OW, NW = g->OH * PW;
    float *xp = scratch, *cw = xp + a16(Cg * PH * PW), *gs = cw + a16(Mg * NW);
    memset(xp, 0, (size_t)(Cg * PH * PW) * sizeof(float)); /* borders: same for every group */
    const int64_t px0 = g->pl, px1 = (g->W + g->pl) < PW ? (g->W + g->pl) : PW;
    const float lo = epi ? epi->lo : -__builtin_inff(), hi = epi ? epi->hi : __builtin_inff();
    cpu_epi e;
    memset(&e, 0, sizeof e);
    if (epi) {
        e.row_scale = epi->row_scale;
        e.row_bias = epi->row_bias;
    }
    const int late = epi && epi->res; /* residual, then clamp, in the copy-out */
    e.lo = late ? -__builtin_inff() : lo;
    e.hi = late ? __builtin_inff() : hi;
    cpu_bsrc b;
    memset(&b, 0, sizeof b);
    b.is_conv = 2;
    b.img = xp;
    b.H = PH;
    b.W = PW;
    b.kh = g->kh;
    b.kw = g->kw;
    b.dh = g->dh;
    b.dw = g->dw;
    for (int64_t n = 0; n < g->N; n++) {
        for (int64_t gi = 0; gi < g->group; gi++) {
            const float *xg = x + (n * g->C + gi * Cg) * HW;
            if (px1 > px0)
                for (int64_t c = 0; c < Cg; c++)
                    for (int64_t iy = 0; iy < g->H; iy++) {
                        const int64_t py = iy + g->pt;
                        if (py >= PH - 1) break;
                        memcpy(xp + (c * PH + py) * PW + px0, xg + c * HW + iy * g->W,
                               (size_t)(px1 - px0) * sizeof(float));
                    }
            cpu_epi eg = e;
            if (e.row_scale) eg.row_scale = e.row_scale + gi * Mg;
            if (e.row_bias) eg.row_bias = e.row_bias + gi * Mg;
            cpu_sgemm(isa, Mg, NW, Kg, w + gi * Mg * Kg, Kg, 1, &b, cw, NW, &eg, gs);
            float *yg = y + (n * g->M + gi * Mg) * OHW;
            const float *rg = late ? epi->res + (n * g->M + gi * Mg) * OHW : NULL;
            for (int64_t m = 0; m < Mg; m++)
                for (int64_t oy = 0; oy < g->OH; oy++) {
                    const float *src = cw + m * NW + oy * PW;
                    float *dst = yg + m * OHW + oy * g->OW;
                    if (rg) {
                        const float *r = rg + m * OHW + oy * g->OW;
                        for (int64_t ox = 0; ox < g->OW; ox++) {
                            float v = src[ox] + r[ox];
                            v = v < lo ? lo : v;
                            dst[ox] = v > hi ? hi : v;
                        }
                    } else {
                        memcpy(dst, src, (size_t)g->OW * sizeof(float));
                    }
                }
        }
    }
}

void cpu_conv(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
              float *y, const cpu_epi *epi, float *scratch)
{
    const int kind = cpu_conv_kind(g);
    if (kind == CPU_CONV_DW) {
        conv_dw(isa, g, x, w, y, epi, scratch);
        return;
    }
    if (kind == CPU_CONV_WIDE) {
        conv_wide(isa, g, x, w, y, epi, scratch);
        return;
    }
    const int64_t HW = g->H * g->W, OHW = g->OH * g->OW;
    const int64_t Cg = g->C / g->group, Mg = g->M / g->group, Kg = Cg * g->kh * g->kw;
    cpu_epi e;
    if (epi) {
        e = *epi;
    } else {
        memset(&e, 0, sizeof e);
        e.lo = -__builtin_inff();
        e.hi = __builtin_inff();
    }
    e.col_bias = NULL;
    e.ldr = OHW;
    for (int64_t n = 0; n < g->N; n++) {
        const float *xn = x + n * g->C * HW;
        float *yn = y + n * g->M * OHW;
        const float *resn = (epi && epi->res) ? epi->res + n * g->M * OHW : NULL;
        if (kind == CPU_CONV_1X1) {
            cpu_bsrc b;
            memset(&b, 0, sizeof b);
            b.b = xn;
            b.rs = HW;
            b.cs = 1;
            e.res = resn;
            cpu_sgemm(isa, g->M, HW, g->C, w, g->C, 1, &b, yn, HW, &e, scratch);
            continue;
        }
        for (int64_t gi = 0; gi < g->group; gi++) {
            cpu_bsrc b;
            memset(&b, 0, sizeof b);
            b.is_conv = 1;
            b.img = xn + gi * Cg * HW;
            b.C = Cg;
            b.H = g->H;
            b.W = g->W;
            b.kh = g->kh;
            b.kw = g->kw;
            b.sh = g->sh;
            b.sw = g->sw;
            b.dh = g->dh;
            b.dw = g->dw;
            b.pt = g->pt;
            b.pl = g->pl;
            b.OH = g->OH;
            b.OW = g->OW;
            cpu_epi eg = e;
            if (epi && epi->row_scale) eg.row_scale = epi->row_scale + gi * Mg;
            if (epi && epi->row_bias) eg.row_bias = epi->row_bias + gi * Mg;
            eg.res = resn ? resn + gi * Mg * OHW : NULL;
            cpu_sgemm(isa, Mg, OHW, Kg, w + gi * Mg * Kg, Kg, 1, &b, yn + gi * Mg * OHW, OHW, &eg,
                      scratch);
        }
    }
}
