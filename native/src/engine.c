/*
 * engine.c — librefit's core: engines, contexts, weight sets and their publication.
 *
 * Weight sets. A set is an array of refcounted blobs, one per refittable weight. A refit builds a
 * new set that shares every unchanged blob with the current one (a partial refit copies only what
 * changes), then publishes it by swapping one atomic pointer. Every inference reads the pointer
 * once and computes with that one set from start to end: no inference ever sees a mix.
 *
 * Reclamation: hazard pointers, one per context. A reader announces the set it is about to use
 * in its context's `hazard` slot and re-checks that the set is still current; a writer, after
 * swapping the pointer, waits until no hazard slot holds the old set, then frees it. Readers
 * never wait on a lock (the re-check loop only repeats if a refit published in between); the
 * writer waits at most for the inferences already running on the old set. See docs/engine.md
 * for why this is correct under the C11 memory model.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif
#include <time.h>

#include "backend.h"
#include "cpuinfo.h"
#include "refit.h"
#include "util.h"

#ifndef REFIT_VERSION_STRING
#define REFIT_VERSION_STRING "0.0.0"
#endif

/* ---- per-thread error text -------------------------------------------------------------- */

static _Thread_local char tl_error[1024];

static void clear_error(void) { tl_error[0] = '\0'; }

static refit_status fail(refit_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_error, sizeof tl_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *refit_last_error(void) { return tl_error; }
int refit_abi_version(void) { return REFIT_ABI_VERSION; }
const char *refit_version_string(void) { return REFIT_VERSION_STRING; }

const char *refit_status_string(refit_status status)
{
    switch (status) {
    case REFIT_OK: return "REFIT_OK";
    case REFIT_ERR_INVALID_ARG: return "REFIT_ERR_INVALID_ARG";
    case REFIT_ERR_NOT_FOUND: return "REFIT_ERR_NOT_FOUND";
    case REFIT_ERR_DTYPE: return "REFIT_ERR_DTYPE";
    case REFIT_ERR_SHAPE: return "REFIT_ERR_SHAPE";
    case REFIT_ERR_SIZE: return "REFIT_ERR_SIZE";
    case REFIT_ERR_DUPLICATE: return "REFIT_ERR_DUPLICATE";
    case REFIT_ERR_EMPTY: return "REFIT_ERR_EMPTY";
    case REFIT_ERR_NONFINITE: return "REFIT_ERR_NONFINITE";
    case REFIT_ERR_UNSUPPORTED: return "REFIT_ERR_UNSUPPORTED";
    case REFIT_ERR_MODEL: return "REFIT_ERR_MODEL";
    case REFIT_ERR_IO: return "REFIT_ERR_IO";
    case REFIT_ERR_NOMEM: return "REFIT_ERR_NOMEM";
    case REFIT_ERR_CONFLICT: return "REFIT_ERR_CONFLICT";
    case REFIT_ERR_BACKEND: return "REFIT_ERR_BACKEND";
    }
    return "REFIT_ERR_UNKNOWN";
}

size_t refit_backend_count(void) { return rt_backend_count(); }
const char *refit_backend_name(size_t index) { return rt_backend_name_at(index); }
const char *refit_backend_location(size_t index) { return rt_backend_location_at(index); }

refit_status refit_backend_probe(const char *name)
{
    clear_error();
    if (!name)
        return fail(REFIT_ERR_INVALID_ARG, "backend_probe: name must not be NULL");
    return rt_backend_load(name, tl_error, sizeof tl_error) ? REFIT_OK : REFIT_ERR_NOT_FOUND;
}

/* ---- weight sets -------------------------------------------------------------------------- */

enum { HUGE_PAGE = 2u << 20 };

typedef struct blob {
    atomic_size_t refs;
    size_t nbytes;
    float *data; /* 64-byte aligned, float32 */
} blob;

typedef struct wset {
    uint64_t version;
    uint64_t generation; /* strictly increasing per engine; guards publish against ABA */
    size_t n;
    blob **blobs;
    const float **data;  /* blobs[k]->data: the raw set a backend prepares from */
    void *prepared;      /* the backend's handle that run() receives (NULL: none yet) */
    int owns_prepared;   /* swap and shadow sets: released with the set; else an instance's */
} wset;

static blob *blob_new(size_t nbytes)
{
    blob *b = malloc(sizeof *b);
    if (!b)
        return NULL;
    /* Blobs of 2 MiB and more start on a 2 MiB boundary and their whole 2 MiB pages are advised
     * for transparent huge pages (numpy does the same for its large arrays), so filling them costs
     * one fault per 2 MiB instead of one per 4 KiB: with THP in its common "madvise" mode this
     * halves a large refit. The tail stays on small pages, so no physical memory is wasted. */
    size_t align = nbytes >= HUGE_PAGE ? HUGE_PAGE : 64;
    size_t padded = (nbytes + 63) & ~(size_t)63;
    void *data = NULL;
    if (posix_memalign(&data, align, padded ? padded : 64)) {
        free(b);
        return NULL;
    }
    b->data = data;
#ifdef MADV_HUGEPAGE
    if (align == HUGE_PAGE) /* advice only: failure changes nothing */
        (void)madvise(data, nbytes & ~(size_t)(HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
    atomic_init(&b->refs, 1);
    b->nbytes = nbytes;
    return b;
}

static void blob_destroy(blob *b)
{
    free(b->data);
    free(b);
}

static void blob_release(blob *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        blob_destroy(b);
}

static wset *wset_alloc(size_t n)
{
    wset *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->n = n;
    s->blobs = calloc(n ? n : 1, sizeof *s->blobs);
    s->data = calloc(n ? n : 1, sizeof *s->data);
    if (!s->blobs || !s->data) {
        free(s->blobs);
        free(s->data);
        free(s);
        return NULL;
    }
    return s;
}

/* ---- engine and contexts ------------------------------------------------------------------- */

enum { STRAT_SWAP = 0, STRAT_QUIESCE = 1, STRAT_AB = 2 };
static const char *const strategy_names[] = {"swap", "quiesce", "ab"};

/* One backend weight instance refitted in place (quiesce: the only one; ab: two). `blobs` are the
 * raw blobs it currently reflects, each holding a reference, or NULL when a failed in-place refit
 * left it in an unknown state (its next refit then rewrites every weight). */
typedef struct inst {
    void *prepared;
    blob **blobs;
    int stale; /* a failed in-place refit may have left any subset in it: rewrite it whole */
} inst;

struct refit_context {
    refit_engine *engine;   /* holds a reference: the engine outlives its contexts */
    void *bctx;
    _Atomic(wset *) hazard; /* the set this context is computing with, or NULL */
    refit_context *next;
    const float **in_ptrs;  /* scratch arrays for the backend call */
    float **out_ptrs;
};

struct refit_staged {
    refit_engine *engine;   /* holds a reference */
    wset *set;              /* owned until published */
    uint64_t base_generation;
    uint64_t base_version;  /* for the conflict message */
    int check_finite;       /* verify the published outputs are finite (quiesce) */
};

struct refit_engine {
    atomic_size_t refs;           /* the opener's + one per context and staged set */
    const rt_backend *backend;
    rt_graph *graph;
    void *plan;
    refit_tensor_info *info[3]; /* by refit_tensor_kind */
    size_t count[3];
    int allow_nonfinite;
    int strategy;                 /* STRAT_* */
    /* A/B buffers: spare[k] is weight k's last retired blob, reused by its next refit so a refit
     * writes into memory that is already faulted in. At most one per weight (the memory a refit
     * needs anyway); guarded by refit_lock. NULL array when the option spare_weights=0. */
    blob **spare;
    /* weight-name lookup: open addressing over weight indices */
    int *name_table;
    size_t name_table_size;

    _Atomic(wset *) current;
    atomic_uint_fast64_t version; /* current->version, readable without a hazard */
    uint64_t next_generation;     /* guarded by refit_lock */
    pthread_mutex_t refit_lock;   /* serialises stage/publish/refit/read_weight */
    pthread_mutex_t ctx_lock;     /* guards the context list */
    refit_context *contexts;

    /* quiesce / ab (guarded by refit_lock) */
    inst insts[2];                /* quiesce: insts[0]; ab: insts[live] serves, the other idles */
    int live;
    atomic_int broken;            /* quiesce: a failed refit could not be undone; runs refuse */
    unsigned char *mask;          /* changed-weights scratch for prepare/refit (refit_lock) */
    const refit_staged *ab_staged; /* ab: the staged set the idle instance holds, or NULL */
    void *canary_ctx;             /* backend context for the verifying inference */
    float **canary_in, **canary_out;
    /* quiesce admission gate: readers wait while `paused` is set; `active` counts the readers
     * past the gate (or checking it); the drain is over once paused is set and active is 0, and
     * whoever claims it first (`claim`) applies the pending commit (quiesce_apply) */
    atomic_int paused;
    atomic_int active;
    atomic_uint_fast64_t claim;   /* pause number << 1 | 1 once that pause's refit is claimed */
    uint64_t pauses;              /* pauses so far (refit_lock) */
    struct pending *pend;         /* the refit in the pause (written before `paused` is set) */
    pthread_mutex_t pause_lock;
    pthread_cond_t pause_cond;    /* readers wait on it for the gate to reopen */
    pthread_cond_t drain_cond;    /* the refit waits on it for its pending commit to be applied */
    /* refit_engine_stats, guarded by refit_lock */
    refit_engine_stats stats;
};

static int build_name_table(refit_engine *e)
{
    size_t n = e->count[REFIT_KIND_WEIGHT];
    size_t size = 16;
    while (size < 2 * n)
        size *= 2;
    e->name_table = malloc(size * sizeof *e->name_table);
    if (!e->name_table)
        return -1;
    e->name_table_size = size;
    for (size_t i = 0; i < size; i++)
        e->name_table[i] = -1;
    for (size_t k = 0; k < n; k++) {
        size_t slot = rt_hash_str(e->info[REFIT_KIND_WEIGHT][k].name) & (size - 1);
        while (e->name_table[slot] >= 0)
            slot = (slot + 1) & (size - 1);
        e->name_table[slot] = (int)k;
    }
    return 0;
}

static int find_weight(const refit_engine *e, const char *name)
{
    size_t mask = e->name_table_size - 1;
    for (size_t slot = rt_hash_str(name) & mask;; slot = (slot + 1) & mask) {
        int k = e->name_table[slot];
        if (k < 0)
            return -1;
        if (strcmp(e->info[REFIT_KIND_WEIGHT][k].name, name) == 0)
            return k;
    }
}

static int fill_info(refit_engine *e, refit_tensor_kind kind, const int *values, int n)
{
    e->count[kind] = (size_t)n;
    e->info[kind] = calloc(n ? (size_t)n : 1, sizeof(refit_tensor_info));
    if (!e->info[kind])
        return -1;
    for (int i = 0; i < n; i++) {
        const rt_value *v = &e->graph->values[values[i]];
        refit_tensor_info *t = &e->info[kind][i];
        t->name = v->name;
        t->dtype = v->dtype;
        t->ndim = v->shape.ndim;
        t->shape = v->shape.d;
        t->nbytes = v->numel * rt_dtype_size(v->dtype);
    }
    return 0;
}

/* Parses an unsigned decimal option value. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-')
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static void wset_retire(refit_engine *e, wset *s);

/* Parses a non-negative int option value (device, threads). */
static int parse_int(const char *s, int *out)
{
    uint64_t v;
    if (parse_u64(s, &v) || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* Engine options that are not loader options. backend.* keys are collected for the backend,
 * which refuses the ones it does not know. */
typedef struct engine_opts {
    int allow_nonfinite, spare, strategy; /* strategy -1: the backend's default */
    uint64_t version;
    rt_backend_config cfg;
    const char **bkeys, **bvalues;        /* backend.* (owned arrays, borrowed strings) */
} engine_opts;

static refit_status parse_options(const char *const *keys, const char *const *values, size_t n,
                                  rt_load_options *lo, engine_opts *o)
{
    o->bkeys = calloc(n + 1, sizeof *o->bkeys);
    o->bvalues = calloc(n + 1, sizeof *o->bvalues);
    if (!o->bkeys || !o->bvalues)
        return fail(REFIT_ERR_NOMEM, "out of memory parsing options");
    for (size_t i = 0; i < n; i++) {
        const char *k = keys ? keys[i] : NULL, *v = values ? values[i] : NULL;
        if (!k || !v)
            return fail(REFIT_ERR_INVALID_ARG, "option %zu: key and value must not be NULL", i);
        if (strcmp(k, "refittable") == 0) {
            lo->refittable = v;
        } else if (strcmp(k, "input_shape") == 0) {
            lo->input_shape = v;
        } else if (strcmp(k, "allow_nonfinite") == 0) {
            if (strcmp(v, "0") && strcmp(v, "1"))
                return fail(REFIT_ERR_INVALID_ARG, "option allow_nonfinite: must be 0 or 1, got '%s'", v);
            o->allow_nonfinite = v[0] == '1';
        } else if (strcmp(k, "spare_weights") == 0) {
            if (strcmp(v, "0") && strcmp(v, "1"))
                return fail(REFIT_ERR_INVALID_ARG, "option spare_weights: must be 0 or 1, got '%s'", v);
            o->spare = v[0] == '1';
        } else if (strcmp(k, "initial_version") == 0) {
            if (parse_u64(v, &o->version))
                return fail(REFIT_ERR_INVALID_ARG,
                            "option initial_version: must be a non-negative integer, got '%s'", v);
        } else if (strcmp(k, "strategy") == 0) {
            o->strategy = -1;
            for (int s = 0; s < 3; s++)
                if (strcmp(v, strategy_names[s]) == 0)
                    o->strategy = s;
            if (o->strategy < 0)
                return fail(REFIT_ERR_INVALID_ARG, "option strategy: must be swap, quiesce or ab, got '%s'", v);
        } else if (strcmp(k, "device") == 0) {
            if (parse_int(v, &o->cfg.device_id))
                return fail(REFIT_ERR_INVALID_ARG, "option device: must be a non-negative integer, got '%s'", v);
        } else if (strcmp(k, "threads") == 0) {
            if (parse_int(v, &o->cfg.threads) || o->cfg.threads < 1)
                return fail(REFIT_ERR_INVALID_ARG, "option threads: must be a positive integer, got '%s'", v);
        } else if (strncmp(k, "backend.", 8) == 0 && k[8]) {
            o->bkeys[o->cfg.n_options] = k + 8;
            o->bvalues[o->cfg.n_options++] = v;
        } else {
            return fail(REFIT_ERR_INVALID_ARG,
                        "unknown option '%s' (known: refittable, input_shape, allow_nonfinite, "
                        "initial_version, spare_weights, strategy, device, threads, backend.<key>)", k);
        }
    }
    o->cfg.option_keys = o->bkeys;
    o->cfg.option_values = o->bvalues;
    return REFIT_OK;
}

static void inst_clear(refit_engine *e, inst *in)
{
    if (in->prepared)
        e->backend->weights_release(e->plan, in->prepared);
    in->prepared = NULL;
    if (in->blobs)
        for (size_t k = 0; k < e->count[REFIT_KIND_WEIGHT]; k++)
            blob_release(in->blobs[k]);
    free(in->blobs);
    in->blobs = NULL;
}

static void engine_free(refit_engine *e)
{
    wset_retire(e, atomic_load(&e->current));
    for (int i = 0; i < 2; i++)
        inst_clear(e, &e->insts[i]);
    if (e->canary_ctx)
        e->backend->ctx_destroy(e->canary_ctx);
    for (size_t j = 0; e->canary_in && j < e->count[REFIT_KIND_INPUT]; j++)
        free(e->canary_in[j]);
    for (size_t j = 0; e->canary_out && j < e->count[REFIT_KIND_OUTPUT]; j++)
        free(e->canary_out[j]);
    free(e->canary_in);
    free(e->canary_out);
    if (e->plan)
        e->backend->plan_destroy(e->plan);
    rt_graph_destroy(e->graph);
    for (int k = 0; k < 3; k++)
        free(e->info[k]);
    free(e->name_table);
    free(e->mask);
    if (e->spare)
        for (size_t k = 0; k < e->count[REFIT_KIND_WEIGHT]; k++)
            if (e->spare[k])
                blob_destroy(e->spare[k]); /* spares hold no references */
    free(e->spare);
    pthread_mutex_destroy(&e->refit_lock);
    pthread_mutex_destroy(&e->ctx_lock);
    pthread_mutex_destroy(&e->pause_lock);
    pthread_cond_destroy(&e->pause_cond);
    pthread_cond_destroy(&e->drain_cond);
    free(e);
}

static void engine_ref(refit_engine *e) { atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); }

/* Drops one reference; the last one frees the engine, whichever handle (engine, context, staged
 * set) goes last. acq_rel: everything done through the other handles happens before the free. */
static void engine_unref(refit_engine *e)
{
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        engine_free(e);
}

void refit_engine_destroy(refit_engine *e)
{
    if (e)
        engine_unref(e);
}

static refit_status prepare_set(refit_engine *e, wset *s, const wset *base);
static refit_status canary_check(refit_engine *e, const void *prepared, int check_finite);

/* The buffers and context of the verifying inference (quiesce, ab): inputs all 1. */
static refit_status canary_init(refit_engine *e)
{
    size_t ni = e->count[REFIT_KIND_INPUT], no = e->count[REFIT_KIND_OUTPUT];
    e->canary_in = calloc(ni + 1, sizeof *e->canary_in);
    e->canary_out = calloc(no + 1, sizeof *e->canary_out);
    if (!e->canary_in || !e->canary_out)
        return fail(REFIT_ERR_NOMEM, "out of memory for the canary inference");
    for (size_t i = 0; i < ni; i++) {
        size_t n = e->info[REFIT_KIND_INPUT][i].nbytes / sizeof(float);
        if (!(e->canary_in[i] = malloc((n ? n : 1) * sizeof(float))))
            return fail(REFIT_ERR_NOMEM, "out of memory for the canary inference");
        for (size_t x = 0; x < n; x++)
            e->canary_in[i][x] = 1.0f;
    }
    for (size_t j = 0; j < no; j++)
        if (!(e->canary_out[j] = malloc(e->info[REFIT_KIND_OUTPUT][j].nbytes + sizeof(float))))
            return fail(REFIT_ERR_NOMEM, "out of memory for the canary inference");
    int rc = e->backend->ctx_create(e->plan, &e->canary_ctx, tl_error, sizeof tl_error);
    if (rc) {
        e->canary_ctx = NULL;
        return (refit_status)rc;
    }
    return REFIT_OK;
}

/* Makes instance `in` a prepared copy of set s (holding references on its blobs). */
static refit_status inst_init(refit_engine *e, inst *in, const wset *s)
{
    size_t nw = e->count[REFIT_KIND_WEIGHT];
    if (!(in->blobs = calloc(nw + 1, sizeof *in->blobs)))
        return fail(REFIT_ERR_NOMEM, "out of memory for a weight instance");
    int rc = e->backend->weights_prepare(e->plan, s->data, NULL, NULL, &in->prepared, tl_error,
                                         sizeof tl_error);
    if (rc) {
        in->prepared = NULL;
        return (refit_status)rc;
    }
    for (size_t k = 0; k < nw; k++) {
        in->blobs[k] = s->blobs[k];
        atomic_fetch_add_explicit(&s->blobs[k]->refs, 1, memory_order_relaxed);
    }
    return REFIT_OK;
}

/* Picks the strategy (the option, else swap where the backend keeps separate sets) and checks
 * the backend can do it. */
static refit_status choose_strategy(refit_engine *e, int requested)
{
    const rt_backend *be = e->backend;
    e->strategy = requested >= 0 ? requested : (be->caps & RT_CAP_SETS) ? STRAT_SWAP : STRAT_QUIESCE;
    if (e->strategy == STRAT_SWAP && !(be->caps & RT_CAP_SETS))
        return fail(REFIT_ERR_UNSUPPORTED, "strategy swap: backend '%s' cannot keep separate weight "
                    "sets (use strategy quiesce or ab)", be->name);
    if (e->strategy != STRAT_SWAP && !(be->caps & RT_CAP_INPLACE))
        return fail(REFIT_ERR_UNSUPPORTED, "strategy %s: backend '%s' cannot refit in place (use "
                    "strategy swap)", strategy_names[e->strategy], be->name);
    e->stats.strategy = strategy_names[e->strategy];
    return REFIT_OK;
}

/* Gives the first set its backend form: its own handle (swap) or the instances (quiesce, ab). */
static refit_status prepare_initial(refit_engine *e, wset *s)
{
    if (e->strategy == STRAT_SWAP)
        return prepare_set(e, s, NULL);
    refit_status st = canary_init(e);
    for (int i = 0; i < (e->strategy == STRAT_AB ? 2 : 1) && !st; i++)
        st = inst_init(e, &e->insts[i], s);
    if (!st)
        st = canary_check(e, e->insts[0].prepared, 0);
    if (!st) {
        s->prepared = e->insts[0].prepared;
        s->owns_prepared = 0;
    }
    return st;
}

refit_status refit_engine_open_memory(const void *data, size_t size, const char *backend,
                                      const char *const *keys, const char *const *values,
                                      size_t num_options, refit_engine **out)
{
    clear_error();
    if (!out)
        return fail(REFIT_ERR_INVALID_ARG, "refit_engine_open: out must not be NULL");
    *out = NULL;
    if (!data || !size)
        return fail(REFIT_ERR_MODEL, "model is empty");
    const rt_backend *be = rt_backend_load(backend ? backend : "reference", tl_error, sizeof tl_error);
    if (!be)
        return REFIT_ERR_NOT_FOUND;

    rt_load_options lo = {0};
    engine_opts o = {0, 1, -1, 0, {0, 1, 0, NULL, NULL}, NULL, NULL};
    refit_status st = parse_options(keys, values, num_options, &lo, &o);
    if (st) {
        free(o.bkeys);
        free(o.bvalues);
        return st;
    }

    refit_engine *e = calloc(1, sizeof *e);
    if (!e) {
        free(o.bkeys);
        free(o.bvalues);
        return fail(REFIT_ERR_NOMEM, "out of memory opening the engine");
    }
    atomic_init(&e->refs, 1);
    pthread_mutex_init(&e->refit_lock, NULL);
    pthread_mutex_init(&e->ctx_lock, NULL);
    pthread_mutex_init(&e->pause_lock, NULL);
    pthread_cond_init(&e->pause_cond, NULL);
    pthread_cond_init(&e->drain_cond, NULL);
    atomic_init(&e->paused, 0);
    atomic_init(&e->active, 0);
    atomic_init(&e->claim, 1); /* pause 0, claimed: nothing to apply */
    atomic_init(&e->broken, 0);
    e->backend = be;
    e->allow_nonfinite = o.allow_nonfinite;
    st = choose_strategy(e, o.strategy);
    if (st) {
        free(o.bkeys);
        free(o.bvalues);
        engine_free(e);
        return st;
    }

    int rc = rt_graph_from_onnx(data, size, &lo, &e->graph, tl_error, sizeof tl_error);
    if (rc) {
        free(o.bkeys);
        free(o.bvalues);
        engine_free(e);
        return (refit_status)rc;
    }
    rt_graph *g = e->graph;
    if (fill_info(e, REFIT_KIND_INPUT, g->inputs, g->n_inputs) ||
        fill_info(e, REFIT_KIND_OUTPUT, g->outputs, g->n_outputs) ||
        fill_info(e, REFIT_KIND_WEIGHT, g->weights, g->n_weights) || build_name_table(e) ||
        !(e->mask = calloc((size_t)g->n_weights + 1, 1)) ||
        (o.spare && !(e->spare = calloc((size_t)g->n_weights + 1, sizeof *e->spare)))) {
        free(o.bkeys);
        free(o.bvalues);
        engine_free(e);
        return fail(REFIT_ERR_NOMEM, "out of memory opening the engine");
    }
    rc = be->plan_create(g, &o.cfg, &e->plan, tl_error, sizeof tl_error);
    free(o.bkeys); /* the backend copies what it keeps of its options */
    free(o.bvalues);
    if (rc) {
        e->plan = NULL;
        engine_free(e);
        return (refit_status)rc;
    }

    /* The first weight set: the model file's own initial values. */
    wset *s = wset_alloc((size_t)g->n_weights);
    if (!s) {
        engine_free(e);
        return fail(REFIT_ERR_NOMEM, "out of memory for the initial weights");
    }
    for (int k = 0; k < g->n_weights; k++) {
        size_t nbytes = e->info[REFIT_KIND_WEIGHT][k].nbytes;
        blob *b = blob_new(nbytes);
        if (!b) {
            wset_retire(e, s);
            engine_free(e);
            return fail(REFIT_ERR_NOMEM, "out of memory for the initial weights");
        }
        memcpy(b->data, g->weight_init[k], nbytes);
        free(g->weight_init[k]); /* the set owns the weights now: don't hold them twice */
        g->weight_init[k] = NULL;
        s->blobs[k] = b;
        s->data[k] = b->data;
    }
    s->version = o.version;
    s->generation = e->next_generation++;
    st = prepare_initial(e, s);
    if (st) {
        wset_retire(e, s);
        engine_free(e);
        return st;
    }
    atomic_init(&e->current, s);
    atomic_init(&e->version, o.version);
    *out = e;
    return REFIT_OK;
}

refit_status refit_engine_open(const char *path, const char *backend, const char *const *keys,
                               const char *const *values, size_t num_options, refit_engine **out)
{
    clear_error();
    if (!out)
        return fail(REFIT_ERR_INVALID_ARG, "refit_engine_open: out must not be NULL");
    *out = NULL;
    if (!path)
        return fail(REFIT_ERR_INVALID_ARG, "refit_engine_open: model path must not be NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(REFIT_ERR_IO, "cannot open model '%s': %s", path, strerror(errno));
    void *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fail(REFIT_ERR_IO, "cannot read model '%s': not a regular file", path);
    }
    buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
        fclose(f);
        return fail(REFIT_ERR_NOMEM, "out of memory reading model '%s' (%ld bytes)", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    int read_err = ferror(f);
    fclose(f);
    if (read_err || got != (size_t)size) {
        free(buf);
        return fail(REFIT_ERR_IO, "cannot read model '%s': short read", path);
    }
    refit_status st = refit_engine_open_memory(buf, (size_t)size, backend, keys, values, num_options, out);
    free(buf);
    if (st && tl_error[0]) {
        /* Prefix the file name so the one line says which model. */
        char msg[sizeof tl_error];
        snprintf(msg, sizeof msg, "%s: %s", path, tl_error);
        memcpy(tl_error, msg, sizeof tl_error);
    }
    return st;
}

size_t refit_engine_count(const refit_engine *e, refit_tensor_kind kind)
{
    if (!e || (unsigned)kind > REFIT_KIND_WEIGHT)
        return 0;
    return e->count[kind];
}

refit_status refit_engine_info(const refit_engine *e, refit_tensor_kind kind, size_t index,
                               refit_tensor_info *info)
{
    clear_error();
    if (!e || !info || (unsigned)kind > REFIT_KIND_WEIGHT)
        return fail(REFIT_ERR_INVALID_ARG, "refit_engine_info: bad argument");
    if (index >= e->count[kind])
        return fail(REFIT_ERR_INVALID_ARG, "refit_engine_info: index %zu out of range (%zu tensors)",
                    index, e->count[kind]);
    *info = e->info[kind][index];
    return REFIT_OK;
}

const char *refit_engine_backend(const refit_engine *e) { return e ? e->backend->name : NULL; }

uint64_t refit_engine_version(const refit_engine *e)
{
    return e ? atomic_load_explicit(&e->version, memory_order_acquire) : 0;
}

/* ---- validation and staging ---------------------------------------------------------------- */

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Index of the first non-finite element in n float32 values, or -1. */
static long first_nonfinite_f32(const float *src, size_t n)
{
    const uint32_t *u = (const uint32_t *)(const void *)src;
    for (size_t i = 0; i < n; i++)
        if ((u[i] & 0x7f800000u) == 0x7f800000u)
            return (long)i;
    return -1;
}

/* One chunk of copy_checked_f32: copies and ORs a "non-finite" mask in the same pass, so each
 * element is read once (the exponent bits all set <=> the magnitude bits exceed FLT_MAX's). */
static int copy_check_chunk(uint32_t *restrict dst, const uint32_t *restrict src, size_t len)
{
    int32_t bad = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t v = src[i];
        dst[i] = v;
        bad |= (int32_t)(v & 0x7fffffffu) > 0x7f7fffff;
    }
    return bad;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* AVX2 with streaming stores: a large weight does not fit the caches anyway, and streaming
 * spares the read-for-ownership of every destination line (what glibc's memcpy does for large
 * copies). dst is 32-byte aligned: blobs are 64-byte aligned and chunks start at multiples of
 * 64 KiB. The caller fences before the set is published. */
__attribute__((target("avx2"))) static int copy_check_chunk_avx2(uint32_t *restrict dst,
                                                                  const uint32_t *restrict src,
                                                                  size_t len)
{
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), finite_max = _mm256_set1_epi32(0x7f7fffff);
    __m256i bad = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(src + i));
        _mm256_stream_si256((__m256i *)(void *)(dst + i), v);
        bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(_mm256_and_si256(v, magnitude), finite_max));
    }
    int tail = 0;
    for (; i < len; i++) {
        dst[i] = src[i];
        tail |= (int32_t)(src[i] & 0x7fffffffu) > 0x7f7fffff;
    }
    return tail || !_mm256_testz_si256(bad, bad);
}
#endif

/* Copies n float32 values, checking finiteness in the same pass (as close to memcpy as the check
 * allows). Returns the index of the first non-finite value (-1 if none, or if check is 0). */
static long copy_checked_f32(float *dst, const float *src, size_t n, int check)
{
    if (!check) {
        memcpy(dst, src, n * sizeof *dst);
        return -1;
    }
    enum { CHUNK = 16384, STREAM_BYTES = 1 << 20 }; /* smaller weights stay cache-hot */
    int (*chunk)(uint32_t *restrict, const uint32_t *restrict, size_t) = copy_check_chunk;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (n * sizeof *dst >= STREAM_BYTES && (rt_cpu_features() & RT_CPU_AVX2))
        chunk = copy_check_chunk_avx2;
#endif
    long bad = -1;
    for (size_t off = 0; off < n && bad < 0; off += CHUNK) {
        size_t len = n - off < CHUNK ? n - off : CHUNK;
        if (chunk((uint32_t *)(void *)(dst + off), (const uint32_t *)(const void *)(src + off), len))
            bad = (long)off + first_nonfinite_f32(src + off, len);
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (chunk == copy_check_chunk_avx2)
        _mm_sfence(); /* streaming stores are weakly ordered: complete them before publishing */
#endif
    return bad;
}

static long copy_checked_f16(float *dst, const uint16_t *src, size_t n, int check)
{
    for (size_t i = 0; i < n; i++) {
        if (check && (src[i] & 0x7c00u) == 0x7c00u)
            return (long)i;
        dst[i] = rt_half_to_float(src[i]);
    }
    return -1;
}

/* Validates one tensor against weight k's spec (not its values). */
static refit_status check_tensor(const refit_engine *e, const refit_tensor *t, int k)
{
    const refit_tensor_info *w = &e->info[REFIT_KIND_WEIGHT][k];
    char want[160], got[160];
    if (t->dtype != REFIT_DTYPE_FLOAT32 && t->dtype != REFIT_DTYPE_FLOAT16)
        return fail(REFIT_ERR_DTYPE, "weight '%s': dtype %s not accepted (the model's is %s; float32 "
                    "or float16 accepted)", t->name, rt_dtype_name(t->dtype), rt_dtype_name(w->dtype));
    int same = t->ndim == w->ndim && (t->ndim == 0 || t->shape);
    for (int i = 0; same && i < t->ndim; i++)
        same = t->shape[i] == w->shape[i];
    if (!same) {
        if (t->ndim < 0 || t->ndim > RT_MAX_DIMS || (t->ndim > 0 && !t->shape))
            snprintf(got, sizeof got, "(ndim %d)", (int)t->ndim);
        else
            shape_str(t->ndim, t->shape, got, sizeof got);
        shape_str(w->ndim, w->shape, want, sizeof want);
        return fail(REFIT_ERR_SHAPE, "weight '%s': shape %s does not match the model's %s", t->name,
                    got, want);
    }
    size_t need = (w->nbytes / sizeof(float)) * rt_dtype_size(t->dtype);
    if (t->nbytes != need) {
        shape_str(w->ndim, w->shape, want, sizeof want);
        return fail(REFIT_ERR_SIZE, "weight '%s': %zu bytes given, %s %s needs %zu", t->name,
                    t->nbytes, rt_dtype_name(t->dtype), want, need);
    }
    if (need && !t->data)
        return fail(REFIT_ERR_INVALID_ARG, "weight '%s': data is NULL", t->name);
    return REFIT_OK;
}

/* Weight k's spare blob (refcount 1), or NULL. Caller holds refit_lock. */
static blob *take_spare(refit_engine *e, int k)
{
    if (!e->spare || !e->spare[k])
        return NULL;
    blob *b = e->spare[k];
    e->spare[k] = NULL;
    atomic_store_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

/* Drops one reference on weight k's blob b; the last one makes it weight k's spare (if that slot
 * is free) instead of going back to the allocator. Caller holds refit_lock. */
static void blob_drop(refit_engine *e, size_t k, blob *b)
{
    if (!b || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
        return; /* still shared with another set or instance */
    if (e->spare && !e->spare[k])
        e->spare[k] = b; /* weight k's next refit writes here */
    else
        blob_destroy(b);
}

/* Frees a set that no reader uses (any more): a retired, refused or unpublished one, its own
 * prepared handle too; the blobs only it held become spares. Caller holds refit_lock (or is
 * opening or freeing the engine, alone). NULL is a no-op. */
static void wset_retire(refit_engine *e, wset *s)
{
    if (!s)
        return;
    if (s->prepared && s->owns_prepared)
        e->backend->weights_release(e->plan, s->prepared);
    for (size_t k = 0; k < s->n; k++)
        blob_drop(e, k, s->blobs[k]);
    free(s->blobs);
    free(s->data);
    free(s);
}

/* Builds (unpublished) a set on top of `base`: validates every tensor first, then copies the
 * named tensors into new blobs and shares the rest. Caller holds refit_lock. */
static refit_status build_set(refit_engine *e, const wset *base, const refit_tensor *tensors,
                              size_t count, uint64_t version, uint32_t flags, wset **out)
{
    *out = NULL;
    if (!tensors || count == 0)
        return fail(REFIT_ERR_EMPTY, "refit with no tensors (nothing to apply)");
    size_t nw = e->count[REFIT_KIND_WEIGHT];
    int *index = malloc(count * sizeof *index);
    unsigned char *seen = calloc(nw ? nw : 1, 1);
    if (!index || !seen) {
        free(index);
        free(seen);
        return fail(REFIT_ERR_NOMEM, "out of memory validating a refit of %zu tensors", count);
    }
    refit_status st = REFIT_OK;
    for (size_t i = 0; i < count && !st; i++) {
        const refit_tensor *t = &tensors[i];
        if (!t->name) {
            st = fail(REFIT_ERR_INVALID_ARG, "tensor %zu has no name", i);
            break;
        }
        int k = find_weight(e, t->name);
        if (k < 0) {
            st = nw ? fail(REFIT_ERR_NOT_FOUND, "weight '%s': not a refittable weight of this model "
                           "(it has %zu, e.g. '%s')", t->name, nw, e->info[REFIT_KIND_WEIGHT][0].name)
                    : fail(REFIT_ERR_NOT_FOUND, "weight '%s': this model has no refittable weights",
                           t->name);
            break;
        }
        if (seen[k]) {
            st = fail(REFIT_ERR_DUPLICATE, "weight '%s': given twice in one refit", t->name);
            break;
        }
        seen[k] = 1;
        index[i] = k;
        st = check_tensor(e, t, k);
    }
    free(seen);
    wset *s = NULL;
    if (!st && !(s = wset_alloc(nw)))
        st = fail(REFIT_ERR_NOMEM, "out of memory for a new weight set");
    int check = !(flags & REFIT_ALLOW_NONFINITE) && !e->allow_nonfinite;
    for (size_t i = 0; i < count && !st; i++) {
        const refit_tensor *t = &tensors[i];
        size_t nbytes = e->info[REFIT_KIND_WEIGHT][index[i]].nbytes;
        blob *b = take_spare(e, index[i]);
        if (!b)
            b = blob_new(nbytes);
        if (!b) {
            st = fail(REFIT_ERR_NOMEM, "weight '%s': out of memory for %zu bytes", t->name, nbytes);
            break;
        }
        s->blobs[index[i]] = b;
        s->data[index[i]] = b->data;
        size_t n = nbytes / sizeof(float);
        long bad = t->dtype == REFIT_DTYPE_FLOAT16 ? copy_checked_f16(b->data, t->data, n, check)
                                                   : copy_checked_f32(b->data, t->data, n, check);
        if (bad >= 0) {
            float v = t->dtype == REFIT_DTYPE_FLOAT16 ? rt_half_to_float(((const uint16_t *)t->data)[bad])
                                                      : ((const float *)t->data)[bad];
            st = fail(REFIT_ERR_NONFINITE, "weight '%s': %s at element %ld (non-finite values are "
                      "refused unless allowed)", t->name, isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"), bad);
        }
    }
    free(index);
    if (st) {
        wset_retire(e, s); /* only the blobs created so far are set; shared ones not yet taken */
        return st;
    }
    for (size_t k = 0; k < nw; k++) {
        if (!s->blobs[k]) { /* unchanged: share the base's blob */
            s->blobs[k] = base->blobs[k];
            atomic_fetch_add_explicit(&s->blobs[k]->refs, 1, memory_order_relaxed);
            s->data[k] = base->data[k];
        }
    }
    s->version = version;
    *out = s;
    return REFIT_OK;
}

/* quiesce: how long a reader spins at the closed gate before it sleeps (wait_unpaused). */
enum { READER_SPIN_NS = 50000 };

/* A spin-wait hint: lets the sibling hyperthread run and saves power; never yields the CPU. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A backend failure's one line (the backend's own, or the status name). */
static refit_status backend_failed(refit_engine *e, int rc, const char *what)
{
    if (!tl_error[0])
        return fail((refit_status)rc, "backend '%s': %s failed with %s", e->backend->name, what,
                    refit_status_string((refit_status)rc));
    return (refit_status)rc;
}

/* e->mask[k] = 1 where set s has another blob than `have` (every weight when stale). Caller
 * holds refit_lock. */
static const unsigned char *fill_mask(refit_engine *e, blob *const *have, int stale, const wset *s)
{
    for (size_t k = 0; k < s->n; k++)
        e->mask[k] = stale || have[k] != s->blobs[k];
    return e->mask;
}

/* Gives s its own prepared handle, re-preparing only what depends on weights that differ from
 * base's (swap, and shadow runs of staged sets). */
static refit_status prepare_set(refit_engine *e, wset *s, const wset *base)
{
    const void *bp = base ? base->prepared : NULL;
    const unsigned char *mask = bp ? fill_mask(e, base->blobs, 0, s) : NULL;
    uint64_t t0 = now_ns();
    int rc = e->backend->weights_prepare(e->plan, s->data, bp, mask, &s->prepared, tl_error,
                                         sizeof tl_error);
    e->stats.last_prepare_ns = now_ns() - t0;
    if (rc) {
        s->prepared = NULL;
        return backend_failed(e, rc, "weights_prepare");
    }
    s->owns_prepared = 1;
    return REFIT_OK;
}

/* The verifying inference after an in-place refit: it must succeed and, unless non-finite values
 * are allowed, give finite outputs (inputs all 1). Caller holds refit_lock. */
static refit_status canary_check(refit_engine *e, const void *prepared, int check_finite)
{
    int rc = e->backend->run(e->plan, e->canary_ctx, prepared, (const float *const *)e->canary_in,
                             e->canary_out, tl_error, sizeof tl_error);
    if (rc)
        return backend_failed(e, rc, "the verifying inference");
    for (size_t j = 0; check_finite && j < e->count[REFIT_KIND_OUTPUT]; j++) {
        const refit_tensor_info *t = &e->info[REFIT_KIND_OUTPUT][j];
        long bad = first_nonfinite_f32(e->canary_out[j], t->nbytes / sizeof(float));
        if (bad >= 0)
            return fail(REFIT_ERR_BACKEND, "verify: the verifying inference's output '%s' is "
                        "non-finite at element %ld", t->name, bad);
    }
    return REFIT_OK;
}

/* Makes instance `in` hold set s's blobs (after it was refitted to them). */
static void inst_take(refit_engine *e, inst *in, const wset *s)
{
    for (size_t k = 0; k < s->n; k++) {
        if (in->blobs[k] == s->blobs[k])
            continue;
        atomic_fetch_add_explicit(&s->blobs[k]->refs, 1, memory_order_relaxed);
        blob_drop(e, k, in->blobs[k]);
        in->blobs[k] = s->blobs[k];
    }
}

/* Refits instance `in` (no run uses it) in place to set s, unverified. On failure the instance
 * is stale: any subset of s may be in it. */
static refit_status inst_write(refit_engine *e, inst *in, const wset *s)
{
    const unsigned char *mask = fill_mask(e, in->blobs, in->stale, s);
    uint64_t t0 = now_ns();
    int rc = e->backend->weights_refit(e->plan, in->prepared, s->data, mask, tl_error, sizeof tl_error);
    e->stats.last_prepare_ns = e->stats.last_inplace_ns = now_ns() - t0;
    in->stale = rc != 0;
    if (rc)
        return backend_failed(e, rc, "weights_refit");
    inst_take(e, in, s);
    return REFIT_OK;
}

/* inst_write, then the canary. On failure the instance is stale. */
static refit_status inst_refit(refit_engine *e, inst *in, const wset *s, int check_finite)
{
    refit_status st = inst_write(e, in, s);
    uint64_t t0 = now_ns();
    if (!st)
        st = canary_check(e, in->prepared, check_finite);
    e->stats.last_verify_ns = now_ns() - t0;
    in->stale = st != REFIT_OK;
    return st;
}

/* Waits until no context computes with `old`. Caller holds refit_lock and has already swapped
 * `old` out of `current` (seq_cst), so no new reader can validate it. */
static void wait_for_readers(refit_engine *e, const wset *old)
{
    pthread_mutex_lock(&e->ctx_lock);
    for (refit_context *c = e->contexts; c; c = c->next) {
        unsigned spins = 0;
        while (atomic_load_explicit(&c->hazard, memory_order_seq_cst) == old) {
            if (++spins < 64) {
                sched_yield();
            } else {
                struct timespec ts = {0, 20000}; /* 20 us: readers of the old set are finishing */
                nanosleep(&ts, NULL);
            }
        }
    }
    pthread_mutex_unlock(&e->ctx_lock);
}

/* Makes s current; returns the set it replaces. */
static wset *swap_current(refit_engine *e, wset *s)
{
    s->generation = e->next_generation++;
    wset *old = atomic_exchange_explicit(&e->current, s, memory_order_seq_cst);
    atomic_store_explicit(&e->version, s->version, memory_order_release);
    return old;
}

/* quiesce: the refit inside a pause. The refitting thread fills it in and closes the gate;
 * the drain's last reader (or the refitting thread, if none was in flight) applies it. */
typedef struct pending {
    inst *in;
    wset *s;
    const void *staged;   /* NULL: only report the drain (the refitting thread refits itself) */
    refit_status st;
    int done;             /* under pause_lock */
    uint64_t drained_ns, inplace_ns, verify_ns, reopened_ns;
    char err[sizeof tl_error];
} pending;

/* Applies e->pend: with a staged handle, the commit and its read-back, and if both succeed the
 * publish and the reopening of the gate, all on the calling thread, so the pause does not wait for
 * the refitting thread to be scheduled again (a reader that leaves on a loaded box had waited
 * milliseconds at the gate for it). A failure keeps the gate closed: the refitting thread restores.
 * Runs once per pause, by whoever claimed it: the weights_* calls stay one at a time per plan. */
static void quiesce_apply(refit_engine *e)
{
    pending *p = e->pend;
    p->drained_ns = now_ns();
    if (p->staged) {
        int rc = e->backend->weights_commit(e->plan, p->in->prepared, p->staged, e->mask, p->err,
                                            sizeof p->err);
        const char *what = "weights_commit";
        uint64_t t1 = now_ns();
        if (!rc && (rc = e->backend->weights_verify(e->plan, p->in->prepared, p->staged, e->mask,
                                                    p->err, sizeof p->err)))
            what = "the read-back (weights_verify)";
        p->inplace_ns = t1 - p->drained_ns;
        p->verify_ns = now_ns() - t1;
        if (rc && !p->err[0])
            snprintf(p->err, sizeof p->err, "backend '%s': %s failed with %s", e->backend->name, what,
                     refit_status_string((refit_status)rc));
        p->st = (refit_status)rc;
        if (!rc) {
            p->s->prepared = p->in->prepared;
            p->s->owns_prepared = 0;
            (void)swap_current(e, p->s); /* the old set has no reader: the refit retires it */
        }
    }
    pthread_mutex_lock(&e->pause_lock);
    if (p->staged && !p->st) {
        p->reopened_ns = now_ns();
        atomic_store_explicit(&e->paused, 0, memory_order_seq_cst);
        pthread_cond_broadcast(&e->pause_cond);
    }
    p->done = 1;
    pthread_cond_broadcast(&e->drain_cond);
    pthread_mutex_unlock(&e->pause_lock);
}

/* Claims and applies the pending refit if the drain is over: the pause's unclaimed number, then
 * the gate closed, then no reader past it (seq_cst, in that order: a reader that passes later
 * sees the gate closed and backs off), then the claim of that same number. The number keeps a
 * thread that saw one pause drained, and ran late, from claiming the next one. */
static void quiesce_help(refit_engine *e)
{
    uint_fast64_t w = atomic_load_explicit(&e->claim, memory_order_seq_cst);
    if (!(w & 1) && atomic_load_explicit(&e->paused, memory_order_seq_cst) &&
        atomic_load_explicit(&e->active, memory_order_seq_cst) == 0 &&
        atomic_compare_exchange_strong_explicit(&e->claim, &w, w | 1, memory_order_seq_cst,
                                                memory_order_seq_cst))
        quiesce_apply(e);
}

/* A reader leaves the gate (after its inference, or backing off from a closed gate). */
static void gate_leave(refit_engine *e)
{
    if (atomic_fetch_sub_explicit(&e->active, 1, memory_order_seq_cst) == 1)
        quiesce_help(e);
}

/* The refitting thread: closes the gate on pending p and sleeps until it is applied. */
static void quiesce_pause(refit_engine *e, pending *p)
{
    e->pend = p;
    atomic_store_explicit(&e->claim, (uint_fast64_t)++e->pauses << 1, memory_order_seq_cst);
    atomic_store_explicit(&e->paused, 1, memory_order_seq_cst);
    quiesce_help(e); /* no reader in flight: apply it here */
    pthread_mutex_lock(&e->pause_lock);
    while (!p->done)
        pthread_cond_wait(&e->drain_cond, &e->pause_lock);
    pthread_mutex_unlock(&e->pause_lock);
}

static void publish_locked(refit_engine *e, wset *s)
{
    uint64_t t0 = now_ns();
    wset *old = swap_current(e, s);
    wait_for_readers(e, old);
    e->stats.last_publish_ns = now_ns() - t0;
    wset_retire(e, old);
}

static void resume(refit_engine *e)
{
    pthread_mutex_lock(&e->pause_lock);
    atomic_store_explicit(&e->paused, 0, memory_order_seq_cst);
    pthread_cond_broadcast(&e->pause_cond);
    pthread_mutex_unlock(&e->pause_lock);
}

/* "refit to version N failed (why); version M still serves, unchanged" around the failure in
 * tl_error. */
static refit_status failed_unchanged(refit_engine *e, refit_status st, const wset *s)
{
    char why[sizeof tl_error];
    memcpy(why, tl_error, sizeof why);
    return fail(st, "refit to version %llu failed (%s); version %llu still serves, unchanged",
                (unsigned long long)s->version, why,
                (unsigned long long)atomic_load(&e->current)->version);
}

/* quiesce with weights_commit, before the pause: prepares s as a second handle on top of the
 * live instance (its transforms: BN folding, packing, Winograd) and verifies it with the canary,
 * while inferences go on with the live one. Leaves e->mask = what differs. */
static refit_status quiesce_stage(refit_engine *e, const inst *in, const wset *s, int check_finite,
                                  void **staged)
{
    const unsigned char *mask = fill_mask(e, in->blobs, 0, s);
    uint64_t t0 = now_ns();
    int rc = e->backend->weights_prepare(e->plan, s->data, in->prepared, mask, staged, tl_error,
                                         sizeof tl_error);
    e->stats.last_prepare_ns = now_ns() - t0;
    if (rc) {
        *staged = NULL;
        return backend_failed(e, rc, "weights_prepare");
    }
    refit_status st = canary_check(e, *staged, check_finite);
    if (st) {
        e->backend->weights_release(e->plan, *staged);
        *staged = NULL;
    }
    return st;
}

/* quiesce: stop admitting inferences, drain those in flight, refit the one instance in place,
 * verify, publish, resume. With weights_commit the transforms and the canary run before the
 * pause (on a staged handle) and the pause holds only the copy and its read-back, applied by the
 * drain's last reader (quiesce_apply); a failure before the pause leaves everything as it was,
 * without a pause. On failure inside the pause the instance is refitted back to the serving set
 * and verified before anything runs again. */
static refit_status quiesce_commit(refit_engine *e, wset *s, int check_finite)
{
    wset *cur = atomic_load(&e->current);
    inst *in = &e->insts[0];
    void *staged = NULL;
    refit_status st = REFIT_OK;
    if (e->backend->weights_commit && !in->stale &&
        (st = quiesce_stage(e, in, s, check_finite, &staged)))
        return failed_unchanged(e, st, s);
    pending p;
    memset(&p, 0, sizeof p);
    p.in = in;
    p.s = s;
    p.staged = staged;
    uint64_t t0 = now_ns();
    quiesce_pause(e, &p);
    e->stats.last_drain_ns = p.drained_ns - t0;
    if (staged) {
        st = p.st;
        e->stats.last_inplace_ns = p.inplace_ns;
        e->stats.last_verify_ns = p.verify_ns;
        in->stale = st != REFIT_OK;
        if (st)
            memcpy(tl_error, p.err, sizeof tl_error);
    } else {
        st = inst_refit(e, in, s, check_finite);
    }
    uint64_t reopened = p.reopened_ns;
    if (st) {
        char why[sizeof tl_error];
        memcpy(why, tl_error, sizeof why);
        refit_status back = inst_refit(e, in, cur, 0); /* in is stale: rewrites every weight */
        atomic_store(&e->broken, back != REFIT_OK);
        if (back)
            st = fail(st, "refit to version %llu failed in place (%s), and restoring version %llu "
                      "failed too: the engine serves nothing until a refit succeeds",
                      (unsigned long long)s->version, why, (unsigned long long)cur->version);
        else
            st = fail(st, "refit to version %llu failed in place (%s); version %llu restored and "
                      "verified", (unsigned long long)s->version, why, (unsigned long long)cur->version);
    } else if (staged) { /* quiesce_apply published s and reopened the gate */
        inst_take(e, in, s);
        wait_for_readers(e, cur); /* none: it drained before s was published */
        wset_retire(e, cur);
    } else {
        s->prepared = in->prepared;
        s->owns_prepared = 0;
        atomic_store(&e->broken, 0);
        publish_locked(e, s); /* no reader holds cur: the gate is closed and they drained */
    }
    if (st || !staged) {
        /* The pause ends as the gate reopens: measured before the wake-up, which may hand this
         * CPU to the woken reader for a whole inference before this thread runs on. */
        reopened = now_ns();
        resume(e);
    }
    uint64_t pause = reopened - t0;
    e->stats.last_pause_ns = pause;
    if (pause > e->stats.max_pause_ns)
        e->stats.max_pause_ns = pause;
    if (staged) /* after the pause: freeing is no part of it */
        e->backend->weights_release(e->plan, staged);
    return st;
}

/* ab, first half: refit and verify the idle instance to s. The serving one is untouched. */
static refit_status ab_stage(refit_engine *e, wset *s, int check_finite)
{
    inst *idle = &e->insts[!e->live];
    refit_status st = inst_refit(e, idle, s, check_finite);
    if (!st) {
        s->prepared = idle->prepared;
        s->owns_prepared = 0;
    }
    return st;
}

/* ab, second half: flip the pointer workers use to s (on the idle instance), wait out the readers
 * of the old one, then bring that one up to date too (if that fails it is stale and the next
 * refit rewrites it whole; the published set is unaffected). No canary there: the instance
 * serves again only after the next refit's ab_stage has verified it, and a second inference per
 * refit on the refitting thread is CPU taken from the workers (bench/engine.py, latency). */
static void ab_flip(refit_engine *e, wset *s)
{
    publish_locked(e, s);
    e->live = !e->live;
    char keep[sizeof tl_error];
    memcpy(keep, tl_error, sizeof keep);
    (void)inst_write(e, &e->insts[!e->live], s);
    memcpy(tl_error, keep, sizeof keep);
}

/* Makes s (built on the current set) serve, per the strategy. On failure s is freed and the
 * serving set is untouched. Caller holds refit_lock. */
static refit_status commit(refit_engine *e, wset *s, int check_finite)
{
    refit_status st = REFIT_OK;
    switch (e->strategy) {
    case STRAT_SWAP:
        st = prepare_set(e, s, atomic_load(&e->current));
        if (!st)
            publish_locked(e, s);
        break;
    case STRAT_QUIESCE:
        st = quiesce_commit(e, s, check_finite);
        break;
    default:
        if (e->ab_staged)
            st = fail(REFIT_ERR_CONFLICT, "refit: strategy ab: the idle instance holds staged "
                      "version %llu; publish or destroy it first",
                      (unsigned long long)e->ab_staged->set->version);
        else if (!(st = ab_stage(e, s, check_finite)))
            ab_flip(e, s);
    }
    if (st && st != REFIT_ERR_CONFLICT && e->strategy != STRAT_QUIESCE) /* quiesce says more */
        failed_unchanged(e, st, s);
    if (st) {
        wset_retire(e, s);
        e->stats.failed_refits++;
    } else {
        e->stats.refits++;
    }
    return st;
}

static int check_finite_for(const refit_engine *e, uint32_t flags)
{
    return !(flags & REFIT_ALLOW_NONFINITE) && !e->allow_nonfinite;
}

refit_status refit_engine_refit(refit_engine *e, const refit_tensor *tensors, size_t count,
                                uint64_t version, uint32_t flags)
{
    clear_error();
    if (!e)
        return fail(REFIT_ERR_INVALID_ARG, "refit: engine must not be NULL");
    pthread_mutex_lock(&e->refit_lock);
    wset *s = NULL;
    refit_status st = build_set(e, atomic_load(&e->current), tensors, count, version, flags, &s);
    if (st)
        e->stats.failed_refits++;
    else
        st = commit(e, s, check_finite_for(e, flags));
    pthread_mutex_unlock(&e->refit_lock);
    return st;
}

/* A staged set's backend form, per strategy: its own handle (swap; quiesce where the backend
 * keeps separate sets, for shadow runs), or the ab idle instance. Caller holds refit_lock. */
static refit_status stage_prepare(refit_engine *e, refit_staged *h, const wset *base, int check_finite)
{
    switch (e->strategy) {
    case STRAT_SWAP:
        return prepare_set(e, h->set, base);
    case STRAT_QUIESCE:
        return (e->backend->caps & RT_CAP_SETS) ? prepare_set(e, h->set, base) : REFIT_OK;
    default:
        if (e->ab_staged)
            return fail(REFIT_ERR_CONFLICT, "stage: strategy ab: the idle instance holds staged "
                        "version %llu; publish or destroy it first",
                        (unsigned long long)e->ab_staged->set->version);
        refit_status st = ab_stage(e, h->set, check_finite);
        if (!st)
            e->ab_staged = h;
        return st;
    }
}

refit_status refit_engine_stage(refit_engine *e, const refit_tensor *tensors, size_t count,
                                uint64_t version, uint32_t flags, refit_staged **out)
{
    clear_error();
    if (!e || !out)
        return fail(REFIT_ERR_INVALID_ARG, "stage: engine and out must not be NULL");
    *out = NULL;
    refit_staged *h = calloc(1, sizeof *h);
    if (!h)
        return fail(REFIT_ERR_NOMEM, "out of memory staging a refit");
    pthread_mutex_lock(&e->refit_lock);
    wset *base = atomic_load(&e->current);
    refit_status st = build_set(e, base, tensors, count, version, flags, &h->set);
    h->base_generation = base->generation;
    h->base_version = base->version;
    h->check_finite = check_finite_for(e, flags);
    if (!st && (st = stage_prepare(e, h, base, h->check_finite))) {
        wset_retire(e, h->set);
        h->set = NULL;
    }
    pthread_mutex_unlock(&e->refit_lock);
    if (st) {
        free(h);
        return st;
    }
    engine_ref(e);
    h->engine = e;
    *out = h;
    return REFIT_OK;
}

refit_status refit_engine_publish(refit_engine *e, refit_staged *h)
{
    clear_error();
    if (!e || !h || h->engine != e)
        return fail(REFIT_ERR_INVALID_ARG, "publish: staged set does not belong to this engine");
    pthread_mutex_lock(&e->refit_lock);
    wset *cur = atomic_load(&e->current);
    refit_status st = REFIT_OK;
    if (!h->set) {
        st = fail(REFIT_ERR_INVALID_ARG, "publish: this staged set was already published");
    } else if (cur->generation != h->base_generation) {
        st = fail(REFIT_ERR_CONFLICT, "publish: version %llu was staged on version %llu's weights, "
                  "but version %llu has been published since", (unsigned long long)h->set->version,
                  (unsigned long long)h->base_version, (unsigned long long)cur->version);
    } else if (e->strategy == STRAT_SWAP) {
        publish_locked(e, h->set);
    } else if (e->strategy == STRAT_AB) {
        e->ab_staged = NULL;
        ab_flip(e, h->set);
    } else {
        if (h->set->prepared && h->set->owns_prepared) /* the shadow handle: done with it */
            e->backend->weights_release(e->plan, h->set->prepared);
        h->set->prepared = NULL;
        st = quiesce_commit(e, h->set, h->check_finite);
    }
    if (h->set && !st) {
        h->set = NULL;
        e->stats.refits++;
    } else if (h->set) {
        e->stats.failed_refits++;
    }
    pthread_mutex_unlock(&e->refit_lock);
    return st;
}

uint64_t refit_staged_version(const refit_staged *h) { return h && h->set ? h->set->version : 0; }

void refit_staged_destroy(refit_staged *h)
{
    if (!h)
        return;
    refit_engine *e = h->engine;
    pthread_mutex_lock(&e->refit_lock);
    if (e->ab_staged == h)
        e->ab_staged = NULL; /* the idle instance keeps the staged weights: they are tracked */
    wset_retire(e, h->set);
    pthread_mutex_unlock(&e->refit_lock);
    free(h);
    engine_unref(e);
}

refit_status refit_engine_read_weight(refit_engine *e, const char *name, void *dst, size_t nbytes,
                                      uint64_t *version)
{
    clear_error();
    if (!e || !name || !dst)
        return fail(REFIT_ERR_INVALID_ARG, "read_weight: engine, name and dst must not be NULL");
    int k = find_weight(e, name);
    if (k < 0)
        return fail(REFIT_ERR_NOT_FOUND, "weight '%s': not a refittable weight of this model", name);
    const refit_tensor_info *w = &e->info[REFIT_KIND_WEIGHT][k];
    if (nbytes != w->nbytes)
        return fail(REFIT_ERR_SIZE, "weight '%s': buffer of %zu bytes, the weight has %zu", name,
                    nbytes, w->nbytes);
    /* Holding refit_lock keeps `current` alive: only refit/publish replace it. */
    pthread_mutex_lock(&e->refit_lock);
    const wset *s = atomic_load(&e->current);
    memcpy(dst, s->data[k], nbytes);
    if (version)
        *version = s->version;
    pthread_mutex_unlock(&e->refit_lock);
    return REFIT_OK;
}

refit_status refit_engine_get_stats(refit_engine *e, refit_engine_stats *out)
{
    clear_error();
    if (!e || !out)
        return fail(REFIT_ERR_INVALID_ARG, "get_stats: engine and out must not be NULL");
    pthread_mutex_lock(&e->refit_lock);
    *out = e->stats;
    pthread_mutex_unlock(&e->refit_lock);
    return REFIT_OK;
}

/* ---- contexts and inference ---------------------------------------------------------------- */

refit_status refit_context_create(refit_engine *e, refit_context **out)
{
    clear_error();
    if (!e || !out)
        return fail(REFIT_ERR_INVALID_ARG, "context_create: engine and out must not be NULL");
    *out = NULL;
    refit_context *c = calloc(1, sizeof *c);
    if (!c)
        return fail(REFIT_ERR_NOMEM, "out of memory creating a context");
    c->engine = e;
    atomic_init(&c->hazard, NULL);
    c->in_ptrs = calloc(e->count[REFIT_KIND_INPUT] + 1, sizeof *c->in_ptrs);
    c->out_ptrs = calloc(e->count[REFIT_KIND_OUTPUT] + 1, sizeof *c->out_ptrs);
    int rc = !c->in_ptrs || !c->out_ptrs ? REFIT_ERR_NOMEM
                                          : e->backend->ctx_create(e->plan, &c->bctx, tl_error, sizeof tl_error);
    if (rc) {
        free(c->in_ptrs);
        free(c->out_ptrs);
        free(c);
        return rc == REFIT_ERR_NOMEM && !tl_error[0] ? fail(REFIT_ERR_NOMEM, "out of memory creating a context")
                                                     : (refit_status)rc;
    }
    engine_ref(e);
    pthread_mutex_lock(&e->ctx_lock);
    c->next = e->contexts;
    e->contexts = c;
    pthread_mutex_unlock(&e->ctx_lock);
    *out = c;
    return REFIT_OK;
}

void refit_context_destroy(refit_context *c)
{
    if (!c)
        return;
    refit_engine *e = c->engine;
    pthread_mutex_lock(&e->ctx_lock);
    for (refit_context **p = &e->contexts; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&e->ctx_lock);
    e->backend->ctx_destroy(c->bctx);
    free(c->in_ptrs);
    free(c->out_ptrs);
    free(c);
    engine_unref(e);
}

static refit_status check_buffers(const refit_engine *e, const void *const *inputs,
                                  const size_t *in_nbytes, size_t n_in, void *const *outputs,
                                  const size_t *out_nbytes, size_t n_out)
{
    if (n_in != e->count[REFIT_KIND_INPUT] || n_out != e->count[REFIT_KIND_OUTPUT])
        return fail(REFIT_ERR_INVALID_ARG, "run: the model has %zu inputs and %zu outputs, got %zu and %zu",
                    e->count[REFIT_KIND_INPUT], e->count[REFIT_KIND_OUTPUT], n_in, n_out);
    if ((n_in && (!inputs || !in_nbytes)) || (n_out && (!outputs || !out_nbytes)))
        return fail(REFIT_ERR_INVALID_ARG, "run: buffer arrays must not be NULL");
    for (size_t i = 0; i < n_in; i++) {
        const refit_tensor_info *t = &e->info[REFIT_KIND_INPUT][i];
        if (!inputs[i] || in_nbytes[i] != t->nbytes)
            return fail(REFIT_ERR_SIZE, "input '%s': %zu bytes given, needs %zu", t->name,
                        inputs[i] ? in_nbytes[i] : 0, t->nbytes);
    }
    for (size_t j = 0; j < n_out; j++) {
        const refit_tensor_info *t = &e->info[REFIT_KIND_OUTPUT][j];
        if (!outputs[j] || out_nbytes[j] != t->nbytes)
            return fail(REFIT_ERR_SIZE, "output '%s': %zu bytes given, needs %zu", t->name,
                        outputs[j] ? out_nbytes[j] : 0, t->nbytes);
    }
    return REFIT_OK;
}

static refit_status run_with(refit_context *c, const wset *s, const void *const *inputs,
                             size_t n_in, void *const *outputs, size_t n_out)
{
    refit_engine *e = c->engine;
    for (size_t i = 0; i < n_in; i++)
        c->in_ptrs[i] = inputs[i];
    for (size_t j = 0; j < n_out; j++)
        c->out_ptrs[j] = outputs[j];
    int rc = e->backend->run(e->plan, c->bctx, s->prepared, c->in_ptrs, c->out_ptrs, tl_error,
                             sizeof tl_error);
    return rc ? backend_failed(e, rc, "run") : REFIT_OK;
}

/* quiesce: wait while a refit holds the gate closed. Once the drain is over a staged commit
 * keeps it closed for microseconds, so a reader spins for up to READER_SPIN_NS first without
 * giving up its CPU (a futex wake-up costs more than the commit; a sched_yield on a loaded box
 * can hand the CPU to another process for milliseconds); then it sleeps on a condition
 * variable, which the writer broadcasts when it reopens. */
static void wait_unpaused(refit_engine *e)
{
    const uint64_t until = now_ns() + READER_SPIN_NS;
    while (atomic_load_explicit(&e->paused, memory_order_seq_cst) && now_ns() < until)
        for (int i = 0; i < 64; i++)
            cpu_relax();
    pthread_mutex_lock(&e->pause_lock);
    while (atomic_load_explicit(&e->paused, memory_order_seq_cst))
        pthread_cond_wait(&e->pause_cond, &e->pause_lock);
    pthread_mutex_unlock(&e->pause_lock);
}

refit_status refit_context_run(refit_context *c, const void *const *inputs, const size_t *in_nbytes,
                               size_t n_in, void *const *outputs, const size_t *out_nbytes,
                               size_t n_out, uint64_t *version)
{
    clear_error();
    if (!c)
        return fail(REFIT_ERR_INVALID_ARG, "run: context must not be NULL");
    refit_engine *e = c->engine;
    refit_status st = check_buffers(e, inputs, in_nbytes, n_in, outputs, out_nbytes, n_out);
    if (st)
        return st;
    /* Acquire: announce the set, then confirm it is still current and (quiesce) the gate still
     * open (see the header comment and docs/engine.md). */
    const int gated = e->strategy == STRAT_QUIESCE;
    wset *s;
    for (;;) {
        if (gated) { /* pass the gate: count in, then re-check it (quiesce_help's Dekker pair) */
            if (atomic_load_explicit(&e->paused, memory_order_seq_cst)) {
                wait_unpaused(e);
                continue;
            }
            atomic_fetch_add_explicit(&e->active, 1, memory_order_seq_cst);
            if (atomic_load_explicit(&e->paused, memory_order_seq_cst)) {
                gate_leave(e);
                continue;
            }
        }
        s = atomic_load_explicit(&e->current, memory_order_seq_cst);
        atomic_store_explicit(&c->hazard, s, memory_order_seq_cst);
        if (atomic_load_explicit(&e->current, memory_order_seq_cst) == s)
            break;
        atomic_store_explicit(&c->hazard, NULL, memory_order_seq_cst);
        if (gated)
            gate_leave(e);
    }
    if (gated && atomic_load_explicit(&e->broken, memory_order_relaxed))
        st = fail(REFIT_ERR_BACKEND, "run: the last in-place refit failed and the serving weights "
                  "could not be restored; refit again");
    else
        st = run_with(c, s, inputs, n_in, outputs, n_out);
    if (version)
        *version = s->version;
    atomic_store_explicit(&c->hazard, NULL, memory_order_seq_cst);
    if (gated)
        gate_leave(e); /* the drain's last reader applies the pending commit */
    return st;
}

refit_status refit_context_run_staged(refit_context *c, const refit_staged *h, const void *const *inputs,
                                      const size_t *in_nbytes, size_t n_in, void *const *outputs,
                                      const size_t *out_nbytes, size_t n_out)
{
    clear_error();
    if (!c || !h || h->engine != c->engine)
        return fail(REFIT_ERR_INVALID_ARG, "run_staged: staged set does not belong to this context's engine");
    if (!h->set)
        return fail(REFIT_ERR_INVALID_ARG, "run_staged: the staged set was already published");
    if (!h->set->prepared)
        return fail(REFIT_ERR_UNSUPPORTED, "run_staged: strategy quiesce on backend '%s': a staged "
                    "set cannot run before it is published (the backend keeps one weight set)",
                    c->engine->backend->name);
    refit_status st = check_buffers(c->engine, inputs, in_nbytes, n_in, outputs, out_nbytes, n_out);
    if (st)
        return st;
    /* The staged set is owned by `h`, not shared with writers: no hazard needed. */
    return run_with(c, h->set, inputs, n_in, outputs, n_out);
}
