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

const char *refit_backend_name(size_t index)
{
    const rt_backend *b = rt_backend_get(index);
    return b ? b->name : NULL;
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
    const float **data; /* blobs[k]->data, the array a backend's run() receives */
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

static void wset_free(wset *s)
{
    if (!s)
        return;
    for (size_t k = 0; k < s->n; k++)
        blob_release(s->blobs[k]);
    free(s->blobs);
    free(s->data);
    free(s);
}

/* ---- engine and contexts ------------------------------------------------------------------- */

struct refit_context {
    refit_engine *engine;
    void *bctx;
    _Atomic(wset *) hazard; /* the set this context is computing with, or NULL */
    refit_context *next;
    const float **in_ptrs;  /* scratch arrays for the backend call */
    float **out_ptrs;
};

struct refit_staged {
    refit_engine *engine;
    wset *set;              /* owned until published */
    uint64_t base_generation;
    uint64_t base_version;  /* for the conflict message */
};

struct refit_engine {
    const rt_backend *backend;
    rt_graph *graph;
    void *plan;
    refit_tensor_info *info[3]; /* by refit_tensor_kind */
    size_t count[3];
    int allow_nonfinite;
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

static refit_status parse_options(const char *const *keys, const char *const *values, size_t n,
                                  rt_load_options *lo, int *allow_nonfinite, uint64_t *version,
                                  int *spare)
{
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
            *allow_nonfinite = v[0] == '1';
        } else if (strcmp(k, "spare_weights") == 0) {
            if (strcmp(v, "0") && strcmp(v, "1"))
                return fail(REFIT_ERR_INVALID_ARG, "option spare_weights: must be 0 or 1, got '%s'", v);
            *spare = v[0] == '1';
        } else if (strcmp(k, "initial_version") == 0) {
            if (parse_u64(v, version))
                return fail(REFIT_ERR_INVALID_ARG,
                            "option initial_version: must be a non-negative integer, got '%s'", v);
        } else if (strncmp(k, "backend.", 8) != 0) { /* backend.*: set_backend_options */
            return fail(REFIT_ERR_INVALID_ARG,
                        "unknown option '%s' (known: refittable, input_shape, allow_nonfinite, "
                        "initial_version, spare_weights, backend.*)", k);
        }
    }
    return REFIT_OK;
}

/* Hands every "backend.<key>" option to the backend's set_option (parse_options let them by). */
static refit_status set_backend_options(const rt_backend *be, void *plan, const char *const *keys,
                                        const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strncmp(keys[i], "backend.", 8) != 0)
            continue;
        if (!be->set_option)
            return fail(REFIT_ERR_INVALID_ARG, "option '%s': backend '%s' takes no options", keys[i],
                        be->name);
        int rc = be->set_option(plan, keys[i] + 8, values[i], tl_error, sizeof tl_error);
        if (rc)
            return (refit_status)rc;
    }
    return REFIT_OK;
}

void refit_engine_destroy(refit_engine *e)
{
    if (!e)
        return;
    wset_free(atomic_load(&e->current));
    if (e->plan)
        e->backend->plan_destroy(e->plan);
    rt_graph_destroy(e->graph);
    for (int k = 0; k < 3; k++)
        free(e->info[k]);
    free(e->name_table);
    if (e->spare)
        for (size_t k = 0; k < e->count[REFIT_KIND_WEIGHT]; k++)
            if (e->spare[k])
                blob_destroy(e->spare[k]); /* spares hold no references */
    free(e->spare);
    pthread_mutex_destroy(&e->refit_lock);
    pthread_mutex_destroy(&e->ctx_lock);
    free(e);
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
    const rt_backend *be = rt_backend_find(backend ? backend : "reference");
    if (!be)
        return fail(REFIT_ERR_NOT_FOUND, "unknown backend '%s'", backend);
    if (be->api_version != RT_BACKEND_API_VERSION)
        return fail(REFIT_ERR_UNSUPPORTED, "backend '%s' implements backend API %d, this library needs %d",
                    be->name, be->api_version, RT_BACKEND_API_VERSION);

    rt_load_options lo = {0};
    int allow_nonfinite = 0, spare = 1;
    uint64_t version = 0;
    refit_status st = parse_options(keys, values, num_options, &lo, &allow_nonfinite, &version, &spare);
    if (st)
        return st;

    refit_engine *e = calloc(1, sizeof *e);
    if (!e)
        return fail(REFIT_ERR_NOMEM, "out of memory opening the engine");
    pthread_mutex_init(&e->refit_lock, NULL);
    pthread_mutex_init(&e->ctx_lock, NULL);
    e->backend = be;
    e->allow_nonfinite = allow_nonfinite;

    int rc = rt_graph_from_onnx(data, size, &lo, &e->graph, tl_error, sizeof tl_error);
    if (rc) {
        refit_engine_destroy(e);
        return (refit_status)rc;
    }
    rt_graph *g = e->graph;
    if (fill_info(e, REFIT_KIND_INPUT, g->inputs, g->n_inputs) ||
        fill_info(e, REFIT_KIND_OUTPUT, g->outputs, g->n_outputs) ||
        fill_info(e, REFIT_KIND_WEIGHT, g->weights, g->n_weights) || build_name_table(e) ||
        (spare && !(e->spare = calloc((size_t)g->n_weights + 1, sizeof *e->spare)))) {
        refit_engine_destroy(e);
        return fail(REFIT_ERR_NOMEM, "out of memory opening the engine");
    }
    rc = be->plan_create(g, &e->plan, tl_error, sizeof tl_error);
    if (rc) {
        e->plan = NULL;
        refit_engine_destroy(e);
        return (refit_status)rc;
    }
    st = set_backend_options(be, e->plan, keys, values, num_options);
    if (st) {
        refit_engine_destroy(e);
        return st;
    }

    /* The first weight set: the model file's own initial values. */
    wset *s = wset_alloc((size_t)g->n_weights);
    if (!s) {
        refit_engine_destroy(e);
        return fail(REFIT_ERR_NOMEM, "out of memory for the initial weights");
    }
    for (int k = 0; k < g->n_weights; k++) {
        size_t nbytes = e->info[REFIT_KIND_WEIGHT][k].nbytes;
        blob *b = blob_new(nbytes);
        if (!b) {
            wset_free(s);
            refit_engine_destroy(e);
            return fail(REFIT_ERR_NOMEM, "out of memory for the initial weights");
        }
        memcpy(b->data, g->weight_init[k], nbytes);
        free(g->weight_init[k]); /* the set owns the weights now: don't hold them twice */
        g->weight_init[k] = NULL;
        s->blobs[k] = b;
        s->data[k] = b->data;
    }
    s->version = version;
    s->generation = e->next_generation++;
    atomic_init(&e->current, s);
    atomic_init(&e->version, version);
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

/* Frees a set that no reader uses any more; a blob it held last becomes its weight's spare
 * (if that slot is free) instead of going back to the allocator. Caller holds refit_lock. */
static void wset_retire(refit_engine *e, wset *s)
{
    for (size_t k = 0; k < s->n; k++) {
        blob *b = s->blobs[k];
        if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
            continue; /* still shared with the new set */
        if (e->spare && !e->spare[k])
            e->spare[k] = b; /* weight k's next refit writes here */
        else
            blob_destroy(b);
    }
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
        wset_free(s); /* only the blobs created so far are set; shared ones not yet taken */
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

/* Publishes `s` (caller holds refit_lock) and frees the set it replaces. */
static void publish_locked(refit_engine *e, wset *s)
{
    s->generation = e->next_generation++;
    wset *old = atomic_exchange_explicit(&e->current, s, memory_order_seq_cst);
    atomic_store_explicit(&e->version, s->version, memory_order_release);
    wait_for_readers(e, old);
    wset_retire(e, old);
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
    if (!st)
        publish_locked(e, s);
    pthread_mutex_unlock(&e->refit_lock);
    return st;
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
    pthread_mutex_unlock(&e->refit_lock);
    if (st) {
        free(h);
        return st;
    }
    h->engine = e;
    *out = h;
    return REFIT_OK;
}

refit_status refit_engine_publish(refit_engine *e, refit_staged *h)
{
    clear_error();
    if (!e || !h || h->engine != e)
        return fail(REFIT_ERR_INVALID_ARG, "publish: staged set does not belong to this engine");
    if (!h->set)
        return fail(REFIT_ERR_INVALID_ARG, "publish: this staged set was already published");
    pthread_mutex_lock(&e->refit_lock);
    wset *cur = atomic_load(&e->current);
    refit_status st = REFIT_OK;
    if (cur->generation != h->base_generation) {
        st = fail(REFIT_ERR_CONFLICT, "publish: version %llu was staged on version %llu's weights, "
                  "but version %llu has been published since", (unsigned long long)h->set->version,
                  (unsigned long long)h->base_version, (unsigned long long)cur->version);
    } else {
        publish_locked(e, h->set);
        h->set = NULL;
    }
    pthread_mutex_unlock(&e->refit_lock);
    return st;
}

uint64_t refit_staged_version(const refit_staged *h) { return h && h->set ? h->set->version : 0; }

void refit_staged_destroy(refit_staged *h)
{
    if (!h)
        return;
    wset_free(h->set);
    free(h);
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
    int rc = e->backend->run(e->plan, c->bctx, s->data, c->in_ptrs, c->out_ptrs, tl_error, sizeof tl_error);
    if (rc && !tl_error[0])
        return fail((refit_status)rc, "backend '%s' failed with %s", e->backend->name,
                    refit_status_string((refit_status)rc));
    return (refit_status)rc;
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
    /* Acquire: announce the set, then confirm it is still current (see the header comment). */
    wset *s;
    for (;;) {
        s = atomic_load_explicit(&e->current, memory_order_seq_cst);
        atomic_store_explicit(&c->hazard, s, memory_order_seq_cst);
        if (atomic_load_explicit(&e->current, memory_order_seq_cst) == s)
            break;
    }
    st = run_with(c, s, inputs, n_in, outputs, n_out);
    if (version)
        *version = s->version;
    atomic_store_explicit(&c->hazard, NULL, memory_order_seq_cst);
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
    refit_status st = check_buffers(c->engine, inputs, in_nbytes, n_in, outputs, out_nbytes, n_out);
    if (st)
        return st;
    /* The staged set is owned by `h`, not shared with writers: no hazard needed. */
    return run_with(c, h->set, inputs, n_in, outputs, n_out);
}
