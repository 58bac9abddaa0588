/*
 * conv.c — 2-D convolution for the reference CPU backend (NCHW, float32).
 *
 * Paths, chosen at plan time from the geometry alone (cpu_conv_kind):
 *   1x1, stride 1, no padding, group 1  -> one GEMM per image, the image *is* the B matrix;
 *   depthwise (group == C == M)         -> direct kernel per channel over a zero-padded copy of
 *                                          the plane (3x3/s1/d1 has a vectorised kernel per ISA);
 *   3x3 stride 1, >= 16 channels        -> Winograd F(2x2, 3x3) (winograd.c);
 *   junk columns <= 1/4 of a row        -> "wide" GEMM over polyphase planes (conv_wide), or,
 *                                          3x3/2 with <= 4 input channels where the kernel set
 *                                          has it, a direct kernel (conv_c3s2; cpu_conv_path);
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
    if (cpu_wino_ok(g)) return CPU_CONV_WINO;
    /* The "wide" GEMM computes ((kw-1)*dw)/sw junk columns per output row; worth it while they
     * are at most a quarter of the row. */
    if (4 * (((g->kw - 1) * g->dw) / g->sw) <= g->OW) return CPU_CONV_WIDE;
    return CPU_CONV_GEMM;
}

static int64_t a16(int64_t x) { return (x + 15) / 16 * 16; }

/* Phase planes of the wide path: sh*sw planes per channel, PH x PW each (see conv_wide). */
static void wide_dims(const cpu_conv_geom *g, int64_t *PH, int64_t *PW)
{
    *PH = g->OH + ((g->kh - 1) * g->dh) / g->sh + 1; /* + one slack row for junk-column reads */
    *PW = g->OW + ((g->kw - 1) * g->dw) / g->sw;
}

static void dw_pad_dims(const cpu_conv_geom *g, int64_t *PH, int64_t *PW)
{
    *PH = (g->OH - 1) * g->sh + (g->kh - 1) * g->dh + 1;
    *PW = (g->OW - 1) * g->sw + (g->kw - 1) * g->dw + 1;
}

static int64_t dw_split_floats(const cpu_conv_geom *g)
{
    return g->H * g->W + CPU_DW_PAD_SLACK;
}

int cpu_dw_split_ok(const cpu_conv_geom *g, int split)
{
    if (cpu_conv_kind(g) != CPU_CONV_DW || g->kh != 3 || g->kw != 3 || g->dh != 1 || g->dw != 1)
        return 0;
    const int s1 = g->sh == 1 && g->sw == 1, s2 = g->sh == 2 && g->sw == 2;
    const int same = g->pt == 1 && g->pl == 1 && g->OH == g->H && g->OW == g->W;
    const int in_ok = (s2 && g->pl == 1 && g->W == 2 * g->OW) || (s1 && same && g->W % 2 == 0);
    if (!in_ok || !(split & CPU_SPLIT_IN)) return 0;
    /* stride 1 reads and writes it; stride 2 may write it too */
    if (s1) return split == (CPU_SPLIT_IN | CPU_SPLIT_OUT);
    return !(split & CPU_SPLIT_OUT) || g->OW % 2 == 0;
}

size_t cpu_conv_scratch(const cpu_isa *isa, const cpu_conv_geom *g)
{
    switch (cpu_conv_path(isa, g)) {
    case CPU_CONV_1X1:
        return (size_t)a16(2 * g->C) + cpu_sgemm_scratch(isa, g->M, g->H * g->W, g->C);
    case CPU_CONV_WINO:
        return cpu_wino_scratch(isa, g);
    case CPU_CONV_WIDE: {
        int64_t PH, PW;
        wide_dims(g, &PH, &PW);
        const int64_t Cg = g->C / g->group, Mg = g->M / g->group;
        const int64_t Kg = Cg * g->kh * g->kw;
        return (size_t)(a16(g->sh * g->sw * Cg * PH * PW) + a16(Mg * g->OH * PW) + a16(2 * Kg)) +
               cpu_sgemm_scratch(isa, Mg, g->OH * PW, Kg);
    }
    case CPU_CONV_C3S2:
        return (size_t)CPU_C3S2_SCRATCH(g->C, g->H, g->M, g->OW);
    case CPU_CONV_DW: {
        int64_t PH, PW;
        dw_pad_dims(g, &PH, &PW);
        /* + 1: stride 2's odd-column plane; then the row-split layout's plane */
        const int64_t npad = PH * (PW + 1) + CPU_DW_PAD_SLACK + CPU_DW_EDGE_FLOATS(g->W);
        return (size_t)(g->split ? a16(npad) + dw_split_floats(g) : npad);
    }
    default: {
        const int64_t Wp = (g->W + g->sw - 1) / g->sw;
        const size_t ph = g->sw > 1 ? (size_t)a16((g->C / g->group) * g->H * g->sw * Wp) : 0;
        return ph + cpu_sgemm_scratch(isa, g->M / g->group, g->OH * g->OW,
                                      (g->C / g->group) * g->kh * g->kw);
    }
    }
}

/* Prepared weights: the GEMM paths' A operand (each group's Mg x Kg weights) packed once per
 * weight set, group after group; Winograd's transformed kernels; depthwise reads w as it is. */
size_t cpu_conv_prepared_floats(const cpu_isa *isa, const cpu_conv_geom *g)
{
    switch (cpu_conv_path(isa, g)) {
    case CPU_CONV_DW: return 0;
    case CPU_CONV_C3S2: return 0; /* reads w as it is */
    case CPU_CONV_WINO: return cpu_wino_prepared_floats(isa, g);
    default:
        return (size_t)g->group *
               cpu_sgemm_packed_a_floats(isa, g->M / g->group, (g->C / g->group) * g->kh * g->kw);
    }
}

int cpu_conv_prepare(const cpu_isa *isa, const cpu_conv_geom *g, const float *w,
                     const float *row_scale, float *dst)
{
    const int kind = cpu_conv_kind(g);
    if (kind == CPU_CONV_DW) return 0;
    if (cpu_conv_path(isa, g) == CPU_CONV_C3S2) return 0; /* nothing prepared */
    if (kind == CPU_CONV_WINO) return cpu_wino_prepare(isa, g, w, row_scale, dst);
    const int64_t Mg = g->M / g->group, Kg = (g->C / g->group) * g->kh * g->kw;
    const size_t per = cpu_sgemm_packed_a_floats(isa, Mg, Kg);
    for (int64_t gi = 0; gi < g->group; gi++)
        cpu_sgemm_pack_a(isa, w + gi * Mg * Kg, Kg, 1, Mg, Kg, row_scale ? row_scale + gi * Mg : NULL,
                         dst + (size_t)gi * per);
    return 0;
}

/* Group gi's A operand for cpu_sgemm: from the prepared form if there is one. */
static const float *group_a(const cpu_isa *isa, const float *w, const float *wp, int64_t gi,
                            int64_t Mg, int64_t Kg, int64_t *ars, int64_t *acs)
{
    *ars = Kg;
    *acs = wp ? CPU_A_PACKED : 1;
    return wp ? wp + (size_t)gi * cpu_sgemm_packed_a_floats(isa, Mg, Kg) : w + gi * Mg * Kg;
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

/* dst[j] = src[j * stride], j < n. Strides 1 and 2 (the common convs) get loops with a constant
 * stride, which vectorise; a runtime stride would copy one float at a time. */
static inline void copy_strided(float *restrict dst, const float *restrict src, int64_t n, int64_t stride)
{
    if (stride == 1)
        for (int64_t j = 0; j < n; j++) dst[j] = src[j];
    else if (stride == 2)
        for (int64_t j = 0; j < n; j++) dst[j] = src[2 * j];
    else
        for (int64_t j = 0; j < n; j++) dst[j] = src[j * stride];
}

static void conv_dw(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                    float *y, const cpu_epi *epi, float *pad)
{
    int64_t PH, PW;
    dw_pad_dims(g, &PH, &PW);
    /* The border of the padded plane is the same for every channel: zero it once (the 3x3
     * kernels write only image cells). */
    const size_t npad = (size_t)(PH * (PW + 1) + CPU_DW_PAD_SLACK + CPU_DW_EDGE_FLOATS(g->W));
    memset(pad, 0, npad * sizeof(float));
    const int64_t px0 = g->pl, px1 = (g->W + g->pl) < PW ? (g->W + g->pl) : PW;
    const int k3 = g->kh == 3 && g->kw == 3 && g->dh == 1 && g->dw == 1;
    const int fast = k3 && g->sh == 1 && g->sw == 1, s2 = k3 && g->sh == 2 && g->sw == 2;
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
    a.split = g->split;
    a.tmp = pad + a16((int64_t)npad); /* cpu_conv_scratch: the split plane after the pad */
    a.in_lo = x;
    a.in_hi = x + g->N * g->C * g->H * g->W;
    for (int64_t n = 0; n < g->N; n++) {
        for (int64_t c = 0; c < g->C; c++) {
            const float *plane = x + (n * g->C + c) * g->H * g->W;
            if (!fast && !s2 && px1 > px0) {
                /* An inline loop, not memcpy: rows of small planes (24 floats) cost more in
                 * the call than in the copy. */
                for (int64_t iy = 0; iy < g->H; iy++) {
                    const int64_t py = iy + g->pt;
                    if (py >= PH) break;
                    copy_strided(pad + py * PW + px0, plane + iy * g->W, px1 - px0, 1);
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
            else if (s2)
                isa->dw3x3s2(&a);
            else
                dw_generic(&a);
        }
    }
}

/* Conv as one GEMM over "wide" rows, with no im2col index math in the packer.
 * The zero-padded image is split into sh x sw phase planes, P[py][px][c][i][j] =
 * Xpad[c][i*sh + py][j*sw + px], each PH x PW. Output (oy, ox) becomes column oy*PW + ox, and B row
 * k = (c, ky, kx) is phase plane ((ky*dh) % sh, (kx*dw) % sw) of channel c shifted by
 * ((ky*dh)/sh)*PW + (kx*dw)/sw: one contiguous run per (k, NR panel). A stride-1 conv has a single
 * phase (the padded image itself). The PW - OW junk columns per row are dropped when the result is
 * copied out; a residual and the clamp after it are applied in that copy. */
static void conv_wide(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                      const float *wp, float *y, const cpu_epi *epi, float *scratch)
{
    int64_t PH, PW;
    wide_dims(g, &PH, &PW);
    const int64_t sh = g->sh, sw = g->sw, nph = sh * sw;
    const int64_t Cg = g->C / g->group, Mg = g->M / g->group, Kg = Cg * g->kh * g->kw;
    const int64_t HW = g->H * g->W, OHW = g->OH * g->OW, NW = g->OH * PW, PP = PH * PW;
    float *xp = scratch, *cw = xp + a16(nph * Cg * PP);
    int64_t *boff = (int64_t *)(void *)(cw + a16(Mg * NW));
    float *gs = cw + a16(Mg * NW) + a16(2 * Kg);
    /* Row offsets of B: (phase, channel, shift) per k. Geometry only, a few divisions per call. */
    for (int64_t ky = 0, k = 0; ky < g->kh; ky++) {
        const int64_t ry = ky * g->dh;
        for (int64_t kx = 0; kx < g->kw; kx++, k++) {
            const int64_t rx = kx * g->dw;
            boff[k] = ((ry % sh) * sw + rx % sw) * Cg * PP + (ry / sh) * PW + rx / sw;
        }
    }
    const int64_t khw = g->kh * g->kw;
    for (int64_t c = 1; c < Cg; c++)
        for (int64_t k = 0; k < khw; k++) boff[c * khw + k] = boff[k] + c * PP;
    memset(xp, 0, (size_t)(nph * Cg * PP) * sizeof(float)); /* borders: same for every group */
    const float lo = epi ? epi->lo : -__builtin_inff(), hi = epi ? epi->hi : __builtin_inff();
    cpu_epi e;
    memset(&e, 0, sizeof e);
    if (epi) {
        e.row_scale = wp ? NULL : epi->row_scale; /* in wp (cpu_conv_prepare) */
        e.row_bias = epi->row_bias;
    }
    const int late = epi && epi->res; /* residual, then clamp, in the copy-out */
    e.lo = late ? -__builtin_inff() : lo;
    e.hi = late ? __builtin_inff() : hi;
    cpu_bsrc b;
    memset(&b, 0, sizeof b);
    b.is_conv = 2;
    b.img = xp;
    b.boff = boff;
    for (int64_t n = 0; n < g->N; n++) {
        for (int64_t gi = 0; gi < g->group; gi++) {
            const float *xg = x + (n * g->C + gi * Cg) * HW;
            for (int64_t py = 0; py < sh; py++)
                for (int64_t px = 0; px < sw; px++) {
                    /* plane column j holds input column j*sw + px - pl: valid j in [j0, j1) */
                    int64_t j0 = 0;
                    while (j0 < PW && j0 * sw + px - g->pl < 0) j0++;
                    int64_t j1 = j0;
                    while (j1 < PW && j1 * sw + px - g->pl < g->W) j1++;
                    if (j1 <= j0) continue;
                    const int64_t ix0 = j0 * sw + px - g->pl;
                    for (int64_t c = 0; c < Cg; c++) {
                        float *plane = xp + ((py * sw + px) * Cg + c) * PP;
                        for (int64_t i = 0; i < PH - 1; i++) {
                            const int64_t iy = i * sh + py - g->pt;
                            if (iy < 0) continue;
                            if (iy >= g->H) break;
                            const float *src = xg + c * HW + iy * g->W + ix0;
                            float *dst = plane + i * PW + j0;
                            copy_strided(dst, src, j1 - j0, sw);
                        }
                    }
                }
            cpu_epi eg = e;
            if (e.row_scale) eg.row_scale = e.row_scale + gi * Mg;
            if (e.row_bias) eg.row_bias = e.row_bias + gi * Mg;
            int64_t ars, acs;
            const float *a = group_a(isa, w, wp, gi, Mg, Kg, &ars, &acs);
            cpu_sgemm(isa, Mg, NW, Kg, a, ars, acs, &b, cw, NW, &eg, gs);
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
                        copy_strided(dst, src, g->OW, 1); /* rows of 24-56 floats: no call */
                    }
                }
        }
    }
}

/* A first layer (3x3/2, few input channels, "same" left padding) directly, where the set has the
 * kernel: it reads the image (split once into column planes), so it needs neither the wide
 * path's phase planes nor its copy-out nor packed weights. out == NULL: whether it applies. */
static int conv_c3s2(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                     float *y, const cpu_epi *epi, float *scratch)
{
    if (!isa->conv3x3s2 || g->group != 1 || g->kh != 3 || g->kw != 3 || g->sh != 2 || g->sw != 2 ||
        g->dh != 1 || g->dw != 1 || g->pl != 1 || g->C > CPU_C3S2_MAX_C || g->W != 2 * g->OW)
        return 0;
    cpu_c3s2_args a;
    memset(&a, 0, sizeof a);
    a.C = g->C;
    a.H = g->H;
    a.W = g->W;
    a.pt = g->pt;
    a.w = w;
    a.M = g->M;
    a.OH = g->OH;
    a.OW = g->OW;
    if (!y) return isa->conv3x3s2(&a);
    a.scale = epi ? epi->row_scale : NULL;
    a.bias = epi ? epi->row_bias : NULL;
    a.lo = epi ? epi->lo : -__builtin_inff();
    a.hi = epi ? epi->hi : __builtin_inff();
    a.split = scratch; /* cpu_conv_scratch counts it */
    a.split_out = (g->split & CPU_SPLIT_OUT) != 0;
    for (int64_t n = 0; n < g->N; n++) {
        a.in = x + n * g->C * g->H * g->W;
        a.out = y + n * g->M * g->OH * g->OW;
        a.res = (epi && epi->res) ? epi->res + n * g->M * g->OH * g->OW : NULL;
        isa->conv3x3s2(&a);
    }
    return 1;
}

int cpu_conv_path(const cpu_isa *isa, const cpu_conv_geom *g)
{
    const int kind = cpu_conv_kind(g);
    return kind == CPU_CONV_WIDE && conv_c3s2(isa, g, NULL, NULL, NULL, NULL, NULL) ? CPU_CONV_C3S2
                                                                                    : kind;
}

void cpu_conv(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
              const float *wp, float *y, const cpu_epi *epi, float *scratch)
{
    const int kind = cpu_conv_kind(g);
    if (kind == CPU_CONV_DW) {
        conv_dw(isa, g, x, w, y, epi, scratch);
        return;
    }
    if (kind == CPU_CONV_WINO) {
        cpu_conv_wino(isa, g, x, w, wp, y, epi, scratch);
        return;
    }
    if (kind == CPU_CONV_WIDE) {
        if (cpu_conv_path(isa, g) == CPU_CONV_C3S2)
            conv_c3s2(isa, g, x, w, y, epi, scratch);
        else
            conv_wide(isa, g, x, w, wp, y, epi, scratch);
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
    if (wp) e.row_scale = NULL; /* in wp (cpu_conv_prepare) */
    for (int64_t n = 0; n < g->N; n++) {
        const float *xn = x + n * g->C * HW;
        float *yn = y + n * g->M * OHW;
        const float *resn = (epi && epi->res) ? epi->res + n * g->M * OHW : NULL;
        if (kind == CPU_CONV_1X1) {
            /* The image is B (C x HW); row k at xn + k*HW, read in place where the ISA can. */
            int64_t *boff = (int64_t *)(void *)scratch;
            for (int64_t k = 0; k < g->C; k++) boff[k] = k * HW;
            cpu_bsrc b;
            memset(&b, 0, sizeof b);
            b.is_conv = 2;
            b.img = xn;
            b.boff = boff;
            e.res = resn;
            int64_t ars, acs;
            const float *a = group_a(isa, w, wp, 0, g->M, g->C, &ars, &acs);
            cpu_sgemm(isa, g->M, HW, g->C, a, ars, acs, &b, yn, HW, &e, scratch + a16(2 * g->C));
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
            float *gs = scratch;
            if (g->sw > 1) {
                /* Split the columns into sw phases once (C*H*W copies) so the packer's strided
                 * reads become contiguous runs. */
                const int64_t sw = g->sw, Wp = (g->W + sw - 1) / sw;
                float *ph = scratch;
                for (int64_t p = 0; p < sw; p++)
                    for (int64_t cy = 0; cy < Cg * g->H; cy++) {
                        const float *src = b.img + cy * g->W + p;
                        float *dst = ph + (p * Cg * g->H + cy) * Wp;
                        const int64_t n = (g->W - p + sw - 1) / sw;
                        for (int64_t j = 0; j < n; j++) dst[j] = src[j * sw];
                    }
                b.phase = ph;
                b.Wp = Wp;
                gs = scratch + a16(Cg * g->H * sw * Wp);
            }
            cpu_epi eg = e;
            if (e.row_scale) eg.row_scale = e.row_scale + gi * Mg;
            if (epi && epi->row_bias) eg.row_bias = epi->row_bias + gi * Mg;
            eg.res = resn ? resn + gi * Mg * OHW : NULL;
            int64_t ars, acs;
            const float *a = group_a(isa, w, wp, gi, Mg, Kg, &ars, &acs);
            cpu_sgemm(isa, Mg, OHW, Kg, a, ars, acs, &b, yn + gi * Mg * OHW, OHW, &eg, gs);
        }
    }
}
