/*
 * testplug.c — TEST-ONLY plugin backend, built by the C tests (CMake) and by the Python tests
 * (tests/plugin_backend.py); never installed, never bundled.
 *
 * It stands in for a vendor runtime loaded through the plugin path: its "device memory" is its own
 * copy of every weight, written once per prepare (an upload) and rewritten in place by
 * weights_refit (a vendor runtime's refit) or, split in two, by weights_commit (a copy from a
 * handle prepared beforehand) and weights_verify (the read-back). It runs one graph shape only: a single full-window
 * Conv (kernel as large as the input, no padding), y[m] = sum(W[m] * x) + B[m] — which is the seeds'
 * demo model. Faults, for the strategy tests:
 *   backend.fail_refit=N     the Nth in-place refit (weights_refit or weights_commit) writes the
 *                            first changed weight, then fails (a vendor refit that applies a
 *                            subset and reports an error);
 *   backend.corrupt_refit=N  the Nth in-place refit writes NaN into it and reports success (a
 *                            silent failure only verification catches: the canary or the
 *                            read-back);
 *   backend.fail_prepare=N   the Nth weights_prepare fails (a device out of memory: swap's path).
 * Built twice: as "testplug", and as "testplug_badapi" claiming api_version 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "refit.h"

#ifndef TESTPLUG_NAME
#define TESTPLUG_NAME "testplug"
#endif
#ifndef TESTPLUG_API_VERSION
#define TESTPLUG_API_VERSION RT_BACKEND_API_VERSION
#endif

typedef struct plan {
    const rt_graph *g;
    int x, w, b;          /* value indices (b: -1) */
    size_t M, K;          /* outputs, dot length */
    long fail_at, corrupt_at, refits, fail_prepare_at, prepares;
} plan;

typedef struct prepared {
    float *w, *b;         /* the "device" copies */
} prepared;

static int err1(char *err, size_t n, int code, const char *msg, const char *arg)
{
    snprintf(err, n, "backend '" TESTPLUG_NAME "': %s%s", msg, arg ? arg : "");
    return code;
}

static int parse_options(plan *p, const rt_backend_config *cfg, char *err, size_t n)
{
    for (size_t i = 0; cfg && i < cfg->n_options; i++) {
        const char *k = cfg->option_keys[i], *v = cfg->option_values[i];
        if (strcmp(k, "fail_refit") == 0)
            p->fail_at = strtol(v, NULL, 10);
        else if (strcmp(k, "corrupt_refit") == 0)
            p->corrupt_at = strtol(v, NULL, 10);
        else if (strcmp(k, "fail_prepare") == 0)
            p->fail_prepare_at = strtol(v, NULL, 10);
        else
            return err1(err, n, REFIT_ERR_INVALID_ARG, "unknown option (known: fail_refit, "
                        "corrupt_refit, fail_prepare): ", k);
    }
    return 0;
}

static int plan_create(const rt_graph *g, const rt_backend_config *cfg, void **out, char *err,
                       size_t n)
{
    plan *p = calloc(1, sizeof *p);
    if (!p)
        return err1(err, n, REFIT_ERR_NOMEM, "out of memory", NULL);
    int rc = parse_options(p, cfg, err, n);
    const rt_node *nd = g->n_nodes == 1 ? &g->nodes[0] : NULL;
    if (!rc && (!nd || nd->op != RT_OP_CONV || nd->n_in < 2 || nd->in[0] < 0 || nd->in[1] < 0 ||
                g->values[nd->in[0]].kind != RT_VAL_INPUT))
        rc = err1(err, n, REFIT_ERR_UNSUPPORTED, "runs only one full-window Conv of a graph input",
                  NULL);
    if (!rc) {
        p->g = g;
        p->x = nd->in[0];
        p->w = nd->in[1];
        p->b = nd->n_in > 2 ? nd->in[2] : -1;
        p->K = g->values[p->x].numel;
        p->M = g->values[nd->out].numel;
        if (g->values[p->w].numel != p->M * p->K || nd->a.group != 1 || nd->a.pads[0] ||
            nd->a.pads[1] || nd->a.pads[2] || nd->a.pads[3] || nd->out != g->outputs[0])
            rc = err1(err, n, REFIT_ERR_UNSUPPORTED, "the Conv must cover its whole input", NULL);
    }
    if (rc) {
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

static void plan_destroy(void *p) { free(p); }

static int ctx_create(void *p, void **ctx, char *err, size_t n)
{
    (void)p;
    *ctx = malloc(1); /* nothing per context; a real one would hold a stream */
    return *ctx ? 0 : err1(err, n, REFIT_ERR_NOMEM, "out of memory", NULL);
}

static void ctx_destroy(void *ctx) { free(ctx); }

/* A weight value's data: from the raw set (WEIGHT) or the graph (CONST). */
static const float *source(const plan *p, int v, const float *const *raw)
{
    const rt_value *val = &p->g->values[v];
    return val->kind == RT_VAL_WEIGHT ? raw[val->index] : (const float *)val->data;
}

static int is_changed(const plan *p, int v, const unsigned char *changed)
{
    const rt_value *val = &p->g->values[v];
    return val->kind == RT_VAL_WEIGHT && (!changed || changed[val->index]);
}

static void weights_release(void *pl, void *h)
{
    (void)pl;
    prepared *q = h;
    free(q->w);
    free(q->b);
    free(q);
}

static int weights_prepare(void *pl, const float *const *raw, const void *base,
                           const unsigned char *changed, void **out, char *err, size_t n)
{
    plan *p = pl;
    (void)base;
    (void)changed; /* an upload copies everything */
    if (++p->prepares == p->fail_prepare_at)
        return err1(err, n, REFIT_ERR_BACKEND, "injected failure in weights_prepare", NULL);
    prepared *q = calloc(1, sizeof *q);
    if (q) {
        q->w = malloc(p->M * p->K * sizeof(float));
        q->b = calloc(p->M, sizeof(float));
    }
    if (!q || !q->w || !q->b) {
        if (q)
            weights_release(pl, q);
        return err1(err, n, REFIT_ERR_NOMEM, "out of memory", NULL);
    }
    memcpy(q->w, source(p, p->w, raw), p->M * p->K * sizeof(float));
    if (p->b >= 0)
        memcpy(q->b, source(p, p->b, raw), p->M * sizeof(float));
    *out = q;
    return 0;
}

/* The in-place refit of q from weight data w, b (either NULL: unchanged), with the faults. */
static int write_in_place(plan *p, prepared *q, const float *w, const float *b, char *err, size_t n)
{
    long nth = ++p->refits;
    if (w) {
        memcpy(q->w, w, p->M * p->K * sizeof(float));
        if (nth == p->corrupt_at)
            q->w[0] = NAN;
    }
    if (nth == p->fail_at && w) {
        char why[64];
        snprintf(why, sizeof why, "%ld (after writing 1 weight)", nth);
        return err1(err, n, REFIT_ERR_BACKEND, "injected failure in in-place refit #", why);
    }
    if (b)
        memcpy(q->b, b, p->M * sizeof(float));
    return 0;
}

static int weights_refit(void *pl, void *h, const float *const *raw, const unsigned char *changed,
                         char *err, size_t n)
{
    plan *p = pl;
    return write_in_place(p, h, is_changed(p, p->w, changed) ? source(p, p->w, raw) : NULL,
                          p->b >= 0 && is_changed(p, p->b, changed) ? source(p, p->b, raw) : NULL,
                          err, n);
}

static int weights_commit(void *pl, void *live, const void *staged, const unsigned char *changed,
                          char *err, size_t n)
{
    plan *p = pl;
    const prepared *s = staged;
    return write_in_place(p, live, is_changed(p, p->w, changed) ? s->w : NULL,
                          p->b >= 0 && is_changed(p, p->b, changed) ? s->b : NULL, err, n);
}

/* The read-back: the "device" copy against the staged one, bit for bit. */
static int weights_verify(void *pl, const void *live, const void *staged, const unsigned char *changed,
                          char *err, size_t n)
{
    const plan *p = pl;
    const prepared *q = live, *s = staged;
    (void)changed; /* everything is compared: unchanged weights are equal too */
    if (memcmp(q->w, s->w, p->M * p->K * sizeof(float)) || memcmp(q->b, s->b, p->M * sizeof(float)))
        return err1(err, n, REFIT_ERR_BACKEND, "read-back: the device weights differ from the "
                    "committed ones", NULL);
    return 0;
}

static int run(void *pl, void *ctx, const void *h, const float *const *inputs,
               float *const *outputs, char *err, size_t n)
{
    const plan *p = pl;
    const prepared *q = h;
    (void)ctx;
    (void)err;
    (void)n;
    const float *x = inputs[p->g->values[p->x].index];
    for (size_t m = 0; m < p->M; m++) {
        float acc = q->b[m];
        for (size_t k = 0; k < p->K; k++)
            acc += q->w[m * p->K + k] * x[k];
        outputs[0][m] = acc;
    }
    return 0;
}

static const rt_backend vtable = {
    TESTPLUG_API_VERSION,
    TESTPLUG_NAME,
    "TEST-ONLY plugin backend (native/tests/plugin/testplug.c): one full-window Conv, in-place "
    "refit with injectable faults",
    RT_CAP_SETS | RT_CAP_INPLACE,
    plan_create,
    plan_destroy,
    ctx_create,
    ctx_destroy,
    weights_prepare,
    weights_release,
    weights_refit,
    run,
    weights_commit,
    weights_verify,
};

__attribute__((visibility("default"))) const rt_backend *refit_backend_entry(void) { return &vtable; }
