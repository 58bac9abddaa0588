/*
 * onnx.c — ONNX model bytes -> resolved rt_graph (see graph.h for the contract).
 *
 * Two phases:
 *   1. parse: the protobuf messages (ModelProto, GraphProto, NodeProto, AttributeProto,
 *      TensorProto, ValueInfoProto) are read with pb.c into small structs allocated in an arena.
 *      Tensor payloads are only validated here (count vs shape), and decoded later, once, into the
 *      buffer that ends up owned by the graph.
 *   2. build: nodes are topologically sorted, then resolved one by one in that order: Constant
 *      nodes and every node whose inputs are all CONST are evaluated at load ("folding"; Shape is
 *      folded whatever its input, since all shapes are static), Identity/Dropout are rewired, and
 *      every other supported op becomes an rt_node with its output shape inferred and its
 *      attributes resolved to defaults. Finally nodes not needed for any graph output are dropped
 *      and the value table is compacted.
 *
 * Refittable weights are never folded or renamed: a node that reads a WEIGHT is never evaluated
 * at load (only Shape of it is, which does not depend on its data).
 */
#include "graph.h"
#include "pb.h"
#include "refit.h"
#include "util.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "onnx.c assumes a little-endian host (raw_data is little-endian)"
#endif

/* Upper bounds that keep a corrupt model from asking for absurd allocations. */
#define MAX_NUMEL ((int64_t)1 << 40)       /* elements of any value's shape */
#define MAX_FOLD_NUMEL ((int64_t)1 << 26)  /* elements of a tensor computed at load */

/* ============================================================================================
 * arena (parse-phase memory, freed in one go)
 * ========================================================================================== */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t mem[];
} arena_blk;

static void *arena_alloc(arena_blk **head, size_t size)
{
    size_t a = sizeof(max_align_t);
    size = (size + a - 1) / a * a;
    if (size == 0)
        size = a;
    arena_blk *b = *head;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > 65536 ? size : 65536;
        b = calloc(1, sizeof(arena_blk) + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->next = *head;
        *head = b;
    }
    void *p = (unsigned char *)b->mem + b->used;
    b->used += size;
    return p;
}

static void arena_free(arena_blk *b)
{
    while (b) {
        arena_blk *n = b->next;
        free(b);
        b = n;
    }
}

/* ============================================================================================
 * parsed ONNX structures
 * ========================================================================================== */

/* ONNX TensorProto.DataType codes beyond those in graph.h. */
enum { OX_U16 = 4, OX_I16 = 5, OX_STRING = 8, OX_BOOL = 9, OX_U32 = 12, OX_U64 = 13, OX_BF16 = 16 };

typedef struct ox_tensor {
    const char *name;
    int dtype;
    int ndim;
    int64_t dims[RT_MAX_DIMS];
    size_t numel;
    const uint8_t *msg; /* the TensorProto bytes, re-read when decoding typed fields */
    size_t msglen;
    int has_raw;
    const uint8_t *raw;
    size_t rawlen;
} ox_tensor;

enum { AT_UNDEF = 0, AT_FLOAT = 1, AT_INT = 2, AT_STRING = 3, AT_TENSOR = 4, AT_GRAPH = 5,
       AT_FLOATS = 6, AT_INTS = 7 };

typedef struct ox_attr {
    const char *name;
    int type;
    float f;
    int64_t i;
    const char *s;
    ox_tensor *t;
    float *floats;
    size_t nfloats;
    int64_t *ints;
    size_t nints;
} ox_attr;

typedef struct ox_node {
    const char *name; /* as displayed: ONNX name or "<op_type>#<index>" */
    const char *op;
    const char *domain;
    const char **in;
    int n_in;
    const char **out;
    int n_out;
    ox_attr *attrs;
    int n_attrs;
} ox_node;

typedef struct ox_vi {
    const char *name;
    int elem_type;  /* 0 if unknown */
    int is_tensor;  /* TypeProto is a tensor_type (or absent) */
    int has_shape;
    int ndim;
    int64_t dims[RT_MAX_DIMS]; /* -1: symbolic or missing */
} ox_vi;

typedef struct ox_graph {
    ox_node *nodes;
    int n_nodes;
    ox_tensor *inits;
    int n_inits;
    ox_vi *inputs;
    int n_inputs;
    ox_vi *outputs;
    int n_outputs;
} ox_graph;

/* ============================================================================================
 * string -> int map (open addressing)
 * ========================================================================================== */

typedef struct strmap {
    const char **keys;
    int *vals;
    size_t cap, n;
} strmap;

static int strmap_get(const strmap *m, const char *key)
{
    if (!m->cap)
        return -1;
    size_t mask = m->cap - 1;
    for (size_t i = rt_hash_str(key) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i])
            return -1;
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    }
}

/* Inserts or overwrites; the key string must outlive the map. Returns 0 or -1 (no memory). */
static int strmap_put(strmap *m, const char *key, int val)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        const char **nk = calloc(ncap, sizeof *nk);
        int *nv = calloc(ncap, sizeof *nv);
        if (!nk || !nv) {
            free(nk);
            free(nv);
            return -1;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = rt_hash_str(m->keys[i]) & (ncap - 1);
            while (nk[j])
                j = (j + 1) & (ncap - 1);
            nk[j] = m->keys[i];
            nv[j] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = nk;
        m->vals = nv;
        m->cap = ncap;
    }
    size_t mask = m->cap - 1;
    size_t i = rt_hash_str(key) & mask;
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & mask;
    if (!m->keys[i]) {
        m->keys[i] = key;
        m->n++;
    }
    m->vals[i] = val;
    return 0;
}

static void strmap_free(strmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ============================================================================================
 * loader state and errors
 * ========================================================================================== */

typedef struct loader {
    char *err;
    size_t errlen;
    arena_blk *arena;
    int64_t opset;
    int64_t ir_version;
    ox_graph g;

    /* refittable set (NULL: every float initializer) */
    int explicit_refit;
    strmap refit_set;   /* name -> 0 (unmatched) / 1 (matched) */
    const char **refit_names;
    int n_refit_names;
    /* input_shape option */
    strmap shape_opt;   /* name -> index into shape_opt_v */
    rt_shape *shape_opt_v;
    int *shape_opt_used;
    int n_shape_opt;

    /* build */
    rt_value *vals;
    float **winit; /* parallel to vals: initial data of WEIGHT values */
    int n_vals, cap_vals;
    int n_weights;
    int n_inputs;
    rt_node *nodes;
    int n_nodes, cap_nodes;
    strmap names;       /* value name -> value index */
    strmap dropped;     /* secondary node outputs we do not produce -> node index */
    strmap graph_outs;  /* graph output names */
    /* Transpose (2-D, perm [1, 0]) of a value that is not a constant, typically a weight: the
     * dynamo exporter writes nn.Linear as MatMul(x, Transpose(weight)). No value is made; the
     * name maps to the source, and MatMul/Gemm read it as a transposed operand. */
    strmap tviews;      /* Transpose output name -> source value index */
    int cur_tr[2];      /* node being built: input 0 / 1 is a transposed view */
} loader;

/* Messages are one line: names from the file may hold control characters, shown as '?'. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

static int fail(loader *L, int code, const char *fmt, ...)
{
    if (L->err && L->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err, L->errlen, fmt, ap);
        va_end(ap);
        one_line(L->err);
    }
    return code;
}

static int nfail(loader *L, const ox_node *n, int code, const char *fmt, ...)
{
    if (L->err && L->errlen) {
        int w = snprintf(L->err, L->errlen, "node '%s' (%s): ", n->name, n->op);
        if (w >= 0 && (size_t)w < L->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(L->err + w, L->errlen - (size_t)w, fmt, ap);
            va_end(ap);
        }
        one_line(L->err);
    }
    return code;
}

#define NOMEM(L) fail((L), REFIT_ERR_NOMEM, "out of memory while loading the model")
#define BAD_PB(L, what) fail((L), REFIT_ERR_MODEL, "malformed ONNX: truncated or corrupt %s", (what))

static void *aalloc(loader *L, size_t size) { return arena_alloc(&L->arena, size); }

static const char *astr(loader *L, const uint8_t *data, size_t len)
{
    char *s = aalloc(L, len + 1);
    if (!s)
        return NULL;
    if (len)
        memcpy(s, data, len);
    s[len] = 0;
    return s;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* ============================================================================================
 * phase 1: protobuf -> ox_* structs
 * ========================================================================================== */

static size_t ox_elem_size(int dtype)
{
    switch (dtype) {
    case RT_F32: case RT_I32: case OX_U32: return 4;
    case RT_U8: case RT_I8: case OX_BOOL: return 1;
    case OX_U16: case OX_I16: case RT_F16: case OX_BF16: return 2;
    case RT_I64: case RT_F64: case OX_U64: return 8;
    default: return 0;
    }
}

static int is_float_dtype(int dtype)
{
    return dtype == RT_F32 || dtype == RT_F16 || dtype == RT_F64 || dtype == OX_BF16;
}

static const char *ox_dtype_name(int dtype)
{
    switch (dtype) {
    case OX_U16: return "uint16";
    case OX_I16: return "int16";
    case OX_STRING: return "string";
    case OX_BOOL: return "bool";
    case OX_U32: return "uint32";
    case OX_U64: return "uint64";
    case OX_BF16: return "bfloat16";
    default: return rt_dtype_name(dtype);
    }
}

/* Multiplies dims with overflow and sanity checks; -1 if negative or too large. */
static int64_t dims_numel(const int64_t *d, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (d[i] < 0 || d[i] > MAX_NUMEL)
            return -1;
        if (d[i] == 0)
            n = 0;
        else if (n > MAX_NUMEL / d[i])
            return -1;
        else
            n *= d[i];
    }
    return n;
}

static int parse_tensor(loader *L, const uint8_t *data, size_t len, ox_tensor *t)
{
    memset(t, 0, sizeof *t);
    t->msg = data;
    t->msglen = len;
    t->name = "";
    pb_iter it;
    pb_field f;
    int r;
    long ndim = 0, n4 = 0, n5 = 0, n7 = 0, n10 = 0, n11 = 0, nstr = 0;
    int64_t location = 0, dtype = 0;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        long c = 0;
        switch (f.num) {
        case 1: c = pb_count_varints(&f); ndim += c; break;
        case 2: if (f.wire != PB_VARINT) return BAD_PB(L, "TensorProto"); dtype = (int64_t)f.u; break;
        case 4: c = pb_count_fixed32(&f); n4 += c; break;
        case 5: c = pb_count_varints(&f); n5 += c; break;
        case 6: nstr++; break;
        case 7: c = pb_count_varints(&f); n7 += c; break;
        case 8:
            if (f.wire != PB_LEN || !(t->name = astr(L, f.data, f.len)))
                return f.wire != PB_LEN ? BAD_PB(L, "TensorProto") : NOMEM(L);
            break;
        case 9:
            if (f.wire != PB_LEN)
                return BAD_PB(L, "TensorProto");
            t->has_raw = 1;
            t->raw = f.data;
            t->rawlen = f.len;
            break;
        case 10: c = pb_count_fixed64(&f); n10 += c; break;
        case 11: c = pb_count_varints(&f); n11 += c; break;
        case 14: if (f.wire != PB_VARINT) return BAD_PB(L, "TensorProto"); location = (int64_t)f.u; break;
        default: break;
        }
        if (c < 0)
            return BAD_PB(L, "TensorProto");
    }
    if (r < 0)
        return BAD_PB(L, "TensorProto");
    if (location == 1)
        return fail(L, REFIT_ERR_UNSUPPORTED,
                    "tensor '%s': external data (data_location=EXTERNAL) is not supported; save the "
                    "model with its tensors inside the file", t->name);
    if (ndim > RT_MAX_DIMS)
        return fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s' has %ld dims; at most %d are supported",
                    t->name, ndim, RT_MAX_DIMS);
    t->dtype = (int)dtype;
    t->ndim = (int)ndim;
    /* second pass: dims */
    int k = 0;
    pb_iter_init(&it, data, len);
    while (pb_next(&it, &f) == 1) {
        if (f.num == 1) {
            int64_t tmp[RT_MAX_DIMS];
            long c = pb_get_varints(&f, tmp);
            for (long j = 0; j < c && k < RT_MAX_DIMS; j++)
                t->dims[k++] = tmp[j];
        }
    }
    int64_t numel = dims_numel(t->dims, t->ndim);
    if (numel < 0)
        return fail(L, REFIT_ERR_MODEL, "tensor '%s' has an invalid or too large shape", t->name);
    t->numel = (size_t)numel;
    if (dtype == OX_STRING || nstr)
        return fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s': string tensors are not supported", t->name);
    size_t es = ox_elem_size(t->dtype);
    if (es == 0)
        return fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s': data type %d is not supported", t->name,
                    t->dtype);
    size_t have;
    if (t->has_raw) {
        if (t->rawlen != t->numel * es)
            return fail(L, REFIT_ERR_MODEL,
                        "tensor '%s': raw_data holds %zu bytes, its shape and %s need %zu", t->name,
                        t->rawlen, ox_dtype_name(t->dtype), t->numel * es);
        return 0;
    }
    switch (t->dtype) {
    case RT_F32: have = (size_t)n4; break;
    case RT_I64: have = (size_t)n7; break;
    case RT_F64: have = (size_t)n10; break;
    case OX_U32: case OX_U64: have = (size_t)n11; break;
    default: have = (size_t)n5; break;
    }
    if (have != t->numel)
        return fail(L, REFIT_ERR_MODEL, "tensor '%s' holds %zu values but its shape needs %zu",
                    t->name, have, t->numel);
    return 0;
}

static float bits_to_float(uint32_t bits)
{
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

/* double -> float without the undefined behaviour of an out-of-range conversion. */
static float d2f(double d)
{
    if (d > FLT_MAX)
        return INFINITY;
    if (d < -FLT_MAX)
        return -INFINITY;
    return (float)d;
}

/* Element k of a raw little-endian buffer of `dtype`, as double (floats) or int64. */
static double raw_get_d(const uint8_t *p, int dtype, size_t k)
{
    switch (dtype) {
    case RT_F32: return bits_to_float(pb_le32(p + 4 * k));
    case RT_F16: return rt_half_to_float((uint16_t)(p[2 * k] | p[2 * k + 1] << 8));
    case OX_BF16: return bits_to_float(((uint32_t)p[2 * k] | (uint32_t)p[2 * k + 1] << 8) << 16);
    case RT_F64: { uint64_t b = pb_le64(p + 8 * k); double d; memcpy(&d, &b, 8); return d; }
    default: return 0;
    }
}

static int64_t raw_get_i(const uint8_t *p, int dtype, size_t k)
{
    switch (dtype) {
    case RT_U8: return p[k];
    case RT_I8: return (int8_t)p[k];
    case OX_BOOL: return p[k] != 0;
    case OX_U16: return (uint16_t)(p[2 * k] | p[2 * k + 1] << 8);
    case OX_I16: return (int16_t)(uint16_t)(p[2 * k] | p[2 * k + 1] << 8);
    case RT_I32: return (int32_t)pb_le32(p + 4 * k);
    case OX_U32: return (int64_t)pb_le32(p + 4 * k);
    case RT_I64: case OX_U64: return (int64_t)pb_le64(p + 8 * k);
    default: return 0;
    }
}

/* Converts an int32_data entry of `dtype`. */
static int64_t i32field_i(int dtype, int64_t v)
{
    switch (dtype) {
    case RT_U8: return (uint8_t)v;
    case RT_I8: return (int8_t)v;
    case OX_BOOL: return v != 0;
    case OX_U16: return (uint16_t)v;
    case OX_I16: return (int16_t)v;
    default: return (int32_t)v;
    }
}

/* Decodes a validated tensor into a new malloc'd array: float32 for float dtypes, int64 for
 * integer dtypes. */
static int tensor_decode(loader *L, const ox_tensor *t, void **out)
{
    int isf = is_float_dtype(t->dtype);
    size_t n = t->numel;
    void *buf = malloc(n ? n * (isf ? sizeof(float) : sizeof(int64_t)) : 1);
    if (!buf)
        return NOMEM(L);
    float *fo = buf;
    int64_t *io = buf;
    if (t->has_raw && (t->dtype == RT_F32 || t->dtype == RT_I64)) {
        if (n)
            memcpy(buf, t->raw, n * 4 * (size_t)(t->dtype == RT_I64 ? 2 : 1)); /* little-endian host */
        *out = buf;
        return 0;
    }
    if (t->has_raw) {
        for (size_t k = 0; k < n; k++) {
            if (isf)
                fo[k] = d2f(raw_get_d(t->raw, t->dtype, k));
            else
                io[k] = raw_get_i(t->raw, t->dtype, k);
        }
        *out = buf;
        return 0;
    }
    size_t pos = 0;
    pb_iter it;
    pb_field f;
    pb_iter_init(&it, t->msg, t->msglen);
    while (pb_next(&it, &f) == 1) {
        long c;
        if (f.num == 4 && t->dtype == RT_F32) {
            c = pb_count_fixed32(&f);
            if (c < 0 || (size_t)c > n - pos)
                goto bad;
            pb_get_floats(&f, fo + pos);
            pos += (size_t)c;
        } else if (f.num == 10 && t->dtype == RT_F64) {
            c = pb_count_fixed64(&f);
            if (c < 0 || (size_t)c > n - pos)
                goto bad;
            double *tmp = malloc((size_t)c * sizeof *tmp + 1);
            if (!tmp) {
                free(buf);
                return NOMEM(L);
            }
            pb_get_doubles(&f, tmp);
            for (long j = 0; j < c; j++)
                fo[pos++] = d2f(tmp[j]);
            free(tmp);
        } else if ((f.num == 5 && t->dtype != RT_F32 && t->dtype != RT_I64 && t->dtype != RT_F64 &&
                    t->dtype != OX_U32 && t->dtype != OX_U64) ||
                   (f.num == 7 && t->dtype == RT_I64) ||
                   (f.num == 11 && (t->dtype == OX_U32 || t->dtype == OX_U64))) {
            c = pb_count_varints(&f);
            if (c < 0 || (size_t)c > n - pos)
                goto bad;
            int64_t *tmp = malloc((size_t)c * sizeof *tmp + 1);
            if (!tmp) {
                free(buf);
                return NOMEM(L);
            }
            pb_get_varints(&f, tmp);
            for (long j = 0; j < c; j++, pos++) {
                if (t->dtype == RT_F16)
                    fo[pos] = rt_half_to_float((uint16_t)(tmp[j] & 0xffff));
                else if (t->dtype == OX_BF16)
                    fo[pos] = bits_to_float(((uint32_t)tmp[j] & 0xffff) << 16);
                else if (f.num == 5)
                    io[pos] = i32field_i(t->dtype, tmp[j]);
                else
                    io[pos] = tmp[j];
            }
            free(tmp);
        }
    }
    if (pos != n)
        goto bad;
    *out = buf;
    return 0;
bad:
    free(buf);
    return fail(L, REFIT_ERR_MODEL, "tensor '%s': data does not match its shape", t->name);
}

static int parse_attr(loader *L, const uint8_t *data, size_t len, ox_attr *a)
{
    memset(a, 0, sizeof *a);
    a->name = "";
    pb_iter it;
    pb_field f;
    int r;
    long nf = 0, ni = 0;
    int seen_f = 0, seen_i = 0, seen_s = 0, seen_t = 0, seen_g = 0;
    int64_t type = 0;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        long c = 0;
        switch (f.num) {
        case 1:
            if (f.wire != PB_LEN)
                return BAD_PB(L, "AttributeProto");
            if (!(a->name = astr(L, f.data, f.len)))
                return NOMEM(L);
            break;
        case 20: if (f.wire != PB_VARINT) return BAD_PB(L, "AttributeProto"); type = (int64_t)f.u; break;
        case 2:
            if (f.wire != PB_I32)
                return BAD_PB(L, "AttributeProto");
            a->f = bits_to_float((uint32_t)f.u);
            seen_f = 1;
            break;
        case 3: if (f.wire != PB_VARINT) return BAD_PB(L, "AttributeProto"); a->i = (int64_t)f.u; seen_i = 1; break;
        case 4:
            if (f.wire != PB_LEN)
                return BAD_PB(L, "AttributeProto");
            if (!(a->s = astr(L, f.data, f.len)))
                return NOMEM(L);
            seen_s = 1;
            break;
        case 5: {
            if (f.wire != PB_LEN)
                return BAD_PB(L, "AttributeProto");
            a->t = aalloc(L, sizeof *a->t);
            if (!a->t)
                return NOMEM(L);
            int rc = parse_tensor(L, f.data, f.len, a->t);
            if (rc)
                return rc;
            seen_t = 1;
            break;
        }
        case 6: seen_g = 1; break;
        case 7: c = pb_count_fixed32(&f); nf += c; break;
        case 8: c = pb_count_varints(&f); ni += c; break;
        default: break;
        }
        if (c < 0)
            return BAD_PB(L, "AttributeProto");
    }
    if (r < 0)
        return BAD_PB(L, "AttributeProto");
    if (nf) {
        if (!(a->floats = aalloc(L, (size_t)nf * sizeof(float))))
            return NOMEM(L);
    }
    if (ni) {
        if (!(a->ints = aalloc(L, (size_t)ni * sizeof(int64_t))))
            return NOMEM(L);
    }
    pb_iter_init(&it, data, len);
    while (pb_next(&it, &f) == 1) {
        if (f.num == 7 && a->floats)
            a->nfloats += (size_t)pb_get_floats(&f, a->floats + a->nfloats);
        else if (f.num == 8 && a->ints)
            a->nints += (size_t)pb_get_varints(&f, a->ints + a->nints);
    }
    if (!type) { /* very old files omit the type: infer it from what is set */
        type = seen_t ? AT_TENSOR : seen_g ? AT_GRAPH : seen_s ? AT_STRING : nf ? AT_FLOATS
             : ni ? AT_INTS : seen_f ? AT_FLOAT : seen_i ? AT_INT : AT_UNDEF;
    }
    a->type = type > 0 && type < 100 ? (int)type : AT_UNDEF;
    if (a->type == AT_TENSOR && !a->t)
        return fail(L, REFIT_ERR_MODEL, "attribute '%s' of type TENSOR has no tensor", a->name);
    return 0;
}

static int parse_node(loader *L, const uint8_t *data, size_t len, ox_node *n, int index)
{
    memset(n, 0, sizeof *n);
    pb_iter it;
    pb_field f;
    int r;
    int ni = 0, no = 0, na = 0;
    const char *name = "";
    n->op = "";
    n->domain = "";
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        if (f.num >= 1 && f.num <= 7 && f.num != 6 && f.wire != PB_LEN)
            return BAD_PB(L, "NodeProto");
        switch (f.num) {
        case 1: ni++; break;
        case 2: no++; break;
        case 5: na++; break;
        case 3: if (!(name = astr(L, f.data, f.len))) return NOMEM(L); break;
        case 4: if (!(n->op = astr(L, f.data, f.len))) return NOMEM(L); break;
        case 7: if (!(n->domain = astr(L, f.data, f.len))) return NOMEM(L); break;
        default: break;
        }
        if (ni > 100000 || no > 100000 || na > 100000)
            return fail(L, REFIT_ERR_MODEL, "node with too many inputs/outputs/attributes");
    }
    if (r < 0)
        return BAD_PB(L, "NodeProto");
    if (!name[0]) {
        char buf[96];
        snprintf(buf, sizeof buf, "%.60s#%d", n->op, index);
        if (!(name = astr(L, (const uint8_t *)buf, strlen(buf))))
            return NOMEM(L);
    }
    n->name = name;
    n->in = aalloc(L, (size_t)ni * sizeof *n->in);
    n->out = aalloc(L, (size_t)no * sizeof *n->out);
    n->attrs = aalloc(L, (size_t)na * sizeof *n->attrs);
    if (!n->in || !n->out || !n->attrs)
        return NOMEM(L);
    pb_iter_init(&it, data, len);
    while (pb_next(&it, &f) == 1) {
        if (f.num == 1) {
            if (!(n->in[n->n_in++] = astr(L, f.data, f.len)))
                return NOMEM(L);
        } else if (f.num == 2) {
            if (!(n->out[n->n_out++] = astr(L, f.data, f.len)))
                return NOMEM(L);
        } else if (f.num == 5) {
            int rc = parse_attr(L, f.data, f.len, &n->attrs[n->n_attrs++]);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int parse_shape(loader *L, const uint8_t *data, size_t len, ox_vi *v)
{
    pb_iter it;
    pb_field f;
    int r;
    v->has_shape = 1;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        if (f.num != 1)
            continue;
        if (f.wire != PB_LEN)
            return BAD_PB(L, "TensorShapeProto");
        if (v->ndim >= RT_MAX_DIMS)
            return fail(L, REFIT_ERR_UNSUPPORTED, "value '%s' has more than %d dims", v->name,
                        RT_MAX_DIMS);
        int64_t d = -1;
        pb_iter di;
        pb_field g;
        int r2;
        pb_iter_init(&di, f.data, f.len);
        while ((r2 = pb_next(&di, &g)) == 1) {
            if (g.num == 1) {
                if (g.wire != PB_VARINT)
                    return BAD_PB(L, "TensorShapeProto");
                d = (int64_t)g.u;
            } else if (g.num == 2) {
                if (g.wire != PB_LEN)
                    return BAD_PB(L, "TensorShapeProto");
                d = -1;
            }
        }
        if (r2 < 0)
            return BAD_PB(L, "TensorShapeProto");
        v->dims[v->ndim++] = d < 0 ? -1 : d;
    }
    if (r < 0)
        return BAD_PB(L, "TensorShapeProto");
    return 0;
}

static int parse_vi(loader *L, const uint8_t *data, size_t len, ox_vi *v)
{
    memset(v, 0, sizeof *v);
    v->name = "";
    v->is_tensor = 1;
    pb_iter it;
    pb_field f;
    int r;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        if (f.num == 1) {
            if (f.wire != PB_LEN)
                return BAD_PB(L, "ValueInfoProto");
            if (!(v->name = astr(L, f.data, f.len)))
                return NOMEM(L);
        } else if (f.num == 2) {
            if (f.wire != PB_LEN)
                return BAD_PB(L, "ValueInfoProto");
            pb_iter ti;
            pb_field g;
            int r2;
            int seen_tensor = 0, seen_other = 0;
            pb_iter_init(&ti, f.data, f.len);
            while ((r2 = pb_next(&ti, &g)) == 1) {
                if (g.num == 1) {
                    if (g.wire != PB_LEN)
                        return BAD_PB(L, "TypeProto");
                    seen_tensor = 1;
                    pb_iter xi;
                    pb_field h;
                    int r3;
                    pb_iter_init(&xi, g.data, g.len);
                    while ((r3 = pb_next(&xi, &h)) == 1) {
                        if (h.num == 1) {
                            if (h.wire != PB_VARINT)
                                return BAD_PB(L, "TypeProto");
                            v->elem_type = (int)(int32_t)h.u;
                        } else if (h.num == 2) {
                            if (h.wire != PB_LEN)
                                return BAD_PB(L, "TypeProto");
                            v->ndim = 0;
                            int rc = parse_shape(L, h.data, h.len, v);
                            if (rc)
                                return rc;
                        }
                    }
                    if (r3 < 0)
                        return BAD_PB(L, "TypeProto");
                } else if (g.num == 4 || g.num == 5 || g.num == 8 || g.num == 9) {
                    seen_other = 1;
                }
            }
            if (r2 < 0)
                return BAD_PB(L, "TypeProto");
            if (seen_other && !seen_tensor)
                v->is_tensor = 0;
        }
    }
    if (r < 0)
        return BAD_PB(L, "ValueInfoProto");
    return 0;
}

static int parse_graph(loader *L, const uint8_t *data, size_t len)
{
    ox_graph *g = &L->g;
    pb_iter it;
    pb_field f;
    int r;
    long nn = 0, ninit = 0, nin = 0, nout = 0;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        int is_msg = f.num == 1 || f.num == 5 || f.num == 11 || f.num == 12 || f.num == 13 ||
                     f.num == 15;
        if (is_msg && f.wire != PB_LEN)
            return BAD_PB(L, "GraphProto");
        switch (f.num) {
        case 1: nn++; break;
        case 5: ninit++; break;
        case 11: nin++; break;
        case 12: nout++; break;
        case 15:
            return fail(L, REFIT_ERR_UNSUPPORTED, "sparse initializers are not supported");
        default: break;
        }
        if (nn > INT_MAX / 4 || ninit > INT_MAX / 4 || nin > INT_MAX / 4 || nout > INT_MAX / 4)
            return fail(L, REFIT_ERR_MODEL, "graph too large");
    }
    if (r < 0)
        return BAD_PB(L, "GraphProto");
    g->nodes = aalloc(L, (size_t)nn * sizeof *g->nodes);
    g->inits = aalloc(L, (size_t)ninit * sizeof *g->inits);
    g->inputs = aalloc(L, (size_t)nin * sizeof *g->inputs);
    g->outputs = aalloc(L, (size_t)nout * sizeof *g->outputs);
    if (!g->nodes || !g->inits || !g->inputs || !g->outputs)
        return NOMEM(L);
    pb_iter_init(&it, data, len);
    while (pb_next(&it, &f) == 1) {
        int rc = 0;
        switch (f.num) {
        case 1: rc = parse_node(L, f.data, f.len, &g->nodes[g->n_nodes], g->n_nodes); g->n_nodes++; break;
        case 5: rc = parse_tensor(L, f.data, f.len, &g->inits[g->n_inits++]); break;
        case 11: rc = parse_vi(L, f.data, f.len, &g->inputs[g->n_inputs++]); break;
        case 12: rc = parse_vi(L, f.data, f.len, &g->outputs[g->n_outputs++]); break;
        default: break; /* value_info: shapes are inferred here, not trusted */
        }
        if (rc)
            return rc;
    }
    return 0;
}

static int parse_model(loader *L, const uint8_t *data, size_t len)
{
    pb_iter it;
    pb_field f;
    int r;
    const uint8_t *graph = NULL;
    size_t graph_len = 0;
    int have_graph = 0;
    L->opset = -1;
    pb_iter_init(&it, data, len);
    while ((r = pb_next(&it, &f)) == 1) {
        if (f.num == 1) {
            if (f.wire != PB_VARINT)
                return BAD_PB(L, "ModelProto");
            L->ir_version = (int64_t)f.u;
        } else if (f.num == 7) {
            if (f.wire != PB_LEN)
                return BAD_PB(L, "ModelProto");
            graph = f.data;
            graph_len = f.len;
            have_graph = 1;
        } else if (f.num == 8) {
            if (f.wire != PB_LEN)
                return BAD_PB(L, "ModelProto");
            pb_iter oi;
            pb_field g;
            int r2;
            const uint8_t *dom = NULL;
            size_t dom_len = 0;
            int64_t version = -1;
            pb_iter_init(&oi, f.data, f.len);
            while ((r2 = pb_next(&oi, &g)) == 1) {
                if (g.num == 1) {
                    if (g.wire != PB_LEN)
                        return BAD_PB(L, "OperatorSetIdProto");
                    dom = g.data;
                    dom_len = g.len;
                } else if (g.num == 2) {
                    if (g.wire != PB_VARINT)
                        return BAD_PB(L, "OperatorSetIdProto");
                    version = (int64_t)g.u;
                }
            }
            if (r2 < 0)
                return BAD_PB(L, "OperatorSetIdProto");
            if (dom_len == 0 || (dom_len == 7 && memcmp(dom, "ai.onnx", 7) == 0))
                L->opset = version;
        }
    }
    if (r < 0)
        return BAD_PB(L, "ModelProto");
    if (!have_graph)
        return fail(L, REFIT_ERR_MODEL, "not an ONNX model: no graph");
    if (L->opset < 0)
        return fail(L, REFIT_ERR_MODEL, "no opset_import for the default ONNX domain");
    if (L->opset < 7)
        return fail(L, REFIT_ERR_UNSUPPORTED, "opset %lld is not supported (7 or newer needed)",
                    (long long)L->opset);
    return parse_graph(L, graph, graph_len);
}

/* ============================================================================================
 * phase 2 helpers: attributes, values, nodes
 * ========================================================================================== */

static const ox_attr *attr_get(const ox_node *n, const char *name)
{
    const ox_attr *a = NULL;
    for (int i = 0; i < n->n_attrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0)
            a = &n->attrs[i];
    return a;
}

static int64_t attr_i(const ox_node *n, const char *name, int64_t def)
{
    const ox_attr *a = attr_get(n, name);
    return a && a->type == AT_INT ? a->i : def;
}

static float attr_f(const ox_node *n, const char *name, float def)
{
    const ox_attr *a = attr_get(n, name);
    if (a && a->type == AT_FLOAT)
        return a->f;
    if (a && a->type == AT_INT)
        return (float)a->i;
    return def;
}

static const char *attr_s(const ox_node *n, const char *name, const char *def)
{
    const ox_attr *a = attr_get(n, name);
    return a && a->type == AT_STRING && a->s ? a->s : def;
}

/* INTS attribute: returns the array (NULL if absent) and its length in *cnt. */
static const int64_t *attr_ints(const ox_node *n, const char *name, int *cnt)
{
    const ox_attr *a = attr_get(n, name);
    *cnt = 0;
    if (!a || a->type != AT_INTS)
        return NULL;
    static const int64_t none[1] = {0};
    *cnt = a->nints > 64 ? 64 : (int)a->nints;
    return a->ints ? a->ints : none;
}

static int reserve_vals(loader *L, int extra)
{
    if (L->n_vals + extra <= L->cap_vals)
        return 0;
    int ncap = L->cap_vals ? L->cap_vals * 2 : 64;
    while (ncap < L->n_vals + extra)
        ncap *= 2;
    rt_value *nv = realloc(L->vals, (size_t)ncap * sizeof *nv);
    if (!nv)
        return NOMEM(L);
    L->vals = nv;
    float **nw = realloc(L->winit, (size_t)ncap * sizeof *nw);
    if (!nw)
        return NOMEM(L);
    L->winit = nw;
    L->cap_vals = ncap;
    return 0;
}

static int reserve_nodes(loader *L, int extra)
{
    if (L->n_nodes + extra <= L->cap_nodes)
        return 0;
    int ncap = L->cap_nodes ? L->cap_nodes * 2 : 64;
    while (ncap < L->n_nodes + extra)
        ncap *= 2;
    rt_node *nn = realloc(L->nodes, (size_t)ncap * sizeof *nn);
    if (!nn)
        return NOMEM(L);
    L->nodes = nn;
    L->cap_nodes = ncap;
    return 0;
}

/* Adds a value named `name` (copied) and binds the name to it. Takes ownership of `data` (and
 * of `winit` for a weight), freeing them on failure. *idx receives the index. */
static int add_value(loader *L, const char *name, rt_value_kind kind, int dtype, const rt_shape *s,
                     void *data, float *winit, int *idx)
{
    const rt_shape shape = *s; /* s may point into L->vals, which reserve_vals may move */
    if (reserve_vals(L, 1)) {
        free(data);
        free(winit);
        return REFIT_ERR_NOMEM;
    }
    rt_value *v = &L->vals[L->n_vals];
    memset(v, 0, sizeof *v);
    v->name = xstrdup(name);
    if (!v->name) {
        free(data);
        free(winit);
        return NOMEM(L);
    }
    v->kind = kind;
    v->dtype = dtype;
    v->shape = shape;
    v->numel = rt_shape_numel(&shape);
    v->index = -1;
    v->output_index = -1;
    v->data = data;
    L->winit[L->n_vals] = winit;
    if (kind == RT_VAL_WEIGHT)
        v->index = L->n_weights++;
    else if (kind == RT_VAL_INPUT)
        v->index = L->n_inputs++;
    *idx = L->n_vals++;
    if (strmap_put(&L->names, v->name, *idx))
        return NOMEM(L);
    return 0;
}

static int check_shape(loader *L, const ox_node *n, const rt_shape *s)
{
    if (s->ndim < 0 || s->ndim > RT_MAX_DIMS)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has more than %d dims", RT_MAX_DIMS);
    if (dims_numel(s->d, s->ndim) < 0)
        return nfail(L, n, REFIT_ERR_MODEL, "result shape is invalid or too large");
    return 0;
}

static const char *shp(const rt_shape *s, char *buf, size_t len) { return rt_shape_str(s, buf, len); }

/* Emits a runtime node producing a new INTERMEDIATE float value `outname`. */
static int emit_named(loader *L, const ox_node *n, const char *nodename, rt_op op, const int *ins,
                      int nin, const rt_shape *s, const rt_attrs *a, const char *outname)
{
    int rc = check_shape(L, n, s);
    if (rc)
        return rc;
    if (nin > RT_MAX_NODE_INPUTS)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "%d inputs (at most %d supported)", nin,
                     RT_MAX_NODE_INPUTS);
    if (reserve_nodes(L, 1))
        return REFIT_ERR_NOMEM;
    int out;
    if ((rc = add_value(L, outname, RT_VAL_INTERMEDIATE, RT_F32, s, NULL, NULL, &out)))
        return rc;
    rt_node *nd = &L->nodes[L->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->name = xstrdup(nodename);
    if (!nd->name)
        return NOMEM(L);
    nd->op = op;
    nd->n_in = nin;
    for (int i = 0; i < RT_MAX_NODE_INPUTS; i++)
        nd->in[i] = i < nin ? ins[i] : -1;
    nd->out = out;
    if (a)
        nd->a = *a;
    L->n_nodes++;
    return 0;
}

static int emit(loader *L, const ox_node *n, rt_op op, const int *ins, int nin, const rt_shape *s,
                const rt_attrs *a)
{
    return emit_named(L, n, n->name, op, ins, nin, s, a, n->out[0]);
}

/* A new CONST value named `name` (ownership of data is taken). */
static int make_const(loader *L, const ox_node *n, const char *name, int dtype, const rt_shape *s,
                      void *data)
{
    int rc = check_shape(L, n, s);
    if (rc) {
        free(data);
        return rc;
    }
    int idx;
    return add_value(L, name, RT_VAL_CONST, dtype, s, data, NULL, &idx);
}

static size_t esize(int dtype) { return dtype == RT_F32 ? sizeof(float) : sizeof(int64_t); }

/* Allocates data for a CONST of `dtype` and shape s (refusing absurd sizes). */
static int alloc_const(loader *L, const ox_node *n, int dtype, const rt_shape *s, void **data)
{
    int rc = check_shape(L, n, s);
    if (rc)
        return rc;
    size_t numel = rt_shape_numel(s);
    if (numel > (size_t)MAX_FOLD_NUMEL)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                     "constant result of %zu elements is too large to evaluate at load", numel);
    *data = malloc(numel ? numel * esize(dtype) : 1);
    return *data ? 0 : NOMEM(L);
}

static int is_kind(const loader *L, int v, rt_value_kind k) { return v >= 0 && L->vals[v].kind == k; }

static double cget_d(const rt_value *v, size_t k)
{
    return v->dtype == RT_F32 ? (double)((const float *)v->data)[k]
                              : (double)((const int64_t *)v->data)[k];
}

static int64_t d2i(double x)
{
    if (!(x > -9.2e18 && x < 9.2e18))
        return x > 0 ? INT64_MAX : (x < 0 ? INT64_MIN : 0);
    return (int64_t)x;
}

static int64_t cget_i(const rt_value *v, size_t k)
{
    return v->dtype == RT_F32 ? d2i((double)((const float *)v->data)[k])
                              : ((const int64_t *)v->data)[k];
}

static void cset(int dtype, void *data, size_t k, double d, int64_t i, int use_int)
{
    if (dtype == RT_F32)
        ((float *)data)[k] = use_int ? (float)i : d2f(d);
    else
        ((int64_t *)data)[k] = use_int ? i : d2i(d);
}

/* Reads CONST input value v as up to `max` integers. */
static int const_ints(loader *L, const ox_node *n, int v, const char *what, int64_t *dst, int max,
                      int *cnt)
{
    const rt_value *x = &L->vals[v];
    if (x->kind == RT_VAL_WEIGHT)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                     "%s ('%s') must be a constant known at load, but it is a refittable weight "
                     "(leave it out of the 'refittable' option to fold it)", what, x->name);
    if (x->kind != RT_VAL_CONST)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "%s ('%s') must be a constant known at load",
                     what, x->name);
    if (x->numel > (size_t)max)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "%s has %zu entries (at most %d supported)",
                     what, x->numel, max);
    for (size_t k = 0; k < x->numel; k++)
        dst[k] = cget_i(x, k);
    *cnt = (int)x->numel;
    return 0;
}

/* Runtime ops compute in float32: input k must be present and a float value. */
static int need_f32(loader *L, const ox_node *n, const int *vin, int nin, int k)
{
    if (k >= nin || vin[k] < 0)
        return nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", k);
    const rt_value *v = &L->vals[vin[k]];
    if (v->dtype != RT_F32)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                     "input '%s' is %s; ops on run-time data compute in float32", v->name,
                     rt_dtype_name(v->dtype));
    return 0;
}

static int norm_axis(int64_t axis, int rank, int64_t *out)
{
    if (axis < -(int64_t)rank || axis >= rank)
        return -1;
    *out = axis < 0 ? axis + rank : axis;
    return 0;
}

static int64_t prod_dims(const rt_shape *s, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++)
        p *= s->d[i];
    return p;
}

/* numpy broadcasting of n shapes */
static int bcast_shapes(const rt_shape *const *in, int n, rt_shape *o)
{
    int nd = 0;
    for (int i = 0; i < n; i++)
        if (in[i]->ndim > nd)
            nd = in[i]->ndim;
    o->ndim = nd;
    for (int k = 0; k < nd; k++) {
        int64_t d = 1;
        for (int i = 0; i < n; i++) {
            int j = in[i]->ndim - nd + k;
            int64_t e = j >= 0 ? in[i]->d[j] : 1;
            if (e == 1 || e == d)
                continue;
            if (d != 1)
                return -1;
            d = e;
        }
        o->d[k] = d;
    }
    return 0;
}

/* Offset into an input of shape `in` broadcast to `o` for the output's linear index k. */
static size_t bcast_off(const rt_shape *in, const rt_shape *o, size_t k)
{
    size_t off = 0, stride = 1;
    for (int i = o->ndim - 1; i >= 0; i--) {
        size_t c = k % (size_t)o->d[i];
        k /= (size_t)o->d[i];
        int j = i - (o->ndim - in->ndim);
        if (j >= 0) {
            if (in->d[j] != 1)
                off += c * stride;
            stride *= (size_t)in->d[j];
        }
    }
    return off;
}

/* ============================================================================================
 * load-time evaluation (folding) of CONST subgraphs
 * ========================================================================================== */

/* Copy of a CONST value under a new name (shape-only ops and pass-throughs). */
static int const_copy(loader *L, const ox_node *n, int src, const rt_shape *s, const char *name)
{
    const rt_value *x = &L->vals[src];
    void *d;
    int rc = alloc_const(L, n, x->dtype, s, &d);
    if (rc)
        return rc;
    size_t bytes = x->numel * esize(x->dtype);
    if (bytes)
        memcpy(d, x->data, bytes);
    return make_const(L, n, name, x->dtype, s, d);
}

static int fold_constant(loader *L, const ox_node *n)
{
    const ox_attr *a = NULL;
    for (int i = 0; i < n->n_attrs; i++) {
        const char *nm = n->attrs[i].name;
        if (!strcmp(nm, "value") || !strcmp(nm, "value_float") || !strcmp(nm, "value_floats") ||
            !strcmp(nm, "value_int") || !strcmp(nm, "value_ints"))
            a = &n->attrs[i];
        else if (!strcmp(nm, "sparse_value") || !strcmp(nm, "value_string") ||
                 !strcmp(nm, "value_strings"))
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute %s not supported", nm);
    }
    if (!a)
        return nfail(L, n, REFIT_ERR_MODEL, "no value attribute");
    rt_shape s = {0};
    void *d = NULL;
    int rc;
    if (a->type == AT_TENSOR) {
        const ox_tensor *t = a->t;
        s.ndim = t->ndim;
        memcpy(s.d, t->dims, sizeof s.d);
        if (t->numel > (size_t)MAX_FOLD_NUMEL)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "constant too large");
        if ((rc = tensor_decode(L, t, &d)))
            return rc;
        return make_const(L, n, n->out[0], is_float_dtype(t->dtype) ? RT_F32 : RT_I64, &s, d);
    }
    if (a->type == AT_FLOAT || a->type == AT_INT) {
        int dt = a->type == AT_FLOAT ? RT_F32 : RT_I64;
        if ((rc = alloc_const(L, n, dt, &s, &d)))
            return rc;
        cset(dt, d, 0, a->f, a->i, a->type == AT_INT);
        return make_const(L, n, n->out[0], dt, &s, d);
    }
    if (a->type == AT_FLOATS || a->type == AT_INTS) {
        int dt = a->type == AT_FLOATS ? RT_F32 : RT_I64;
        size_t cnt = dt == RT_F32 ? a->nfloats : a->nints;
        s.ndim = 1;
        s.d[0] = (int64_t)cnt;
        if ((rc = alloc_const(L, n, dt, &s, &d)))
            return rc;
        for (size_t k = 0; k < cnt; k++)
            cset(dt, d, k, dt == RT_F32 ? a->floats[k] : 0, dt == RT_I64 ? a->ints[k] : 0,
                 dt == RT_I64);
        return make_const(L, n, n->out[0], dt, &s, d);
    }
    return nfail(L, n, REFIT_ERR_MODEL, "value attribute '%s' has an unexpected type", a->name);
}

static int fold_shape(loader *L, const ox_node *n, int x)
{
    const rt_shape xs = L->vals[x].shape;
    int64_t r = xs.ndim, start = attr_i(n, "start", 0), end = attr_i(n, "end", r);
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    rt_shape s = {1, {end > start ? end - start : 0}};
    void *d;
    int rc = alloc_const(L, n, RT_I64, &s, &d);
    if (rc)
        return rc;
    for (int64_t i = start; i < end; i++)
        ((int64_t *)d)[i - start] = xs.d[i];
    return make_const(L, n, n->out[0], RT_I64, &s, d);
}

static int fold_binary(loader *L, const ox_node *n, const int *vin, int nin)
{
    const char *op = n->op;
    int is_where = !strcmp(op, "Where");
    int need = is_where ? 3 : 2;
    if (nin < need)
        return nfail(L, n, REFIT_ERR_MODEL, "needs %d inputs", need);
    const rt_value *x[3];
    const rt_shape *sh[3];
    for (int i = 0; i < need; i++) {
        x[i] = &L->vals[vin[i]];
        sh[i] = &x[i]->shape;
    }
    rt_shape s;
    if (bcast_shapes(sh, need, &s)) {
        char b1[96], b2[96];
        return nfail(L, n, REFIT_ERR_MODEL, "shapes %s and %s do not broadcast",
                     shp(sh[need - 2], b1, sizeof b1), shp(sh[need - 1], b2, sizeof b2));
    }
    int cmp = !strcmp(op, "Equal") || !strcmp(op, "Less") || !strcmp(op, "Greater");
    int dt;
    if (cmp)
        dt = RT_I64;
    else if (is_where)
        dt = (x[1]->dtype == RT_F32 || x[2]->dtype == RT_F32) ? RT_F32 : RT_I64;
    else
        dt = (x[0]->dtype == RT_F32 || x[1]->dtype == RT_F32) ? RT_F32 : RT_I64;
    int isint = x[need - 2]->dtype == RT_I64 && x[need - 1]->dtype == RT_I64;
    if (!strcmp(op, "Pow")) /* Pow's result has the base's type */
        dt = x[0]->dtype;
    void *d;
    int rc = alloc_const(L, n, dt, &s, &d);
    if (rc)
        return rc;
    size_t numel = rt_shape_numel(&s);
    for (size_t k = 0; k < numel; k++) {
        if (is_where) {
            int c = cget_d(x[0], bcast_off(sh[0], &s, k)) != 0;
            const rt_value *src = c ? x[1] : x[2];
            size_t o = bcast_off(&src->shape, &s, k);
            cset(dt, d, k, cget_d(src, o), cget_i(src, o), src->dtype == RT_I64 && dt == RT_I64);
            continue;
        }
        size_t oa = bcast_off(sh[0], &s, k), ob = bcast_off(sh[1], &s, k);
        if (isint) {
            uint64_t a = (uint64_t)cget_i(x[0], oa), b = (uint64_t)cget_i(x[1], ob);
            int64_t r;
            if (!strcmp(op, "Add"))
                r = (int64_t)(a + b);
            else if (!strcmp(op, "Sub"))
                r = (int64_t)(a - b);
            else if (!strcmp(op, "Mul"))
                r = (int64_t)(a * b);
            else if (!strcmp(op, "Equal"))
                r = a == b;
            else if (!strcmp(op, "Less"))
                r = (int64_t)a < (int64_t)b;
            else if (!strcmp(op, "Greater"))
                r = (int64_t)a > (int64_t)b;
            else if (!strcmp(op, "Min"))
                r = (int64_t)a < (int64_t)b ? (int64_t)a : (int64_t)b;
            else if (!strcmp(op, "Max"))
                r = (int64_t)a > (int64_t)b ? (int64_t)a : (int64_t)b;
            else if (!strcmp(op, "Pow")) {
                r = d2i(pow((double)(int64_t)a, (double)(int64_t)b));
            } else { /* Div: integer division truncates toward zero */
                if (b == 0) {
                    free(d);
                    return nfail(L, n, REFIT_ERR_MODEL, "integer division by zero");
                }
                r = (int64_t)b == -1 ? (int64_t)(0 - a) : (int64_t)a / (int64_t)b;
            }
            ((int64_t *)d)[k] = r;
        } else {
            double a = cget_d(x[0], oa), b = cget_d(x[1], ob), r;
            if (!strcmp(op, "Add"))
                r = a + b;
            else if (!strcmp(op, "Sub"))
                r = a - b;
            else if (!strcmp(op, "Mul"))
                r = a * b;
            else if (!strcmp(op, "Equal"))
                r = a == b;
            else if (!strcmp(op, "Less"))
                r = a < b;
            else if (!strcmp(op, "Greater"))
                r = a > b;
            else if (!strcmp(op, "Min"))
                r = a < b ? a : b;
            else if (!strcmp(op, "Max"))
                r = a > b ? a : b;
            else if (!strcmp(op, "Pow"))
                r = pow(a, b);
            else
                r = a / b;
            cset(dt, d, k, r, 0, 0);
        }
    }
    return make_const(L, n, n->out[0], dt, &s, d);
}

static int fold_gather(loader *L, const ox_node *n, const int *vin)
{
    const rt_value *x = &L->vals[vin[0]], *ix = &L->vals[vin[1]];
    int64_t axis;
    if (norm_axis(attr_i(n, "axis", 0), x->shape.ndim, &axis))
        return nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
    rt_shape s;
    s.ndim = x->shape.ndim - 1 + ix->shape.ndim;
    if (s.ndim > RT_MAX_DIMS)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has too many dims");
    int k = 0;
    for (int i = 0; i < axis; i++)
        s.d[k++] = x->shape.d[i];
    for (int i = 0; i < ix->shape.ndim; i++)
        s.d[k++] = ix->shape.d[i];
    for (int i = (int)axis + 1; i < x->shape.ndim; i++)
        s.d[k++] = x->shape.d[i];
    void *d;
    int rc = alloc_const(L, n, x->dtype, &s, &d);
    if (rc)
        return rc;
    size_t outer = (size_t)prod_dims(&x->shape, 0, (int)axis);
    size_t inner = (size_t)prod_dims(&x->shape, (int)axis + 1, x->shape.ndim);
    int64_t dim = x->shape.d[axis];
    size_t es = esize(x->dtype), pos = 0;
    for (size_t o = 0; o < outer; o++) {
        for (size_t j = 0; j < ix->numel; j++) {
            int64_t id = cget_i(ix, j);
            if (id < 0)
                id += dim;
            if (id < 0 || id >= dim) {
                free(d);
                return nfail(L, n, REFIT_ERR_MODEL, "index %lld out of range for dim %lld",
                             (long long)cget_i(ix, j), (long long)dim);
            }
            if (inner)
                memcpy((char *)d + pos * es, (const char *)x->data + ((o * (size_t)dim + (size_t)id) * inner) * es,
                       inner * es);
            pos += inner;
        }
    }
    return make_const(L, n, n->out[0], x->dtype, &s, d);
}

static int fold_cast(loader *L, const ox_node *n, int src)
{
    int64_t to = attr_i(n, "to", 0);
    const rt_value *x = &L->vals[src];
    int dt = is_float_dtype((int)to) ? RT_F32 : RT_I64;
    if (ox_elem_size((int)to) == 0)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute to=%lld not supported", (long long)to);
    void *d;
    int rc = alloc_const(L, n, dt, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++) {
        if (dt == RT_F32) {
            ((float *)d)[k] = d2f(cget_d(x, k));
        } else {
            int64_t v = to == OX_BOOL ? (cget_d(x, k) != 0) : cget_i(x, k);
            if (to != RT_I64 && to != OX_U64 && to != OX_BOOL)
                v = to == OX_U32 ? (int64_t)(uint32_t)v : i32field_i((int)to, v);
            ((int64_t *)d)[k] = v;
        }
    }
    return make_const(L, n, n->out[0], dt, &x->shape, d);
}

static int fold_slice(loader *L, const ox_node *n, const int *vin, int nin)
{
    const rt_value *x = &L->vals[vin[0]];
    int r = x->shape.ndim;
    int64_t starts[RT_MAX_DIMS], ends[RT_MAX_DIMS], axes[RT_MAX_DIMS], steps[RT_MAX_DIMS];
    int ns = 0, ne = 0, na = -1, nst = -1, rc;
    if (L->opset < 10) {
        int c;
        const int64_t *p = attr_ints(n, "starts", &c);
        if (!p || c > RT_MAX_DIMS)
            return nfail(L, n, REFIT_ERR_MODEL, "bad starts attribute");
        memcpy(starts, p, (size_t)c * 8);
        ns = c;
        p = attr_ints(n, "ends", &c);
        if (!p || c > RT_MAX_DIMS)
            return nfail(L, n, REFIT_ERR_MODEL, "bad ends attribute");
        memcpy(ends, p, (size_t)c * 8);
        ne = c;
        p = attr_ints(n, "axes", &c);
        if (p) {
            if (c > RT_MAX_DIMS)
                return nfail(L, n, REFIT_ERR_MODEL, "bad axes attribute");
            memcpy(axes, p, (size_t)c * 8);
            na = c;
        }
    } else {
        if (nin < 3 || vin[1] < 0 || vin[2] < 0)
            return nfail(L, n, REFIT_ERR_MODEL, "needs starts and ends inputs");
        if ((rc = const_ints(L, n, vin[1], "starts", starts, RT_MAX_DIMS, &ns)) ||
            (rc = const_ints(L, n, vin[2], "ends", ends, RT_MAX_DIMS, &ne)))
            return rc;
        if (nin > 3 && vin[3] >= 0 && (rc = const_ints(L, n, vin[3], "axes", axes, RT_MAX_DIMS, &na)))
            return rc;
        if (nin > 4 && vin[4] >= 0 && (rc = const_ints(L, n, vin[4], "steps", steps, RT_MAX_DIMS, &nst)))
            return rc;
    }
    if (ns != ne || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
        return nfail(L, n, REFIT_ERR_MODEL, "starts/ends/axes/steps lengths differ");
    int64_t st[RT_MAX_DIMS], sp[RT_MAX_DIMS];
    rt_shape s = x->shape;
    int seen[RT_MAX_DIMS] = {0};
    for (int i = 0; i < r; i++) {
        st[i] = 0;
        sp[i] = 1;
    }
    for (int i = 0; i < ns; i++) {
        int64_t ax = na >= 0 ? axes[i] : i;
        if (norm_axis(ax, r, &ax) || seen[ax]++)
            return nfail(L, n, REFIT_ERR_MODEL, "bad slice axis");
        int64_t step = nst >= 0 ? steps[i] : 1, dim = x->shape.d[ax];
        if (step == 0)
            return nfail(L, n, REFIT_ERR_MODEL, "slice step 0");
        int64_t b = starts[i], e = ends[i];
        if (b < 0)
            b = b < -dim ? -1 : b + dim;
        if (e < 0)
            e = e < -dim ? -1 : e + dim;
        if (step > 0) {
            b = b < 0 ? 0 : b > dim ? dim : b;
            e = e < 0 ? 0 : e > dim ? dim : e;
            s.d[ax] = e > b ? (e - b + step - 1) / step : 0;
        } else {
            b = b < 0 ? 0 : b > dim - 1 ? dim - 1 : b;
            e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
            s.d[ax] = b > e ? (b - e + (-step) - 1) / (-step) : 0;
        }
        st[ax] = b;
        sp[ax] = step;
    }
    void *d;
    if ((rc = alloc_const(L, n, x->dtype, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s), es = esize(x->dtype);
    for (size_t k = 0; k < numel; k++) {
        size_t rem = k, off = 0, stride = 1;
        for (int i = r - 1; i >= 0; i--) {
            size_t c = rem % (size_t)s.d[i];
            rem /= (size_t)s.d[i];
            off += (size_t)(st[i] + (int64_t)c * sp[i]) * stride;
            stride *= (size_t)x->shape.d[i];
        }
        memcpy((char *)d + k * es, (const char *)x->data + off * es, es);
    }
    return make_const(L, n, n->out[0], x->dtype, &s, d);
}

static int fold_constant_of_shape(loader *L, const ox_node *n, int src)
{
    int64_t dims[RT_MAX_DIMS];
    int cnt, rc;
    if ((rc = const_ints(L, n, src, "shape", dims, RT_MAX_DIMS, &cnt)))
        return rc;
    rt_shape s = {cnt, {0}};
    for (int i = 0; i < cnt; i++) {
        if (dims[i] < 0)
            return nfail(L, n, REFIT_ERR_MODEL, "negative dim in shape");
        s.d[i] = dims[i];
    }
    const ox_attr *a = attr_get(n, "value");
    int dt = RT_F32;
    double fv = 0;
    int64_t iv = 0;
    if (a && a->type == AT_TENSOR) {
        if (a->t->numel != 1)
            return nfail(L, n, REFIT_ERR_MODEL, "value must hold one element");
        void *one;
        if ((rc = tensor_decode(L, a->t, &one)))
            return rc;
        dt = is_float_dtype(a->t->dtype) ? RT_F32 : RT_I64;
        if (dt == RT_F32)
            fv = ((float *)one)[0];
        else
            iv = ((int64_t *)one)[0];
        free(one);
    }
    void *d;
    if ((rc = alloc_const(L, n, dt, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s);
    for (size_t k = 0; k < numel; k++)
        cset(dt, d, k, fv, iv, dt == RT_I64);
    return make_const(L, n, n->out[0], dt, &s, d);
}

static int fold_range(loader *L, const ox_node *n, const int *vin, int nin)
{
    if (nin < 3 || vin[0] < 0 || vin[1] < 0 || vin[2] < 0)
        return nfail(L, n, REFIT_ERR_MODEL, "needs 3 inputs");
    const rt_value *a = &L->vals[vin[0]], *b = &L->vals[vin[1]], *c = &L->vals[vin[2]];
    if (a->numel != 1 || b->numel != 1 || c->numel != 1)
        return nfail(L, n, REFIT_ERR_MODEL, "inputs must be scalars");
    int dt = (a->dtype == RT_F32 || b->dtype == RT_F32 || c->dtype == RT_F32) ? RT_F32 : RT_I64;
    double start = cget_d(a, 0), limit = cget_d(b, 0), delta = cget_d(c, 0);
    if (delta == 0 || !isfinite(start) || !isfinite(limit) || !isfinite(delta))
        return nfail(L, n, REFIT_ERR_MODEL, "bad range");
    double cnt = ceil((limit - start) / delta);
    if (cnt < 0)
        cnt = 0;
    if (cnt > (double)MAX_FOLD_NUMEL)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "range too large");
    rt_shape s = {1, {(int64_t)cnt}};
    void *d;
    int rc = alloc_const(L, n, dt, &s, &d);
    if (rc)
        return rc;
    for (int64_t k = 0; k < s.d[0]; k++) {
        if (dt == RT_F32)
            ((float *)d)[k] = d2f(start + (double)k * delta);
        else
            ((int64_t *)d)[k] = (int64_t)((uint64_t)cget_i(a, 0) + (uint64_t)k * (uint64_t)cget_i(c, 0));
    }
    return make_const(L, n, n->out[0], dt, &s, d);
}

static int fold_transpose(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    int r = x->shape.ndim, cnt;
    int64_t perm[RT_MAX_DIMS];
    const int64_t *p = attr_ints(n, "perm", &cnt);
    if (p) {
        if (cnt != r)
            return nfail(L, n, REFIT_ERR_MODEL, "perm has %d entries for rank %d", cnt, r);
        int seen[RT_MAX_DIMS] = {0};
        for (int i = 0; i < r; i++) {
            if (p[i] < 0 || p[i] >= r || seen[p[i]]++)
                return nfail(L, n, REFIT_ERR_MODEL, "bad perm");
            perm[i] = p[i];
        }
    } else {
        for (int i = 0; i < r; i++)
            perm[i] = r - 1 - i;
    }
    rt_shape s = {r, {0}};
    size_t istr[RT_MAX_DIMS], st = 1;
    for (int i = r - 1; i >= 0; i--) {
        istr[i] = st;
        st *= (size_t)x->shape.d[i];
    }
    for (int i = 0; i < r; i++)
        s.d[i] = x->shape.d[perm[i]];
    void *d;
    int rc = alloc_const(L, n, x->dtype, &s, &d);
    if (rc)
        return rc;
    size_t numel = x->numel, es = esize(x->dtype);
    for (size_t k = 0; k < numel; k++) {
        size_t rem = k, off = 0;
        for (int i = r - 1; i >= 0; i--) {
            size_t c = rem % (size_t)s.d[i];
            rem /= (size_t)s.d[i];
            off += c * istr[perm[i]];
        }
        memcpy((char *)d + k * es, (const char *)x->data + off * es, es);
    }
    return make_const(L, n, n->out[0], x->dtype, &s, d);
}

/* Elementwise unary ops on a constant (float math in double; integer input keeps its type). */
static int fold_unary(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    const char *op = n->op;
    float alpha = attr_f(n, "alpha", 0.01f);
    void *d;
    int rc = alloc_const(L, n, x->dtype, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++) {
        double v = cget_d(x, k), r;
        if (!strcmp(op, "Relu"))
            r = v > 0 ? v : 0;
        else if (!strcmp(op, "LeakyRelu"))
            r = v >= 0 ? v : v * alpha;
        else if (!strcmp(op, "Sigmoid"))
            r = 1.0 / (1.0 + exp(-v));
        else if (!strcmp(op, "Tanh"))
            r = tanh(v);
        else if (!strcmp(op, "Abs"))
            r = fabs(v);
        else if (!strcmp(op, "Sqrt"))
            r = sqrt(v);
        else if (!strcmp(op, "Exp"))
            r = exp(v);
        else if (!strcmp(op, "Log"))
            r = log(v);
        else if (!strcmp(op, "Floor"))
            r = floor(v);
        else if (!strcmp(op, "Ceil"))
            r = ceil(v);
        else if (!strcmp(op, "Reciprocal"))
            r = 1.0 / v;
        else /* Not */
            r = v == 0;
        if (x->dtype == RT_I64 && (!strcmp(op, "Relu") || !strcmp(op, "Abs") || !strcmp(op, "Floor") ||
                                   !strcmp(op, "Ceil")))
            ((int64_t *)d)[k] = !strcmp(op, "Abs") ? (int64_t)(cget_i(x, k) < 0 ? 0 - (uint64_t)cget_i(x, k)
                                                                                : (uint64_t)cget_i(x, k))
                              : !strcmp(op, "Relu") ? (cget_i(x, k) > 0 ? cget_i(x, k) : 0)
                                                    : cget_i(x, k);
        else
            cset(x->dtype, d, k, r, 0, 0);
    }
    return make_const(L, n, n->out[0], x->dtype, &x->shape, d);
}

static int fold_expand(loader *L, const ox_node *n, const int *vin)
{
    int64_t dims[RT_MAX_DIMS];
    int cnt, rc;
    if ((rc = const_ints(L, n, vin[1], "shape", dims, RT_MAX_DIMS, &cnt)))
        return rc;
    const rt_value *x = &L->vals[vin[0]];
    rt_shape t = {cnt, {0}}, s;
    for (int i = 0; i < cnt; i++)
        t.d[i] = dims[i];
    const rt_shape *sh[2] = {&x->shape, &t};
    if (dims_numel(t.d, t.ndim) < 0 || bcast_shapes(sh, 2, &s))
        return nfail(L, n, REFIT_ERR_MODEL, "shape does not broadcast with the input");
    void *d;
    if ((rc = alloc_const(L, n, x->dtype, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s), es = esize(x->dtype);
    for (size_t k = 0; k < numel; k++)
        memcpy((char *)d + k * es, (const char *)x->data + bcast_off(&x->shape, &s, k) * es, es);
    return make_const(L, n, n->out[0], x->dtype, &s, d);
}

static int fold_neg(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    void *d;
    int rc = alloc_const(L, n, x->dtype, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++)
        cset(x->dtype, d, k, -cget_d(x, k), (int64_t)(0 - (uint64_t)cget_i(x, k)), x->dtype == RT_I64);
    return make_const(L, n, n->out[0], x->dtype, &x->shape, d);
}

/* ============================================================================================
 * shape-only ops (folded on CONST data, RT_OP_RESHAPE / RT_OP_FLATTEN on run-time data)
 * ========================================================================================== */

static int reshape_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *sh, int cnt,
                         int allowzero, rt_shape *o)
{
    char b1[128], b2[128];
    if (cnt > RT_MAX_DIMS)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "target shape has %d dims", cnt);
    int64_t numel = (int64_t)rt_shape_numel(in), prod = 1;
    int unknown = -1, has_zero = 0;
    o->ndim = cnt;
    for (int i = 0; i < cnt; i++) {
        int64_t v = sh[i];
        if (v == 0 && !allowzero) {
            if (i >= in->ndim)
                return nfail(L, n, REFIT_ERR_MODEL, "shape entry %d is 0 but the input has %d dims",
                             i, in->ndim);
            v = in->d[i];
        }
        if (v == 0)
            has_zero = 1;
        if (v == -1) {
            if (unknown >= 0)
                return nfail(L, n, REFIT_ERR_MODEL, "more than one -1 in the target shape");
            unknown = i;
            o->d[i] = 1;
            continue;
        }
        if (v < -1 || v > MAX_NUMEL)
            return nfail(L, n, REFIT_ERR_MODEL, "invalid target dim %lld", (long long)v);
        o->d[i] = v;
        if (v && prod > MAX_NUMEL / v)
            return nfail(L, n, REFIT_ERR_MODEL, "target shape too large");
        prod *= v;
    }
    if (unknown >= 0) {
        if (allowzero && has_zero)
            return nfail(L, n, REFIT_ERR_MODEL, "allowzero with both 0 and -1 in the target shape");
        if (prod == 0 || numel % prod)
            return nfail(L, n, REFIT_ERR_MODEL, "cannot reshape %s (%lld elements) to %s",
                         shp(in, b1, sizeof b1), (long long)numel, shp(o, b2, sizeof b2));
        o->d[unknown] = numel / prod;
    } else if (prod != numel) {
        return nfail(L, n, REFIT_ERR_MODEL, "cannot reshape %s (%lld elements) to %s (%lld)",
                     shp(in, b1, sizeof b1), (long long)numel, shp(o, b2, sizeof b2),
                     (long long)prod);
    }
    return 0;
}

/* Axes of Squeeze/Unsqueeze/ReduceMean: attribute before `input_opset`, else optional input 1.
 * *cnt = -1 if absent. */
static int get_axes(loader *L, const ox_node *n, const int *vin, int nin, int64_t input_opset,
                    int64_t *axes, int *cnt)
{
    *cnt = -1;
    if (L->opset < input_opset) {
        int c;
        const int64_t *p = attr_ints(n, "axes", &c);
        if (p) {
            if (c > RT_MAX_DIMS)
                return nfail(L, n, REFIT_ERR_MODEL, "too many axes");
            memcpy(axes, p, (size_t)c * sizeof *axes);
            *cnt = c;
        }
        return 0;
    }
    if (nin > 1 && vin[1] >= 0)
        return const_ints(L, n, vin[1], "axes", axes, RT_MAX_DIMS, cnt);
    return 0;
}

static int squeeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                         int cnt, rt_shape *o)
{
    int drop[RT_MAX_DIMS] = {0};
    if (cnt < 0) {
        for (int i = 0; i < in->ndim; i++)
            drop[i] = in->d[i] == 1;
    } else {
        for (int i = 0; i < cnt; i++) {
            int64_t a;
            if (norm_axis(axes[i], in->ndim, &a))
                return nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range", (long long)axes[i]);
            if (in->d[a] != 1)
                return nfail(L, n, REFIT_ERR_MODEL, "cannot squeeze axis %lld of size %lld",
                             (long long)a, (long long)in->d[a]);
            drop[a] = 1;
        }
    }
    o->ndim = 0;
    for (int i = 0; i < in->ndim; i++)
        if (!drop[i])
            o->d[o->ndim++] = in->d[i];
    return 0;
}

static int unsqueeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                           int cnt, rt_shape *o)
{
    if (cnt < 0)
        return nfail(L, n, REFIT_ERR_MODEL, "missing axes");
    int r = in->ndim + cnt;
    if (r > RT_MAX_DIMS)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has %d dims (at most %d)", r, RT_MAX_DIMS);
    int mark[RT_MAX_DIMS] = {0};
    for (int i = 0; i < cnt; i++) {
        int64_t a;
        if (norm_axis(axes[i], r, &a) || mark[a])
            return nfail(L, n, REFIT_ERR_MODEL, "bad axis %lld", (long long)axes[i]);
        mark[a] = 1;
    }
    o->ndim = r;
    for (int i = 0, j = 0; i < r; i++)
        o->d[i] = mark[i] ? 1 : in->d[j++];
    return 0;
}

/* Shape-only op: fold if the data is CONST, else a run-time reshape (never of int data). */
static int reshape_like(loader *L, const ox_node *n, int src, const rt_shape *s, rt_op op, int64_t axis)
{
    int rc = check_shape(L, n, s);
    if (rc)
        return rc;
    if (is_kind(L, src, RT_VAL_CONST))
        return const_copy(L, n, src, s, n->out[0]);
    if (L->vals[src].dtype != RT_F32)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "input '%s' is not float", L->vals[src].name);
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.axis = axis;
    return emit(L, n, op, &src, 1, s, &a);
}

/* Identity-like pass-through of a value: a CONST is copied under the new name (so folding can go
 * on); a run-time value is simply rewired, unless the name is a graph output, which then gets a
 * real RT_OP_IDENTITY node so it keeps its own buffer. */
static int passthrough(loader *L, const ox_node *n, int src)
{
    const char *name = n->out[0];
    if (is_kind(L, src, RT_VAL_CONST))
        return const_copy(L, n, src, &L->vals[src].shape, name);
    if (strmap_get(&L->graph_outs, name) >= 0) {
        rt_shape s = L->vals[src].shape;
        return emit(L, n, RT_OP_IDENTITY, &src, 1, &s, NULL);
    }
    return strmap_put(&L->names, name, src) ? NOMEM(L) : 0;
}

/* Identity: PyTorch aliases identical initial tensors as Identity(initializer). The alias becomes
 * its own refittable weight (a copy of the source's initial data), so both names stay
 * independently refittable. With an explicit refittable set, the alias is a weight iff its own
 * name is in the set. */
static int do_identity(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    const char *name = n->out[0];
    int want;
    if (!L->explicit_refit)
        want = x->kind == RT_VAL_WEIGHT;
    else
        want = (x->kind == RT_VAL_WEIGHT || x->kind == RT_VAL_CONST) && x->dtype == RT_F32 &&
               strmap_get(&L->refit_set, name) >= 0;
    if (!want && x->kind == RT_VAL_WEIGHT) {
        /* a weight aliased under a name that is not refittable: a constant snapshot */
        float *d = malloc(x->numel ? x->numel * sizeof *d : 1);
        if (!d)
            return NOMEM(L);
        if (x->numel)
            memcpy(d, L->winit[src], x->numel * sizeof *d);
        rt_shape s = x->shape;
        return make_const(L, n, name, RT_F32, &s, d);
    }
    if (!want)
        return passthrough(L, n, src);
    const float *from = x->kind == RT_VAL_WEIGHT ? L->winit[src] : (const float *)x->data;
    float *d = malloc(x->numel ? x->numel * sizeof *d : 1);
    if (!d)
        return NOMEM(L);
    if (x->numel)
        memcpy(d, from, x->numel * sizeof *d);
    rt_shape s = x->shape;
    int idx;
    if (L->explicit_refit)
        strmap_put(&L->refit_set, name, 1);
    return add_value(L, name, RT_VAL_WEIGHT, RT_F32, &s, NULL, d, &idx);
}

/* ============================================================================================
 * run-time ops: attribute resolution and shape inference
 * ========================================================================================== */

/* Resolves kernel/strides/pads/dilations/auto_pad/ceil_mode for Conv and pools into a (2-D) and
 * the output spatial size into o (o->d[2..] filled, o->ndim = x->ndim). 1-D is promoted to 2-D:
 * the H axis gets kernel 1, stride 1, dilation 1, no padding. kernel_in is the kernel from the
 * weight (Conv) or NULL (pools: kernel_shape attribute required). */
static int spatial_geom(loader *L, const ox_node *n, const rt_shape *x, const int64_t *kernel_in,
                        int allow_ceil, rt_attrs *a, rt_shape *o)
{
    int nsp = x->ndim - 2;
    if (nsp < 1 || nsp > 2)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "%d-D input (only 1-D and 2-D spatial supported)",
                     nsp < 0 ? 0 : nsp);
    int c;
    int64_t k[2] = {1, 1}, s[2] = {1, 1}, dl[2] = {1, 1}, pb[2] = {0, 0}, pe[2] = {0, 0};
    int off = 2 - nsp; /* 1-D: fill only the W slot */
    const int64_t *p = attr_ints(n, "kernel_shape", &c);
    if (p) {
        if (c != nsp)
            return nfail(L, n, REFIT_ERR_MODEL, "kernel_shape has %d entries for %d spatial dims", c, nsp);
        for (int i = 0; i < nsp; i++) {
            if (kernel_in && p[i] != kernel_in[i])
                return nfail(L, n, REFIT_ERR_MODEL, "kernel_shape does not match the weight");
            k[off + i] = p[i];
        }
    } else if (kernel_in) {
        for (int i = 0; i < nsp; i++)
            k[off + i] = kernel_in[i];
    } else {
        return nfail(L, n, REFIT_ERR_MODEL, "missing kernel_shape");
    }
    if ((p = attr_ints(n, "strides", &c))) {
        if (c != nsp)
            return nfail(L, n, REFIT_ERR_MODEL, "strides has %d entries", c);
        for (int i = 0; i < nsp; i++)
            s[off + i] = p[i];
    }
    if ((p = attr_ints(n, "dilations", &c))) {
        if (c != nsp)
            return nfail(L, n, REFIT_ERR_MODEL, "dilations has %d entries", c);
        for (int i = 0; i < nsp; i++)
            dl[off + i] = p[i];
    }
    const char *ap = attr_s(n, "auto_pad", "NOTSET");
    int mode; /* 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID */
    if (!strcmp(ap, "NOTSET") || !ap[0])
        mode = 0;
    else if (!strcmp(ap, "SAME_UPPER"))
        mode = 1;
    else if (!strcmp(ap, "SAME_LOWER"))
        mode = 2;
    else if (!strcmp(ap, "VALID"))
        mode = 3;
    else
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute auto_pad=%.40s not supported", ap);
    if (mode == 0 && (p = attr_ints(n, "pads", &c))) {
        if (c != 2 * nsp)
            return nfail(L, n, REFIT_ERR_MODEL, "pads has %d entries for %d spatial dims", c, nsp);
        for (int i = 0; i < nsp; i++) {
            pb[off + i] = p[i];
            pe[off + i] = p[nsp + i];
        }
    }
    int64_t ceil_mode = allow_ceil ? attr_i(n, "ceil_mode", 0) : 0;
    if (ceil_mode != 0 && ceil_mode != 1)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute ceil_mode=%lld not supported",
                     (long long)ceil_mode);
    int64_t in[2] = {nsp == 2 ? x->d[2] : 1, x->d[x->ndim - 1]}, out[2];
    for (int i = 0; i < 2; i++) {
        if (k[i] < 1 || s[i] < 1 || dl[i] < 1 || pb[i] < 0 || pe[i] < 0 || k[i] > (1 << 20) ||
            s[i] > (1 << 20) || dl[i] > (1 << 20) || pb[i] > (1 << 20) || pe[i] > (1 << 20))
            return nfail(L, n, REFIT_ERR_MODEL, "invalid kernel/stride/dilation/pad value");
        int64_t ek = dl[i] * (k[i] - 1) + 1;
        if (mode == 1 || mode == 2) {
            out[i] = (in[i] + s[i] - 1) / s[i];
            int64_t total = (out[i] - 1) * s[i] + ek - in[i];
            if (total < 0)
                total = 0;
            pb[i] = mode == 1 ? total / 2 : total - total / 2;
            pe[i] = total - pb[i];
        } else {
            int64_t num = in[i] + pb[i] + pe[i] - ek;
            if (num < 0)
                return nfail(L, n, REFIT_ERR_MODEL,
                             "kernel (%lld, dilated %lld) larger than the padded input (%lld)",
                             (long long)k[i], (long long)ek, (long long)(in[i] + pb[i] + pe[i]));
            if (ceil_mode) { /* NOTSET or VALID (no pads); onnxruntime and PyTorch agree */
                out[i] = (num + s[i] - 1) / s[i] + 1;
                /* the last window must start inside the input or its left padding */
                if ((out[i] - 1) * s[i] >= in[i] + pb[i])
                    out[i]--;
            } else {
                out[i] = num / s[i] + 1;
            }
        }
        a->kernel[i] = k[i];
        a->strides[i] = s[i];
        a->dilations[i] = dl[i];
        a->pads[i] = pb[i];
        a->pads[2 + i] = pe[i];
    }
    o->ndim = x->ndim;
    if (nsp == 2)
        o->d[2] = out[0];
    o->d[x->ndim - 1] = out[1];
    return 0;
}

/* 1-D Conv/pools are promoted to 2-D for the backends: the input [N, C, L] and the weight
 * [M, C/g, k] go through an RT_OP_RESHAPE to [N, C, 1, L] / [M, C/g, 1, k] (folded for a CONST;
 * backends alias reshapes, so this costs no copy), the op runs 4-D, and a final RT_OP_RESHAPE
 * gives the model's 3-D output value. The weight keeps its 3-D shape for refit. */
static int to_4d(loader *L, const ox_node *n, int src, const char *tag, int *out)
{
    rt_shape s = L->vals[src].shape;
    s.ndim = 4;
    s.d[3] = s.d[2];
    s.d[2] = 1;
    size_t ln = strlen(n->name) + strlen(tag) + 16;
    char *vn = aalloc(L, ln), *nn = aalloc(L, ln);
    if (!vn || !nn)
        return NOMEM(L);
    snprintf(vn, ln, "%s::refit_%s4d", n->name, tag);
    snprintf(nn, ln, "%s::reshape_%s", n->name, tag);
    int rc = is_kind(L, src, RT_VAL_CONST) ? const_copy(L, n, src, &s, vn)
                                            : emit_named(L, n, nn, RT_OP_RESHAPE, &src, 1, &s, NULL, vn);
    *out = L->n_vals - 1;
    return rc;
}

/* Emits `op` 4-D for a 1-D node (see to_4d): ins[0] (and ins[1] for Conv) are reshaped first. */
static int emit_1d_as_2d(loader *L, const ox_node *n, rt_op op, const int *ins, int nin,
                         const rt_shape *o3, const rt_attrs *a)
{
    int v[3] = {ins[0], nin > 1 ? ins[1] : -1, nin > 2 ? ins[2] : -1}, rc;
    if ((rc = to_4d(L, n, ins[0], "x", &v[0])))
        return rc;
    if (op == RT_OP_CONV && (rc = to_4d(L, n, ins[1], "w", &v[1])))
        return rc;
    rt_shape o4 = {4, {o3->d[0], o3->d[1], 1, o3->d[2]}};
    size_t ln = strlen(n->out[0]) + 16, lnn = strlen(n->name) + 24;
    char *vn = aalloc(L, ln), *nn = aalloc(L, lnn);
    if (!vn || !nn)
        return NOMEM(L);
    snprintf(vn, ln, "%s::refit_4d", n->out[0]);
    if ((rc = emit_named(L, n, n->name, op, v, nin, &o4, a, vn)))
        return rc;
    int y4 = L->n_vals - 1;
    snprintf(nn, lnn, "%s::reshape_out", n->name);
    return emit_named(L, n, nn, RT_OP_RESHAPE, &y4, 1, o3, NULL, n->out[0]);
}

static int op_conv(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = need_f32(L, n, vin, nin, 0)) || (rc = need_f32(L, n, vin, nin, 1)))
        return rc;
    int has_b = nin > 2 && vin[2] >= 0;
    if (has_b && (rc = need_f32(L, n, vin, nin, 2)))
        return rc;
    const rt_shape *x = &L->vals[vin[0]].shape, *w = &L->vals[vin[1]].shape;
    if (x->ndim < 3 || x->ndim > 4)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "input %s: only 1-D and 2-D convolution supported",
                     shp(x, b1, sizeof b1));
    if (w->ndim != x->ndim)
        return nfail(L, n, REFIT_ERR_MODEL, "weight %s does not match input %s",
                     shp(w, b1, sizeof b1), shp(x, b2, sizeof b2));
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.group = attr_i(n, "group", 1);
    int64_t C = x->d[1], M = w->d[0];
    if (a.group < 1 || M % a.group)
        return nfail(L, n, REFIT_ERR_MODEL, "group=%lld does not divide %lld output channels",
                     (long long)a.group, (long long)M);
    if (w->d[1] * a.group != C)
        return nfail(L, n, REFIT_ERR_MODEL,
                     "weight %s expects %lld input channels (group=%lld) but the input %s has %lld",
                     shp(w, b1, sizeof b1), (long long)(w->d[1] * a.group), (long long)a.group,
                     shp(x, b2, sizeof b2), (long long)C);
    if (has_b && (L->vals[vin[2]].numel != (size_t)M || L->vals[vin[2]].shape.ndim != 1))
        return nfail(L, n, REFIT_ERR_MODEL, "bias %s does not match %lld output channels",
                     shp(&L->vals[vin[2]].shape, b1, sizeof b1), (long long)M);
    rt_shape o;
    if ((rc = spatial_geom(L, n, x, &w->d[2], 0, &a, &o)))
        return rc;
    o.d[0] = x->d[0];
    o.d[1] = M;
    int ins[3] = {vin[0], vin[1], has_b ? vin[2] : -1};
    if (x->ndim == 3)
        return emit_1d_as_2d(L, n, RT_OP_CONV, ins, has_b ? 3 : 2, &o, &a);
    return emit(L, n, RT_OP_CONV, ins, has_b ? 3 : 2, &o, &a);
}

static int op_pool(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    if ((rc = need_f32(L, n, vin, nin, 0)))
        return rc;
    const rt_shape *x = &L->vals[vin[0]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.group = 1;
    if (op == RT_OP_MAXPOOL && attr_i(n, "storage_order", 0) != 0 && n->n_out > 1 && n->out[1][0])
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute storage_order=1 not supported");
    if (op == RT_OP_AVGPOOL) {
        int64_t cip = attr_i(n, "count_include_pad", 0);
        if (cip != 0 && cip != 1)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute count_include_pad=%lld not supported",
                         (long long)cip);
        a.count_include_pad = (int)cip;
    }
    rt_shape o;
    if ((rc = spatial_geom(L, n, x, NULL, 1, &a, &o)))
        return rc;
    o.d[0] = x->d[0];
    o.d[1] = x->d[1];
    if (x->ndim == 3)
        return emit_1d_as_2d(L, n, op, vin, 1, &o, &a);
    return emit(L, n, op, vin, 1, &o, &a);
}

static int op_gemm(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = need_f32(L, n, vin, nin, 0)) || (rc = need_f32(L, n, vin, nin, 1)))
        return rc;
    int has_c = nin > 2 && vin[2] >= 0;
    if (has_c && (rc = need_f32(L, n, vin, nin, 2)))
        return rc;
    const rt_shape *A = &L->vals[vin[0]].shape, *B = &L->vals[vin[1]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.alpha = attr_f(n, "alpha", 1.0f);
    a.beta = attr_f(n, "beta", 1.0f);
    a.trans_a = (attr_i(n, "transA", 0) != 0) ^ L->cur_tr[0];
    a.trans_b = (attr_i(n, "transB", 0) != 0) ^ L->cur_tr[1];
    if (A->ndim != 2 || B->ndim != 2)
        return nfail(L, n, REFIT_ERR_MODEL, "A %s and B %s must be 2-D", shp(A, b1, sizeof b1),
                     shp(B, b2, sizeof b2));
    int64_t M = a.trans_a ? A->d[1] : A->d[0], K = a.trans_a ? A->d[0] : A->d[1];
    int64_t K2 = a.trans_b ? B->d[1] : B->d[0], N = a.trans_b ? B->d[0] : B->d[1];
    if (K != K2)
        return nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: A %s%s has K=%lld, B %s%s has K=%lld",
                     shp(A, b1, sizeof b1), a.trans_a ? "^T" : "", (long long)K,
                     shp(B, b2, sizeof b2), a.trans_b ? "^T" : "", (long long)K2);
    rt_shape o = {2, {M, N}};
    if (has_c) {
        const rt_shape *C = &L->vals[vin[2]].shape;
        int ok = C->ndim <= 2;
        for (int i = 0; ok && i < C->ndim; i++) {
            int64_t want = o.d[2 - C->ndim + i];
            ok = C->d[i] == 1 || C->d[i] == want;
        }
        if (!ok)
            return nfail(L, n, REFIT_ERR_MODEL, "C %s does not broadcast to %s",
                         shp(C, b1, sizeof b1), shp(&o, b2, sizeof b2));
    }
    int ins[3] = {vin[0], vin[1], has_c ? vin[2] : -1};
    return emit(L, n, RT_OP_GEMM, ins, has_c ? 3 : 2, &o, &a);
}

/* MatMul(A, Transpose(W)) with W [N, K]: Gemm(A2, W, transB=1) where A2 is A viewed as
 * [prod(A.shape[:-1]), K], and the result viewed back as A.shape[:-1] + [N]. */
static int matmul_transposed_b(loader *L, const ox_node *n, const int *vin)
{
    char b1[96], b2[96];
    const rt_shape A = L->vals[vin[0]].shape, W = L->vals[vin[1]].shape;
    if (W.ndim != 2 || A.ndim < 1 || A.d[A.ndim - 1] != W.d[1])
        return nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: %s x %s^T", shp(&A, b1, sizeof b1),
                     shp(&W, b2, sizeof b2));
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.alpha = 1.0f;
    a.beta = 1.0f;
    a.trans_b = 1;
    int64_t K = W.d[1], N = W.d[0], M = prod_dims(&A, 0, A.ndim - 1);
    rt_shape o = A;
    o.d[o.ndim - 1] = N;
    rt_shape g2 = {2, {M, N}};
    if (A.ndim == 2) {
        int ins[2] = {vin[0], vin[1]};
        return emit(L, n, RT_OP_GEMM, ins, 2, &o, &a);
    }
    size_t ln = strlen(n->name) + strlen(n->out[0]) + 32;
    char *nn = aalloc(L, ln), *vn = aalloc(L, ln);
    if (!nn || !vn)
        return NOMEM(L);
    rt_shape a2 = {2, {M, K}};
    int rc, ins[2] = {vin[0], vin[1]};
    snprintf(nn, ln, "%s::reshape_a", n->name);
    snprintf(vn, ln, "%s::refit_a2d", n->out[0]);
    if ((rc = emit_named(L, n, nn, RT_OP_RESHAPE, &vin[0], 1, &a2, NULL, vn)))
        return rc;
    ins[0] = L->n_vals - 1;
    snprintf(vn, ln, "%s::refit_2d", n->out[0]);
    if ((rc = emit_named(L, n, n->name, RT_OP_GEMM, ins, 2, &g2, &a, vn)))
        return rc;
    int y = L->n_vals - 1;
    snprintf(nn, ln, "%s::reshape_out", n->name);
    return emit_named(L, n, nn, RT_OP_RESHAPE, &y, 1, &o, NULL, n->out[0]);
}

static int op_matmul(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = need_f32(L, n, vin, nin, 0)) || (rc = need_f32(L, n, vin, nin, 1)))
        return rc;
    if (L->cur_tr[0])
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "a run-time Transpose as the first operand is not supported");
    if (L->cur_tr[1])
        return matmul_transposed_b(L, n, vin);
    const rt_shape *A = &L->vals[vin[0]].shape, *B = &L->vals[vin[1]].shape;
    if (A->ndim < 1 || B->ndim < 1)
        return nfail(L, n, REFIT_ERR_MODEL, "MatMul of a scalar");
    rt_shape a2 = *A, b2s = *B;
    if (a2.ndim == 1) { a2.ndim = 2; a2.d[1] = a2.d[0]; a2.d[0] = 1; }
    if (b2s.ndim == 1) { b2s.ndim = 2; b2s.d[1] = 1; }
    int64_t K = a2.d[a2.ndim - 1], K2 = b2s.d[b2s.ndim - 2];
    if (K != K2)
        return nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: %s x %s", shp(A, b1, sizeof b1),
                     shp(B, b2, sizeof b2));
    rt_shape ba = a2, bb = b2s, bo;
    ba.ndim -= 2;
    bb.ndim -= 2;
    const rt_shape *bs[2] = {&ba, &bb};
    if (bcast_shapes(bs, 2, &bo))
        return nfail(L, n, REFIT_ERR_MODEL, "batch dims of %s and %s do not broadcast",
                     shp(A, b1, sizeof b1), shp(B, b2, sizeof b2));
    rt_shape o = bo;
    if (A->ndim > 1)
        o.d[o.ndim++] = a2.d[a2.ndim - 2];
    if (B->ndim > 1) {
        if (o.ndim >= RT_MAX_DIMS)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "too many dims");
        o.d[o.ndim++] = b2s.d[b2s.ndim - 1];
    }
    return emit(L, n, RT_OP_MATMUL, vin, 2, &o, NULL);
}

static int op_binary(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = need_f32(L, n, vin, nin, 0)) || (rc = need_f32(L, n, vin, nin, 1)))
        return rc;
    const rt_shape *s[2] = {&L->vals[vin[0]].shape, &L->vals[vin[1]].shape};
    rt_shape o;
    if (bcast_shapes(s, 2, &o))
        return nfail(L, n, REFIT_ERR_MODEL, "shapes %s and %s do not broadcast",
                     shp(s[0], b1, sizeof b1), shp(s[1], b2, sizeof b2));
    return emit(L, n, op, vin, 2, &o, NULL);
}

static int op_batchnorm(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96];
    for (int k = 0; k < 5; k++)
        if ((rc = need_f32(L, n, vin, nin, k)))
            return rc;
    if (attr_i(n, "training_mode", 0) != 0)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute training_mode=1 not supported");
    if (attr_i(n, "spatial", 1) != 1)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute spatial=0 not supported");
    const rt_shape *x = &L->vals[vin[0]].shape;
    if (x->ndim < 2)
        return nfail(L, n, REFIT_ERR_MODEL, "input %s has no channel dim", shp(x, b1, sizeof b1));
    for (int k = 1; k < 5; k++)
        if (L->vals[vin[k]].numel != (size_t)x->d[1] || L->vals[vin[k]].shape.ndim != 1)
            return nfail(L, n, REFIT_ERR_MODEL, "'%s' %s does not match %lld channels",
                         L->vals[vin[k]].name, shp(&L->vals[vin[k]].shape, b1, sizeof b1),
                         (long long)x->d[1]);
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.epsilon = attr_f(n, "epsilon", 1e-5f);
    rt_shape o = *x;
    return emit(L, n, RT_OP_BATCHNORM, vin, 5, &o, &a);
}

static int op_concat(loader *L, const ox_node *n, const int *vin, int nin)
{
    char b1[96], b2[96];
    if (nin < 1)
        return nfail(L, n, REFIT_ERR_MODEL, "no inputs");
    const ox_attr *ax = attr_get(n, "axis");
    if (!ax)
        return nfail(L, n, REFIT_ERR_MODEL, "missing axis attribute");
    int all_const = 1, any_float = 0, any_int = 0;
    for (int i = 0; i < nin; i++) {
        if (vin[i] < 0)
            return nfail(L, n, REFIT_ERR_MODEL, "empty input name");
        all_const &= is_kind(L, vin[i], RT_VAL_CONST);
        if (L->vals[vin[i]].dtype == RT_F32)
            any_float = 1;
        else
            any_int = 1;
    }
    const rt_shape *s0 = &L->vals[vin[0]].shape;
    int64_t axis;
    if (norm_axis(ax->i, s0->ndim, &axis))
        return nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range for %s", (long long)ax->i,
                     shp(s0, b1, sizeof b1));
    rt_shape o = *s0;
    o.d[axis] = 0;
    for (int i = 0; i < nin; i++) {
        const rt_shape *si = &L->vals[vin[i]].shape;
        int ok = si->ndim == s0->ndim;
        for (int k = 0; ok && k < si->ndim; k++)
            ok = k == axis || si->d[k] == s0->d[k];
        if (!ok)
            return nfail(L, n, REFIT_ERR_MODEL, "input %s does not match %s outside axis %lld",
                         shp(si, b1, sizeof b1), shp(s0, b2, sizeof b2), (long long)axis);
        o.d[axis] += si->d[axis];
    }
    int rc = check_shape(L, n, &o);
    if (rc)
        return rc;
    if (all_const) {
        if (any_float && any_int)
            return nfail(L, n, REFIT_ERR_MODEL, "inputs of different types");
        int dt = L->vals[vin[0]].dtype;
        void *d;
        if ((rc = alloc_const(L, n, dt, &o, &d)))
            return rc;
        size_t outer = (size_t)prod_dims(&o, 0, (int)axis), es = esize(dt), pos = 0;
        for (size_t b = 0; b < outer; b++) {
            for (int i = 0; i < nin; i++) {
                const rt_value *v = &L->vals[vin[i]];
                size_t chunk = (size_t)prod_dims(&v->shape, (int)axis, v->shape.ndim);
                if (chunk)
                    memcpy((char *)d + pos * es, (const char *)v->data + b * chunk * es, chunk * es);
                pos += chunk;
            }
        }
        return make_const(L, n, n->out[0], dt, &o, d);
    }
    for (int i = 0; i < nin; i++)
        if ((rc = need_f32(L, n, vin, nin, i)))
            return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.axis = axis;
    return emit(L, n, RT_OP_CONCAT, vin, nin, &o, &a);
}

static int op_softmax(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    if ((rc = need_f32(L, n, vin, nin, 0)))
        return rc;
    const rt_shape x = L->vals[vin[0]].shape;
    int64_t axis;
    if (x.ndim < 1 || norm_axis(attr_i(n, "axis", L->opset < 13 ? 1 : -1), x.ndim, &axis))
        return nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
    rt_attrs a;
    memset(&a, 0, sizeof a);
    if (L->opset >= 13 || axis == x.ndim - 1) {
        a.axis = axis;
        return emit(L, n, RT_OP_SOFTMAX, vin, 1, &x, &a);
    }
    /* Before opset 13 the input is coerced to 2-D [prod(:axis), prod(axis:)] and softmax runs
     * over the second dim: Reshape -> Softmax(axis 1) -> Reshape back. */
    rt_shape s2 = {2, {prod_dims(&x, 0, (int)axis), prod_dims(&x, (int)axis, x.ndim)}};
    size_t len = strlen(n->out[0]) + 32;
    char *nm1 = aalloc(L, len), *nm2 = aalloc(L, len), *nn = aalloc(L, strlen(n->name) + 32);
    if (!nm1 || !nm2 || !nn)
        return NOMEM(L);
    snprintf(nm1, len, "%s::refit_2d_in", n->out[0]);
    snprintf(nm2, len, "%s::refit_2d_out", n->out[0]);
    int v1, v2;
    snprintf(nn, strlen(n->name) + 32, "%s::reshape_in", n->name);
    if ((rc = emit_named(L, n, nn, RT_OP_RESHAPE, vin, 1, &s2, NULL, nm1)))
        return rc;
    v1 = L->n_vals - 1;
    a.axis = 1;
    if ((rc = emit_named(L, n, n->name, RT_OP_SOFTMAX, &v1, 1, &s2, &a, nm2)))
        return rc;
    v2 = L->n_vals - 1;
    snprintf(nn, strlen(n->name) + 32, "%s::reshape_out", n->name);
    return emit_named(L, n, nn, RT_OP_RESHAPE, &v2, 1, &x, NULL, n->out[0]);
}

static int op_reducemean(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc, cnt;
    int64_t axes[RT_MAX_DIMS];
    if ((rc = need_f32(L, n, vin, nin, 0)) || (rc = get_axes(L, n, vin, nin, 18, axes, &cnt)))
        return rc;
    const rt_shape x = L->vals[vin[0]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.keepdims = attr_i(n, "keepdims", 1) != 0;
    if (cnt <= 0) {
        if (cnt == 0 || L->opset >= 18) {
            if (attr_i(n, "noop_with_empty_axes", 0))
                return passthrough(L, n, vin[0]);
        }
        for (int i = 0; i < x.ndim; i++)
            a.reduce_mask |= 1u << i;
    } else {
        for (int i = 0; i < cnt; i++) {
            int64_t ax;
            if (norm_axis(axes[i], x.ndim, &ax))
                return nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range", (long long)axes[i]);
            a.reduce_mask |= 1u << ax;
        }
    }
    rt_shape o = {0, {0}};
    for (int i = 0; i < x.ndim; i++) {
        if (a.reduce_mask & (1u << i)) {
            if (a.keepdims)
                o.d[o.ndim++] = 1;
        } else {
            o.d[o.ndim++] = x.d[i];
        }
    }
    return emit(L, n, RT_OP_REDUCEMEAN, vin, 1, &o, &a);
}

/* Clip bound k (1 = min, 2 = max) given as an input (opset >= 11). */
static int clip_bound(loader *L, const ox_node *n, const int *vin, int nin, int k, float *val,
                      int *from_input, int *in_idx)
{
    *in_idx = -1;
    if (k >= nin || vin[k] < 0)
        return 0;
    const rt_value *v = &L->vals[vin[k]];
    if (v->numel != 1)
        return nfail(L, n, REFIT_ERR_MODEL, "bound '%s' is not a scalar", v->name);
    if (v->kind == RT_VAL_CONST) {
        *val = d2f(cget_d(v, 0));
        return 0;
    }
    if (v->kind == RT_VAL_WEIGHT) {
        *from_input = 1;
        *in_idx = vin[k];
        return 0;
    }
    return nfail(L, n, REFIT_ERR_UNSUPPORTED, "bound '%s' computed at run time not supported", v->name);
}

static int op_clip(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    if ((rc = need_f32(L, n, vin, nin, 0)))
        return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.clip_min = -INFINITY;
    a.clip_max = INFINITY;
    int ins[3] = {vin[0], -1, -1}, nins = 1;
    if (L->opset < 11) {
        a.clip_min = attr_f(n, "min", -INFINITY);
        a.clip_max = attr_f(n, "max", INFINITY);
    } else {
        if ((rc = clip_bound(L, n, vin, nin, 1, &a.clip_min, &a.clip_min_from_input, &ins[1])) ||
            (rc = clip_bound(L, n, vin, nin, 2, &a.clip_max, &a.clip_max_from_input, &ins[2])))
            return rc;
        if (a.clip_min_from_input || a.clip_max_from_input)
            nins = 3;
    }
    rt_shape o = L->vals[vin[0]].shape;
    return emit(L, n, RT_OP_CLIP, ins, nins, &o, &a);
}

static int op_unary(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    if ((rc = need_f32(L, n, vin, nin, 0)))
        return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    if (op == RT_OP_LEAKYRELU)
        a.alpha = attr_f(n, "alpha", 0.01f);
    rt_shape o = L->vals[vin[0]].shape;
    if (op == RT_OP_GLOBALAVGPOOL) {
        if (o.ndim < 3 || o.ndim > 4)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "only 1-D and 2-D spatial inputs supported");
        for (int i = 2; i < o.ndim; i++)
            o.d[i] = 1;
    }
    return emit(L, n, op, vin, 1, &o, &a);
}

/* ============================================================================================
 * node dispatch
 * ========================================================================================== */

/* Ops evaluated at load when every input is CONST (integer or float). */
static int is_fold_op(const char *op)
{
    static const char *const ops[] = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice",
                                      "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Range",
                                      "Reshape", "Flatten", "Transpose", "Neg", "Equal", "Where",
                                      "Size", "Expand", "Less", "Greater", "Min", "Max",
                                      "Pow", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Abs", "Sqrt",
                                      "Exp", "Log", "Floor", "Ceil", "Reciprocal", "Not", NULL};
    for (int i = 0; ops[i]; i++)
        if (!strcmp(op, ops[i]))
            return 1;
    return 0;
}

/* The attributes ONNX defines for each op the loader accepts (run-time and load-time-folded ops),
 * with the opsets that define them: `since` is the first opset with the attribute, `until` the
 * last (0: still defined). Generated from onnx.defs.get_schema(op, opset).attributes for opsets
 * 7..OX_ATTR_TABLE_OPSET (tests/test_onnx_loader.py checks it against the installed onnx
 * package). A node's attribute outside this set is refused, as onnxruntime does: the loader
 * would otherwise ignore it and compute something else than the model means. Sorted by op
 * (strcmp order) for bsearch. */
#define OX_ATTR_TABLE_OPSET 28
#define OX_MAX_OP_ATTRS 9 /* Constant has 8; the last entry is always {NULL} */
typedef struct ox_attr_spec {
    const char *name;
    int since, until;
} ox_attr_spec;
typedef struct ox_op_attrs {
    const char *op;
    ox_attr_spec a[OX_MAX_OP_ATTRS];
} ox_op_attrs;
static const ox_op_attrs op_attr_table[] = {
    {"Abs", {{0}}},
    {"Add", {{0}}},
    {"AveragePool",
     {{"auto_pad", 7, 0}, {"count_include_pad", 7, 0}, {"kernel_shape", 7, 0}, {"pads", 7, 0},
      {"strides", 7, 0}, {"ceil_mode", 10, 0}, {"dilations", 19, 0}}},
    {"BatchNormalization",
     {{"epsilon", 7, 0}, {"momentum", 7, 0}, {"spatial", 7, 8}, {"training_mode", 14, 0}}},
    {"Cast", {{"to", 7, 0}, {"saturate", 19, 0}, {"round_mode", 24, 0}}},
    {"Ceil", {{0}}},
    {"Clip", {{"max", 7, 10}, {"min", 7, 10}}},
    {"Concat", {{"axis", 7, 0}}},
    {"Constant",
     {{"value", 7, 0}, {"sparse_value", 11, 0}, {"value_float", 12, 0}, {"value_floats", 12, 0},
      {"value_int", 12, 0}, {"value_ints", 12, 0}, {"value_string", 12, 0},
      {"value_strings", 12, 0}}},
    {"ConstantOfShape", {{"value", 9, 0}}},
    {"Conv",
     {{"auto_pad", 7, 0}, {"dilations", 7, 0}, {"group", 7, 0}, {"kernel_shape", 7, 0},
      {"pads", 7, 0}, {"strides", 7, 0}}},
    {"Div", {{0}}},
    {"Dropout", {{"ratio", 7, 11}, {"seed", 12, 0}}},
    {"Equal", {{0}}},
    {"Exp", {{0}}},
    {"Expand", {{0}}},
    {"Flatten", {{"axis", 7, 0}}},
    {"Floor", {{0}}},
    {"Gather", {{"axis", 7, 0}}},
    {"Gemm", {{"alpha", 7, 0}, {"beta", 7, 0}, {"transA", 7, 0}, {"transB", 7, 0}}},
    {"GlobalAveragePool", {{0}}},
    {"Greater", {{0}}},
    {"Identity", {{0}}},
    {"LeakyRelu", {{"alpha", 7, 0}}},
    {"Less", {{0}}},
    {"Log", {{0}}},
    {"MatMul", {{0}}},
    {"Max", {{0}}},
    {"MaxPool",
     {{"auto_pad", 7, 0}, {"kernel_shape", 7, 0}, {"pads", 7, 0}, {"strides", 7, 0},
      {"storage_order", 8, 0}, {"ceil_mode", 10, 0}, {"dilations", 10, 0}}},
    {"Min", {{0}}},
    {"Mul", {{0}}},
    {"Neg", {{0}}},
    {"Not", {{0}}},
    {"Pow", {{0}}},
    {"Range", {{"stash_type", 27, 0}}},
    {"Reciprocal", {{0}}},
    {"ReduceMean", {{"axes", 7, 17}, {"keepdims", 7, 0}, {"noop_with_empty_axes", 18, 0}}},
    {"Relu", {{0}}},
    {"Reshape", {{"allowzero", 14, 0}}},
    {"Shape", {{"end", 15, 0}, {"start", 15, 0}}},
    {"Sigmoid", {{0}}},
    {"Size", {{0}}},
    {"Slice", {{"axes", 7, 9}, {"ends", 7, 9}, {"starts", 7, 9}}},
    {"Softmax", {{"axis", 7, 0}}},
    {"Sqrt", {{0}}},
    {"Squeeze", {{"axes", 7, 12}}},
    {"Sub", {{0}}},
    {"Tanh", {{0}}},
    {"Transpose", {{"perm", 7, 0}}},
    {"Unsqueeze", {{"axes", 7, 12}}},
    {"Where", {{0}}},
};

static int op_attrs_cmp(const void *key, const void *ent)
{
    return strcmp((const char *)key, ((const ox_op_attrs *)ent)->op);
}

/* Every attribute name of a node whose op is in op_attr_table must be one ONNX defines for that
 * op at the model's opset. Ops not in the table are refused later as unsupported. */
static int check_attr_names(loader *L, const ox_node *n)
{
    const ox_op_attrs *t = bsearch(n->op, op_attr_table, sizeof op_attr_table / sizeof op_attr_table[0],
                                   sizeof op_attr_table[0], op_attrs_cmp);
    if (!t)
        return 0;
    for (int i = 0; i < n->n_attrs; i++) {
        const char *name = n->attrs[i].name;
        const ox_attr_spec *s = t->a;
        while (s->name && strcmp(s->name, name) != 0)
            s++;
        if (!s->name)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "unknown attribute '%.80s'", name);
        if (L->opset < s->since)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                         "unknown attribute '%s' (%s defines it from opset %d; the model imports "
                         "opset %lld)", name, t->op, s->since, (long long)L->opset);
        if (s->until && L->opset > s->until)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                         "unknown attribute '%s' (%s defines it in opsets %d to %d; the model "
                         "imports opset %lld)", name, t->op, s->since, s->until, (long long)L->opset);
    }
    return 0;
}

static int build_node(loader *L, const ox_node *n)
{
    const char *op = n->op;
    int rc;
    if (n->domain[0] && strcmp(n->domain, "ai.onnx") != 0)
        return nfail(L, n, REFIT_ERR_UNSUPPORTED, "domain '%.60s' not supported", n->domain);
    if ((rc = check_attr_names(L, n)))
        return rc;
    if (n->n_out < 1 || !n->out[0][0])
        return nfail(L, n, REFIT_ERR_MODEL, "no output");
    if ((rc = reserve_vals(L, 8)) || (rc = reserve_nodes(L, 4)))
        return rc;
    int nin = n->n_in;
    while (nin > 0 && !n->in[nin - 1][0])
        nin--; /* trailing omitted optional inputs */
    int *vin = aalloc(L, (size_t)(nin + 1) * sizeof *vin);
    if (!vin)
        return NOMEM(L);
    int all_const = nin > 0;
    L->cur_tr[0] = L->cur_tr[1] = 0;
    for (int i = 0; i < nin; i++) {
        if (!n->in[i][0]) {
            vin[i] = -1;
            continue;
        }
        vin[i] = strmap_get(&L->names, n->in[i]);
        if (vin[i] < 0 && (vin[i] = strmap_get(&L->tviews, n->in[i])) >= 0) {
            int ok = (!strcmp(n->op, "Gemm") && i < 2) || (!strcmp(n->op, "MatMul") && i == 1);
            if (!ok)
                return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                             "input '%s' is a Transpose of '%s' at run time, supported only as a "
                             "MatMul second operand or a Gemm operand", n->in[i], L->vals[vin[i]].name);
            L->cur_tr[i] = 1;
            all_const = 0;
            continue;
        }
        if (vin[i] < 0) {
            if (strmap_get(&L->dropped, n->in[i]) >= 0)
                return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                             "input '%s' is a secondary output (e.g. BatchNormalization running "
                             "stats, Dropout mask, MaxPool indices), which is not supported",
                             n->in[i]);
            return nfail(L, n, REFIT_ERR_MODEL, "input '%s' is not defined", n->in[i]);
        }
        if (L->vals[vin[i]].kind != RT_VAL_CONST)
            all_const = 0;
    }
    /* Secondary outputs: we produce only output 0. Record the others so a consumer gets a clear
     * message. */
    for (int i = 1; i < n->n_out; i++)
        if (n->out[i][0] && strmap_put(&L->dropped, n->out[i], 1))
            return NOMEM(L);
    for (int i = 1; i < n->n_out; i++)
        if (n->out[i][0] && strmap_get(&L->graph_outs, n->out[i]) >= 0)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "output #%d ('%s') as a graph output is not supported",
                         i, n->out[i]);

#define IS(name) (!strcmp(op, name))
#define NEED(k)                                                                     \
    do {                                                                            \
        if (nin <= (k) || vin[k] < 0)                                               \
            return nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", (int)(k));      \
    } while (0)

    if (IS("Constant"))
        return fold_constant(L, n);
    if (IS("Shape")) {
        NEED(0);
        return fold_shape(L, n, vin[0]);
    }
    if (IS("Identity")) {
        NEED(0);
        return do_identity(L, n, vin[0]);
    }
    if (IS("Dropout")) {
        NEED(0);
        if (nin > 2 && vin[2] >= 0) {
            const rt_value *tm = &L->vals[vin[2]];
            if (tm->kind != RT_VAL_CONST || tm->numel != 1 || cget_d(tm, 0) != 0)
                return nfail(L, n, REFIT_ERR_UNSUPPORTED, "training_mode must be a constant false");
        }
        return passthrough(L, n, vin[0]);
    }
    if (IS("Cast")) {
        NEED(0);
        if (all_const)
            return fold_cast(L, n, vin[0]);
        if (attr_i(n, "to", 0) == RT_F32 && L->vals[vin[0]].dtype == RT_F32)
            return passthrough(L, n, vin[0]);
        if (L->vals[vin[0]].kind != RT_VAL_WEIGHT)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "Cast to %s on run-time data not supported",
                         ox_dtype_name((int)attr_i(n, "to", 0)));
        /* a weight cast to another type: the generic refusal below explains how to fold it */
    }
    if (IS("Size")) {
        NEED(0);
        rt_shape s = {0, {0}};
        int64_t *d = malloc(sizeof *d);
        if (!d)
            return NOMEM(L);
        *d = (int64_t)L->vals[vin[0]].numel;
        return make_const(L, n, n->out[0], RT_I64, &s, d);
    }
    if (IS("Transpose") && !all_const) {
        NEED(0);
        const rt_value *x = &L->vals[vin[0]];
        int c;
        const int64_t *perm = attr_ints(n, "perm", &c);
        int r = x->shape.ndim, identity = 1;
        if (perm) {
            int seen[RT_MAX_DIMS] = {0};
            if (c != r)
                return nfail(L, n, REFIT_ERR_MODEL, "perm has %d entries for rank %d", c, r);
            for (int i = 0; i < r; i++)
                if (perm[i] < 0 || perm[i] >= r || seen[perm[i]]++)
                    return nfail(L, n, REFIT_ERR_MODEL, "perm is not a permutation");
        }
        for (int i = 0; i < r; i++)
            identity &= (perm ? perm[i] : r - 1 - i) == i;
        if (identity)
            return passthrough(L, n, vin[0]);
        int swap2 = r == 2; /* the only non-identity permutation of 2 dims */
        if (!swap2)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                         "Transpose of run-time data or a weight is supported only for 2-D perm [1, 0] "
                         "feeding MatMul/Gemm");
        if (strmap_get(&L->graph_outs, n->out[0]) >= 0)
            return nfail(L, n, REFIT_ERR_UNSUPPORTED, "a run-time Transpose as a graph output is not supported");
        return strmap_put(&L->tviews, n->out[0], vin[0]) ? NOMEM(L) : 0;
    }
    if (all_const && is_fold_op(op)) {
        NEED(0); /* every fold op reads input 0; an omitted one must not reach them */
        if (IS("Gather")) {
            NEED(1);
            return fold_gather(L, n, vin);
        }
        if (IS("Slice"))
            return fold_slice(L, n, vin, nin);
        if (IS("ConstantOfShape"))
            return fold_constant_of_shape(L, n, vin[0]);
        if (IS("Add") || IS("Sub") || IS("Mul") || IS("Div") || IS("Equal") || IS("Where") ||
            IS("Less") || IS("Greater") || IS("Pow") || ((IS("Min") || IS("Max")) && nin == 2)) {
            for (int i = 0; i < nin; i++)
                if (vin[i] < 0)
                    return nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", i);
            return fold_binary(L, n, vin, nin);
        }
        if (IS("Relu") || IS("LeakyRelu") || IS("Sigmoid") || IS("Tanh") || IS("Abs") || IS("Sqrt") ||
            IS("Exp") || IS("Log") || IS("Floor") || IS("Ceil") || IS("Reciprocal") || IS("Not"))
            return fold_unary(L, n, vin[0]);
        if (IS("Range"))
            return fold_range(L, n, vin, nin);
        if (IS("Transpose"))
            return fold_transpose(L, n, vin[0]);
        if (IS("Neg"))
            return fold_neg(L, n, vin[0]);
        if (IS("Expand")) {
            NEED(1);
            return fold_expand(L, n, vin);
        }
        /* Unsqueeze / Squeeze / Concat / Reshape / Flatten: handled below, folding on CONST data */
    }
    if (IS("Reshape")) {
        NEED(0);
        NEED(1);
        int64_t sh[RT_MAX_DIMS];
        int cnt;
        if ((rc = const_ints(L, n, vin[1], "shape", sh, RT_MAX_DIMS, &cnt)))
            return rc;
        rt_shape o;
        if ((rc = reshape_shape(L, n, &L->vals[vin[0]].shape, sh, cnt, (int)attr_i(n, "allowzero", 0), &o)))
            return rc;
        return reshape_like(L, n, vin[0], &o, RT_OP_RESHAPE, 0);
    }
    if (IS("Flatten")) {
        NEED(0);
        const rt_shape *x = &L->vals[vin[0]].shape;
        int64_t axis = attr_i(n, "axis", 1);
        if (axis < 0)
            axis += x->ndim;
        if (axis < 0 || axis > x->ndim)
            return nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
        rt_shape o = {2, {prod_dims(x, 0, (int)axis), prod_dims(x, (int)axis, x->ndim)}};
        return reshape_like(L, n, vin[0], &o, RT_OP_FLATTEN, axis);
    }
    if (IS("Squeeze") || IS("Unsqueeze")) {
        NEED(0);
        int64_t axes[RT_MAX_DIMS];
        int cnt;
        if ((rc = get_axes(L, n, vin, nin, 13, axes, &cnt)))
            return rc;
        rt_shape o;
        rc = IS("Squeeze") ? squeeze_shape(L, n, &L->vals[vin[0]].shape, axes, cnt, &o)
                           : unsqueeze_shape(L, n, &L->vals[vin[0]].shape, axes, cnt, &o);
        if (rc)
            return rc;
        return reshape_like(L, n, vin[0], &o, RT_OP_RESHAPE, 0);
    }
    if (IS("Concat"))
        return op_concat(L, n, vin, nin);
    if (IS("Conv"))
        return op_conv(L, n, vin, nin);
    if (IS("Gemm"))
        return op_gemm(L, n, vin, nin);
    if (IS("MatMul"))
        return op_matmul(L, n, vin, nin);
    if (IS("Add"))
        return op_binary(L, n, vin, nin, RT_OP_ADD);
    if (IS("Sub"))
        return op_binary(L, n, vin, nin, RT_OP_SUB);
    if (IS("Mul"))
        return op_binary(L, n, vin, nin, RT_OP_MUL);
    if (IS("Div"))
        return op_binary(L, n, vin, nin, RT_OP_DIV);
    if (IS("Relu"))
        return op_unary(L, n, vin, nin, RT_OP_RELU);
    if (IS("Sigmoid"))
        return op_unary(L, n, vin, nin, RT_OP_SIGMOID);
    if (IS("LeakyRelu"))
        return op_unary(L, n, vin, nin, RT_OP_LEAKYRELU);
    if (IS("GlobalAveragePool"))
        return op_unary(L, n, vin, nin, RT_OP_GLOBALAVGPOOL);
    if (IS("Clip"))
        return op_clip(L, n, vin, nin);
    if (IS("BatchNormalization"))
        return op_batchnorm(L, n, vin, nin);
    if (IS("MaxPool"))
        return op_pool(L, n, vin, nin, RT_OP_MAXPOOL);
    if (IS("AveragePool"))
        return op_pool(L, n, vin, nin, RT_OP_AVGPOOL);
    if (IS("Softmax"))
        return op_softmax(L, n, vin, nin);
    if (IS("ReduceMean"))
        return op_reducemean(L, n, vin, nin);
    if (is_fold_op(op) || IS("Cast")) {
        for (int i = 0; i < nin; i++)
            if (vin[i] >= 0 && L->vals[vin[i]].kind == RT_VAL_WEIGHT)
                return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                             "unsupported op on a refittable weight ('%s'); it is evaluated at load "
                             "only when all its inputs are constants (leave '%s' out of the "
                             "'refittable' option to fold it)", L->vals[vin[i]].name, L->vals[vin[i]].name);
        return nfail(L, n, REFIT_ERR_UNSUPPORTED,
                     "unsupported op on run-time data (only evaluated at load when all its inputs "
                     "are constants)");
    }
    return nfail(L, n, REFIT_ERR_UNSUPPORTED, "unsupported op");
#undef IS
#undef NEED
}

/* ============================================================================================
 * options, topological order, graph assembly
 * ========================================================================================== */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
    return s;
}

static int parse_refittable(loader *L, const char *spec)
{
    L->explicit_refit = 1;
    char *buf = aalloc(L, strlen(spec) + 1);
    if (!buf)
        return NOMEM(L);
    strcpy(buf, spec);
    char *p = buf;
    while (p) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = 0;
        char *name = trim(p);
        if (name[0] && strmap_put(&L->refit_set, name, 0))
            return NOMEM(L);
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

static int parse_input_shape(loader *L, const char *spec)
{
    char *buf = aalloc(L, strlen(spec) + 1);
    int cap = 1;
    for (const char *q = spec; *q; q++)
        cap += *q == ';';
    L->shape_opt_v = aalloc(L, (size_t)cap * sizeof *L->shape_opt_v);
    L->shape_opt_used = aalloc(L, (size_t)cap * sizeof *L->shape_opt_used);
    if (!buf || !L->shape_opt_v || !L->shape_opt_used)
        return NOMEM(L);
    strcpy(buf, spec);
    char *p = buf;
    while (p) {
        char *semi = strchr(p, ';');
        if (semi)
            *semi = 0;
        char *seg = trim(p);
        p = semi ? semi + 1 : NULL;
        if (!seg[0])
            continue;
        char *colon = strrchr(seg, ':');
        if (!colon)
            return fail(L, REFIT_ERR_INVALID_ARG,
                        "input_shape: cannot parse '%.80s' (expected name:1x3x224x224)", seg);
        *colon = 0;
        char *name = trim(seg), *dims = trim(colon + 1);
        rt_shape s = {0, {0}};
        char *q = dims;
        int ok = name[0] && dims[0];
        while (ok && *q) {
            char *end;
            if (*q < '0' || *q > '9' || s.ndim >= RT_MAX_DIMS) {
                ok = 0;
                break;
            }
            long long v = strtoll(q, &end, 10);
            if (v <= 0 || v > (1ll << 31)) {
                ok = 0;
                break;
            }
            s.d[s.ndim++] = v;
            q = end;
            if (*q == 'x' || *q == 'X' || *q == ',') {
                q++;
                if (!*q)
                    ok = 0;
            } else if (*q) {
                ok = 0;
            }
        }
        if (!ok)
            return fail(L, REFIT_ERR_INVALID_ARG,
                        "input_shape: cannot parse '%.60s:%.40s' (expected name:1x3x224x224 with "
                        "positive dims)", name, dims);
        if (strmap_get(&L->shape_opt, name) >= 0)
            return fail(L, REFIT_ERR_INVALID_ARG, "input_shape: input '%.80s' given twice", name);
        L->shape_opt_v[L->n_shape_opt] = s;
        if (strmap_put(&L->shape_opt, name, L->n_shape_opt++))
            return NOMEM(L);
    }
    return 0;
}

/* Orders nodes so every input is defined before use (ONNX requires it; we check): Kahn's
 * algorithm taking the ready node of lowest file index first, so a graph that is already sorted
 * keeps its order. O((nodes + edges) log nodes) whatever the file's order. */
static void heap_push(int *h, int *n, int v)
{
    int i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static int heap_pop(int *h, int *n)
{
    int top = h[0], v = h[--(*n)], i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (h[c] >= v)
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = v;
    return top;
}

static int topo_order(loader *L, int *order)
{
    const ox_graph *g = &L->g;
    int nn = g->n_nodes, rc = 0, n_done = 0, hn = 0;
    strmap avail = {0}, producer = {0};
    size_t n_edges = 0;
    for (int i = 0; i < nn; i++)
        n_edges += (size_t)g->nodes[i].n_in;
    int *pending = calloc((size_t)nn + 1, sizeof *pending);
    int *first = calloc((size_t)nn + 2, sizeof *first); /* CSR: edges of producer p */
    int *edge = malloc((n_edges + 1) * sizeof *edge);
    int *heap = malloc(((size_t)nn + 1) * sizeof *heap);
    if (!pending || !first || !edge || !heap) {
        rc = NOMEM(L);
        goto done;
    }
    for (int i = 0; i < g->n_inits && !rc; i++)
        if (strmap_put(&avail, g->inits[i].name, 1))
            rc = NOMEM(L);
    for (int i = 0; i < g->n_inputs && !rc; i++)
        if (strmap_put(&avail, g->inputs[i].name, 1))
            rc = NOMEM(L);
    for (int i = 0; i < nn && !rc; i++) {
        const ox_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_out && !rc; k++) {
            const char *o = n->out[k];
            if (!o[0])
                continue;
            if (strmap_get(&producer, o) >= 0 || strmap_get(&avail, o) >= 0)
                rc = nfail(L, n, REFIT_ERR_MODEL, "output '%s' is already defined elsewhere", o);
            else if (strmap_put(&producer, o, i))
                rc = NOMEM(L);
        }
    }
    /* edges producer -> consumer, counted then filled (CSR) */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (int i = 0; i < nn && !rc; i++) {
            const ox_node *n = &g->nodes[i];
            for (int k = 0; k < n->n_in; k++) {
                const char *in = n->in[k];
                if (!in[0] || strmap_get(&avail, in) >= 0)
                    continue;
                int p = strmap_get(&producer, in);
                if (p < 0) {
                    rc = nfail(L, n, REFIT_ERR_MODEL,
                               "input '%s' is not produced by any node, initializer or graph input", in);
                    break;
                }
                if (pass == 0) {
                    first[p + 1]++;
                    pending[i]++;
                } else {
                    edge[first[p]++] = i;
                }
            }
        }
        if (pass == 0) {
            for (int p = 0; p < nn; p++)
                first[p + 1] += first[p];
        } else {
            for (int p = nn; p > 0; p--) /* first[p] advanced to the end of p's edges: shift back */
                first[p] = first[p - 1];
            first[0] = 0;
        }
    }
    for (int i = 0; i < nn && !rc; i++)
        if (pending[i] == 0)
            heap_push(heap, &hn, i);
    while (!rc && hn > 0) {
        int i = heap_pop(heap, &hn);
        order[n_done++] = i;
        for (int e = first[i]; e < first[i + 1]; e++)
            if (--pending[edge[e]] == 0)
                heap_push(heap, &hn, edge[e]);
    }
    if (!rc && n_done < nn) {
        for (int i = 0; i < nn && !rc; i++) {
            if (pending[i] == 0)
                continue;
            const ox_node *n = &g->nodes[i];
            for (int k = 0; k < n->n_in && !rc; k++) {
                const char *in = n->in[k];
                int p = in[0] && strmap_get(&avail, in) < 0 ? strmap_get(&producer, in) : -1;
                if (p >= 0 && pending[p] > 0)
                    rc = nfail(L, n, REFIT_ERR_MODEL, "cycle in the graph through input '%s'", in);
            }
        }
        if (!rc)
            rc = fail(L, REFIT_ERR_MODEL, "cannot order the graph");
    }
done:
    strmap_free(&avail);
    strmap_free(&producer);
    free(pending);
    free(first);
    free(edge);
    free(heap);
    return rc;
}

static int add_initializers(loader *L)
{
    const ox_graph *g = &L->g;
    int rc;
    for (int i = 0; i < g->n_inits; i++) {
        const ox_tensor *t = &g->inits[i];
        if (!t->name[0])
            return fail(L, REFIT_ERR_MODEL, "initializer #%d has no name", i);
        if (strmap_get(&L->names, t->name) >= 0)
            return fail(L, REFIT_ERR_MODEL, "initializer '%s' is defined twice", t->name);
        rt_shape s = {t->ndim, {0}};
        memcpy(s.d, t->dims, sizeof s.d);
        void *d;
        if ((rc = tensor_decode(L, t, &d)))
            return rc;
        int isf = is_float_dtype(t->dtype), idx;
        int weight = isf && (!L->explicit_refit || strmap_get(&L->refit_set, t->name) >= 0);
        if (L->explicit_refit && !isf && strmap_get(&L->refit_set, t->name) >= 0) {
            free(d);
            return fail(L, REFIT_ERR_NOT_FOUND,
                        "refittable: '%s' is a %s initializer; only float initializers are "
                        "refittable", t->name, ox_dtype_name(t->dtype));
        }
        if (weight) {
            if (L->explicit_refit)
                strmap_put(&L->refit_set, t->name, 1);
            rc = add_value(L, t->name, RT_VAL_WEIGHT, RT_F32, &s, NULL, d, &idx);
        } else {
            rc = add_value(L, t->name, RT_VAL_CONST, isf ? RT_F32 : RT_I64, &s, d, NULL, &idx);
        }
        if (rc)
            return rc;
    }
    return 0;
}

static int add_inputs(loader *L)
{
    const ox_graph *g = &L->g;
    int rc;
    char b1[96];
    for (int i = 0; i < g->n_inputs; i++) {
        const ox_vi *v = &g->inputs[i];
        if (!v->name[0])
            return fail(L, REFIT_ERR_MODEL, "graph input #%d has no name", i);
        int prev = strmap_get(&L->names, v->name);
        if (prev >= 0) {
            if (L->vals[prev].kind == RT_VAL_INPUT)
                return fail(L, REFIT_ERR_MODEL, "graph input '%s' is listed twice", v->name);
            continue; /* an initializer also listed as input (IR < 4 exporters): not a run-time input */
        }
        if (!v->is_tensor)
            return fail(L, REFIT_ERR_UNSUPPORTED, "graph input '%s' is not a tensor", v->name);
        if (v->elem_type != 0 && v->elem_type != RT_F32)
            return fail(L, REFIT_ERR_UNSUPPORTED,
                        "graph input '%s' is %s; only float32 inputs are supported", v->name,
                        ox_dtype_name(v->elem_type));
        rt_shape s = {v->ndim, {0}};
        int oi = strmap_get(&L->shape_opt, v->name);
        if (oi >= 0) {
            const rt_shape *o = &L->shape_opt_v[oi];
            L->shape_opt_used[oi] = 1;
            if (v->has_shape && o->ndim != v->ndim)
                return fail(L, REFIT_ERR_INVALID_ARG,
                            "input_shape: '%s' is given %d dims but the model's input has %d",
                            v->name, o->ndim, v->ndim);
            for (int k = 0; v->has_shape && k < v->ndim; k++)
                if (v->dims[k] >= 0 && v->dims[k] != o->d[k])
                    return fail(L, REFIT_ERR_INVALID_ARG,
                                "input_shape: '%s' dim %d is given as %lld but the model fixes it to %lld",
                                v->name, k, (long long)o->d[k], (long long)v->dims[k]);
            s = *o;
        } else {
            if (!v->has_shape)
                return fail(L, REFIT_ERR_MODEL,
                            "graph input '%s' has no shape; give one with the input_shape option",
                            v->name);
            for (int k = 0; k < v->ndim; k++)
                s.d[k] = v->dims[k] < 0 ? 1 : v->dims[k];
        }
        if (dims_numel(s.d, s.ndim) < 0)
            return fail(L, REFIT_ERR_MODEL, "graph input '%s' has an invalid shape %s", v->name,
                        shp(&s, b1, sizeof b1));
        int idx;
        if ((rc = add_value(L, v->name, RT_VAL_INPUT, RT_F32, &s, NULL, NULL, &idx)))
            return rc;
    }
    for (int i = 0; i < L->n_shape_opt; i++) {
        if (L->shape_opt_used[i])
            continue;
        for (size_t k = 0; k < L->shape_opt.cap; k++)
            if (L->shape_opt.keys[k] && L->shape_opt.vals[k] == i)
                return fail(L, REFIT_ERR_INVALID_ARG,
                            "input_shape: '%s' is not a run-time input of the model",
                            L->shape_opt.keys[k]);
    }
    return 0;
}

static int add_outputs(loader *L)
{
    const ox_graph *g = &L->g;
    if (g->n_outputs == 0)
        return fail(L, REFIT_ERR_MODEL, "the graph has no outputs");
    for (int j = 0; j < g->n_outputs; j++) {
        const char *name = g->outputs[j].name;
        int v = strmap_get(&L->names, name);
        if (v < 0) {
            if (strmap_get(&L->dropped, name) >= 0)
                return fail(L, REFIT_ERR_UNSUPPORTED,
                            "graph output '%s' is a secondary node output, which is not supported", name);
            return fail(L, REFIT_ERR_MODEL, "graph output '%s' is not produced by the graph", name);
        }
        if (L->vals[v].dtype != RT_F32)
            return fail(L, REFIT_ERR_UNSUPPORTED, "graph output '%s' is %s; outputs must be float",
                        name, rt_dtype_name(L->vals[v].dtype));
        if (strcmp(L->vals[v].name, name) != 0) {
            /* a rewired name: give the output its own value */
            int rc;
            rt_shape s = L->vals[v].shape;
            ox_node fake = {.name = name, .op = "Identity"};
            const char *outs[1] = {name};
            fake.out = outs;
            fake.n_out = 1;
            if ((rc = emit(L, &fake, RT_OP_IDENTITY, &v, 1, &s, NULL)))
                return rc;
            v = L->n_vals - 1;
        }
        if (L->vals[v].output_index >= 0)
            return fail(L, REFIT_ERR_MODEL, "graph output '%s' is listed twice", name);
        L->vals[v].output_index = j;
    }
    return 0;
}

/* Drops nodes no graph output depends on, and values nothing uses (weights and inputs always
 * stay), then moves everything into a new rt_graph. */
static int assemble(loader *L, rt_graph **out)
{
    int nv = L->n_vals, rc = 0;
    char *need = calloc((size_t)nv + 1, 1);
    char *live = calloc((size_t)L->n_nodes + 1, 1);
    int *remap = malloc(((size_t)nv + 1) * sizeof *remap);
    rt_graph *g = calloc(1, sizeof *g);
    if (!need || !live || !remap || !g) {
        rc = NOMEM(L);
        goto done;
    }
    for (int i = 0; i < nv; i++)
        need[i] = L->vals[i].output_index >= 0 || L->vals[i].kind == RT_VAL_INPUT ||
                  L->vals[i].kind == RT_VAL_WEIGHT;
    for (int i = L->n_nodes - 1; i >= 0; i--) {
        const rt_node *nd = &L->nodes[i];
        if (!need[nd->out] || L->vals[nd->out].kind != RT_VAL_INTERMEDIATE)
            continue;
        live[i] = 1;
        for (int k = 0; k < nd->n_in; k++)
            if (nd->in[k] >= 0)
                need[nd->in[k]] = 1;
    }
    int n_keep = 0;
    for (int i = 0; i < nv; i++)
        remap[i] = need[i] ? n_keep++ : -1;
    int n_live = 0;
    for (int i = 0; i < L->n_nodes; i++)
        n_live += live[i];
    g->values = calloc((size_t)n_keep + 1, sizeof *g->values);
    g->nodes = calloc((size_t)n_live + 1, sizeof *g->nodes);
    g->inputs = calloc((size_t)L->n_inputs + 1, sizeof *g->inputs);
    g->outputs = calloc((size_t)L->g.n_outputs + 1, sizeof *g->outputs);
    g->weights = calloc((size_t)L->n_weights + 1, sizeof *g->weights);
    g->weight_init = calloc((size_t)L->n_weights + 1, sizeof *g->weight_init);
    if (!g->values || !g->nodes || !g->inputs || !g->outputs || !g->weights || !g->weight_init) {
        rc = NOMEM(L);
        goto done;
    }
    for (int i = 0; i < nv; i++) {
        rt_value *v = &L->vals[i];
        if (remap[i] < 0)
            continue;
        int j = remap[i];
        g->values[j] = *v;
        if (v->kind == RT_VAL_INPUT)
            g->inputs[v->index] = j;
        if (v->kind == RT_VAL_WEIGHT) {
            g->weights[v->index] = j;
            g->weight_init[v->index] = L->winit[i];
            L->winit[i] = NULL;
        }
        if (v->output_index >= 0)
            g->outputs[v->output_index] = j;
        v->name = NULL; /* moved */
        v->data = NULL;
    }
    g->n_values = n_keep;
    g->n_inputs = L->n_inputs;
    g->n_outputs = L->g.n_outputs;
    g->n_weights = L->n_weights;
    for (int i = 0; i < L->n_nodes; i++) {
        if (!live[i])
            continue;
        rt_node *nd = &g->nodes[g->n_nodes++];
        *nd = L->nodes[i];
        L->nodes[i].name = NULL;
        nd->out = remap[nd->out];
        for (int k = 0; k < RT_MAX_NODE_INPUTS; k++)
            nd->in[k] = k < nd->n_in && nd->in[k] >= 0 ? remap[nd->in[k]] : -1;
    }
    *out = g;
    g = NULL;
done:
    free(need);
    free(live);
    free(remap);
    rt_graph_destroy(g);
    return rc;
}

static void loader_free(loader *L)
{
    for (int i = 0; i < L->n_vals; i++) {
        free(L->vals[i].name);
        free(L->vals[i].data);
        free(L->winit[i]);
    }
    for (int i = 0; i < L->n_nodes; i++)
        free(L->nodes[i].name);
    free(L->vals);
    free(L->winit);
    free(L->nodes);
    strmap_free(&L->refit_set);
    strmap_free(&L->shape_opt);
    strmap_free(&L->names);
    strmap_free(&L->dropped);
    strmap_free(&L->graph_outs);
    strmap_free(&L->tviews);
    arena_free(L->arena);
}

int rt_graph_from_onnx(const void *data, size_t size, const rt_load_options *opts, rt_graph **out,
                       char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    loader L;
    memset(&L, 0, sizeof L);
    L.err = err;
    L.errlen = errlen;
    if (!out)
        return fail(&L, REFIT_ERR_INVALID_ARG, "rt_graph_from_onnx: out is NULL");
    *out = NULL;
    if (!data || size == 0)
        return fail(&L, REFIT_ERR_MODEL, "empty model");
    int rc = 0;
    int *order = NULL;
    if (opts && opts->refittable && (rc = parse_refittable(&L, opts->refittable)))
        goto done;
    if (opts && opts->input_shape && (rc = parse_input_shape(&L, opts->input_shape)))
        goto done;
    if ((rc = parse_model(&L, data, size)))
        goto done;
    for (int j = 0; j < L.g.n_outputs; j++)
        if (strmap_put(&L.graph_outs, L.g.outputs[j].name, j)) {
            rc = NOMEM(&L);
            goto done;
        }
    if ((rc = add_initializers(&L)) || (rc = add_inputs(&L)))
        goto done;
    order = malloc(((size_t)L.g.n_nodes + 1) * sizeof *order);
    if (!order) {
        rc = NOMEM(&L);
        goto done;
    }
    if ((rc = topo_order(&L, order)))
        goto done;
    for (int i = 0; i < L.g.n_nodes; i++)
        if ((rc = build_node(&L, &L.g.nodes[order[i]])))
            goto done;
    if ((rc = add_outputs(&L)))
        goto done;
    if (L.explicit_refit) {
        for (size_t k = 0; k < L.refit_set.cap; k++)
            if (L.refit_set.keys[k] && L.refit_set.vals[k] == 0) {
                rc = fail(&L, REFIT_ERR_NOT_FOUND,
                          "refittable: '%s' is not a float initializer of the model",
                          L.refit_set.keys[k]);
                goto done;
            }
    }
    rc = assemble(&L, out);
done:
    free(order);
    loader_free(&L);
    return rc;
}
