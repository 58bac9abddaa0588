/*
 * backend.c — the reference CPU backend: plan (validation, fusion, memory plan), contexts, run.
 *
 * Plan (read-only after plan_create, shared by every context):
 *  - one step per node that is not fused into an earlier step. Fusion: Conv -> BatchNormalization
 *    -> Add (residual) -> Relu/Clip, Gemm -> Add -> Relu/Clip, BatchNormalization -> Relu/Clip;
 *    each link only when the intermediate has exactly one consumer and is not a graph output, and
 *    a residual operand only if it is computed before the step runs;
 *  - Reshape / Flatten / Identity alias their input's storage (no step) unless their output is a
 *    graph output (then a copy);
 *  - graph outputs are written straight into the caller's buffers;
 *  - every other intermediate gets an offset in one activation arena: liveness intervals over
 *    steps, first-fit placement, so buffers whose lifetimes do not overlap share memory;
 *  - one scratch area per context, sized for the hungriest step (packed GEMM panels, padded /
 *    polyphase planes, Winograd buffers).
 * Nothing derived from weight *data* is kept in the plan. Prepared weights (backend API v2,
 * weights_prepare): per step, what depends only on weights — folded BatchNorm scale/bias, the
 * conv kernels packed into SGEMM panels, Winograd-transformed kernels — is computed once per
 * weight set, in a refcounted buffer a partial refit shares for every step whose weights did not
 * change. run only reads it. A step whose weights are computed at run time keeps the per-run path.
 */
#include "../backend.h"
#include "cpu.h"
#include "refit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { REF_NONE = 0, REF_IN, REF_W, REF_CONST, REF_ARENA, REF_OUT };
typedef struct cpu_ref {
    int kind;
    int idx;     /* input / weight / output index, or value index for CONST */
    size_t off;  /* ARENA: byte offset */
} cpu_ref;

enum {
    ST_CONV,
    ST_GEMM,
    ST_MATMUL,
    ST_BINARY,
    ST_CLAMP,
    ST_SIGMOID,
    ST_LEAKY,
    ST_BN,
    ST_MAXPOOL,
    ST_AVGPOOL,
    ST_GAP,
    ST_COPY,
    ST_CONCAT,
    ST_SOFTMAX,
    ST_REDUCEMEAN
};

enum { GC_NONE, GC_COL, GC_ROW, GC_SCALAR, GC_FULL };

typedef struct cpu_step {
    int kind;
    int node;           /* main node index */
    int out_value;      /* final value written by the step */
    int n_in;
    int in_val[RT_MAX_NODE_INPUTS];
    /* fusion */
    int bn_node;        /* -1 or fused BatchNormalization node */
    int res_val;        /* -1 or residual operand value */
    int has_clamp;
    float lo, hi;
    int lo_val, hi_val; /* -1, or a weight/const value holding the bound (read per run) */
    /* geometry */
    cpu_conv_geom conv;
    cpu_pool_geom pool;
    int64_t M, N, K, ars, acs, brs, bcs;
    int gemm_c;         /* GC_* */
    int bin_op, nd;
    int64_t oshape[RT_MAX_DIMS_CPU], ashape[RT_MAX_DIMS_CPU], bshape[RT_MAX_DIMS_CPU];
    int64_t outer, inner, n;
    int64_t batch, a_off[64], b_off[64]; /* MatMul: per-batch offsets (<= 64 batches planned) */
    int64_t *a_offs, *b_offs;             /* MatMul: owned arrays when batch > 64 */
    int64_t cat_inner[RT_MAX_NODE_INPUTS];
    size_t param_floats;   /* per-run derived parameters at the start of the scratch */
    size_t prep_floats;    /* prepared buffer: param_floats + wp_floats (0: nothing prepared) */
    size_t wp_floats;      /* conv: the kernels' prepared form (cpu_conv_prepared_floats) */
} cpu_step;

typedef struct cpu_plan {
    const rt_graph *g;
    const cpu_isa *isa;
    cpu_step *steps;
    int n_steps;
    cpu_ref *vref;       /* per value */
    size_t arena_bytes;
    size_t scratch_floats;
    cpu_debug *dbg;      /* NULL unless a backend.profile / backend.dump option asked for it */
} cpu_plan;

/* One step's prepared weights; shared between prepared sets while its weights are unchanged.
 * refs is plain: the core calls weights_* one at a time per plan. */
typedef struct cpu_pbuf {
    int refs;
    float *data; /* 64-byte aligned, prep_floats */
} cpu_pbuf;

typedef struct cpu_wprep {
    const float **w;  /* raw weight k (the core's, valid while this handle lives) */
    cpu_pbuf **buf;   /* per step, NULL where the step prepares nothing */
} cpu_wprep;

typedef struct cpu_ctx {
    const cpu_plan *plan;
    int id;              /* profiler thread lane */
    unsigned char *arena;
    float *scratch;
} cpu_ctx;

static const char *op_name(rt_op op)
{
    static const char *const names[RT_OP_COUNT] = {
        "Conv",    "Gemm",      "MatMul",             "Add",     "Sub",          "Mul",
        "Div",     "Relu",      "Clip",               "Sigmoid", "LeakyRelu",    "BatchNormalization",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",     "Concat",
        "Softmax", "ReduceMean", "Identity"};
    return (unsigned)op < RT_OP_COUNT ? names[op] : "?";
}

static int fail(char *err, size_t errlen, int code, const rt_graph *g, int node, const char *fmt,
                ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (err && errlen) {
        if (node >= 0)
            snprintf(err, errlen, "node '%s' (%s): %s", g->nodes[node].name,
                     op_name(g->nodes[node].op), msg);
        else
            snprintf(err, errlen, "%s", msg);
    }
    return code;
}

static int64_t prod(const int64_t *d, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++) p *= d[i];
    return p;
}

static int same_shape(const rt_shape *a, const rt_shape *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->d[i] != b->d[i]) return 0;
    return 1;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* ---- plan ------------------------------------------------------------------------------------- */

typedef struct plan_tmp {
    int *uses;       /* node-input uses per value */
    int *consumer;   /* the consumer node when uses == 1 */
    int *producer;   /* node index producing the value, -1 */
    int *absorbed;   /* per node: fused into an earlier step */
    int *step_of;    /* per value: step index that makes it available (-1: always there) */
    int *alias_of;   /* per value: root value it aliases, or itself */
    int nofuse;      /* dump plan: one step per node, no fusion, no aliasing */
} plan_tmp;

/* The single consumer node of v, if v has exactly one use and is not a graph output. */
static int sole_consumer(const rt_graph *g, const plan_tmp *t, int v)
{
    if (g->values[v].output_index >= 0 || t->uses[v] != 1) return -1;
    return t->consumer[v];
}

static int check_f32(const rt_graph *g, int node, int v, char *err, size_t errlen)
{
    if (v < 0) return 0;
    if (g->values[v].dtype != RT_F32)
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, node, "input '%s' has dtype %d, not float32",
                    g->values[v].name, g->values[v].dtype);
    if (g->values[v].kind == RT_VAL_CONST && !g->values[v].data)
        return fail(err, errlen, REFIT_ERR_MODEL, g, node, "constant '%s' has no data",
                    g->values[v].name);
    return 0;
}

static int setup_conv(const rt_graph *g, int ni, cpu_step *s, char *err, size_t errlen)
{
    const rt_node *nd = &g->nodes[ni];
    if (nd->n_in < 2 || nd->in[0] < 0 || nd->in[1] < 0)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "needs X and W");
    const rt_shape *x = &g->values[nd->in[0]].shape, *w = &g->values[nd->in[1]].shape,
                   *y = &g->values[nd->out].shape;
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, ni, "only 2-D convolution (4-D tensors) is supported");
    cpu_conv_geom *c = &s->conv;
    c->N = x->d[0];
    c->C = x->d[1];
    c->H = x->d[2];
    c->W = x->d[3];
    c->M = w->d[0];
    c->group = nd->a.group > 0 ? nd->a.group : 1;
    c->kh = w->d[2];
    c->kw = w->d[3];
    c->sh = nd->a.strides[0] > 0 ? nd->a.strides[0] : 1;
    c->sw = nd->a.strides[1] > 0 ? nd->a.strides[1] : 1;
    c->dh = nd->a.dilations[0] > 0 ? nd->a.dilations[0] : 1;
    c->dw = nd->a.dilations[1] > 0 ? nd->a.dilations[1] : 1;
    c->pt = nd->a.pads[0];
    c->pl = nd->a.pads[1];
    c->OH = y->d[2];
    c->OW = y->d[3];
    if (c->C % c->group || c->M % c->group)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "group=%lld does not divide %lld input / %lld output channels",
                    (long long)c->group, (long long)c->C, (long long)c->M);
    if (w->d[1] != c->C / c->group)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "weight has %lld input channels, expected %lld",
                    (long long)w->d[1], (long long)(c->C / c->group));
    if ((nd->a.kernel[0] && nd->a.kernel[0] != c->kh) || (nd->a.kernel[1] && nd->a.kernel[1] != c->kw))
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "kernel_shape does not match the weight");
    if (y->d[0] != c->N || y->d[1] != c->M)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "output shape does not match input/weight");
    const int64_t eh = (c->H + nd->a.pads[0] + nd->a.pads[2] - c->dh * (c->kh - 1) - 1) / c->sh + 1;
    const int64_t ew = (c->W + nd->a.pads[1] + nd->a.pads[3] - c->dw * (c->kw - 1) - 1) / c->sw + 1;
    if (eh != c->OH || ew != c->OW || c->pt < 0 || c->pl < 0)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "output spatial size %lldx%lld, expected %lldx%lld",
                    (long long)c->OH, (long long)c->OW, (long long)eh, (long long)ew);
    if (nd->n_in > 2 && nd->in[2] >= 0 && (int64_t)g->values[nd->in[2]].numel != c->M)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "bias has %zu elements, expected %lld",
                    g->values[nd->in[2]].numel, (long long)c->M);
    return 0;
}

static int setup_gemm(const rt_graph *g, int ni, cpu_step *s, char *err, size_t errlen)
{
    const rt_node *nd = &g->nodes[ni];
    if (nd->n_in < 2 || nd->in[0] < 0 || nd->in[1] < 0)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "needs A and B");
    const rt_shape *a = &g->values[nd->in[0]].shape, *b = &g->values[nd->in[1]].shape,
                   *y = &g->values[nd->out].shape;
    if (a->ndim != 2 || b->ndim != 2 || y->ndim != 2)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "A, B and Y must be 2-D");
    const int64_t M = nd->a.trans_a ? a->d[1] : a->d[0], K = nd->a.trans_a ? a->d[0] : a->d[1];
    const int64_t Kb = nd->a.trans_b ? b->d[1] : b->d[0], N = nd->a.trans_b ? b->d[0] : b->d[1];
    if (K != Kb || y->d[0] != M || y->d[1] != N)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "inner dimensions do not match");
    s->M = M;
    s->N = N;
    s->K = K;
    s->ars = nd->a.trans_a ? 1 : K;
    s->acs = nd->a.trans_a ? M : 1;
    s->brs = nd->a.trans_b ? 1 : N;
    s->bcs = nd->a.trans_b ? K : 1;
    s->gemm_c = GC_NONE;
    if (nd->n_in > 2 && nd->in[2] >= 0 && nd->a.beta != 0.0f) {
        const rt_shape *c = &g->values[nd->in[2]].shape;
        const size_t cn = g->values[nd->in[2]].numel;
        int64_t cd[2] = {1, 1};
        if (c->ndim > 2) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "C has more than 2 dims");
        for (int i = 0; i < c->ndim; i++) cd[2 - c->ndim + i] = c->d[i];
        if ((cd[0] != 1 && cd[0] != M) || (cd[1] != 1 && cd[1] != N))
            return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "C is not broadcastable to [%lld, %lld]",
                        (long long)M, (long long)N);
        if (cn == 1) s->gemm_c = GC_SCALAR;
        else if (cd[0] == 1) s->gemm_c = GC_COL;
        else if (cd[1] == 1) s->gemm_c = GC_ROW;
        else s->gemm_c = GC_FULL;
    }
    return 0;
}

/* Broadcast batch dims for MatMul. */
static int setup_matmul(const rt_graph *g, int ni, cpu_step *s, char *err, size_t errlen)
{
    const rt_node *nd = &g->nodes[ni];
    const rt_shape *a = &g->values[nd->in[0]].shape, *b = &g->values[nd->in[1]].shape,
                   *y = &g->values[nd->out].shape;
    if (a->ndim < 1 || b->ndim < 1)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "scalar operand");
    const int64_t M = a->ndim >= 2 ? a->d[a->ndim - 2] : 1, K = a->d[a->ndim - 1];
    const int64_t Kb = b->ndim >= 2 ? b->d[b->ndim - 2] : b->d[0];
    const int64_t N = b->ndim >= 2 ? b->d[b->ndim - 1] : 1;
    if (K != Kb) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "inner dimensions %lld and %lld differ",
                             (long long)K, (long long)Kb);
    const int na = a->ndim >= 2 ? a->ndim - 2 : 0, nb = b->ndim >= 2 ? b->ndim - 2 : 0;
    const int nbd = na > nb ? na : nb;
    int64_t bd[RT_MAX_DIMS_CPU], ad[RT_MAX_DIMS_CPU], bbd[RT_MAX_DIMS_CPU];
    for (int i = 0; i < nbd; i++) {
        ad[i] = i - (nbd - na) >= 0 ? a->d[i - (nbd - na)] : 1;
        bbd[i] = i - (nbd - nb) >= 0 ? b->d[i - (nbd - nb)] : 1;
        if (ad[i] != bbd[i] && ad[i] != 1 && bbd[i] != 1)
            return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "batch dims do not broadcast");
        bd[i] = ad[i] > bbd[i] ? ad[i] : bbd[i];
    }
    const int64_t batch = prod(bd, 0, nbd);
    if ((int64_t)g->values[nd->out].numel != batch * M * N)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "output has %zu elements, expected %lld",
                    g->values[nd->out].numel, (long long)(batch * M * N));
    (void)y;
    s->M = M;
    s->N = N;
    s->K = K;
    s->batch = batch;
    int64_t *ao = s->a_off, *bo = s->b_off;
    if (batch > 64) {
        s->a_offs = malloc((size_t)batch * sizeof(int64_t));
        s->b_offs = malloc((size_t)batch * sizeof(int64_t));
        if (!s->a_offs || !s->b_offs) return fail(err, errlen, REFIT_ERR_NOMEM, g, ni, "out of memory");
        ao = s->a_offs;
        bo = s->b_offs;
    }
    int64_t idx[RT_MAX_DIMS_CPU] = {0};
    for (int64_t t = 0; t < batch; t++) {
        int64_t oa = 0, ob = 0, sa = M * K, sb = K * N;
        for (int i = nbd - 1; i >= 0; i--) {
            if (ad[i] != 1) oa += idx[i] * sa;
            if (bbd[i] != 1) ob += idx[i] * sb;
            sa *= ad[i];
            sb *= bbd[i];
        }
        ao[t] = oa;
        bo[t] = ob;
        for (int i = nbd - 1; i >= 0; i--) {
            if (++idx[i] < bd[i]) break;
            idx[i] = 0;
        }
    }
    return 0;
}

static int setup_pool(const rt_graph *g, int ni, cpu_step *s, char *err, size_t errlen)
{
    const rt_node *nd = &g->nodes[ni];
    const rt_shape *x = &g->values[nd->in[0]].shape, *y = &g->values[nd->out].shape;
    if (x->ndim != 4 || y->ndim != 4)
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, ni, "only 2-D pooling (4-D tensors) is supported");
    cpu_pool_geom *p = &s->pool;
    p->N = x->d[0];
    p->C = x->d[1];
    p->H = x->d[2];
    p->W = x->d[3];
    p->OH = y->d[2];
    p->OW = y->d[3];
    p->kh = nd->a.kernel[0];
    p->kw = nd->a.kernel[1];
    p->sh = nd->a.strides[0] > 0 ? nd->a.strides[0] : 1;
    p->sw = nd->a.strides[1] > 0 ? nd->a.strides[1] : 1;
    p->dh = nd->a.dilations[0] > 0 ? nd->a.dilations[0] : 1;
    p->dw = nd->a.dilations[1] > 0 ? nd->a.dilations[1] : 1;
    p->pt = nd->a.pads[0];
    p->pl = nd->a.pads[1];
    p->pb = nd->a.pads[2];
    p->pr = nd->a.pads[3];
    p->count_include_pad = nd->a.count_include_pad;
    if (p->kh <= 0 || p->kw <= 0)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "kernel_shape missing");
    if (y->d[0] != p->N || y->d[1] != p->C)
        return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "output shape does not match input");
    if (nd->op == RT_OP_AVGPOOL && (p->dh != 1 || p->dw != 1))
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, ni, "dilations are not supported");
    return 0;
}

/* Fuses the chain after a Conv / Gemm / BatchNormalization step. */
static void fuse_chain(const rt_graph *g, plan_tmp *t, cpu_step *s, int allow_bn, int allow_res)
{
    int cur = s->out_value;
    int c;
    if (allow_bn && (c = sole_consumer(g, t, cur)) >= 0 && g->nodes[c].op == RT_OP_BATCHNORM &&
        g->nodes[c].in[0] == cur && g->nodes[c].n_in >= 5 && g->values[g->nodes[c].out].shape.ndim == 4 &&
        g->values[g->nodes[c].out].shape.d[1] == s->conv.M) {
        int ok = 1;
        for (int k = 1; k < 5; k++) {
            const int v = g->nodes[c].in[k];
            if (v < 0 || g->values[v].dtype != RT_F32 || (int64_t)g->values[v].numel != s->conv.M ||
                g->values[v].kind == RT_VAL_INTERMEDIATE || g->values[v].kind == RT_VAL_INPUT)
                ok = 0;
        }
        if (ok) {
            s->bn_node = c;
            t->absorbed[c] = 1;
            cur = g->nodes[c].out;
        }
    }
    if (allow_res && (c = sole_consumer(g, t, cur)) >= 0 && g->nodes[c].op == RT_OP_ADD &&
        g->nodes[c].n_in == 2) {
        const int o = g->nodes[c].in[0] == cur ? g->nodes[c].in[1] : g->nodes[c].in[0];
        const int avail = o >= 0 && o != cur && (t->producer[o] < 0 || t->producer[o] < s->node);
        if (avail && g->values[o].dtype == RT_F32 &&
            same_shape(&g->values[o].shape, &g->values[cur].shape) &&
            same_shape(&g->values[g->nodes[c].out].shape, &g->values[cur].shape)) {
            s->res_val = o;
            t->absorbed[c] = 1;
            cur = g->nodes[c].out;
        }
    }
    if ((c = sole_consumer(g, t, cur)) >= 0 && g->nodes[c].in[0] == cur &&
        (g->nodes[c].op == RT_OP_RELU || g->nodes[c].op == RT_OP_CLIP)) {
        const rt_node *cn = &g->nodes[c];
        int ok = 1;
        float lo = 0.0f, hi = INFINITY;
        int lo_v = -1, hi_v = -1;
        if (cn->op == RT_OP_CLIP) {
            lo = cn->a.clip_min;
            hi = cn->a.clip_max;
            if (cn->a.clip_min_from_input) {
                lo_v = cn->n_in > 1 ? cn->in[1] : -1;
                if (lo_v < 0 || g->values[lo_v].kind == RT_VAL_INTERMEDIATE ||
                    g->values[lo_v].kind == RT_VAL_INPUT)
                    ok = 0;
            }
            if (cn->a.clip_max_from_input) {
                hi_v = cn->n_in > 2 ? cn->in[2] : -1;
                if (hi_v < 0 || g->values[hi_v].kind == RT_VAL_INTERMEDIATE ||
                    g->values[hi_v].kind == RT_VAL_INPUT)
                    ok = 0;
            }
        }
        if (ok) {
            s->has_clamp = 1;
            s->lo = lo;
            s->hi = hi;
            s->lo_val = lo_v;
            s->hi_val = hi_v;
            t->absorbed[c] = 1;
            cur = cn->out;
        }
    }
    s->out_value = cur;
}

static void plan_free(cpu_plan *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_steps; i++) {
        free(p->steps[i].a_offs);
        free(p->steps[i].b_offs);
    }
    cpu_debug_free(p->dbg);
    free(p->steps);
    free(p->vref);
    free(p);
}

static void tmp_free(plan_tmp *t)
{
    free(t->uses);
    free(t->consumer);
    free(t->producer);
    free(t->absorbed);
    free(t->step_of);
    free(t->alias_of);
}

/* Builds one step for node ni (already known not absorbed). Returns 0, <0 for "no step" (alias),
 * or a status code. */
static int build_step(const rt_graph *g, plan_tmp *t, int ni, cpu_step *s, const cpu_isa *isa,
                      char *err, size_t errlen)
{
    const rt_node *nd = &g->nodes[ni];
    (void)isa;
    memset(s, 0, sizeof *s);
    s->node = ni;
    s->out_value = nd->out;
    s->bn_node = -1;
    s->res_val = -1;
    s->lo_val = s->hi_val = -1;
    s->lo = -INFINITY;
    s->hi = INFINITY;
    s->n_in = nd->n_in;
    for (int i = 0; i < nd->n_in; i++) s->in_val[i] = nd->in[i];
    const rt_value *yv = &g->values[nd->out];
    if (yv->dtype != RT_F32)
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, ni, "output dtype %d is not float32", yv->dtype);
    int rc;
    const int nf = (nd->op == RT_OP_RESHAPE || nd->op == RT_OP_FLATTEN || nd->op == RT_OP_CLIP) ? 1 : nd->n_in;
    if (nd->n_in < 1 || nd->in[0] < 0) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "missing input");
    for (int i = 0; i < nf; i++)
        if ((rc = check_f32(g, ni, nd->in[i], err, errlen))) return rc;
    const rt_value *xv = &g->values[nd->in[0]];
    switch (nd->op) {
    case RT_OP_CONV:
        s->kind = ST_CONV;
        if ((rc = setup_conv(g, ni, s, err, errlen))) return rc;
        s->param_floats = (size_t)align_up((size_t)(2 * s->conv.M), 16);
        if (!t->nofuse) fuse_chain(g, t, s, 1, 1);
        return 0;
    case RT_OP_GEMM:
        s->kind = ST_GEMM;
        if ((rc = setup_gemm(g, ni, s, err, errlen))) return rc;
        s->param_floats = align_up((size_t)(2 * s->M + s->N), 16);
        if (s->gemm_c == GC_FULL) s->param_floats += align_up((size_t)(s->M * s->N), 16);
        if (!t->nofuse) fuse_chain(g, t, s, 0, s->gemm_c != GC_FULL);
        return 0;
    case RT_OP_MATMUL:
        s->kind = ST_MATMUL;
        return setup_matmul(g, ni, s, err, errlen);
    case RT_OP_ADD:
    case RT_OP_SUB:
    case RT_OP_MUL:
    case RT_OP_DIV: {
        s->kind = ST_BINARY;
        s->bin_op = nd->op == RT_OP_ADD ? CPU_BIN_ADD
                    : nd->op == RT_OP_SUB ? CPU_BIN_SUB
                    : nd->op == RT_OP_MUL ? CPU_BIN_MUL
                                          : CPU_BIN_DIV;
        if (nd->n_in != 2 || nd->in[1] < 0) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "needs 2 inputs");
        const rt_shape *a = &g->values[nd->in[0]].shape, *b = &g->values[nd->in[1]].shape;
        const int n = yv->shape.ndim;
        if (a->ndim > n || b->ndim > n) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "rank mismatch");
        s->nd = n;
        for (int i = 0; i < n; i++) {
            s->oshape[i] = yv->shape.d[i];
            s->ashape[i] = i - (n - a->ndim) >= 0 ? a->d[i - (n - a->ndim)] : 1;
            s->bshape[i] = i - (n - b->ndim) >= 0 ? b->d[i - (n - b->ndim)] : 1;
            if ((s->ashape[i] != 1 && s->ashape[i] != s->oshape[i]) ||
                (s->bshape[i] != 1 && s->bshape[i] != s->oshape[i]))
                return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "shapes do not broadcast to the output");
        }
        return 0;
    }
    case RT_OP_RELU:
        s->kind = ST_CLAMP;
        s->lo = 0.0f;
        return 0;
    case RT_OP_CLIP:
        s->kind = ST_CLAMP;
        s->lo = nd->a.clip_min;
        s->hi = nd->a.clip_max;
        if (nd->a.clip_min_from_input) {
            s->lo_val = nd->n_in > 1 ? nd->in[1] : -1;
            if (s->lo_val < 0) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "min input missing");
            if ((rc = check_f32(g, ni, s->lo_val, err, errlen))) return rc;
        }
        if (nd->a.clip_max_from_input) {
            s->hi_val = nd->n_in > 2 ? nd->in[2] : -1;
            if (s->hi_val < 0) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "max input missing");
            if ((rc = check_f32(g, ni, s->hi_val, err, errlen))) return rc;
        }
        return 0;
    case RT_OP_SIGMOID: s->kind = ST_SIGMOID; return 0;
    case RT_OP_LEAKYRELU: s->kind = ST_LEAKY; return 0;
    case RT_OP_BATCHNORM: {
        s->kind = ST_BN;
        if (nd->n_in < 5) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "needs 5 inputs");
        if (xv->shape.ndim < 2) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "input rank < 2");
        const int64_t C = xv->shape.d[1];
        for (int k = 1; k < 5; k++)
            if ((int64_t)g->values[nd->in[k]].numel != C)
                return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "parameter '%s' has %zu elements, expected %lld",
                            g->values[nd->in[k]].name, g->values[nd->in[k]].numel, (long long)C);
        s->M = C;
        s->N = xv->shape.d[0];
        s->K = prod(xv->shape.d, 2, xv->shape.ndim);
        s->param_floats = align_up((size_t)(2 * C), 16);
        if (!t->nofuse) fuse_chain(g, t, s, 0, 0);
        return 0;
    }
    case RT_OP_MAXPOOL:
        s->kind = ST_MAXPOOL;
        return setup_pool(g, ni, s, err, errlen);
    case RT_OP_AVGPOOL:
        s->kind = ST_AVGPOOL;
        return setup_pool(g, ni, s, err, errlen);
    case RT_OP_GLOBALAVGPOOL:
        s->kind = ST_GAP;
        if (xv->shape.ndim < 3) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "input rank < 3");
        s->M = xv->shape.d[0] * xv->shape.d[1];
        s->K = prod(xv->shape.d, 2, xv->shape.ndim);
        return 0;
    case RT_OP_FLATTEN:
    case RT_OP_RESHAPE:
    case RT_OP_IDENTITY:
        if (xv->numel != yv->numel)
            return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "%zu elements reshaped to %zu", xv->numel, yv->numel);
        s->kind = ST_COPY;
        if (yv->output_index < 0 && !t->nofuse) return -1; /* alias, no step */
        return 0;
    case RT_OP_CONCAT: {
        s->kind = ST_CONCAT;
        const int64_t ax = nd->a.axis;
        if (ax < 0 || ax >= yv->shape.ndim) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "bad axis");
        s->outer = prod(yv->shape.d, 0, (int)ax);
        int64_t tot = 0;
        for (int i = 0; i < nd->n_in; i++) {
            if (nd->in[i] < 0) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "missing input");
            const rt_shape *sh = &g->values[nd->in[i]].shape;
            if (sh->ndim != yv->shape.ndim) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "rank mismatch");
            s->cat_inner[i] = prod(sh->d, (int)ax, sh->ndim);
            tot += s->cat_inner[i];
        }
        if (tot * s->outer != (int64_t)yv->numel)
            return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "input sizes do not add up to the output");
        return 0;
    }
    case RT_OP_SOFTMAX: {
        s->kind = ST_SOFTMAX;
        const int64_t ax = nd->a.axis;
        if (ax < 0 || ax >= xv->shape.ndim) return fail(err, errlen, REFIT_ERR_MODEL, g, ni, "bad axis");
        s->outer = prod(xv->shape.d, 0, (int)ax);
        s->n = xv->shape.d[ax];
        s->inner = prod(xv->shape.d, (int)ax + 1, xv->shape.ndim);
        return 0;
    }
    case RT_OP_REDUCEMEAN:
        s->kind = ST_REDUCEMEAN;
        s->nd = xv->shape.ndim;
        for (int i = 0; i < s->nd; i++) s->ashape[i] = xv->shape.d[i];
        return 0;
    default:
        return fail(err, errlen, REFIT_ERR_UNSUPPORTED, g, ni, "op is not supported by the reference backend");
    }
}

static size_t step_scratch(const cpu_isa *isa, const cpu_step *s)
{
    size_t k = 0;
    switch (s->kind) {
    case ST_CONV: k = cpu_conv_scratch(isa, &s->conv); break;
    case ST_GEMM: k = s->M == 1 ? 0 : cpu_sgemm_scratch(isa, s->M, s->N, s->K); break;
    case ST_MATMUL: k = s->M == 1 ? 0 : cpu_sgemm_scratch(isa, s->M, s->N, s->K); break;
    case ST_MAXPOOL: k = cpu_maxpool_scratch(&s->pool); break;
    default: break;
    }
    return s->param_floats + align_up(k, 16);
}

/* Values a step reads (for liveness). */
static int step_reads(const cpu_step *s, int *out)
{
    int n = 0;
    const int ni = (s->kind == ST_COPY || (s->kind == ST_CLAMP && s->n_in > 0)) ? 1 : s->n_in;
    for (int i = 0; i < ni; i++)
        if (s->in_val[i] >= 0) out[n++] = s->in_val[i];
    if (s->res_val >= 0) out[n++] = s->res_val;
    if (s->lo_val >= 0) out[n++] = s->lo_val;
    if (s->hi_val >= 0) out[n++] = s->hi_val;
    return n;
}

/* A step that maps each pixel of its input to the same pixel of its output (a 1x1 conv, BN,
 * Relu/Clip), so it runs unchanged over the row-split layout; a residual would be another
 * tensor, in the plain layout. */
static int layout_blind(const cpu_step *s)
{
    if (s->res_val >= 0) return 0;
    if (s->kind == ST_CONV) return cpu_conv_kind(&s->conv) == CPU_CONV_1X1;
    return s->kind == ST_BN || (s->kind == ST_CLAMP && s->n_in > 0);
}

/* Whether a 3x3/1 depthwise conv's row-split kernel (two half rows per row) costs no more vector
 * steps than the plain one (rows of 24 on AVX2: 2 x 2 against 3). */
static int split_halves_pay(const cpu_isa *isa, int64_t W)
{
    const int64_t h = W / 2, vh = cpu_dw_vl(isa, h), vw = cpu_dw_vl(isa, W);
    return 2 * ((h + vh - 1) / vh) * vh <= ((W + vw - 1) / vw) * vw;
}

/* Has value v (read by step `at`) written in the row-split layout: by its producer, reached
 * through layout-blind steps, each value on the way read by the next step alone and not a graph
 * output (so nothing else sees the layout). Producers that write it at (almost) no cost: the
 * small-C first layer (its stores), a 3x3/1 depthwise conv that reads it in turn (no shuffles
 * at all), a 3x3/2 one that reads it (its stores). Returns 1 if v is written split. */
static int split_from(const rt_graph *g, const plan_tmp *t, cpu_plan *p, int at, int v)
{
    for (;;) {
        if (v < 0 || sole_consumer(g, t, v) < 0) return 0;
        int pi = -1;
        for (int k = at - 1; k >= 0 && pi < 0; k--)
            if (p->steps[k].out_value == v) pi = k;
        if (pi < 0) return 0;
        cpu_step *q = &p->steps[pi];
        const cpu_conv_geom *c = &q->conv;
        if (q->kind == ST_CONV && q->res_val < 0) {
            if (cpu_conv_path(p->isa, c) == CPU_CONV_C3S2 && c->OW % 2 == 0) {
                q->conv.split = CPU_SPLIT_OUT;
                return 1;
            }
            /* a stride-2 reader marked before, on rows its vector path takes */
            if (c->sh == 2 && cpu_dw_split_ok(c, c->split | CPU_SPLIT_OUT) &&
                c->OW >= cpu_dw_vl(p->isa, c->OW)) {
                q->conv.split |= CPU_SPLIT_OUT;
                return 1;
            }
            if (c->sh == 1 && cpu_dw_split_ok(c, CPU_SPLIT_IN | CPU_SPLIT_OUT) &&
                split_halves_pay(p->isa, c->W) && split_from(g, t, p, pi, q->in_val[0])) {
                q->conv.split = CPU_SPLIT_IN | CPU_SPLIT_OUT;
                return 1;
            }
        }
        if (!layout_blind(q)) return 0;
        v = q->in_val[0];
        at = pi;
    }
}

/* The row-split layout into every 3x3/2 depthwise conv that can read it (its even / odd
 * deinterleave, the costliest part of that kernel, then happens once, upstream, or not at all). */
static void plan_split(const rt_graph *g, const plan_tmp *t, cpu_plan *p)
{
    for (int si = 0; si < p->n_steps; si++) {
        cpu_step *s = &p->steps[si];
        if (s->kind != ST_CONV || s->res_val >= 0 || s->conv.sh != 2 ||
            !cpu_dw_split_ok(&s->conv, CPU_SPLIT_IN))
            continue;
        if (split_from(g, t, p, si, s->in_val[0])) s->conv.split |= CPU_SPLIT_IN;
    }
}

/* The kernel set the engine asked for (backend.isa), checked against this CPU. */
static int pick_isa(const char *name, const cpu_isa **isa, char *err, size_t errlen)
{
    const cpu_isa *best = cpu_isa_select();
    *isa = NULL;
    if (strcmp(name, "auto") == 0) *isa = best;
    if (strcmp(name, "generic") == 0) *isa = cpu_isa_portable();
#if defined(CPU_HAVE_X86)
    if (strcmp(name, "avx2") == 0 && best != cpu_isa_portable()) *isa = cpu_isa_avx2();
    if (strcmp(name, "avx512") == 0 && best == cpu_isa_avx512()) *isa = cpu_isa_avx512();
#else
    if (strcmp(name, "neon") == 0) *isa = best;
#endif
    if (*isa) return 0;
    return fail(err, errlen, REFIT_ERR_INVALID_ARG, NULL, -1,
                "backend option isa=%s: not a kernel set this CPU runs (auto, generic, avx2, avx512, "
                "neon; best here: %s)", name, best->name);
}

/* Device, threads and backend.* options: isa (kernel set), prepare=0 (derive every weight
 * transform on each run, as before API v2: for benchmarks). The reference backend has one
 * device (0); it runs each inference on its calling thread, so `threads` has nothing to divide. */
static int apply_config(const rt_backend_config *cfg, const cpu_isa **isa, int *prepare, char *err,
                        size_t errlen)
{
    *isa = cpu_isa_select();
    *prepare = 1;
    if (!cfg) return 0;
    if (cfg->device_id != 0)
        return fail(err, errlen, REFIT_ERR_INVALID_ARG, NULL, -1,
                    "device %d: the reference backend has one device, 0", cfg->device_id);
    for (size_t i = 0; i < cfg->n_options; i++) {
        int rc;
        if (strcmp(cfg->option_keys[i], "isa") == 0) {
            if ((rc = pick_isa(cfg->option_values[i], isa, err, errlen))) return rc;
        } else if (strcmp(cfg->option_keys[i], "prepare") == 0) {
            const char *v = cfg->option_values[i];
            if (strcmp(v, "0") && strcmp(v, "1"))
                return fail(err, errlen, REFIT_ERR_INVALID_ARG, NULL, -1,
                            "backend option prepare: must be 0 or 1, got '%s'", v);
            *prepare = v[0] == '1';
        } else if (!cpu_debug_key(cfg->option_keys[i])) { /* debug keys: after the plan */
            return fail(err, errlen, REFIT_ERR_INVALID_ARG, NULL, -1,
                        "backend option '%s': unknown to the reference backend (known: isa, prepare, "
                        "profile, profile_runs, profile_skip, dump, dump_at)",
                        cfg->option_keys[i]);
        }
    }
    return 0;
}

static int prep_source(const rt_graph *g, int v)
{
    return v < 0 || g->values[v].kind == RT_VAL_WEIGHT || g->values[v].kind == RT_VAL_CONST;
}

/* What step s prepares per weight set: only when every value it derives from is a weight or a
 * constant (never data computed at run time). */
static void plan_prepared(const rt_graph *g, const cpu_isa *isa, cpu_step *s)
{
    s->prep_floats = s->wp_floats = 0;
    if (s->kind == ST_CONV) {
        if (!prep_source(g, s->in_val[1]) || (s->n_in > 2 && !prep_source(g, s->in_val[2]))) return;
        if (s->bn_node >= 0)
            for (int k = 1; k < 5; k++)
                if (!prep_source(g, g->nodes[s->bn_node].in[k])) return;
        s->wp_floats = cpu_conv_prepared_floats(isa, &s->conv);
        s->prep_floats = s->param_floats + s->wp_floats;
    } else if (s->kind == ST_BN) {
        for (int k = 1; k < 5; k++)
            if (!prep_source(g, g->nodes[s->node].in[k])) return;
        s->prep_floats = s->param_floats;
    }
}

/* force: the dump plan's kernel set (the serving plan's); nofuse: the dump plan (every node
 * output materialised, see run_dump). */
static int plan_build(const rt_graph *g, const rt_backend_config *cfg, const cpu_isa *force,
                      int nofuse, void **out, char *err, size_t errlen)
{
    *out = NULL;
    const cpu_isa *isa = NULL;
    int prepare = 1;
    int crc = apply_config(cfg, &isa, &prepare, err, errlen);
    if (crc) return crc;
    if (force) isa = force;
    cpu_plan *p = calloc(1, sizeof *p);
    plan_tmp t = {0};
    int *def = NULL, *last = NULL, *order = NULL;
    size_t *offs = NULL, *sizes = NULL;
    int rc = REFIT_ERR_NOMEM;
    const int nv = g->n_values;
    if (!p) goto nomem;
    p->g = g;
    p->isa = isa;
    t.uses = calloc((size_t)nv + 1, sizeof(int));
    t.consumer = calloc((size_t)nv + 1, sizeof(int));
    t.producer = malloc(((size_t)nv + 1) * sizeof(int));
    t.absorbed = calloc((size_t)g->n_nodes + 1, sizeof(int));
    t.step_of = malloc(((size_t)nv + 1) * sizeof(int));
    t.alias_of = malloc(((size_t)nv + 1) * sizeof(int));
    t.nofuse = nofuse;
    p->steps = calloc((size_t)g->n_nodes + 1, sizeof(cpu_step));
    p->vref = calloc((size_t)nv + 1, sizeof(cpu_ref));
    def = malloc(((size_t)nv + 1) * sizeof(int));
    last = malloc(((size_t)nv + 1) * sizeof(int));
    order = malloc(((size_t)nv + 1) * sizeof(int));
    offs = malloc(((size_t)nv + 1) * sizeof(size_t));
    sizes = calloc((size_t)nv + 1, sizeof(size_t));
    if (!t.uses || !t.consumer || !t.producer || !t.absorbed || !t.step_of || !t.alias_of ||
        !p->steps || !p->vref || !def || !last || !order || !offs || !sizes)
        goto nomem;
    for (int v = 0; v < nv; v++) {
        t.producer[v] = -1;
        t.step_of[v] = -1;
        t.alias_of[v] = v;
        def[v] = -1;
        last[v] = -1;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const rt_node *nd = &g->nodes[i];
        if (nd->out < 0 || nd->out >= nv) {
            rc = fail(err, errlen, REFIT_ERR_MODEL, g, i, "bad output value");
            goto done;
        }
        t.producer[nd->out] = i;
        for (int k = 0; k < nd->n_in; k++) {
            const int v = nd->in[k];
            if (v < -1 || v >= nv) {
                rc = fail(err, errlen, REFIT_ERR_MODEL, g, i, "bad input value");
                goto done;
            }
            if (v >= 0) {
                t.uses[v]++;
                t.consumer[v] = i;
            }
        }
    }

    /* Steps (with fusion) in node order. */
    for (int i = 0; i < g->n_nodes; i++) {
        if (t.absorbed[i]) continue;
        cpu_step *s = &p->steps[p->n_steps];
        const int r = build_step(g, &t, i, s, p->isa, err, errlen);
        if (r > 0) {
            rc = r;
            p->n_steps++; /* so plan_free releases what setup allocated */
            goto done;
        }
        if (r < 0) { /* alias: shares the root's storage */
            t.alias_of[g->nodes[i].out] = t.alias_of[g->nodes[i].in[0]];
            continue;
        }
        p->n_steps++;
    }

    if (!t.nofuse) plan_split(g, &t, p); /* a dump plan keeps every value plain */

    /* Storage: graph inputs/weights/consts in place, graph outputs in the caller's buffers,
     * aliases share their root, the rest in the arena. Liveness over step indices. */
    for (int v = 0; v < nv; v++) {
        const rt_value *val = &g->values[v];
        cpu_ref *r = &p->vref[v];
        switch (val->kind) {
        case RT_VAL_INPUT: r->kind = REF_IN; r->idx = val->index; break;
        case RT_VAL_WEIGHT: r->kind = REF_W; r->idx = val->index; break;
        case RT_VAL_CONST: r->kind = REF_CONST; r->idx = v; break;
        default:
            if (val->output_index >= 0) {
                r->kind = REF_OUT;
                r->idx = val->output_index;
            } else {
                r->kind = REF_NONE; /* arena or alias, resolved below */
            }
        }
    }
    for (int si = 0; si < p->n_steps; si++) {
        const int v = p->steps[si].out_value;
        def[v] = si;
        last[v] = si;
    }
    for (int si = 0; si < p->n_steps; si++) {
        int rd[RT_MAX_NODE_INPUTS + 4];
        const int n = step_reads(&p->steps[si], rd);
        for (int k = 0; k < n; k++) {
            const int root = t.alias_of[rd[k]];
            if (last[root] < si) last[root] = si;
        }
    }
    int n_arena = 0;
    for (int si = 0; si < p->n_steps; si++) {
        const int v = p->steps[si].out_value;
        if (p->vref[v].kind == REF_NONE) {
            order[n_arena++] = v;
            sizes[v] = align_up(g->values[v].numel * sizeof(float), 64);
        }
    }
    /* First fit: place each buffer (in definition order) at the lowest offset that does not
     * overlap a buffer whose lifetime overlaps its own. */
    size_t arena = 0;
    for (int a = 0; a < n_arena; a++) {
        const int v = order[a];
        size_t off = 0;
        for (int moved = 1; moved;) {
            moved = 0;
            for (int b = 0; b < a; b++) {
                const int u = order[b];
                if (last[u] < def[v] || def[u] > last[v]) continue; /* disjoint in time */
                if (off < offs[u] + sizes[u] && offs[u] < off + sizes[v]) {
                    off = offs[u] + sizes[u];
                    moved = 1;
                }
            }
        }
        offs[v] = off;
        p->vref[v].kind = REF_ARENA;
        p->vref[v].off = off;
        if (off + sizes[v] > arena) arena = off + sizes[v];
    }
    p->arena_bytes = arena;
    for (int v = 0; v < nv; v++)
        if (t.alias_of[v] != v) p->vref[v] = p->vref[t.alias_of[v]];
    for (int si = 0; si < p->n_steps; si++) {
        int rd[RT_MAX_NODE_INPUTS + 4];
        const int n = step_reads(&p->steps[si], rd);
        rd[n] = p->steps[si].out_value;
        for (int k = 0; k <= n; k++) {
            if (p->vref[rd[k]].kind == REF_NONE) {
                rc = fail(err, errlen, REFIT_ERR_MODEL, g, p->steps[si].node,
                          "internal: value '%s' has no storage", g->values[rd[k]].name);
                goto done;
            }
        }
    }
    for (int j = 0; j < g->n_outputs; j++) {
        const int v = g->outputs[j];
        if (v < 0 || v >= nv || p->vref[v].kind == REF_NONE) {
            rc = fail(err, errlen, REFIT_ERR_MODEL, g, -1, "graph output #%d is never computed", j);
            goto done;
        }
    }
    for (int si = 0; si < p->n_steps; si++) {
        const size_t s = step_scratch(p->isa, &p->steps[si]);
        if (s > p->scratch_floats) p->scratch_floats = s;
        if (prepare && !nofuse) plan_prepared(g, p->isa, &p->steps[si]); /* dump: raw weights */
    }
    rc = 0;
    goto done;
nomem:
    rc = fail(err, errlen, REFIT_ERR_NOMEM, g, -1, "out of memory planning the graph");
done:
    tmp_free(&t);
    free(def);
    free(last);
    free(order);
    free(offs);
    free(sizes);
    if (rc) {
        plan_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

static int plan_debug_option(cpu_plan *p, const char *key, const char *value, char *err,
                             size_t errlen);

static int cpu_plan_create(const rt_graph *g, const rt_backend_config *cfg, void **out, char *err,
                           size_t errlen)
{
    int rc = plan_build(g, cfg, NULL, 0, out, err, errlen);
    for (size_t i = 0; !rc && cfg && i < cfg->n_options; i++)
        if (cpu_debug_key(cfg->option_keys[i]))
            rc = plan_debug_option(*out, cfg->option_keys[i], cfg->option_values[i], err, errlen);
    if (rc && *out) {
        plan_free(*out);
        *out = NULL;
    }
    return rc;
}

static void cpu_plan_destroy(void *plan) { plan_free(plan); }

/* "Conv+BatchNormalization+Clip", "1x32x56x56, 192x32x1x1 -> 1x192x56x56" for the profiler. */
static void describe_step(const rt_graph *g, const cpu_isa *isa, const cpu_step *s,
                          cpu_step_info *in)
{
    in->node = g->nodes[s->node].name;
    static const char *const conv_kind[] = {"im2col", "1x1",      "depthwise",
                                            "wide",   "winograd", "direct"};
    int n = snprintf(in->op, sizeof in->op, "%s", op_name(g->nodes[s->node].op));
    if (s->kind == ST_CONV)
        n += snprintf(in->op + n, sizeof in->op - (size_t)n, "[%s]",
                      conv_kind[cpu_conv_path(isa, &s->conv)]);
    if (s->bn_node >= 0) n += snprintf(in->op + n, sizeof in->op - (size_t)n, "+BatchNormalization");
    if (s->res_val >= 0) n += snprintf(in->op + n, sizeof in->op - (size_t)n, "+Add");
    for (int i = 0; s->has_clamp && i < g->n_nodes; i++)
        if (g->nodes[i].out == s->out_value) {
            snprintf(in->op + n, sizeof in->op - (size_t)n, "+%s", op_name(g->nodes[i].op));
            break;
        }
    size_t k = 0;
    const size_t cap = sizeof in->shapes;
    for (int i = 0; i <= s->n_in && k < cap; i++) {
        const int v = i < s->n_in ? s->in_val[i] : s->out_value;
        if (v < 0) continue;
        const rt_shape *sh = &g->values[v].shape;
        k += (size_t)snprintf(in->shapes + k, cap - k, "%s", i == s->n_in ? " -> " : i ? ", " : "");
        for (int d = 0; d < sh->ndim && k < cap; d++)
            k += (size_t)snprintf(in->shapes + k, cap - k, "%s%lld", d ? "x" : "", (long long)sh->d[d]);
        if (!sh->ndim && k < cap) k += (size_t)snprintf(in->shapes + k, cap - k, "scalar");
    }
}

/* backend.profile* / dump* options: the profiler and dumps (profile.c), set up once the plan's
 * steps exist, before any context. */
static int plan_debug_option(cpu_plan *p, const char *key, const char *value, char *err,
                             size_t errlen)
{
    if (!p->dbg) {
        if (!(p->dbg = cpu_debug_new(p->n_steps, p->isa->name)))
            return fail(err, errlen, REFIT_ERR_NOMEM, p->g, -1, "out of memory");
        cpu_step_info *info = cpu_debug_info(p->dbg);
        for (int si = 0; si < p->n_steps; si++)
            describe_step(p->g, p->isa, &p->steps[si], &info[si]);
    }
    return cpu_debug_set(p->dbg, key, value, err, errlen);
}

/* ---- contexts ----------------------------------------------------------------------------- */

static int cpu_ctx_create(void *plan, void **out, char *err, size_t errlen)
{
    cpu_plan *p = plan;
    *out = NULL;
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->plan = p;
    c->id = p->dbg ? cpu_debug_ctx_id(p->dbg) : 0;
    c->arena = aligned_alloc(64, align_up(p->arena_bytes ? p->arena_bytes : 64, 64));
    c->scratch = aligned_alloc(64, align_up((p->scratch_floats + 16) * sizeof(float), 64));
    if (!c->arena || !c->scratch) goto nomem;
    *out = c;
    return 0;
nomem:
    if (c) {
        free(c->arena);
        free(c->scratch);
        free(c);
    }
    return fail(err, errlen, REFIT_ERR_NOMEM, p->g, -1, "out of memory for the activation arena (%zu bytes)",
                p->arena_bytes);
}

static void cpu_ctx_destroy(void *ctx)
{
    cpu_ctx *c = ctx;
    if (!c) return;
    free(c->arena);
    free(c->scratch);
    free(c);
}

/* ---- run ------------------------------------------------------------------------------------ */

typedef struct run_env {
    const cpu_plan *p;
    const float *const *weights;
    const float *const *inputs;
    float *const *outputs;
    unsigned char *arena;
} run_env;

static float *vptr(const run_env *e, int v)
{
    const cpu_ref *r = &e->p->vref[v];
    switch (r->kind) {
    case REF_IN: return (float *)e->inputs[r->idx];
    case REF_W: return (float *)e->weights[r->idx];
    case REF_CONST: return (float *)e->p->g->values[r->idx].data;
    case REF_ARENA: return (float *)(e->arena + r->off);
    case REF_OUT: return e->outputs[r->idx];
    default: return NULL;
    }
}

/* pb: the step's prepared buffer (folded BN scale/bias, then the kernels' prepared form), or NULL
 * for a step that derives them on every run. */
static void run_step(const run_env *e, const cpu_step *s, float *scratch, const float *pb)
{
    const rt_graph *g = e->p->g;
    const rt_node *nd = &g->nodes[s->node];
    const cpu_isa *isa = e->p->isa;
    float *y = vptr(e, s->out_value);
    const float *x = vptr(e, s->in_val[0]);
    float lo = s->lo, hi = s->hi;
    if (s->lo_val >= 0) lo = vptr(e, s->lo_val)[0];
    if (s->hi_val >= 0) hi = vptr(e, s->hi_val)[0];
    float *params = scratch;
    float *work = scratch + s->param_floats;
    cpu_epi epi;
    memset(&epi, 0, sizeof epi);
    epi.lo = lo;
    epi.hi = hi;
    epi.res = s->res_val >= 0 ? vptr(e, s->res_val) : NULL;

    switch (s->kind) {
    case ST_CONV: {
        const float *w = vptr(e, s->in_val[1]);
        const float *bias = (s->n_in > 2 && s->in_val[2] >= 0) ? vptr(e, s->in_val[2]) : NULL;
        if (pb && s->bn_node >= 0) {
            epi.row_scale = pb;
            epi.row_bias = pb + s->conv.M;
        } else if (s->bn_node >= 0) {
            const rt_node *bn = &g->nodes[s->bn_node];
            cpu_bn_fold(s->conv.M, vptr(e, bn->in[1]), vptr(e, bn->in[2]), vptr(e, bn->in[3]),
                        vptr(e, bn->in[4]), bn->a.epsilon, bias, params, params + s->conv.M);
            epi.row_scale = params;
            epi.row_bias = params + s->conv.M;
        } else {
            epi.row_bias = bias;
        }
        epi.ldr = s->conv.OH * s->conv.OW;
        cpu_conv(isa, &s->conv, x, w, pb && s->wp_floats ? pb + s->param_floats : NULL, y, &epi, work);
        break;
    }
    case ST_GEMM: {
        const float *b = vptr(e, s->in_val[1]);
        const float *c = s->gemm_c != GC_NONE ? vptr(e, s->in_val[2]) : NULL;
        const float alpha = nd->a.alpha, beta = nd->a.beta;
        float *ps = params, *pcol = params + s->M;
        if (alpha != 1.0f) {
            for (int64_t i = 0; i < s->M; i++) ps[i] = alpha;
            epi.row_scale = ps;
        }
        switch (s->gemm_c) {
        case GC_COL:
            if (beta == 1.0f) {
                epi.col_bias = c;
            } else {
                for (int64_t j = 0; j < s->N; j++) pcol[j] = beta * c[j];
                epi.col_bias = pcol;
            }
            break;
        case GC_ROW:
        case GC_SCALAR: {
            float *rb = params + s->M + s->N;
            for (int64_t i = 0; i < s->M; i++) rb[i] = beta * c[s->gemm_c == GC_ROW ? i : 0];
            epi.row_bias = rb;
            break;
        }
        case GC_FULL:
            if (beta == 1.0f) {
                epi.res = c;
            } else {
                float *full = params + align_up((size_t)(2 * s->M + s->N), 16);
                for (int64_t i = 0; i < s->M * s->N; i++) full[i] = beta * c[i];
                epi.res = full;
            }
            break;
        default: break;
        }
        epi.ldr = s->N;
        if (s->M == 1) {
            cpu_gemv(s->N, s->K, x, b, s->brs, s->bcs, y, &epi);
        } else {
            cpu_bsrc bs;
            memset(&bs, 0, sizeof bs);
            bs.b = b;
            bs.rs = s->brs;
            bs.cs = s->bcs;
            cpu_sgemm(isa, s->M, s->N, s->K, x, s->ars, s->acs, &bs, y, s->N, &epi, work);
        }
        break;
    }
    case ST_MATMUL: {
        const float *b = vptr(e, s->in_val[1]);
        const int64_t *ao = s->a_offs ? s->a_offs : s->a_off, *bo = s->b_offs ? s->b_offs : s->b_off;
        for (int64_t t = 0; t < s->batch; t++) {
            float *yt = y + t * s->M * s->N;
            if (s->M == 1) {
                cpu_gemv(s->N, s->K, x + ao[t], b + bo[t], s->N, 1, yt, NULL);
            } else {
                cpu_bsrc bs;
                memset(&bs, 0, sizeof bs);
                bs.b = b + bo[t];
                bs.rs = s->N;
                bs.cs = 1;
                cpu_sgemm(isa, s->M, s->N, s->K, x + ao[t], s->K, 1, &bs, yt, s->N, NULL, work);
            }
        }
        break;
    }
    case ST_BINARY:
        cpu_binary(s->bin_op, s->nd, s->oshape, x, s->ashape, vptr(e, s->in_val[1]), s->bshape, y);
        break;
    case ST_CLAMP:
        cpu_clamp(x, y, g->values[s->out_value].numel, lo, hi);
        break;
    case ST_SIGMOID: cpu_sigmoid(x, y, g->values[s->out_value].numel); break;
    case ST_LEAKY: cpu_leakyrelu(x, y, g->values[s->out_value].numel, nd->a.alpha); break;
    case ST_BN:
        if (pb)
            params = (float *)pb; /* read only below */
        else
            cpu_bn_fold(s->M, vptr(e, nd->in[1]), vptr(e, nd->in[2]), vptr(e, nd->in[3]),
                        vptr(e, nd->in[4]), nd->a.epsilon, NULL, params, params + s->M);
        cpu_channel_affine(x, y, s->N, s->M, s->K, params, params + s->M, lo, hi);
        break;
    case ST_MAXPOOL: cpu_maxpool(isa, &s->pool, x, y, work); break;
    case ST_AVGPOOL: cpu_avgpool(&s->pool, x, y); break;
    case ST_GAP: cpu_global_avgpool(x, y, s->M, s->K); break;
    case ST_COPY:
        if (x != y) memcpy(y, x, g->values[s->out_value].numel * sizeof(float));
        break;
    case ST_CONCAT: {
        const float *xs[RT_MAX_NODE_INPUTS];
        for (int i = 0; i < s->n_in; i++) xs[i] = vptr(e, s->in_val[i]);
        cpu_concat(s->n_in, xs, s->cat_inner, s->outer, y);
        break;
    }
    case ST_SOFTMAX: cpu_softmax(x, y, s->outer, s->n, s->inner); break;
    case ST_REDUCEMEAN: cpu_reduce_mean(x, y, s->nd, s->ashape, nd->a.reduce_mask); break;
    default: break;
    }
}

/* The chosen inference of backend.dump, on a plan of its own without fusion or aliasing, so
 * every node's output exists; each is written as it is computed (later steps may reuse its
 * memory). The caller's run computes the real outputs afterwards. */
static void run_dump(const run_env *e, uint64_t seq)
{
    const rt_graph *g = e->p->g;
    char err[256];
    void *dp = NULL, *dc = NULL;
    cpu_dump *w = NULL;
    if (plan_build(g, NULL, e->p->isa, 1, &dp, err, sizeof err) ||
        cpu_ctx_create(dp, &dc, err, sizeof err) ||
        !(w = cpu_dump_begin(e->p->dbg, seq))) {
        fprintf(stderr, "refit: dump of inference %llu skipped: %s\n", (unsigned long long)seq,
                dp && dc ? "cannot write the index" : err);
        goto out;
    }
    const cpu_plan *p = dp;
    const cpu_ctx *c = dc;
    run_env de = {p, e->weights, e->inputs, e->outputs, c->arena};
    for (int si = 0; si < p->n_steps; si++) {
        const cpu_step *s = &p->steps[si];
        const rt_value *v = &g->values[s->out_value];
        run_step(&de, s, c->scratch, NULL); /* no prepared buffers: derived from raw weights */
        cpu_dump_value(w, g->nodes[s->node].name, op_name(g->nodes[s->node].op), v->name,
                       vptr(&de, s->out_value), v->shape.d, v->shape.ndim, v->numel);
    }
    cpu_dump_end(w);
out:
    cpu_ctx_destroy(dc);
    plan_free(dp);
}

/* A run with the profiler and/or a dump pending; the plain loop otherwise. */
static void run_observed(const run_env *e, const cpu_ctx *c, const cpu_wprep *q)
{
    const cpu_plan *p = e->p;
    const uint64_t seq = cpu_debug_next(p->dbg);
    if (cpu_debug_dump_due(p->dbg, seq)) run_dump(e, seq);
    cpu_prof_event *ev = cpu_prof_slot(p->dbg, seq);
    if (!ev) {
        for (int si = 0; si < p->n_steps; si++)
            run_step(e, &p->steps[si], c->scratch, q->buf[si] ? q->buf[si]->data : NULL);
        return;
    }
    ev[p->n_steps].tid = c->id;
    ev[p->n_steps].t0 = cpu_now_ns();
    for (int si = 0; si < p->n_steps; si++) {
        ev[si].tid = c->id;
        ev[si].t0 = cpu_now_ns();
        run_step(e, &p->steps[si], c->scratch, q->buf[si] ? q->buf[si]->data : NULL);
        ev[si].t1 = cpu_now_ns();
    }
    ev[p->n_steps].t1 = cpu_now_ns();
    cpu_prof_done(p->dbg);
}

static int cpu_run(void *plan, void *ctx, const void *prepared, const float *const *inputs,
                   float *const *outputs, char *err, size_t errlen)
{
    const cpu_plan *p = plan;
    cpu_ctx *c = ctx;
    const cpu_wprep *q = prepared;
    if (!p || !c || c->plan != p || !q)
        return fail(err, errlen, REFIT_ERR_INVALID_ARG, p ? p->g : NULL, -1,
                    "context belongs to another plan, or no prepared weights");
    run_env e = {p, q->w, inputs, outputs, c->arena};
    if (p->dbg)
        run_observed(&e, c, q);
    else
        for (int si = 0; si < p->n_steps; si++)
            run_step(&e, &p->steps[si], c->scratch, q->buf[si] ? q->buf[si]->data : NULL);
    /* Graph outputs not computed into their buffer (inputs, weights, constants, repeats). */
    const rt_graph *g = p->g;
    for (int j = 0; j < g->n_outputs; j++) {
        const int v = g->outputs[j];
        const cpu_ref *r = &p->vref[v];
        if (r->kind == REF_OUT && r->idx == j) continue;
        const float *src = vptr(&e, v);
        if (src && src != outputs[j]) memcpy(outputs[j], src, g->values[v].numel * sizeof(float));
    }
    return 0;
}

/* ---- prepared weights ----------------------------------------------------------------------- */

static void pbuf_drop(cpu_pbuf *b)
{
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static cpu_pbuf *pbuf_new(size_t floats)
{
    cpu_pbuf *b = malloc(sizeof *b);
    if (!b) return NULL;
    b->refs = 1;
    b->data = aligned_alloc(64, align_up((floats + 16) * sizeof(float), 64));
    if (!b->data) {
        free(b);
        return NULL;
    }
    return b;
}

/* Whether any weight step s derives its prepared buffer from is marked in `changed`. */
static int step_changed(const rt_graph *g, const cpu_step *s, const unsigned char *changed)
{
    int v[6], n = 0;
    if (s->kind == ST_CONV) {
        v[n++] = s->in_val[1];
        if (s->n_in > 2) v[n++] = s->in_val[2];
    }
    const int bn = s->kind == ST_BN ? s->node : s->bn_node;
    for (int k = 1; bn >= 0 && k < 5; k++) v[n++] = g->nodes[bn].in[k];
    for (int i = 0; i < n; i++)
        if (v[i] >= 0 && g->values[v[i]].kind == RT_VAL_WEIGHT && changed[g->values[v[i]].index])
            return 1;
    return 0;
}

/* Fills step s's prepared buffer from the weights in `w`: the pure transforms of cpu.h. */
static int step_prepare(const cpu_plan *p, const float *const *w, const cpu_step *s, float *dst)
{
    const run_env e = {p, w, NULL, NULL, NULL};
    const rt_graph *g = p->g;
    if (s->kind == ST_BN) {
        const rt_node *nd = &g->nodes[s->node];
        cpu_bn_fold(s->M, vptr(&e, nd->in[1]), vptr(&e, nd->in[2]), vptr(&e, nd->in[3]),
                    vptr(&e, nd->in[4]), nd->a.epsilon, NULL, dst, dst + s->M);
        return 0;
    }
    if (s->bn_node >= 0) {
        const rt_node *bn = &g->nodes[s->bn_node];
        const float *bias = (s->n_in > 2 && s->in_val[2] >= 0) ? vptr(&e, s->in_val[2]) : NULL;
        cpu_bn_fold(s->conv.M, vptr(&e, bn->in[1]), vptr(&e, bn->in[2]), vptr(&e, bn->in[3]),
                    vptr(&e, bn->in[4]), bn->a.epsilon, bias, dst, dst + s->conv.M);
    }
    /* The folded BN scale goes into the prepared weights too (cpu_conv_prepare): a BN-only
     * change marks the step changed (step_changed), so both are recomputed together. */
    const float *scale = s->bn_node >= 0 ? dst : NULL;
    return s->wp_floats ? cpu_conv_prepare(p->isa, &s->conv, vptr(&e, s->in_val[1]), scale,
                                           dst + s->param_floats)
                        : 0;
}

static void cpu_weights_release(void *plan, void *prepared)
{
    const cpu_plan *p = plan;
    cpu_wprep *q = prepared;
    if (!q) return;
    for (int si = 0; q->buf && si < p->n_steps; si++) pbuf_drop(q->buf[si]);
    free(q->buf);
    free(q->w);
    free(q);
}

/* (Re)computes step si's buffer of q unless `changed` says it is still right; a buffer shared
 * with another handle is replaced, never written (copy on write). */
static int refresh_step(const cpu_plan *p, cpu_wprep *q, int si, const unsigned char *changed)
{
    const cpu_step *s = &p->steps[si];
    if (!s->prep_floats || (q->buf[si] && changed && !step_changed(p->g, s, changed))) return 0;
    if (!q->buf[si] || q->buf[si]->refs > 1) {
        cpu_pbuf *b = pbuf_new(s->prep_floats);
        if (!b) return -1;
        pbuf_drop(q->buf[si]);
        q->buf[si] = b;
    }
    return step_prepare(p, q->w, s, q->buf[si]->data);
}

static int cpu_weights_prepare(void *plan, const float *const *raw, const void *base,
                               const unsigned char *changed, void **out, char *err, size_t errlen)
{
    const cpu_plan *p = plan;
    const cpu_wprep *b = base;
    const rt_graph *g = p->g;
    cpu_wprep *q = calloc(1, sizeof *q);
    if (q) {
        q->w = calloc((size_t)g->n_weights + 1, sizeof *q->w);
        q->buf = calloc((size_t)p->n_steps + 1, sizeof *q->buf);
    }
    int bad = !q || !q->w || !q->buf;
    for (int k = 0; !bad && k < g->n_weights; k++) q->w[k] = raw[k];
    for (int si = 0; !bad && si < p->n_steps; si++) {
        if (b && b->buf[si] && changed && !step_changed(g, &p->steps[si], changed)) {
            q->buf[si] = b->buf[si]; /* its weights are unchanged: share */
            q->buf[si]->refs++;
            continue;
        }
        bad = refresh_step(p, q, si, NULL);
    }
    if (bad) {
        cpu_weights_release(plan, q);
        return fail(err, errlen, REFIT_ERR_NOMEM, g, -1, "out of memory preparing the weights");
    }
    *out = q;
    return 0;
}

static int cpu_weights_refit(void *plan, void *prepared, const float *const *raw,
                             const unsigned char *changed, char *err, size_t errlen)
{
    const cpu_plan *p = plan;
    cpu_wprep *q = prepared;
    for (int k = 0; k < p->g->n_weights; k++) q->w[k] = raw[k];
    for (int si = 0; si < p->n_steps; si++)
        if (refresh_step(p, q, si, changed))
            return fail(err, errlen, REFIT_ERR_NOMEM, p->g, -1, "out of memory refitting the weights");
    return 0;
}

/* quiesce's commit: live takes staged's raw pointers and, for every step whose weights changed,
 * staged's prepared bytes, copied into live's own buffer (in place, as a device would); a buffer
 * live shares with another handle is never written under it: live shares staged's instead. */
static int cpu_weights_commit(void *plan, void *live, const void *staged, const unsigned char *changed,
                              char *err, size_t errlen)
{
    const cpu_plan *p = plan;
    cpu_wprep *q = live;
    const cpu_wprep *n = staged;
    (void)err;
    (void)errlen;
    for (int k = 0; k < p->g->n_weights; k++) q->w[k] = n->w[k];
    for (int si = 0; si < p->n_steps; si++) {
        const cpu_step *s = &p->steps[si];
        cpu_pbuf *dst = q->buf[si], *src = n->buf[si];
        if (!s->prep_floats || dst == src || !step_changed(p->g, s, changed)) continue;
        if (dst->refs == 1) {
            memcpy(dst->data, src->data, s->prep_floats * sizeof(float));
        } else {
            src->refs++;
            pbuf_drop(dst);
            q->buf[si] = src;
        }
    }
    return 0;
}

/* The read-back after a commit: live must hold staged's raw pointers and prepared bytes. */
static int cpu_weights_verify(void *plan, const void *live, const void *staged,
                              const unsigned char *changed, char *err, size_t errlen)
{
    const cpu_plan *p = plan;
    const cpu_wprep *q = live, *n = staged;
    for (int k = 0; k < p->g->n_weights; k++)
        if (q->w[k] != n->w[k])
            return fail(err, errlen, REFIT_ERR_BACKEND, p->g, -1, "read-back: weight '%s' is not "
                        "the committed one", p->g->values[p->g->weights[k]].name);
    for (int si = 0; si < p->n_steps; si++) {
        const cpu_step *s = &p->steps[si];
        if (!s->prep_floats || !step_changed(p->g, s, changed)) continue;
        if (memcmp(q->buf[si]->data, n->buf[si]->data, s->prep_floats * sizeof(float)))
            return fail(err, errlen, REFIT_ERR_BACKEND, p->g, s->node, "read-back: the prepared "
                        "weights differ from the committed ones");
    }
    return 0;
}

int cpu_plan_steps(const void *plan) { return ((const cpu_plan *)plan)->n_steps; }
size_t cpu_plan_arena_bytes(const void *plan) { return ((const cpu_plan *)plan)->arena_bytes; }
int cpu_plan_split(const void *plan, int step)
{
    const cpu_plan *p = plan;
    if (step < 0 || step >= p->n_steps || p->steps[step].kind != ST_CONV) return 0;
    return p->steps[step].conv.split;
}
const char *cpu_plan_isa(const void *plan) { return ((const cpu_plan *)plan)->isa->name; }

int cpu_prepared_shares(const void *plan, const void *a, const void *b, int step)
{
    const cpu_wprep *qa = a, *qb = b;
    (void)plan;
    if (!qa->buf[step] || !qb->buf[step]) return -1;
    return qa->buf[step] == qb->buf[step];
}

const rt_backend rt_cpu_backend = {
    RT_BACKEND_API_VERSION,
    "reference",
    "reference CPU backend: float32, packed SGEMM (AVX-512 / AVX2 / NEON / portable), fused "
    "Conv+BN+residual+Relu/Clip epilogues, liveness-planned activation arena, weights prepared "
    "once per refit (BN folding, panel packing, Winograd transforms)",
    RT_CAP_SETS | RT_CAP_INPLACE,
    cpu_plan_create,
    cpu_plan_destroy,
    cpu_ctx_create,
    cpu_ctx_destroy,
    cpu_weights_prepare,
    cpu_weights_release,
    cpu_weights_refit,
    cpu_run,
    cpu_weights_commit,
    cpu_weights_verify,
};
