/*
 * test_cpu_ops.c — the reference CPU backend against naive reference implementations.
 *
 * Graphs are built by hand (no ONNX loader involved), run through the backend's vtable, and
 * compared element-wise with straightforward double-precision loops written from the ONNX
 * operator definitions. Shapes are random with a fixed seed. Every kernel set the machine
 * supports is exercised (REFIT_CPU_ISA forces one at plan time). Covers every op, the conv paths
 * (GEMM / 1x1 / depthwise, strides, pads, dilations, groups), the fused epilogues, broadcasting,
 * the memory plan (buffer reuse), weights changing between runs, concurrent contexts on one plan,
 * and plan-time refusals.
 */
#include "backend.h"
#include "check.h"
#include "cpu/cpu.h"
#include "refit.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_isa = "default";


/* ---- deterministic random numbers ---------------------------------------------------------- */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static int rint_(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }
static float rfl(void) { return (float)((rnd() % 2000001) / 1000000.0 - 1.0); }
static void rfill(float *p, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = rfl();
}

/* ---- tiny graph builder -------------------------------------------------------------------- */
#define MAXV 64
#define MAXN 32
typedef struct tg {
    rt_graph g;
    rt_value v[MAXV];
    rt_node n[MAXN];
    int inputs[8], outputs[8], weights[32];
    float *wdata[32];    /* current weight data (test-owned) */
    float *idata[8];
    char names[MAXV][16];
    char nnames[MAXN][16];
} tg;

static tg *tg_new(void)
{
    tg *t = calloc(1, sizeof *t);
    t->g.values = t->v;
    t->g.nodes = t->n;
    t->g.inputs = t->inputs;
    t->g.outputs = t->outputs;
    t->g.weights = t->weights;
    return t;
}

static void tg_free(tg *t)
{
    for (int k = 0; k < t->g.n_weights; k++) free(t->wdata[k]);
    for (int i = 0; i < t->g.n_inputs; i++) free(t->idata[i]);
    for (int i = 0; i < t->g.n_values; i++)
        if (t->v[i].kind == RT_VAL_CONST) free(t->v[i].data);
    free(t);
}

static int tg_val(tg *t, rt_value_kind kind, int ndim, const int64_t *d)
{
    const int i = t->g.n_values++;
    rt_value *v = &t->v[i];
    snprintf(t->names[i], sizeof t->names[i], "v%d", i);
    v->name = t->names[i];
    v->kind = kind;
    v->dtype = RT_F32;
    v->shape.ndim = ndim;
    v->numel = 1;
    for (int k = 0; k < ndim; k++) {
        v->shape.d[k] = d[k];
        v->numel *= (size_t)d[k];
    }
    v->index = -1;
    v->output_index = -1;
    return i;
}

#define DIMS(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__}

static int tg_input(tg *t, int ndim, const int64_t *d)
{
    const int v = tg_val(t, RT_VAL_INPUT, ndim, d);
    t->v[v].index = t->g.n_inputs;
    t->inputs[t->g.n_inputs] = v;
    t->idata[t->g.n_inputs] = malloc(t->v[v].numel * sizeof(float) + 4);
    rfill(t->idata[t->g.n_inputs], t->v[v].numel);
    t->g.n_inputs++;
    return v;
}

static int tg_weight(tg *t, int ndim, const int64_t *d)
{
    const int v = tg_val(t, RT_VAL_WEIGHT, ndim, d);
    t->v[v].index = t->g.n_weights;
    t->weights[t->g.n_weights] = v;
    t->wdata[t->g.n_weights] = malloc(t->v[v].numel * sizeof(float) + 4);
    rfill(t->wdata[t->g.n_weights], t->v[v].numel);
    t->g.n_weights++;
    return v;
}

static int tg_const(tg *t, int ndim, const int64_t *d)
{
    const int v = tg_val(t, RT_VAL_CONST, ndim, d);
    t->v[v].data = malloc(t->v[v].numel * sizeof(float) + 4);
    rfill(t->v[v].data, t->v[v].numel);
    return v;
}

static float *vdata(tg *t, int v)
{
    const rt_value *x = &t->v[v];
    if (x->kind == RT_VAL_INPUT) return t->idata[x->index];
    if (x->kind == RT_VAL_WEIGHT) return t->wdata[x->index];
    return x->data;
}

static rt_attrs def_attrs(void)
{
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.strides[0] = a.strides[1] = 1;
    a.dilations[0] = a.dilations[1] = 1;
    a.group = 1;
    a.alpha = a.beta = 1.0f;
    a.epsilon = 1e-5f;
    a.clip_min = -INFINITY;
    a.clip_max = INFINITY;
    return a;
}

static int tg_node(tg *t, rt_op op, int n_in, const int *in, int ndim, const int64_t *d,
                   const rt_attrs *a)
{
    const int out = tg_val(t, RT_VAL_INTERMEDIATE, ndim, d);
    const int i = t->g.n_nodes++;
    rt_node *n = &t->n[i];
    snprintf(t->nnames[i], sizeof t->nnames[i], "n%d", i);
    n->name = t->nnames[i];
    n->op = op;
    n->n_in = n_in;
    for (int k = 0; k < n_in; k++) n->in[k] = in[k];
    n->out = out;
    n->a = a ? *a : def_attrs();
    return out;
}

static void tg_output(tg *t, int v)
{
    t->v[v].output_index = t->g.n_outputs;
    t->outputs[t->g.n_outputs++] = v;
}

/* Plans, creates a context and runs; outputs are malloc'ed into outs[]. Returns status. */
typedef struct runner {
    void *plan, *ctx;
    char err[256];
} runner;

static int tg_plan(tg *t, runner *r)
{
    memset(r, 0, sizeof *r);
    int rc = rt_cpu_backend.plan_create(&t->g, NULL, &r->plan, r->err, sizeof r->err);
    if (rc) return rc;
    return rt_cpu_backend.ctx_create(r->plan, &r->ctx, r->err, sizeof r->err);
}

static int tg_run(tg *t, runner *r, float **outs)
{
    const float *w[32], *in[8];
    float *o[8];
    for (int k = 0; k < t->g.n_weights; k++) w[k] = t->wdata[k];
    for (int k = 0; k < t->g.n_inputs; k++) in[k] = t->idata[k];
    for (int j = 0; j < t->g.n_outputs; j++) {
        outs[j] = malloc(t->v[t->outputs[j]].numel * sizeof(float) + 4);
        for (size_t i = 0; i < t->v[t->outputs[j]].numel; i++) outs[j][i] = NAN;
        o[j] = outs[j];
    }
    /* Backend API v2: the weights are prepared (BN folded, kernels packed) once per set. */
    void *prep = NULL;
    int rc = rt_cpu_backend.weights_prepare(r->plan, w, NULL, NULL, &prep, r->err, sizeof r->err);
    if (rc) return rc;
    rc = rt_cpu_backend.run(r->plan, r->ctx, prep, in, o, r->err, sizeof r->err);
    rt_cpu_backend.weights_release(r->plan, prep);
    return rc;
}

static void tg_unplan(runner *r)
{
    rt_cpu_backend.ctx_destroy(r->ctx);
    rt_cpu_backend.plan_destroy(r->plan);
}

/* max |got - ref| / (atol + rtol |ref|) <= 1 */
static int close_enough(const float *got, const double *ref, size_t n, double atol, double rtol,
                        char *why, size_t wl)
{
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - ref[i]);
        if (!(d <= atol + rtol * fabs(ref[i]))) {
            snprintf(why, wl, "element %zu: got %.7g, expected %.7g", i, (double)got[i], ref[i]);
            return 0;
        }
    }
    return 1;
}

/* ---- naive references ---------------------------------------------------------------------- */
typedef struct conv_p {
    int N, C, H, W, M, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group;
} conv_p;

static int conv_oh(const conv_p *p) { return (p->H + p->pt + p->pb - p->dh * (p->kh - 1) - 1) / p->sh + 1; }
static int conv_ow(const conv_p *p) { return (p->W + p->pl + p->pr - p->dw * (p->kw - 1) - 1) / p->sw + 1; }

static void ref_conv(const conv_p *p, const float *x, const float *w, const float *b, double *y)
{
    const int OH = conv_oh(p), OW = conv_ow(p), Cg = p->C / p->group, Mg = p->M / p->group;
    for (int n = 0; n < p->N; n++)
        for (int m = 0; m < p->M; m++) {
            const int g = m / Mg;
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double s = b ? b[m] : 0.0;
                    for (int c = 0; c < Cg; c++)
                        for (int ky = 0; ky < p->kh; ky++)
                            for (int kx = 0; kx < p->kw; kx++) {
                                const int iy = oy * p->sh - p->pt + ky * p->dh;
                                const int ix = ox * p->sw - p->pl + kx * p->dw;
                                if (iy < 0 || iy >= p->H || ix < 0 || ix >= p->W) continue;
                                s += (double)x[((n * p->C + g * Cg + c) * p->H + iy) * p->W + ix] *
                                     w[((m * Cg + c) * p->kh + ky) * p->kw + kx];
                            }
                    y[((n * p->M + m) * OH + oy) * OW + ox] = s;
                }
        }
}

static void ref_bn(double *y, int N, int C, int S, const float *g, const float *b, const float *m,
                   const float *v, float eps)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < S; i++) {
                double *p = &y[(n * C + c) * S + i];
                *p = (*p - m[c]) / sqrt((double)v[c] + eps) * g[c] + b[c];
            }
}

static void ref_clamp(double *y, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void fill_bn_params(tg *t, int g, int b, int m, int v)
{
    rfill(vdata(t, g), t->v[g].numel);
    rfill(vdata(t, b), t->v[b].numel);
    rfill(vdata(t, m), t->v[m].numel);
    float *vv = vdata(t, v);
    for (size_t i = 0; i < t->v[v].numel; i++) vv[i] = 0.2f + (float)(rnd() % 1000) / 500.0f;
}

static rt_attrs conv_attrs(const conv_p *p)
{
    rt_attrs a = def_attrs();
    a.kernel[0] = p->kh;
    a.kernel[1] = p->kw;
    a.strides[0] = p->sh;
    a.strides[1] = p->sw;
    a.dilations[0] = p->dh;
    a.dilations[1] = p->dw;
    a.pads[0] = p->pt;
    a.pads[1] = p->pl;
    a.pads[2] = p->pb;
    a.pads[3] = p->pr;
    a.group = p->group;
    return a;
}

/* tg_plan, checked; on failure the graph is freed and the status returned. */
static int tg_plan_checked(tg *t, runner *r, const char *label)
{
    const int rc = tg_plan(t, r);
    CHECK(rc == 0, "%s: plan: %s", label, r->err);
    if (rc) {
        tg_unplan(r);
        tg_free(t);
    }
    return rc;
}

/* One conv (+ optional BN, residual, clamp) graph vs the reference. fuse: bit 1 BN, bit 2
 * residual, bit 4 relu, bit 8 clip(0,6). */
static void test_conv_case(const conv_p *p, int bias, int fuse, const char *label)
{
    tg *t = tg_new();
    const int OH = conv_oh(p), OW = conv_ow(p);
    const int x = tg_input(t, DIMS(p->N, p->C, p->H, p->W));
    const int w = tg_weight(t, DIMS(p->M, p->C / p->group, p->kh, p->kw));
    int ins[5] = {x, w, -1, -1, -1};
    if (bias) ins[2] = tg_weight(t, DIMS(p->M));
    rt_attrs a = conv_attrs(p);
    int cur = tg_node(t, RT_OP_CONV, bias ? 3 : 2, ins, DIMS(p->N, p->M, OH, OW), &a);
    int bn[4] = {-1, -1, -1, -1}, res = -1;
    if (fuse & 1) {
        for (int k = 0; k < 4; k++) bn[k] = tg_weight(t, DIMS(p->M));
        fill_bn_params(t, bn[0], bn[1], bn[2], bn[3]);
        int bi[5] = {cur, bn[0], bn[1], bn[2], bn[3]};
        rt_attrs ba = def_attrs();
        ba.epsilon = 1e-3f;
        cur = tg_node(t, RT_OP_BATCHNORM, 5, bi, DIMS(p->N, p->M, OH, OW), &ba);
    }
    if (fuse & 2) {
        res = tg_input(t, DIMS(p->N, p->M, OH, OW));
        int ai[2] = {res, cur}; /* residual as the *first* operand */
        cur = tg_node(t, RT_OP_ADD, 2, ai, DIMS(p->N, p->M, OH, OW), NULL);
    }
    if (fuse & 4) cur = tg_node(t, RT_OP_RELU, 1, &cur, DIMS(p->N, p->M, OH, OW), NULL);
    if (fuse & 8) {
        rt_attrs ca = def_attrs();
        ca.clip_min = 0.0f;
        ca.clip_max = 6.0f;
        cur = tg_node(t, RT_OP_CLIP, 1, &cur, DIMS(p->N, p->M, OH, OW), &ca);
    }
    tg_output(t, cur);

    runner r;
    if (tg_plan_checked(t, &r, label)) return;
    int rc;
    if (fuse) CHECK(cpu_plan_steps(r.plan) == 1, "%s: expected 1 fused step, got %d", label, cpu_plan_steps(r.plan));
    const size_t ny = (size_t)p->N * p->M * OH * OW;
    double *ref = malloc(ny * sizeof(double));
    /* Two rounds with different weights: nothing derived from weight data may be cached. */
    for (int round = 0; round < 2; round++) {
        if (round) {
            for (int k = 0; k < t->g.n_weights; k++) rfill(t->wdata[k], t->v[t->weights[k]].numel);
            if (fuse & 1) fill_bn_params(t, bn[0], bn[1], bn[2], bn[3]);
        }
        ref_conv(p, vdata(t, x), vdata(t, w), bias ? vdata(t, ins[2]) : NULL, ref);
        if (fuse & 1)
            ref_bn(ref, p->N, p->M, OH * OW, vdata(t, bn[0]), vdata(t, bn[1]), vdata(t, bn[2]),
                   vdata(t, bn[3]), 1e-3f);
        if (fuse & 2)
            for (size_t i = 0; i < ny; i++) ref[i] += vdata(t, res)[i];
        if (fuse & 4) ref_clamp(ref, ny, 0, INFINITY);
        if (fuse & 8) ref_clamp(ref, ny, 0, 6);
        float *out[1];
        rc = tg_run(t, &r, out);
        char why[160] = "";
        const double K = (double)(p->C / p->group) * p->kh * p->kw;
        CHECK(rc == 0 && close_enough(out[0], ref, ny, 1e-5 * sqrt(K) * 4, 1e-4, why, sizeof why),
              "%s round %d (N%d C%d %dx%d M%d k%dx%d s%d,%d d%d,%d p%d,%d,%d,%d g%d bias%d): %s",
              label, round, p->N, p->C, p->H, p->W, p->M, p->kh, p->kw, p->sh, p->sw, p->dh,
              p->dw, p->pt, p->pl, p->pb, p->pr, p->group, bias, why);
        free(out[0]);
    }
    free(ref);
    tg_unplan(&r);
    tg_free(t);
}

/* Each case of a list, alternately with BN + Clip and with bias, BN, Add and Relu. */
static void test_conv_list(const conv_p *ps, size_t n, const char *what)
{
    char label[48];
    for (size_t i = 0; i < n; i++) {
        snprintf(label, sizeof label, "%s %zu", what, i);
        test_conv_case(&ps[i], (int)(i & 1), (i & 1) ? 1 | 2 | 4 : 1 | 8, label);
    }
}

/* Every epilogue shape the GEMM kernels are compiled for (gemm.c: none, Relu, Clip, each with and
 * without a residual, the BN scale folded into the packed weights) on each AVX2 tile: M % 4 == 0
 * and not % 6 (4x24), M % 6 == 0 (6x16), neither (6x16 + M-edge rows); N with and without an
 * edge panel, and N % 32 == 16 (AVX-512's in-place half panel); K in one block and in two (later
 * blocks add C). */
static void test_epilogue_shapes(void)
{
    const conv_p ps[] = {
        {1, 16, 6, 8, 32, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},   /* 4x24, N 48: no N edge; AVX-512 half panel */
        {1, 24, 4, 12, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},  /* 4x24; AVX-512 2 tiles + half panel */
        {1, 16, 5, 7, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},   /* 4x24, N 35: N edge */
        {1, 24, 4, 12, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},  /* 6x16 */
        {1, 16, 5, 7, 14, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},   /* 6x16 + 2 edge rows */
        {1, 700, 2, 12, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},  /* 4x24, K in two blocks */
        {1, 660, 3, 5, 9, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},   /* 6x16 + edge, two K blocks */
        {1, 4, 7, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},     /* im2col, 4x24 */
    };
    const int fuses[] = {0, 4, 8, 1, 1 | 4, 1 | 8, 1 | 2, 1 | 2 | 4, 2 | 8};
    char label[48];
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        for (size_t f = 0; f < sizeof fuses / sizeof fuses[0]; f++) {
            snprintf(label, sizeof label, "epilogue shape %zu fuse %d", i, fuses[f]);
            test_conv_case(&ps[i], (int)((i + f) & 1), fuses[f], label);
        }
}

static void test_conv(void)
{
    /* Fixed shapes hitting each path: 1x1 GEMM, depthwise 3x3 fast path, im2col GEMM with K
     * blocking (576 > 384), N blocking and edge tiles. */
    const conv_p fixed[] = {
        {1, 8, 9, 11, 13, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* 1x1 direct */
        {2, 16, 10, 10, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},    /* 1x1, batch 2 */
        {1, 12, 17, 19, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 12},   /* depthwise fast */
        {1, 6, 8, 40, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6},       /* depthwise wide rows */
        {1, 5, 7, 8, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 5},        /* depthwise, one AVX2 vector */
        {1, 3, 6, 16, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3},       /* depthwise, one AVX-512 vector */
        {1, 4, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4},        /* depthwise, narrower than a vector */
        {1, 4, 9, 40, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 4},       /* depthwise s2, rows of 20 */
        {1, 64, 9, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},      /* K = 576: two k blocks */
        {1, 3, 30, 30, 16, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1},     /* stem-like 7x7/2 */
        {1, 4, 64, 70, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},      /* many N blocks */
        {1, 6, 11, 9, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6},       /* depthwise stride 2 */
        {1, 5, 10, 10, 5, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 5},      /* depthwise s2, pad end only */
        {2, 3, 9, 12, 3, 3, 3, 2, 2, 1, 1, 1, 0, 1, 1, 3},       /* depthwise s2, odd/even, asym */
        {1, 4, 12, 12, 8, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 4},      /* grouped, dilated */
        {1, 4, 7, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4},        /* depthwise multiplier 2 */
        {1, 5, 9, 10, 7, 2, 3, 3, 2, 1, 2, 0, 2, 1, 0, 1},       /* asymmetric everything */
        {1, 16, 10, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* Winograd, even output */
        {2, 24, 7, 11, 17, 3, 3, 1, 1, 1, 1, 0, 1, 2, 1, 1},     /* Winograd, odd, asym pads */
        {1, 20, 6, 6, 32, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* Winograd, no padding */
        {1, 16, 71, 64, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* Winograd in 2 bands */
    };
    char label[32];
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        snprintf(label, sizeof label, "conv fixed %zu", i);
        test_conv_case(&fixed[i], (int)(i & 1), 0, label);
    }
    for (int i = 0; i < 14; i++) {
        conv_p p;
        p.N = rint_(1, 2);
        const int kind = i % 3; /* 0 dense, 1 grouped, 2 depthwise */
        p.group = kind == 0 ? 1 : (kind == 1 ? rint_(2, 3) : rint_(2, 9));
        p.C = kind == 2 ? p.group : p.group * rint_(1, 5);
        p.M = kind == 2 ? p.group * rint_(1, 2) : p.group * rint_(1, 7);
        p.kh = rint_(1, 5);
        p.kw = rint_(1, 5);
        p.sh = rint_(1, 3);
        p.sw = rint_(1, 3);
        p.dh = rint_(1, 2);
        p.dw = rint_(1, 2);
        p.pt = rint_(0, 2);
        p.pl = rint_(0, 2);
        p.pb = rint_(0, 2);
        p.pr = rint_(0, 2);
        p.H = p.dh * (p.kh - 1) + 1 + rint_(0, 14);
        p.W = p.dw * (p.kw - 1) + 1 + rint_(0, 14);
        snprintf(label, sizeof label, "conv random %d", i);
        test_conv_case(&p, rint_(0, 1), 0, label);
    }
    /* Fused epilogues on each conv path. */
    const conv_p pw = {1, 16, 10, 12, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1};
    const conv_p dw = {1, 24, 13, 14, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 24};
    const conv_p dw2 = {1, 24, 13, 14, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 24};
    const conv_p c3 = {1, 8, 11, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    test_conv_case(&pw, 0, 1 | 8, "1x1+BN+Clip");
    test_conv_case(&pw, 1, 1 | 2, "1x1+BN+Add");
    test_conv_case(&dw, 0, 1 | 8, "dw+BN+Clip");
    test_conv_case(&dw, 1, 2 | 4, "dw+Add+Relu");
    const conv_p dwr = {1, 8, 9, 20, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 8}; /* >= 1 AVX-512 vector */
    test_conv_case(&dwr, 1, 1 | 2 | 8, "dw+BN+Add+Clip, rows read in place");
    /* rows of >= 2 AVX-512 vectors (narrower ones run the AVX2 kernels in the AVX-512 set):
     * two exactly, and an overlapping last one */
    const conv_p dww[] = {
        {1, 4, 7, 32, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4},
        {1, 3, 9, 45, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3},
    };
    test_conv_list(dww, sizeof dww / sizeof dww[0], "dw rows of >= 2 AVX-512 vectors");
    test_conv_case(&dw2, 0, 1 | 4, "dw s2+BN+Relu");
    const conv_p dw2w = {1, 6, 12, 37, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6}; /* rows of 19 */
    test_conv_case(&dw2w, 1, 1 | 2 | 4, "dw s2+BN+Add+Relu, two rows per pass");
    /* Stride 2 read in place (pl 1, W == 2 OW >= 2 VL): one AVX2 vector, AVX2 with an
     * overlapping last vector, one AVX-512 vector, several (the AVX-512 set runs the AVX2 kernel
     * below OW 32: the last three are its own, two vectors, an overlapping last one, three); odd
     * H and top pad 0 (rows outside the image below it). */
    const conv_p dw2p[] = {
        {1, 5, 16, 16, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 5},
        {1, 4, 11, 24, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 4},
        {1, 3, 32, 32, 3, 3, 3, 2, 2, 1, 1, 0, 1, 2, 1, 3},
        {2, 4, 13, 48, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 4},
        {1, 3, 9, 56, 3, 3, 3, 2, 2, 1, 1, 1, 1, 0, 1, 3},
        {1, 3, 9, 64, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 3},
        {1, 2, 10, 74, 2, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 2},
        {1, 2, 7, 96, 2, 3, 3, 2, 2, 1, 1, 0, 1, 1, 1, 2},
    };
    test_conv_list(dw2p, sizeof dw2p / sizeof dw2p[0], "dw s2 in place");
    /* Dense 3x3/2 with few input channels over its column split (pl 1, W == 2 OW >= 2 VL,
     * M % 4 == 0): rows of one AVX2 vector (AVX-512: the wide GEMM), two, and 20 (one-vector
     * steps, the last overlapping); then steps of 3 vectors: AVX2 exactly one (24), one and an
     * overlapping one (28, 30), the stem's 48 (AVX-512: one step), 64 and 72 (AVX2 3 steps,
     * AVX-512 one-vector steps / two 3-vector steps), 100; C 1..4, top pad 0, odd H, batch 2;
     * M % 4 != 0 falls back. */
    const conv_p c3s2[] = {
        {1, 3, 16, 16, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {2, 1, 9, 32, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 2, 12, 40, 12, 3, 3, 2, 2, 1, 1, 0, 1, 1, 1, 1},
        {1, 3, 23, 96, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 4, 10, 56, 8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 1, 1},
        {1, 3, 16, 32, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 1, 11, 48, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 2, 14, 60, 4, 3, 3, 2, 2, 1, 1, 0, 1, 1, 1, 1},
        {2, 3, 8, 128, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 4, 9, 144, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
        {1, 3, 12, 200, 12, 3, 3, 2, 2, 1, 1, 0, 1, 1, 1, 1},
    };
    test_conv_list(c3s2, sizeof c3s2 / sizeof c3s2[0], "3x3/2 small C");
    {
        /* The direct path is a plan-time choice per kernel set (the profiler's Conv[direct]),
         * with nothing prepared and only its own scratch; other geometries stay wide. */
        const cpu_isa *isa = cpu_isa_select();
        cpu_conv_geom st = {1, 3, 96, 96, 16, 48, 48, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0};
        const int direct = isa->conv3x3s2 != NULL;
        CHECK(cpu_conv_path(isa, &st) == (direct ? CPU_CONV_C3S2 : CPU_CONV_WIDE),
              "stem path %d (kernel set %s)", cpu_conv_path(isa, &st), isa->name);
        CHECK(!direct || (cpu_conv_prepared_floats(isa, &st) == 0 &&
                          cpu_conv_scratch(isa, &st) == (size_t)CPU_C3S2_SCRATCH(3, 96, 16, 48)),
              "stem direct: prepared %zu, scratch %zu", cpu_conv_prepared_floats(isa, &st),
              cpu_conv_scratch(isa, &st));
        st.M = 6; /* M % 4 */
        CHECK(cpu_conv_path(isa, &st) == CPU_CONV_WIDE && cpu_conv_prepared_floats(isa, &st) > 0,
              "stem M 6: path %d", cpu_conv_path(isa, &st));
        st.M = 16;
        st.C = 5; /* > CPU_C3S2_MAX_C */
        CHECK(cpu_conv_path(isa, &st) == CPU_CONV_WIDE, "stem C 5: path %d", cpu_conv_path(isa, &st));
    }
    test_conv_case(&c3s2[3], 0, 4, "3x3/2 small C, Relu only");
    test_conv_case(&c3s2[2], 1, 0, "3x3/2 small C, no epilogue");
    test_conv_case(&c3, 0, 1 | 4, "3x3+BN+Relu");
    test_conv_case(&c3, 1, 1 | 2 | 4, "3x3+BN+Add+Relu");
    test_conv_case(&c3, 0, 4, "3x3+Relu");
    const conv_p wg = {1, 16, 14, 13, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    test_conv_case(&wg, 0, 1 | 2 | 4, "winograd+BN+Add+Relu");
    test_conv_case(&wg, 1, 1 | 8, "winograd+BN+Clip");
    test_epilogue_shapes();
}

/* ---- the row-split layout between depthwise convs (cpu.h, backend.c plan_split) ----------- */

/* A chain of convs, each + Relu (or Clip(0, 6)), from the string `layers`: 's' the small-C
 * 3x3/2 first layer (C0 -> C), 'd' depthwise 3x3/1 "same", 'D' depthwise 3x3/2 (pads pt2, 1,
 * 1, 1), 'p' 1x1 to the next entry of `widths`, 'o' the value so far also a graph output
 * (nothing may see the layout, so the chain breaks there). Compared with the references layer
 * by layer (each layer's input rounded to float, as the kernels read it); `want`: each conv
 * step's CPU_SPLIT_* flags as digits ('?': depends on the kernel set), or NULL. */
typedef struct split_p {
    int N, C0, H, W; /* the input (with 's': C0 channels, else widths[0]) */
    const char *layers;
    int widths[8];
    int clip, pt2;
    const char *want;
} split_p;

static void test_split_chain(const split_p *sp, const char *label)
{
    tg *t = tg_new();
    const int has_stem = sp->layers[0] == 's';
    int C = has_stem ? sp->C0 : sp->widths[0], H = sp->H, W = sp->W, wi = has_stem ? 0 : 1;
    const int x = tg_input(t, DIMS(sp->N, C, H, W));
    int cur = x, n_conv = 0;
    conv_p ps[16];
    int wv[16];
    for (const char *l = sp->layers; *l; l++) {
        if (*l == 'o') {
            tg_output(t, cur);
            continue;
        }
        conv_p p = {sp->N, C, H, W, C, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, C};
        if (*l == 's') p.M = sp->widths[0], p.sh = p.sw = 2, p.group = 1;
        if (*l == 'D') p.sh = p.sw = 2, p.pt = sp->pt2;
        if (*l == 'p') {
            p.M = sp->widths[wi++];
            p.kh = p.kw = 1;
            p.pt = p.pl = p.pb = p.pr = 0;
            p.group = 1;
        }
        const int OH = conv_oh(&p), OW = conv_ow(&p);
        const int w = tg_weight(t, DIMS(p.M, p.C / p.group, p.kh, p.kw));
        rt_attrs a = conv_attrs(&p);
        int ins[2] = {cur, w};
        cur = tg_node(t, RT_OP_CONV, 2, ins, DIMS(p.N, p.M, OH, OW), &a);
        if (sp->clip) {
            rt_attrs ca = def_attrs();
            ca.clip_min = 0.0f;
            ca.clip_max = 6.0f;
            cur = tg_node(t, RT_OP_CLIP, 1, &cur, DIMS(p.N, p.M, OH, OW), &ca);
        } else {
            cur = tg_node(t, RT_OP_RELU, 1, &cur, DIMS(p.N, p.M, OH, OW), NULL);
        }
        ps[n_conv] = p;
        wv[n_conv++] = w;
        C = p.M, H = OH, W = OW;
    }
    tg_output(t, cur);
    runner r;
    if (tg_plan_checked(t, &r, label)) return;
    char got[17] = "";
    int match = !sp->want || strlen(sp->want) == (size_t)n_conv;
    for (int i = 0; i < n_conv && i < 16; i++) {
        got[i] = (char)('0' + cpu_plan_split(r.plan, i));
        if (sp->want && match && sp->want[i] != '?' && sp->want[i] != got[i]) match = 0;
    }
    CHECK(match, "%s: split flags %s, expected %s", label, got, sp->want);
    float *outs[8];
    int rc = tg_run(t, &r, outs);
    CHECK(rc == 0, "%s: run: %s", label, r.err);
    /* the reference, layer by layer */
    size_t nx = (size_t)ps[0].N * ps[0].C * ps[0].H * ps[0].W;
    float *in = malloc(nx * sizeof(float));
    memcpy(in, vdata(t, x), nx * sizeof(float));
    double *ref = NULL;
    size_t ny = 0;
    for (int i = 0; i < n_conv; i++) {
        const conv_p *p = &ps[i];
        ny = (size_t)p->N * p->M * conv_oh(p) * conv_ow(p);
        free(ref);
        ref = malloc(ny * sizeof(double));
        ref_conv(p, in, vdata(t, wv[i]), NULL, ref);
        ref_clamp(ref, ny, 0, sp->clip ? 6 : INFINITY);
        free(in);
        in = malloc(ny * sizeof(float));
        for (size_t k = 0; k < ny; k++) in[k] = (float)ref[k];
    }
    char why[160] = "";
    const int last = t->g.n_outputs - 1;
    CHECK(rc == 0 && close_enough(outs[last], ref, ny, 1e-4, 1e-4, why, sizeof why),
          "%s (%s, %dx%d): %s", label, sp->layers, sp->H, sp->W, why);
    for (int j = 0; j < t->g.n_outputs; j++)
        if (rc == 0) free(outs[j]);
    free(in);
    free(ref);
    tg_unplan(&r);
    tg_free(t);
}

static void test_split_layout(void)
{
    /* The edge CNN's shape of chain (first layer, then depthwise / pointwise pairs, stride 2
     * every other): the split starts at the first layer's stores, the stride-1 depthwise convs
     * read and write it, the first stride-2 one writes it on for the next pair. The flag
     * string holds on every kernel set: the first layer's direct kernel takes 48 columns on all. */
    const split_p cases[] = {
        /* both pairs split on every set: stride-1 rows of 64 and 32 */
        {1, 3, 10, 128, "sdpDpdpD", {8, 12, 12, 16}, 0, 1, "23030301"},
        {2, 3, 9, 128, "sdpDpdpD", {4, 8, 8, 12}, 1, 0, "23030301"}, /* Clip; odd H; pt 0 */
        /* the edge CNN's widths: rows of 24 in the second pair, split where that pays (the
         * portable / NEON set's 4-float vectors; AVX2 would run 2 x 2 vectors for 3) */
        {1, 3, 14, 96, "sdpDpdpD", {8, 12, 12, 16}, 0, 1, "230?0?0?"},
        /* a graph output in the chain, no first layer, a 1x1 producer: nothing is split */
        {1, 3, 9, 64, "sdpoD", {4, 8}, 0, 1, "0000"},
        {2, 0, 9, 32, "dpD", {4, 8}, 0, 1, "000"},
        {1, 0, 8, 32, "pD", {4, 8}, 0, 1, "00"},
        /* half rows of 22 (AVX2: an overlapping last vector), 8 (AVX2: one vector), 6 (AVX2:
         * the scalar kernel, then stride-2 rows of 6 from the plain plane), 4 (portable: one) */
        {1, 3, 9, 88, "sdpDpdpD", {4, 6, 6, 8}, 1, 1, NULL},
        {1, 3, 8, 32, "sdpDpdpD", {4, 6, 6, 8}, 0, 1, NULL},
        {1, 3, 7, 24, "sdpDpdpD", {4, 5, 5, 6}, 0, 1, NULL},
        {1, 3, 6, 16, "sdpD", {4, 5}, 1, 0, NULL},
    };
    char label[40];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(label, sizeof label, "split chain %zu", i);
        test_split_chain(&cases[i], label);
    }
}

/* Gemm with every transpose / C shape, alpha/beta, M == 1 (GEMV) and M > 1, + fused Relu. */
static void test_gemm(void)
{
    char why[160];
    for (int i = 0; i < 24; i++) {
        const int M = (i % 4 == 0) ? 1 : rint_(2, 40), K = rint_(1, 70), N = rint_(1, 50);
        const int ta = rint_(0, 1), tb = rint_(0, 1), cshape = i % 6, relu = i % 5 == 0;
        const float alpha = (i % 3 == 0) ? 0.5f : 1.0f, beta = (i % 4 == 1) ? 2.0f : 1.0f;
        tg *t = tg_new();
        const int A = ta ? tg_input(t, DIMS(K, M)) : tg_input(t, DIMS(M, K));
        const int B = tb ? tg_weight(t, DIMS(N, K)) : tg_weight(t, DIMS(K, N));
        int C = -1;
        switch (cshape) {
        case 1: C = tg_weight(t, DIMS(N)); break;
        case 2: C = tg_weight(t, DIMS(1, N)); break;
        case 3: C = tg_weight(t, DIMS(M, 1)); break;
        case 4: C = tg_const(t, DIMS(1)); break;
        case 5: C = tg_weight(t, DIMS(M, N)); break;
        default: break;
        }
        rt_attrs a = def_attrs();
        a.trans_a = ta;
        a.trans_b = tb;
        a.alpha = alpha;
        a.beta = beta;
        int ins[3] = {A, B, C};
        int y = tg_node(t, RT_OP_GEMM, C >= 0 ? 3 : 2, ins, DIMS(M, N), &a);
        if (relu) y = tg_node(t, RT_OP_RELU, 1, &y, DIMS(M, N), NULL);
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "gemm plan: %s", r.err);
        if (!rc) {
            double *ref = malloc((size_t)M * N * sizeof(double));
            const float *pa = vdata(t, A), *pb = vdata(t, B), *pc = C >= 0 ? vdata(t, C) : NULL;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? pa[k * M + m] : pa[m * K + k]) *
                             (tb ? pb[n * K + k] : pb[k * N + n]);
                    s *= alpha;
                    if (pc) {
                        double c = cshape == 1 || cshape == 2 ? pc[n]
                                   : cshape == 3              ? pc[m]
                                   : cshape == 4              ? pc[0]
                                                              : pc[m * N + n];
                        s += beta * c;
                    }
                    ref[m * N + n] = relu && s < 0 ? 0 : s;
                }
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, (size_t)M * N, 1e-5 * K, 1e-4, why, sizeof why),
                  "gemm M%d N%d K%d ta%d tb%d c%d alpha%g beta%g relu%d: %s", M, N, K, ta, tb,
                  cshape, alpha, beta, relu, why);
            if (relu) CHECK(cpu_plan_steps(r.plan) == 1, "gemm+relu not fused");
            free(out[0]);
            free(ref);
        }
        tg_unplan(&r);
        tg_free(t);
    }
}

/* cpu_sgemm with a packed A: the row scale multiplied in by cpu_sgemm_pack_a (the prepared
 * weights' way) and, the fallback, left in epi (the full epilogue); each with a column bias and
 * a clamp or none, for M on every tile kind. */
static void test_sgemm_packed_scale(void)
{
    const cpu_isa *isa = cpu_isa_select();
    const int Ms[] = {5, 8, 12, 32, 14};
    char why[160];
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        const int M = Ms[mi], N = 29 + (int)mi * 7, K = 19;
        float *a = malloc((size_t)M * K * sizeof(float)), *b = malloc((size_t)K * N * sizeof(float));
        float *rs = malloc(M * sizeof(float)), *rb = malloc(M * sizeof(float));
        float *cb = malloc(N * sizeof(float)), *c = malloc((size_t)M * N * sizeof(float));
        float *pa = malloc(cpu_sgemm_packed_a_floats(isa, M, K) * sizeof(float));
        float *scratch = malloc((cpu_sgemm_scratch(isa, M, N, K) + 16) * sizeof(float));
        double *ref = malloc((size_t)M * N * sizeof(double));
        rfill(a, (size_t)M * K);
        rfill(b, (size_t)K * N);
        rfill(rs, M);
        rfill(rb, M);
        rfill(cb, N);
        for (int variant = 0; variant < 4; variant++) {
            const int in_a = variant & 1, col = variant & 2;
            const float lo = col ? -0.5f : -INFINITY, hi = col ? 0.5f : INFINITY;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) s += (double)a[m * K + k] * b[k * N + n];
                    s = s * rs[m] + rb[m] + (col ? cb[n] : 0.0);
                    ref[m * N + n] = s < lo ? lo : (s > hi ? hi : s);
                }
            cpu_sgemm_pack_a(isa, a, K, 1, M, K, in_a ? rs : NULL, pa);
            cpu_epi e;
            memset(&e, 0, sizeof e);
            e.row_scale = in_a ? NULL : rs;
            e.row_bias = rb;
            e.col_bias = col ? cb : NULL;
            e.lo = lo;
            e.hi = hi;
            cpu_bsrc bs;
            memset(&bs, 0, sizeof bs);
            bs.b = b;
            bs.rs = N;
            bs.cs = 1;
            cpu_sgemm(isa, M, N, K, pa, 0, CPU_A_PACKED, &bs, c, N, &e, scratch);
            CHECK(close_enough(c, ref, (size_t)M * N, 1e-5 * K, 1e-4, why, sizeof why),
                  "sgemm packed A, M%d N%d, scale in %s, col bias %d: %s", M, N,
                  in_a ? "A" : "epi", col ? 1 : 0, why);
        }
        free(a);
        free(b);
        free(rs);
        free(rb);
        free(cb);
        free(c);
        free(pa);
        free(scratch);
        free(ref);
    }
}

/* Gemm + residual Add fused, and the whole MLP shape (Gemm/Relu/Gemm/Softmax). */
static void test_mlp(void)
{
    char why[160];
    tg *t = tg_new();
    const int x = tg_input(t, DIMS(1, 20));
    const int w1 = tg_weight(t, DIMS(32, 20)), b1 = tg_weight(t, DIMS(32));
    const int w2 = tg_weight(t, DIMS(32, 32)), b2 = tg_weight(t, DIMS(32));
    const int w3 = tg_weight(t, DIMS(10, 32)), b3 = tg_weight(t, DIMS(10));
    rt_attrs a = def_attrs();
    a.trans_b = 1;
    int i1[3] = {x, w1, b1};
    int h = tg_node(t, RT_OP_GEMM, 3, i1, DIMS(1, 32), &a);
    h = tg_node(t, RT_OP_RELU, 1, &h, DIMS(1, 32), NULL);
    int i2[3] = {h, w2, b2};
    int h2 = tg_node(t, RT_OP_GEMM, 3, i2, DIMS(1, 32), &a);
    int ai[2] = {h2, h};
    h2 = tg_node(t, RT_OP_ADD, 2, ai, DIMS(1, 32), NULL);
    int i3[3] = {h2, w3, b3};
    int z = tg_node(t, RT_OP_GEMM, 3, i3, DIMS(1, 10), &a);
    rt_attrs sa = def_attrs();
    sa.axis = 1;
    int y = tg_node(t, RT_OP_SOFTMAX, 1, &z, DIMS(1, 10), &sa);
    tg_output(t, y);
    runner r;
    int rc = tg_plan(t, &r);
    CHECK(rc == 0, "mlp plan: %s", r.err);
    if (!rc) {
        CHECK(cpu_plan_steps(r.plan) == 4, "mlp: expected 4 steps (gemm+relu, gemm+add, gemm, softmax), got %d",
              cpu_plan_steps(r.plan));
        double hh[32], hh2[32], zz[10], ref[10];
        const float *px = vdata(t, x);
        for (int n = 0; n < 32; n++) {
            double s = vdata(t, b1)[n];
            for (int k = 0; k < 20; k++) s += (double)px[k] * vdata(t, w1)[n * 20 + k];
            hh[n] = s < 0 ? 0 : s;
        }
        for (int n = 0; n < 32; n++) {
            double s = vdata(t, b2)[n];
            for (int k = 0; k < 32; k++) s += hh[k] * vdata(t, w2)[n * 32 + k];
            hh2[n] = s + hh[n];
        }
        double mx = -1e300, sum = 0;
        for (int n = 0; n < 10; n++) {
            double s = vdata(t, b3)[n];
            for (int k = 0; k < 32; k++) s += hh2[k] * vdata(t, w3)[n * 32 + k];
            zz[n] = s;
            mx = s > mx ? s : mx;
        }
        for (int n = 0; n < 10; n++) sum += exp(zz[n] - mx);
        for (int n = 0; n < 10; n++) ref[n] = exp(zz[n] - mx) / sum;
        float *out[1];
        rc = tg_run(t, &r, out);
        CHECK(rc == 0 && close_enough(out[0], ref, 10, 1e-6, 1e-4, why, sizeof why), "mlp: %s", why);
        free(out[0]);
    }
    tg_unplan(&r);
    tg_free(t);
}

static void test_matmul(void)
{
    char why[160];
    struct {
        int na, nb;
        int64_t a[4], b[4], y[4];
        int ny;
    } cases[] = {
        {2, 2, {5, 7}, {7, 9}, {5, 9}, 2},
        {3, 3, {2, 5, 7}, {2, 7, 3}, {2, 5, 3}, 3},
        {3, 2, {3, 4, 6}, {6, 5}, {3, 4, 5}, 3},
        {2, 3, {4, 6}, {3, 6, 5}, {3, 4, 5}, 3},
        {4, 3, {2, 1, 3, 4}, {3, 4, 2}, {2, 3, 3, 2}, 4},
        {1, 2, {6}, {6, 4}, {4}, 1},
        {2, 1, {3, 6}, {6}, {3}, 1},
        {3, 3, {1, 1, 40}, {1, 40, 33}, {1, 1, 33}, 3},
        {3, 3, {70, 2, 3}, {70, 3, 4}, {70, 2, 4}, 3},   /* > 64 batches: offsets on the heap */
        {4, 2, {5, 14, 3, 6}, {6, 2}, {5, 14, 3, 2}, 4},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tg *t = tg_new();
        const int A = tg_input(t, cases[c].na, cases[c].a);
        const int B = tg_weight(t, cases[c].nb, cases[c].b);
        int ins[2] = {A, B};
        const int y = tg_node(t, RT_OP_MATMUL, 2, ins, cases[c].ny, cases[c].y, NULL);
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "matmul %zu plan: %s", c, r.err);
        if (!rc) {
            /* Reference: numpy rules written out directly. */
            const int na = cases[c].na, nb = cases[c].nb;
            const int64_t M = na >= 2 ? cases[c].a[na - 2] : 1, K = cases[c].a[na - 1];
            const int64_t N = nb >= 2 ? cases[c].b[nb - 1] : 1;
            const int bda = na > 2 ? na - 2 : 0, bdb = nb > 2 ? nb - 2 : 0;
            const int bd = bda > bdb ? bda : bdb;
            int64_t da[4], db[4], dd[4], total = 1;
            for (int i = 0; i < bd; i++) {
                da[i] = i - (bd - bda) >= 0 ? cases[c].a[i - (bd - bda)] : 1;
                db[i] = i - (bd - bdb) >= 0 ? cases[c].b[i - (bd - bdb)] : 1;
                dd[i] = da[i] > db[i] ? da[i] : db[i];
                total *= dd[i];
            }
            double *ref = malloc((size_t)(total * M * N) * sizeof(double));
            for (int64_t bt = 0; bt < total; bt++) {
                int64_t rem = bt, ia = 0, ib = 0, sa = 1, sb = 1;
                int64_t idx[4];
                for (int i = bd - 1; i >= 0; i--) {
                    idx[i] = rem % dd[i];
                    rem /= dd[i];
                }
                for (int i = bd - 1; i >= 0; i--) {
                    ia += (da[i] == 1 ? 0 : idx[i]) * sa;
                    ib += (db[i] == 1 ? 0 : idx[i]) * sb;
                    sa *= da[i];
                    sb *= db[i];
                }
                const float *pa = vdata(t, A) + ia * M * K, *pb = vdata(t, B) + ib * K * N;
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        double s = 0;
                        for (int64_t k = 0; k < K; k++) s += (double)pa[m * K + k] * pb[k * N + n];
                        ref[(bt * M + m) * N + n] = s;
                    }
            }
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, (size_t)(total * M * N), 1e-5 * K, 1e-4, why, sizeof why),
                  "matmul case %zu: %s", c, why);
            free(out[0]);
            free(ref);
        }
        tg_unplan(&r);
        tg_free(t);
    }
}

static void test_binary(void)
{
    char why[160];
    const rt_op ops[4] = {RT_OP_ADD, RT_OP_SUB, RT_OP_MUL, RT_OP_DIV};
    for (int i = 0; i < 24; i++) {
        const int nd = rint_(1, 4);
        int64_t ys[4], as[4], bs[4];
        for (int d = 0; d < nd; d++) {
            ys[d] = rint_(1, 6);
            as[d] = rint_(0, 2) ? ys[d] : 1;
            bs[d] = rint_(0, 2) ? ys[d] : 1;
        }
        const int nda = rint_(0, nd), ndb = i % 5 == 0 ? 0 : rint_(1, nd); /* right-aligned ranks */
        tg *t = tg_new();
        const int A = tg_input(t, nda, as + (nd - nda));
        const int B = (i & 1) ? tg_weight(t, ndb, bs + (nd - ndb)) : tg_input(t, ndb, bs + (nd - ndb));
        const rt_op op = ops[i % 4];
        if (op == RT_OP_DIV) {
            float *pb = vdata(t, B);
            for (size_t k = 0; k < t->v[B].numel; k++) pb[k] = pb[k] >= 0 ? pb[k] + 0.5f : pb[k] - 0.5f;
        }
        int ins[2] = {A, B};
        const int y = tg_node(t, op, 2, ins, nd, ys, NULL);
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "binary plan: %s", r.err);
        if (!rc) {
            size_t n = t->v[y].numel;
            double *ref = malloc(n * sizeof(double));
            for (size_t e = 0; e < n; e++) {
                size_t rem = e, ia = 0, ib = 0, sa = 1, sb = 1;
                for (int d = nd - 1; d >= 0; d--) {
                    const size_t id = rem % (size_t)ys[d];
                    rem /= (size_t)ys[d];
                    const int64_t ad = d - (nd - nda) >= 0 ? as[d] : 1, bd = d - (nd - ndb) >= 0 ? bs[d] : 1;
                    ia += (ad == 1 ? 0 : id) * sa;
                    ib += (bd == 1 ? 0 : id) * sb;
                    sa *= (size_t)ad;
                    sb *= (size_t)bd;
                }
                const double xa = vdata(t, A)[ia], xb = vdata(t, B)[ib];
                ref[e] = op == RT_OP_ADD ? xa + xb : op == RT_OP_SUB ? xa - xb : op == RT_OP_MUL ? xa * xb : xa / xb;
            }
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, n, 1e-6, 1e-5, why, sizeof why), "binary %d nd%d: %s", i, nd, why);
            free(out[0]);
            free(ref);
        }
        tg_unplan(&r);
        tg_free(t);
    }
}

/* Sigmoid and LeakyRelu over the whole float range (their vector loops and scalar tails):
 * sigmoid within 1e-6 relative where the result is a normal float (absolute 1e-37 below), 0 and
 * 1 at -inf / +inf, NaN kept; LeakyRelu exactly v >= 0 ? v : v * alpha. */
static void test_activation_range(void)
{
    enum { N = 207 };
    for (int kind = 0; kind < 2; kind++) {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(N));
        rt_attrs a = def_attrs();
        a.alpha = 0.1f;
        tg_output(t, tg_node(t, kind ? RT_OP_LEAKYRELU : RT_OP_SIGMOID, 1, &x, DIMS(N), &a));
        float *px = vdata(t, x);
        for (int i = 0; i < N; i++) px[i] = -100.0f + 200.0f * (float)i / (N - 8);
        px[N - 7] = NAN;
        px[N - 6] = INFINITY;
        px[N - 5] = -INFINITY;
        px[N - 4] = -0.0f;
        px[N - 3] = 1e-30f;
        px[N - 2] = -87.0f;
        px[N - 1] = -88.5f;
        runner r;
        int rc = tg_plan(t, &r);
        float *out[1];
        if (!rc) rc = tg_run(t, &r, out);
        CHECK(rc == 0, "activation range %d: %s", kind, r.err);
        for (int i = 0; rc == 0 && i < N; i++) {
            const float v = px[i], got = out[0][i];
            int good;
            if (kind) {
                const float want = v >= 0 ? v : v * 0.1f;
                good = isnan(v) ? isnan(got) : memcmp(&got, &want, sizeof got) == 0;
            } else {
                const double want = 1.0 / (1.0 + exp(-(double)v));
                good = isnan(v) ? isnan(got)
                                : fabs(got - want) <= (want >= FLT_MIN ? 1e-6 * want : 1e-37);
            }
            CHECK(good, "%s(%g) = %.9g", kind ? "LeakyRelu" : "Sigmoid", (double)v, (double)got);
        }
        if (rc == 0) free(out[0]);
        tg_unplan(&r);
        tg_free(t);
    }
}

/* Elementwise activations, standalone BN (3-D input) and Clip bounds read from weights. */
static void test_unary(void)
{
    char why[160];
    for (int kind = 0; kind < 6; kind++) {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(2, 5, 7));
        int y;
        rt_attrs a = def_attrs();
        int lo_w = -1, hi_w = -1, bn[4];
        switch (kind) {
        case 0: y = tg_node(t, RT_OP_RELU, 1, &x, DIMS(2, 5, 7), NULL); break;
        case 1:
            a.clip_min = -0.25f;
            a.clip_max = 0.5f;
            y = tg_node(t, RT_OP_CLIP, 1, &x, DIMS(2, 5, 7), &a);
            break;
        case 2: y = tg_node(t, RT_OP_SIGMOID, 1, &x, DIMS(2, 5, 7), NULL); break;
        case 3:
            a.alpha = 0.1f;
            y = tg_node(t, RT_OP_LEAKYRELU, 1, &x, DIMS(2, 5, 7), &a);
            break;
        case 4: {
            lo_w = tg_weight(t, 0, NULL);
            hi_w = tg_weight(t, 0, NULL);
            vdata(t, lo_w)[0] = -0.3f;
            vdata(t, hi_w)[0] = 0.2f;
            a.clip_min_from_input = a.clip_max_from_input = 1;
            int ins[3] = {x, lo_w, hi_w};
            y = tg_node(t, RT_OP_CLIP, 3, ins, DIMS(2, 5, 7), &a);
            break;
        }
        default: {
            for (int k = 0; k < 4; k++) bn[k] = tg_weight(t, DIMS(5));
            fill_bn_params(t, bn[0], bn[1], bn[2], bn[3]);
            int ins[5] = {x, bn[0], bn[1], bn[2], bn[3]};
            y = tg_node(t, RT_OP_BATCHNORM, 5, ins, DIMS(2, 5, 7), &a);
            break;
        }
        }
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "unary %d plan: %s", kind, r.err);
        if (!rc) {
            double ref[70];
            const float *px = vdata(t, x);
            for (int i = 0; i < 70; i++) {
                const double v = px[i];
                switch (kind) {
                case 0: ref[i] = v < 0 ? 0 : v; break;
                case 1: ref[i] = v < -0.25 ? -0.25 : v > 0.5 ? 0.5 : v; break;
                case 2: ref[i] = 1.0 / (1.0 + exp(-v)); break;
                case 3: ref[i] = v < 0 ? 0.1 * v : v; break;
                case 4: ref[i] = v < -0.3f ? -0.3f : v > 0.2f ? 0.2f : v; break;
                default: ref[i] = v; break;
                }
            }
            if (kind == 5) ref_bn(ref, 2, 5, 7, vdata(t, bn[0]), vdata(t, bn[1]), vdata(t, bn[2]), vdata(t, bn[3]), 1e-5f);
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, 70, 1e-6, 1e-5, why, sizeof why), "unary %d: %s", kind, why);
            if (kind == 4) { /* new bounds on the next run */
                vdata(t, lo_w)[0] = 0.0f;
                vdata(t, hi_w)[0] = 0.1f;
                free(out[0]);
                for (int i = 0; i < 70; i++) ref[i] = px[i] < 0 ? 0 : px[i] > 0.1f ? 0.1f : px[i];
                rc = tg_run(t, &r, out);
                CHECK(rc == 0 && close_enough(out[0], ref, 70, 1e-6, 1e-5, why, sizeof why), "clip from weights, new bounds: %s", why);
            }
            free(out[0]);
        }
        tg_unplan(&r);
        tg_free(t);
    }
}

typedef struct pool_p {
    int maxp, N, C, H, W, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, cip, ceil_mode;
} pool_p;

static void test_pool_case(const pool_p *p)
{
    char why[160];
    const int maxp = p->maxp, N = p->N, C = p->C, H = p->H, W = p->W, kh = p->kh, kw = p->kw;
    const int sh = p->sh, sw = p->sw, dh = p->dh, dw = p->dw, pt = p->pt, pl = p->pl, pb = p->pb;
    const int pr = p->pr, cip = p->cip, ceil_mode = p->ceil_mode;
    int OH = (H + pt + pb - dh * (kh - 1) - 1), OW = (W + pl + pr - dw * (kw - 1) - 1);
    OH = (ceil_mode ? (OH + sh - 1) / sh : OH / sh) + 1;
    OW = (ceil_mode ? (OW + sw - 1) / sw : OW / sw) + 1;
    /* ONNX: the last window must start inside the (left-padded) input. */
    if (ceil_mode && (OH - 1) * sh >= H + pt) OH--;
    if (ceil_mode && (OW - 1) * sw >= W + pl) OW--;
    tg *t = tg_new();
    const int x = tg_input(t, DIMS(N, C, H, W));
    rt_attrs a = def_attrs();
    a.kernel[0] = kh;
    a.kernel[1] = kw;
    a.strides[0] = sh;
    a.strides[1] = sw;
    a.dilations[0] = dh;
    a.dilations[1] = dw;
    a.pads[0] = pt;
    a.pads[1] = pl;
    a.pads[2] = pb;
    a.pads[3] = pr;
    a.count_include_pad = cip;
    const int y = tg_node(t, maxp ? RT_OP_MAXPOOL : RT_OP_AVGPOOL, 1, &x, DIMS(N, C, OH, OW), &a);
    tg_output(t, y);
    runner r;
    int rc = tg_plan(t, &r);
    CHECK(rc == 0, "pool plan: %s", r.err);
    if (!rc) {
        const size_t n = (size_t)N * C * OH * OW;
        double *ref = malloc(n * sizeof(double));
        const float *px = vdata(t, x);
        for (int nc = 0; nc < N * C; nc++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double acc = maxp ? -INFINITY : 0;
                    int cnt = 0;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            const int iy = oy * sh - pt + ky * dh, ix = ox * sw - pl + kx * dw;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            const double v = px[(nc * H + iy) * W + ix];
                            if (maxp) acc = v > acc ? v : acc;
                            else acc += v;
                            cnt++;
                        }
                    if (!maxp) {
                        /* count_include_pad: window clipped to the padded extent */
                        const int hs = oy * sh - pt, ws = ox * sw - pl;
                        const int he = hs + kh < H + pb ? hs + kh : H + pb;
                        const int we = ws + kw < W + pr ? ws + kw : W + pr;
                        const int div = cip ? (he - hs) * (we - ws) : cnt;
                        acc = div ? acc / div : 0;
                    }
                    ref[(nc * OH + oy) * OW + ox] = acc;
                }
        float *out[1];
        rc = tg_run(t, &r, out);
        CHECK(rc == 0 && close_enough(out[0], ref, n, 1e-6, 1e-5, why, sizeof why),
              "%s %dx%dx%dx%d k%dx%d s%d,%d d%d,%d p%d,%d,%d,%d cip%d ceil%d: %s",
              maxp ? "maxpool" : "avgpool", N, C, H, W, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, cip,
              ceil_mode, why);
        free(out[0]);
        free(ref);
    }
    tg_unplan(&r);
    tg_free(t);
}

static void test_pool(void)
{
    for (int i = 0; i < 16; i++) {
        pool_p p;
        p.maxp = i % 2 == 0;
        p.N = rint_(1, 2);
        p.C = rint_(1, 4);
        p.kh = rint_(1, 4);
        p.kw = rint_(1, 4);
        p.sh = rint_(1, 3);
        p.sw = rint_(1, 3);
        p.dh = p.maxp ? rint_(1, 2) : 1;
        p.dw = p.maxp ? rint_(1, 2) : 1;
        p.pt = rint_(0, p.kh - 1);
        p.pl = rint_(0, p.kw - 1);
        p.pb = rint_(0, p.kh - 1);
        p.pr = rint_(0, p.kw - 1);
        p.H = p.dh * (p.kh - 1) + 1 + rint_(0, 9);
        p.W = p.dw * (p.kw - 1) + 1 + rint_(0, 9);
        p.cip = (i / 2) % 2;
        p.ceil_mode = i % 4 == 3;
        test_pool_case(&p);
    }
    /* The stride-2 MaxPool kernel (planes_body.h): rows wider than a vector with an overlapping
     * last one, narrower than one at the tensor's end, padding, ceil mode, row stride 1. */
    static const pool_p fixed[] = {
        {1, 2, 5, 30, 33, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0}, /* ResNet-stem-like */
        {1, 1, 7, 12, 12, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0}, /* edge-CNN-like, 6 wide */
        {1, 1, 3, 17, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 1}, /* ceil mode */
        {1, 1, 2, 9, 37, 2, 2, 2, 2, 1, 1, 0, 0, 0, 1, 0, 1}, /* odd width, end padding */
        {1, 1, 2, 8, 20, 3, 3, 1, 2, 1, 1, 1, 1, 1, 1, 0, 0}, /* row stride 1 */
        {1, 1, 33, 4, 70, 2, 3, 2, 2, 1, 1, 0, 1, 0, 1, 0, 0}, /* several chunks */
        /* rows narrower than a vector, no column padding: straight from the input rows */
        {1, 2, 5, 9, 13, 3, 3, 2, 2, 1, 1, 1, 0, 1, 0, 0, 0}, /* 3 wide, odd W, row padding */
        {1, 1, 3, 7, 9, 2, 2, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0}, /* row dilation */
        {1, 2, 3, 6, 30, 2, 3, 1, 2, 1, 1, 0, 0, 0, 0, 0, 0}, /* OW 14: AVX2 rows, AVX-512 direct */
        {1, 1, 1, 4, 5, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0}, /* one output row of 2 */
        {1, 3, 64, 12, 12, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0}, /* the edge CNN's, 64 planes */
        {1, 1, 2, 8, 16, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0}, /* OW 8: AVX2 one vector */
        {1, 2, 3, 9, 112, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0}, /* OW 56: the AVX-512 kernel */
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) test_pool_case(&fixed[i]);
}

/* GlobalAveragePool -> Flatten (alias) -> Gemm; Reshape as a graph output (copy); Identity;
 * Concat on two axes; Softmax on a middle axis; ReduceMean with keepdims and without. */
static void test_shape_ops(void)
{
    char why[160];
    {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(1, 6, 5, 4));
        int gp = tg_node(t, RT_OP_GLOBALAVGPOOL, 1, &x, DIMS(1, 6, 1, 1), NULL);
        rt_attrs fa = def_attrs();
        fa.axis = 1;
        int f = tg_node(t, RT_OP_FLATTEN, 1, &gp, DIMS(1, 6), &fa);
        const int w = tg_weight(t, DIMS(3, 6)), b = tg_weight(t, DIMS(3));
        rt_attrs ga = def_attrs();
        ga.trans_b = 1;
        int gi[3] = {f, w, b};
        int y = tg_node(t, RT_OP_GEMM, 3, gi, DIMS(1, 3), &ga);
        tg_output(t, y);
        int rs = tg_node(t, RT_OP_RESHAPE, 1, &gp, DIMS(2, 3), NULL);
        tg_output(t, rs);
        int id = tg_node(t, RT_OP_IDENTITY, 1, &x, DIMS(1, 6, 5, 4), NULL);
        tg_output(t, id);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "gap/flatten plan: %s", r.err);
        if (!rc) {
            double m[6], ref[3], xr[120];
            for (int c = 0; c < 6; c++) {
                double s = 0;
                for (int i = 0; i < 20; i++) s += vdata(t, x)[c * 20 + i];
                m[c] = s / 20;
            }
            for (int n = 0; n < 3; n++) {
                double s = vdata(t, b)[n];
                for (int k = 0; k < 6; k++) s += m[k] * vdata(t, w)[n * 6 + k];
                ref[n] = s;
            }
            for (int i = 0; i < 120; i++) xr[i] = vdata(t, x)[i];
            float *out[3];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, 3, 1e-6, 1e-5, why, sizeof why), "gap->flatten->gemm: %s", why);
            CHECK(rc == 0 && close_enough(out[1], m, 6, 1e-6, 1e-5, why, sizeof why), "reshape output: %s", why);
            CHECK(rc == 0 && close_enough(out[2], xr, 120, 0, 0, why, sizeof why), "identity output: %s", why);
            for (int j = 0; j < 3; j++) free(out[j]);
        }
        tg_unplan(&r);
        tg_free(t);
    }
    for (int axis = 0; axis < 3; axis++) {
        tg *t = tg_new();
        int64_t s1[3] = {2, 3, 4}, s2[3] = {2, 3, 4}, so[3] = {2, 3, 4};
        s2[axis] = 5;
        so[axis] = s1[axis] + 5;
        const int a = tg_input(t, 3, s1), b = tg_weight(t, 3, s2);
        rt_attrs ca = def_attrs();
        ca.axis = axis;
        int ins[2] = {a, b};
        const int y = tg_node(t, RT_OP_CONCAT, 2, ins, 3, so, &ca);
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "concat plan: %s", r.err);
        if (!rc) {
            const size_t n = (size_t)(so[0] * so[1] * so[2]);
            double *ref = malloc(n * sizeof(double));
            for (int i = 0; i < so[0]; i++)
                for (int j = 0; j < so[1]; j++)
                    for (int k = 0; k < so[2]; k++) {
                        int idx[3] = {i, j, k};
                        double v;
                        if (idx[axis] < s1[axis]) {
                            v = vdata(t, a)[(idx[0] * s1[1] + idx[1]) * s1[2] + idx[2]];
                        } else {
                            idx[axis] -= (int)s1[axis];
                            v = vdata(t, b)[(idx[0] * s2[1] + idx[1]) * s2[2] + idx[2]];
                        }
                        ref[(i * so[1] + j) * so[2] + k] = v;
                    }
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, n, 0, 0, why, sizeof why), "concat axis %d: %s", axis, why);
            free(out[0]);
            free(ref);
        }
        tg_unplan(&r);
        tg_free(t);
    }
    for (int axis = 0; axis < 3; axis++) {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(3, 4, 5));
        float *px = vdata(t, x);
        for (int i = 0; i < 60; i++) px[i] *= 8.0f;
        rt_attrs sa = def_attrs();
        sa.axis = axis;
        const int y = tg_node(t, RT_OP_SOFTMAX, 1, &x, DIMS(3, 4, 5), &sa);
        tg_output(t, y);
        runner r;
        int rc = tg_plan(t, &r);
        CHECK(rc == 0, "softmax plan: %s", r.err);
        if (!rc) {
            const int d[3] = {3, 4, 5}, st[3] = {20, 5, 1};
            double ref[60];
            for (int e = 0; e < 60; e++) {
                const int base = e - ((e / st[axis]) % d[axis]) * st[axis];
                double mx = -1e300, s = 0;
                for (int k = 0; k < d[axis]; k++) mx = px[base + k * st[axis]] > mx ? px[base + k * st[axis]] : mx;
                for (int k = 0; k < d[axis]; k++) s += exp(px[base + k * st[axis]] - mx);
                ref[e] = exp(px[e] - mx) / s;
            }
            float *out[1];
            rc = tg_run(t, &r, out);
            CHECK(rc == 0 && close_enough(out[0], ref, 60, 1e-7, 1e-5, why, sizeof why), "softmax axis %d: %s", axis, why);
            free(out[0]);
        }
        tg_unplan(&r);
        tg_free(t);
    }
    for (uint32_t mask = 1; mask < 8; mask++) {
        for (int keep = 0; keep < 2; keep++) {
            tg *t = tg_new();
            const int x = tg_input(t, DIMS(3, 4, 5));
            int64_t os[3];
            int on = 0;
            const int64_t d[3] = {3, 4, 5};
            for (int i = 0; i < 3; i++) {
                if (mask & (1u << i)) {
                    if (keep) os[on++] = 1;
                } else {
                    os[on++] = d[i];
                }
            }
            rt_attrs ra = def_attrs();
            ra.reduce_mask = mask;
            ra.keepdims = keep;
            const int y = tg_node(t, RT_OP_REDUCEMEAN, 1, &x, on, os, &ra);
            tg_output(t, y);
            runner r;
            int rc = tg_plan(t, &r);
            CHECK(rc == 0, "reducemean plan: %s", r.err);
            if (!rc) {
                double ref[60] = {0};
                int cnt = 1;
                for (int i = 0; i < 3; i++)
                    if (mask & (1u << i)) cnt *= (int)d[i];
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 4; j++)
                        for (int k = 0; k < 5; k++) {
                            const int oi = (mask & 1) ? 0 : i, oj = (mask & 2) ? 0 : j, ok = (mask & 4) ? 0 : k;
                            const int nj = (mask & 2) ? 1 : 4, nk = (mask & 4) ? 1 : 5;
                            ref[(oi * nj + oj) * nk + ok] += vdata(t, x)[(i * 4 + j) * 5 + k] / (double)cnt;
                        }
                float *out[1];
                rc = tg_run(t, &r, out);
                CHECK(rc == 0 && close_enough(out[0], ref, t->v[y].numel, 1e-6, 1e-5, why, sizeof why),
                      "reducemean mask %u keep %d: %s", mask, keep, why);
                free(out[0]);
            }
            tg_unplan(&r);
            tg_free(t);
        }
    }
}

/* A 12-op chain: buffers must be reused (arena < sum of intermediates) and results stay right;
 * the residual operand (produced early) must stay live until the fused Add reads it. */
static void test_memory_plan(void)
{
    char why[160];
    tg *t = tg_new();
    const int C = 8, H = 12, W = 12;
    const int x = tg_input(t, DIMS(1, C, H, W));
    rt_attrs a = def_attrs();
    a.kernel[0] = a.kernel[1] = 3;
    a.pads[0] = a.pads[1] = a.pads[2] = a.pads[3] = 1;
    int cur = x, skip = -1, ws[12];
    size_t total = 0;
    for (int i = 0; i < 12; i++) {
        ws[i] = tg_weight(t, DIMS(C, C, 3, 3));
        float *pw = vdata(t, ws[i]);
        for (int k = 0; k < C * C * 9; k++) pw[k] *= 0.3f;
        int ins[2] = {cur, ws[i]};
        cur = tg_node(t, RT_OP_CONV, 2, ins, DIMS(1, C, H, W), &a);
        total += (size_t)C * H * W * sizeof(float);
        if (i == 2) skip = cur;
        if (i == 9) {
            int ai[2] = {cur, skip};
            cur = tg_node(t, RT_OP_ADD, 2, ai, DIMS(1, C, H, W), NULL);
        }
        if (i % 2) cur = tg_node(t, RT_OP_RELU, 1, &cur, DIMS(1, C, H, W), NULL);
    }
    tg_output(t, cur);
    runner r;
    int rc = tg_plan(t, &r);
    CHECK(rc == 0, "chain plan: %s", r.err);
    if (!rc) {
        CHECK(cpu_plan_arena_bytes(r.plan) <= 3 * (size_t)C * H * W * sizeof(float) + 256,
              "arena %zu bytes for a 12-conv chain (sum of intermediates %zu)",
              cpu_plan_arena_bytes(r.plan), total);
        const size_t n = (size_t)C * H * W;
        double *ref = malloc(n * sizeof(double)), *sk = malloc(n * sizeof(double));
        float *cf = malloc(n * sizeof(float));
        memcpy(cf, vdata(t, x), n * sizeof(float));
        conv_p p = {1, C, H, W, C, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        for (int i = 0; i < 12; i++) {
            ref_conv(&p, cf, vdata(t, ws[i]), NULL, ref);
            if (i == 2) memcpy(sk, ref, n * sizeof(double));
            if (i == 9)
                for (size_t k = 0; k < n; k++) ref[k] += sk[k];
            if (i % 2) ref_clamp(ref, n, 0, INFINITY);
            for (size_t k = 0; k < n; k++) cf[k] = (float)ref[k];
        }
        float *out[1];
        rc = tg_run(t, &r, out);
        CHECK(rc == 0 && close_enough(out[0], ref, n, 1e-4, 1e-3, why, sizeof why), "12-conv chain: %s", why);
        free(out[0]);
        free(ref);
        free(sk);
        free(cf);
    }
    tg_unplan(&r);
    tg_free(t);
}

/* Contexts of one plan on two threads, each with its own weights, 20 runs each. */
typedef struct thr_arg {
    tg *t;
    void *plan;
    float *w;      /* this thread's conv weight */
    double *ref;   /* expected output */
    size_t n;
    int ok;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    void *ctx = NULL;
    char err[128];
    void *prep = NULL;
    const float *w[1] = {a->w};
    a->ok = rt_cpu_backend.ctx_create(a->plan, &ctx, err, sizeof err) == 0;
    /* Preparing without a base shares nothing, so two threads may prepare on one plan. */
    a->ok = a->ok && rt_cpu_backend.weights_prepare(a->plan, w, NULL, NULL, &prep, err, sizeof err) == 0;
    float *out = malloc(a->n * sizeof(float));
    for (int it = 0; it < 20 && a->ok; it++) {
        const float *in[1] = {a->t->idata[0]};
        float *o[1] = {out};
        if (rt_cpu_backend.run(a->plan, ctx, prep, in, o, err, sizeof err)) a->ok = 0;
        for (size_t i = 0; i < a->n && a->ok; i++)
            if (fabs(out[i] - a->ref[i]) > 1e-4 + 1e-4 * fabs(a->ref[i])) a->ok = 0;
    }
    free(out);
    if (prep) rt_cpu_backend.weights_release(a->plan, prep);
    rt_cpu_backend.ctx_destroy(ctx);
    return NULL;
}

static void test_threads(void)
{
    tg *t = tg_new();
    const conv_p p = {1, 8, 10, 10, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const int x = tg_input(t, DIMS(1, 8, 10, 10));
    const int w = tg_weight(t, DIMS(8, 8, 3, 3));
    rt_attrs a = def_attrs();
    a.pads[0] = a.pads[1] = a.pads[2] = a.pads[3] = 1;
    int ins[2] = {x, w};
    int y = tg_node(t, RT_OP_CONV, 2, ins, DIMS(1, 8, 10, 10), &a);
    y = tg_node(t, RT_OP_RELU, 1, &y, DIMS(1, 8, 10, 10), NULL);
    tg_output(t, y);
    void *plan = NULL;
    char err[128];
    int rc = rt_cpu_backend.plan_create(&t->g, NULL, &plan, err, sizeof err);
    CHECK(rc == 0, "threads plan: %s", err);
    if (rc) {
        tg_free(t);
        return;
    }
    thr_arg args[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        args[k].t = t;
        args[k].plan = plan;
        args[k].n = 800;
        args[k].w = malloc(576 * sizeof(float));
        rfill(args[k].w, 576);
        args[k].ref = malloc(800 * sizeof(double));
        ref_conv(&p, vdata(t, x), args[k].w, NULL, args[k].ref);
        ref_clamp(args[k].ref, 800, 0, INFINITY);
    }
    for (int k = 0; k < 2; k++) pthread_create(&th[k], NULL, thr_main, &args[k]);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        CHECK(args[k].ok, "thread %d: wrong output with its own weights on a shared plan", k);
        free(args[k].w);
        free(args[k].ref);
    }
    rt_cpu_backend.plan_destroy(plan);
    tg_free(t);
}

/* Backend API v2: a partial re-prepare shares the steps whose weights did not change, and an
 * in-place refit never writes a buffer another handle shares (copy on write). */
static int run_prepared(tg *t, void *plan, void *ctx, const void *prep, float *out)
{
    char err[128];
    const float *in[1] = {t->idata[0]};
    float *o[1] = {out};
    return rt_cpu_backend.run(plan, ctx, prep, in, o, err, sizeof err);
}

static void test_prepared_sharing(void)
{
    tg *t = tg_new();
    const conv_p p1 = {1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const conv_p p2 = {1, 16, 8, 8, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1};
    const int x = tg_input(t, DIMS(1, 16, 8, 8));
    const int w1 = tg_weight(t, DIMS(16, 16, 3, 3)), w2 = tg_weight(t, DIMS(16, 16, 1, 1));
    rt_attrs a = def_attrs();
    a.pads[0] = a.pads[1] = a.pads[2] = a.pads[3] = 1;
    int in1[2] = {x, w1};
    const int h = tg_node(t, RT_OP_CONV, 2, in1, DIMS(1, 16, 8, 8), &a);
    int in2[2] = {h, w2};
    tg_output(t, tg_node(t, RT_OP_CONV, 2, in2, DIMS(1, 16, 8, 8), NULL));
    float *w1b = malloc(2304 * sizeof(float)), *w2b = malloc(256 * sizeof(float)), out[1024];
    double *hr = malloc(1024 * sizeof(double)), *ref = malloc(1024 * sizeof(double));
    float *hf = malloc(1024 * sizeof(float));
    rfill(w1b, 2304);
    rfill(w2b, 256);
    void *plan = NULL, *ctx = NULL, *pa = NULL, *pb = NULL;
    char err[128];
    CHECK(rt_cpu_backend.plan_create(&t->g, NULL, &plan, err, sizeof err) == 0 &&
              rt_cpu_backend.ctx_create(plan, &ctx, err, sizeof err) == 0, "sharing plan: %s", err);
    const float *wa[2] = {vdata(t, w1), vdata(t, w2)}, *wb[2] = {vdata(t, w1), w2b}, *wc[2] = {w1b, vdata(t, w2)};
    const unsigned char only_w2[2] = {0, 1}, only_w1[2] = {1, 0};
    CHECK(rt_cpu_backend.weights_prepare(plan, wa, NULL, NULL, &pa, err, sizeof err) == 0, "prepare a");
    CHECK(rt_cpu_backend.weights_prepare(plan, wb, pa, only_w2, &pb, err, sizeof err) == 0, "prepare b");
    CHECK(cpu_prepared_shares(plan, pa, pb, 0) == 1 && cpu_prepared_shares(plan, pa, pb, 1) == 0,
          "b shares conv 1 (w1 unchanged) and re-prepared conv 2 (w2 changed)");
    /* Refit a in place with a new w1: its conv-1 buffer is shared with b, so a gets a copy. */
    CHECK(rt_cpu_backend.weights_refit(plan, pa, wc, only_w1, err, sizeof err) == 0, "refit a in place");
    CHECK(cpu_prepared_shares(plan, pa, pb, 0) == 0, "the in-place refit copied the shared buffer");
    const float *const sets[2][2] = {{wb[0], wb[1]}, {wc[0], wc[1]}};
    const void *handles[2] = {pb, pa};
    for (int k = 0; k < 2; k++) {
        ref_conv(&p1, vdata(t, x), sets[k][0], NULL, hr);
        for (int i = 0; i < 1024; i++) hf[i] = (float)hr[i];
        ref_conv(&p2, hf, sets[k][1], NULL, ref);
        char why[160] = "";
        CHECK(run_prepared(t, plan, ctx, handles[k], out) == 0 &&
                  close_enough(out, ref, 1024, 1e-3, 1e-3, why, sizeof why),
              "handle %c computes with its own weights: %s", k ? 'a' : 'b', why);
    }
    rt_cpu_backend.weights_release(plan, pa);
    rt_cpu_backend.weights_release(plan, pb);
    rt_cpu_backend.ctx_destroy(ctx);
    rt_cpu_backend.plan_destroy(plan);
    free(w1b);
    free(w2b);
    free(hr);
    free(ref);
    free(hf);
    tg_free(t);
}

/* The BN scale lives in the conv step's prepared (packed) weights: a refit that changes only a
 * BN tensor re-prepares the step (not shared with the base), in a new set and in place, and the
 * conv computes with the new scale; the base set keeps the old one. */
static void test_folded_scale_refit(void)
{
    tg *t = tg_new();
    const conv_p p = {1, 16, 6, 10, 32, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1};
    const int x = tg_input(t, DIMS(1, 16, 6, 10));
    const int w = tg_weight(t, DIMS(32, 16, 1, 1));
    int bn[4];
    for (int k = 0; k < 4; k++) bn[k] = tg_weight(t, DIMS(32));
    fill_bn_params(t, bn[0], bn[1], bn[2], bn[3]);
    int ci[2] = {x, w};
    const int cv = tg_node(t, RT_OP_CONV, 2, ci, DIMS(1, 32, 6, 10), NULL);
    int bi[5] = {cv, bn[0], bn[1], bn[2], bn[3]};
    rt_attrs ba = def_attrs();
    ba.epsilon = 1e-3f;
    const int y = tg_node(t, RT_OP_BATCHNORM, 5, bi, DIMS(1, 32, 6, 10), &ba);
    tg_output(t, tg_node(t, RT_OP_RELU, 1, &y, DIMS(1, 32, 6, 10), NULL));
    float gamma2[32], out[1920];
    double ref[1920];
    rfill(gamma2, 32);
    void *plan = NULL, *ctx = NULL, *pa = NULL, *pb = NULL;
    char err[128], why[160] = "";
    CHECK(rt_cpu_backend.plan_create(&t->g, NULL, &plan, err, sizeof err) == 0 &&
              rt_cpu_backend.ctx_create(plan, &ctx, err, sizeof err) == 0, "folded plan: %s", err);
    CHECK(cpu_plan_steps(plan) == 1, "conv+BN+Relu is one step");
    const float *wa[5] = {vdata(t, w), vdata(t, bn[0]), vdata(t, bn[1]), vdata(t, bn[2]), vdata(t, bn[3])};
    const float *wb[5] = {wa[0], gamma2, wa[2], wa[3], wa[4]};
    const unsigned char only_gamma[5] = {0, 1, 0, 0, 0};
    CHECK(rt_cpu_backend.weights_prepare(plan, wa, NULL, NULL, &pa, err, sizeof err) == 0, "prepare a");
    CHECK(rt_cpu_backend.weights_prepare(plan, wb, pa, only_gamma, &pb, err, sizeof err) == 0, "prepare b");
    CHECK(cpu_prepared_shares(plan, pa, pb, 0) == 0, "a BN-only change re-prepares the conv step");
    for (int k = 0; k < 3; k++) {
        /* k 0: a (old gamma), 1: b (new gamma), 2: a refit in place with the new gamma */
        if (k == 2)
            CHECK(rt_cpu_backend.weights_refit(plan, pa, wb, only_gamma, err, sizeof err) == 0,
                  "refit a in place: %s", err);
        ref_conv(&p, vdata(t, x), wa[0], NULL, ref);
        ref_bn(ref, 1, 32, 60, k ? gamma2 : wa[1], wa[2], wa[3], wa[4], 1e-3f);
        ref_clamp(ref, 1920, 0, INFINITY);
        CHECK(run_prepared(t, plan, ctx, k == 1 ? pb : pa, out) == 0 &&
                  close_enough(out, ref, 1920, 1e-4, 1e-4, why, sizeof why),
              "folded scale, set %d: %s", k, why);
    }
    rt_cpu_backend.weights_release(plan, pa);
    rt_cpu_backend.weights_release(plan, pb);
    rt_cpu_backend.ctx_destroy(ctx);
    rt_cpu_backend.plan_destroy(plan);
    tg_free(t);
}

static void test_refusals(void)
{
    runner r;
    {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(1, 6, 5, 5));
        const int w = tg_weight(t, DIMS(4, 2, 3, 3));
        rt_attrs a = def_attrs();
        a.group = 4; /* does not divide 6 */
        int ins[2] = {x, w};
        tg_output(t, tg_node(t, RT_OP_CONV, 2, ins, DIMS(1, 4, 3, 3), &a));
        const int rc = tg_plan(t, &r);
        CHECK(rc == REFIT_ERR_MODEL && strstr(r.err, "'n0'") && strstr(r.err, "Conv") && strstr(r.err, "group"),
              "bad group: rc %d, message '%s'", rc, r.err);
        tg_unplan(&r);
        tg_free(t);
    }
    {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(1, 2, 5));
        const int w = tg_weight(t, DIMS(3, 2, 3));
        int ins[2] = {x, w};
        tg_output(t, tg_node(t, RT_OP_CONV, 2, ins, DIMS(1, 3, 3), NULL));
        const int rc = tg_plan(t, &r);
        CHECK(rc == REFIT_ERR_UNSUPPORTED && strstr(r.err, "2-D"), "1-D conv: rc %d, '%s'", rc, r.err);
        tg_unplan(&r);
        tg_free(t);
    }
    {
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(2, 3));
        t->v[x].dtype = RT_I64;
        tg_output(t, tg_node(t, RT_OP_RELU, 1, &x, DIMS(2, 3), NULL));
        const int rc = tg_plan(t, &r);
        CHECK(rc == REFIT_ERR_UNSUPPORTED && strstr(r.err, "float32"), "int64 input: rc %d, '%s'", rc, r.err);
        tg_unplan(&r);
        tg_free(t);
    }
}

static void run_all(void)
{
    test_conv();
    test_split_layout();
    test_gemm();
    test_mlp();
    test_matmul();
    test_binary();
    test_unary();
    test_activation_range();
    test_pool();
    test_shape_ops();
    test_memory_plan();
    test_threads();
    test_prepared_sharing();
    test_folded_scale_refit();
    test_sgemm_packed_scale();
    test_refusals();
}

int main(void)
{
    /* Every kernel set this machine can run: the portable one always, then the x86 ones. */
    const char *isas[] = {"generic", "avx2", "avx512"};
    for (int i = 0; i < 3; i++) {
        if (setenv("REFIT_CPU_ISA", isas[i], 1) != 0) return 2;
        /* Skip a set the CPU lacks (the selector falls back; don't count it twice). */
        void *probe = NULL;
        tg *t = tg_new();
        const int x = tg_input(t, DIMS(1));
        tg_output(t, tg_node(t, RT_OP_RELU, 1, &x, DIMS(1), NULL));
        char err[64];
        if (rt_cpu_backend.plan_create(&t->g, NULL, &probe, err, sizeof err) == 0) {
            g_isa = cpu_plan_isa(probe);
            static char label[48];
            snprintf(label, sizeof label, "[%s] ", g_isa);
            check_label = label;
            const int same = i > 0 && strcmp(isas[i], "avx2") == 0 ? strcmp(g_isa, "avx2+fma") != 0
                             : i > 0                               ? strcmp(g_isa, "avx512f") != 0
                                                                   : 0;
            rt_cpu_backend.plan_destroy(probe);
            tg_free(t);
            if (same) continue;
        } else {
            tg_free(t);
            printf("probe plan failed: %s\n", err);
            return 1;
        }
        rng_state = 0x9e3779b97f4a7c15ull;
        const int before = check_passed;
        run_all();
        printf("kernels %-9s: %d checks\n", g_isa, check_passed - before);
    }
    unsetenv("REFIT_CPU_ISA");
    return CHECK_SUMMARY("test_cpu_ops");
}
