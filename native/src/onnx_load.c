/*
 * onnx_load.c — ONNX protobuf -> parsed structs -> rt_graph: parsing, the value/node helpers
 * every op uses, options, topological order and graph assembly (rt_graph_from_onnx).
 * See onnx_internal.h for the two phases.
 */
#include "onnx_internal.h"

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


int ox_strmap_get(const strmap *m, const char *key)
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
int ox_strmap_put(strmap *m, const char *key, int val)
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


/* Messages are one line: names from the file may hold control characters, shown as '?'. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

int ox_fail(loader *L, int code, const char *fmt, ...)
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

int ox_nfail(loader *L, const ox_node *n, int code, const char *fmt, ...)
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


void *ox_aalloc(loader *L, size_t size) { return arena_alloc(&L->arena, size); }

static const char *astr(loader *L, const uint8_t *data, size_t len)
{
    char *s = ox_aalloc(L, len + 1);
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

size_t ox_elem_size(int dtype)
{
    switch (dtype) {
    case RT_F32: case RT_I32: case OX_U32: return 4;
    case RT_U8: case RT_I8: case OX_BOOL: return 1;
    case OX_U16: case OX_I16: case RT_F16: case OX_BF16: return 2;
    case RT_I64: case RT_F64: case OX_U64: return 8;
    default: return 0;
    }
}

int ox_is_float_dtype(int dtype)
{
    return dtype == RT_F32 || dtype == RT_F16 || dtype == RT_F64 || dtype == OX_BF16;
}

const char *ox_dtype_name(int dtype)
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
int64_t ox_dims_numel(const int64_t *d, int ndim)
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
        return ox_fail(L, REFIT_ERR_UNSUPPORTED,
                       "tensor '%s': external data (data_location=EXTERNAL) is not supported; save the "
                       "model with its tensors inside the file", t->name);
    if (ndim > RT_MAX_DIMS)
        return ox_fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s' has %ld dims; at most %d are supported",
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
    int64_t numel = ox_dims_numel(t->dims, t->ndim);
    if (numel < 0)
        return ox_fail(L, REFIT_ERR_MODEL, "tensor '%s' has an invalid or too large shape", t->name);
    t->numel = (size_t)numel;
    if (dtype == OX_STRING || nstr)
        return ox_fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s': string tensors are not supported", t->name);
    size_t es = ox_elem_size(t->dtype);
    if (es == 0)
        return ox_fail(L, REFIT_ERR_UNSUPPORTED, "tensor '%s': data type %d is not supported", t->name,
                       t->dtype);
    size_t have;
    if (t->has_raw) {
        if (t->rawlen != t->numel * es)
            return ox_fail(L, REFIT_ERR_MODEL,
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
        return ox_fail(L, REFIT_ERR_MODEL, "tensor '%s' holds %zu values but its shape needs %zu",
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
float ox_d2f(double d)
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
int64_t ox_i32field_i(int dtype, int64_t v)
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
int ox_tensor_decode(loader *L, const ox_tensor *t, void **out)
{
    int isf = ox_is_float_dtype(t->dtype);
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
                fo[k] = ox_d2f(raw_get_d(t->raw, t->dtype, k));
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
                fo[pos++] = ox_d2f(tmp[j]);
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
                    io[pos] = ox_i32field_i(t->dtype, tmp[j]);
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
    return ox_fail(L, REFIT_ERR_MODEL, "tensor '%s': data does not match its shape", t->name);
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
            a->t = ox_aalloc(L, sizeof *a->t);
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
        if (!(a->floats = ox_aalloc(L, (size_t)nf * sizeof(float))))
            return NOMEM(L);
    }
    if (ni) {
        if (!(a->ints = ox_aalloc(L, (size_t)ni * sizeof(int64_t))))
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
        return ox_fail(L, REFIT_ERR_MODEL, "attribute '%s' of type TENSOR has no tensor", a->name);
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
            return ox_fail(L, REFIT_ERR_MODEL, "node with too many inputs/outputs/attributes");
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
    n->in = ox_aalloc(L, (size_t)ni * sizeof *n->in);
    n->out = ox_aalloc(L, (size_t)no * sizeof *n->out);
    n->attrs = ox_aalloc(L, (size_t)na * sizeof *n->attrs);
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
            return ox_fail(L, REFIT_ERR_UNSUPPORTED, "value '%s' has more than %d dims", v->name,
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
            return ox_fail(L, REFIT_ERR_UNSUPPORTED, "sparse initializers are not supported");
        default: break;
        }
        if (nn > INT_MAX / 4 || ninit > INT_MAX / 4 || nin > INT_MAX / 4 || nout > INT_MAX / 4)
            return ox_fail(L, REFIT_ERR_MODEL, "graph too large");
    }
    if (r < 0)
        return BAD_PB(L, "GraphProto");
    g->nodes = ox_aalloc(L, (size_t)nn * sizeof *g->nodes);
    g->inits = ox_aalloc(L, (size_t)ninit * sizeof *g->inits);
    g->inputs = ox_aalloc(L, (size_t)nin * sizeof *g->inputs);
    g->outputs = ox_aalloc(L, (size_t)nout * sizeof *g->outputs);
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
        return ox_fail(L, REFIT_ERR_MODEL, "not an ONNX model: no graph");
    if (L->opset < 0)
        return ox_fail(L, REFIT_ERR_MODEL, "no opset_import for the default ONNX domain");
    if (L->opset < 7)
        return ox_fail(L, REFIT_ERR_UNSUPPORTED, "opset %lld is not supported (7 or newer needed)",
                       (long long)L->opset);
    return parse_graph(L, graph, graph_len);
}

/* ============================================================================================
 * phase 2 helpers: attributes, values, nodes
 * ========================================================================================== */

const ox_attr *ox_attr_get(const ox_node *n, const char *name)
{
    const ox_attr *a = NULL;
    for (int i = 0; i < n->n_attrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0)
            a = &n->attrs[i];
    return a;
}

int64_t ox_attr_i(const ox_node *n, const char *name, int64_t def)
{
    const ox_attr *a = ox_attr_get(n, name);
    return a && a->type == AT_INT ? a->i : def;
}

float ox_attr_f(const ox_node *n, const char *name, float def)
{
    const ox_attr *a = ox_attr_get(n, name);
    if (a && a->type == AT_FLOAT)
        return a->f;
    if (a && a->type == AT_INT)
        return (float)a->i;
    return def;
}

const char *ox_attr_s(const ox_node *n, const char *name, const char *def)
{
    const ox_attr *a = ox_attr_get(n, name);
    return a && a->type == AT_STRING && a->s ? a->s : def;
}

/* INTS attribute: returns the array (NULL if absent) and its length in *cnt. */
const int64_t *ox_attr_ints(const ox_node *n, const char *name, int *cnt)
{
    const ox_attr *a = ox_attr_get(n, name);
    *cnt = 0;
    if (!a || a->type != AT_INTS)
        return NULL;
    static const int64_t none[1] = {0};
    *cnt = a->nints > 64 ? 64 : (int)a->nints;
    return a->ints ? a->ints : none;
}

int ox_reserve_vals(loader *L, int extra)
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

int ox_reserve_nodes(loader *L, int extra)
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
int ox_add_value(loader *L, const char *name, rt_value_kind kind, int dtype, const rt_shape *s,
                 void *data, float *winit, int *idx)
{
    const rt_shape shape = *s; /* s may point into L->vals, which ox_reserve_vals may move */
    if (ox_reserve_vals(L, 1)) {
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
    if (ox_strmap_put(&L->names, v->name, *idx))
        return NOMEM(L);
    return 0;
}

int ox_check_shape(loader *L, const ox_node *n, const rt_shape *s)
{
    if (s->ndim < 0 || s->ndim > RT_MAX_DIMS)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has more than %d dims", RT_MAX_DIMS);
    if (ox_dims_numel(s->d, s->ndim) < 0)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "result shape is invalid or too large");
    return 0;
}

const char *ox_shp(const rt_shape *s, char *buf, size_t len) { return rt_shape_str(s, buf, len); }

/* Emits a runtime node producing a new INTERMEDIATE float value `outname`. */
int ox_emit_named(loader *L, const ox_node *n, const char *nodename, rt_op op, const int *ins,
                  int nin, const rt_shape *s, const rt_attrs *a, const char *outname)
{
    int rc = ox_check_shape(L, n, s);
    if (rc)
        return rc;
    if (nin > RT_MAX_NODE_INPUTS)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "%d inputs (at most %d supported)", nin,
                        RT_MAX_NODE_INPUTS);
    if (ox_reserve_nodes(L, 1))
        return REFIT_ERR_NOMEM;
    int out;
    if ((rc = ox_add_value(L, outname, RT_VAL_INTERMEDIATE, RT_F32, s, NULL, NULL, &out)))
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

int ox_emit(loader *L, const ox_node *n, rt_op op, const int *ins, int nin, const rt_shape *s,
            const rt_attrs *a)
{
    return ox_emit_named(L, n, n->name, op, ins, nin, s, a, n->out[0]);
}

/* A new CONST value named `name` (ownership of data is taken). */
int ox_make_const(loader *L, const ox_node *n, const char *name, int dtype, const rt_shape *s,
                  void *data)
{
    int rc = ox_check_shape(L, n, s);
    if (rc) {
        free(data);
        return rc;
    }
    int idx;
    return ox_add_value(L, name, RT_VAL_CONST, dtype, s, data, NULL, &idx);
}

size_t ox_esize(int dtype) { return dtype == RT_F32 ? sizeof(float) : sizeof(int64_t); }

/* Allocates data for a CONST of `dtype` and shape s (refusing absurd sizes). */
int ox_alloc_const(loader *L, const ox_node *n, int dtype, const rt_shape *s, void **data)
{
    int rc = ox_check_shape(L, n, s);
    if (rc)
        return rc;
    size_t numel = rt_shape_numel(s);
    if (numel > (size_t)MAX_FOLD_NUMEL)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                        "constant result of %zu elements is too large to evaluate at load", numel);
    *data = malloc(numel ? numel * ox_esize(dtype) : 1);
    return *data ? 0 : NOMEM(L);
}

int ox_is_kind(const loader *L, int v, rt_value_kind k) { return v >= 0 && L->vals[v].kind == k; }

double ox_cget_d(const rt_value *v, size_t k)
{
    return v->dtype == RT_F32 ? (double)((const float *)v->data)[k]
                              : (double)((const int64_t *)v->data)[k];
}

int64_t ox_d2i(double x)
{
    if (!(x > -9.2e18 && x < 9.2e18))
        return x > 0 ? INT64_MAX : (x < 0 ? INT64_MIN : 0);
    return (int64_t)x;
}

int64_t ox_cget_i(const rt_value *v, size_t k)
{
    return v->dtype == RT_F32 ? ox_d2i((double)((const float *)v->data)[k])
                              : ((const int64_t *)v->data)[k];
}

void ox_cset(int dtype, void *data, size_t k, double d, int64_t i, int use_int)
{
    if (dtype == RT_F32)
        ((float *)data)[k] = use_int ? (float)i : ox_d2f(d);
    else
        ((int64_t *)data)[k] = use_int ? i : ox_d2i(d);
}

/* Reads CONST input value v as up to `max` integers. */
int ox_const_ints(loader *L, const ox_node *n, int v, const char *what, int64_t *dst, int max,
                  int *cnt)
{
    const rt_value *x = &L->vals[v];
    if (x->kind == RT_VAL_WEIGHT)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                        "%s ('%s') must be a constant known at load, but it is a refittable weight "
                        "(leave it out of the 'refittable' option to fold it)", what, x->name);
    if (x->kind != RT_VAL_CONST)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "%s ('%s') must be a constant known at load",
                        what, x->name);
    if (x->numel > (size_t)max)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "%s has %zu entries (at most %d supported)",
                        what, x->numel, max);
    for (size_t k = 0; k < x->numel; k++)
        dst[k] = ox_cget_i(x, k);
    *cnt = (int)x->numel;
    return 0;
}

/* Runtime ops compute in float32: input k must be present and a float value. */
int ox_need_f32(loader *L, const ox_node *n, const int *vin, int nin, int k)
{
    if (k >= nin || vin[k] < 0)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", k);
    const rt_value *v = &L->vals[vin[k]];
    if (v->dtype != RT_F32)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                        "input '%s' is %s; ops on run-time data compute in float32", v->name,
                        rt_dtype_name(v->dtype));
    return 0;
}

int ox_norm_axis(int64_t axis, int rank, int64_t *out)
{
    if (axis < -(int64_t)rank || axis >= rank)
        return -1;
    *out = axis < 0 ? axis + rank : axis;
    return 0;
}

int64_t ox_prod_dims(const rt_shape *s, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++)
        p *= s->d[i];
    return p;
}

/* numpy broadcasting of n shapes */
int ox_bcast_shapes(const rt_shape *const *in, int n, rt_shape *o)
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
size_t ox_bcast_off(const rt_shape *in, const rt_shape *o, size_t k)
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
    char *buf = ox_aalloc(L, strlen(spec) + 1);
    if (!buf)
        return NOMEM(L);
    strcpy(buf, spec);
    char *p = buf;
    while (p) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = 0;
        char *name = trim(p);
        if (name[0] && ox_strmap_put(&L->refit_set, name, 0))
            return NOMEM(L);
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

static int parse_input_shape(loader *L, const char *spec)
{
    char *buf = ox_aalloc(L, strlen(spec) + 1);
    int cap = 1;
    for (const char *q = spec; *q; q++)
        cap += *q == ';';
    L->shape_opt_v = ox_aalloc(L, (size_t)cap * sizeof *L->shape_opt_v);
    L->shape_opt_used = ox_aalloc(L, (size_t)cap * sizeof *L->shape_opt_used);
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
            return ox_fail(L, REFIT_ERR_INVALID_ARG,
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
            return ox_fail(L, REFIT_ERR_INVALID_ARG,
                           "input_shape: cannot parse '%.60s:%.40s' (expected name:1x3x224x224 with "
                           "positive dims)", name, dims);
        if (ox_strmap_get(&L->shape_opt, name) >= 0)
            return ox_fail(L, REFIT_ERR_INVALID_ARG, "input_shape: input '%.80s' given twice", name);
        L->shape_opt_v[L->n_shape_opt] = s;
        if (ox_strmap_put(&L->shape_opt, name, L->n_shape_opt++))
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
        if (ox_strmap_put(&avail, g->inits[i].name, 1))
            rc = NOMEM(L);
    for (int i = 0; i < g->n_inputs && !rc; i++)
        if (ox_strmap_put(&avail, g->inputs[i].name, 1))
            rc = NOMEM(L);
    for (int i = 0; i < nn && !rc; i++) {
        const ox_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_out && !rc; k++) {
            const char *o = n->out[k];
            if (!o[0])
                continue;
            if (ox_strmap_get(&producer, o) >= 0 || ox_strmap_get(&avail, o) >= 0)
                rc = ox_nfail(L, n, REFIT_ERR_MODEL, "output '%s' is already defined elsewhere", o);
            else if (ox_strmap_put(&producer, o, i))
                rc = NOMEM(L);
        }
    }
    /* edges producer -> consumer, counted then filled (CSR) */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (int i = 0; i < nn && !rc; i++) {
            const ox_node *n = &g->nodes[i];
            for (int k = 0; k < n->n_in; k++) {
                const char *in = n->in[k];
                if (!in[0] || ox_strmap_get(&avail, in) >= 0)
                    continue;
                int p = ox_strmap_get(&producer, in);
                if (p < 0) {
                    rc = ox_nfail(L, n, REFIT_ERR_MODEL,
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
                int p = in[0] && ox_strmap_get(&avail, in) < 0 ? ox_strmap_get(&producer, in) : -1;
                if (p >= 0 && pending[p] > 0)
                    rc = ox_nfail(L, n, REFIT_ERR_MODEL, "cycle in the graph through input '%s'", in);
            }
        }
        if (!rc)
            rc = ox_fail(L, REFIT_ERR_MODEL, "cannot order the graph");
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
            return ox_fail(L, REFIT_ERR_MODEL, "initializer #%d has no name", i);
        if (ox_strmap_get(&L->names, t->name) >= 0)
            return ox_fail(L, REFIT_ERR_MODEL, "initializer '%s' is defined twice", t->name);
        rt_shape s = {t->ndim, {0}};
        memcpy(s.d, t->dims, sizeof s.d);
        void *d;
        if ((rc = ox_tensor_decode(L, t, &d)))
            return rc;
        int isf = ox_is_float_dtype(t->dtype), idx;
        int weight = isf && (!L->explicit_refit || ox_strmap_get(&L->refit_set, t->name) >= 0);
        if (L->explicit_refit && !isf && ox_strmap_get(&L->refit_set, t->name) >= 0) {
            free(d);
            return ox_fail(L, REFIT_ERR_NOT_FOUND,
                           "refittable: '%s' is a %s initializer; only float initializers are "
                           "refittable", t->name, ox_dtype_name(t->dtype));
        }
        if (weight) {
            if (L->explicit_refit)
                ox_strmap_put(&L->refit_set, t->name, 1);
            rc = ox_add_value(L, t->name, RT_VAL_WEIGHT, RT_F32, &s, NULL, d, &idx);
        } else {
            rc = ox_add_value(L, t->name, RT_VAL_CONST, isf ? RT_F32 : RT_I64, &s, d, NULL, &idx);
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
            return ox_fail(L, REFIT_ERR_MODEL, "graph input #%d has no name", i);
        int prev = ox_strmap_get(&L->names, v->name);
        if (prev >= 0) {
            if (L->vals[prev].kind == RT_VAL_INPUT)
                return ox_fail(L, REFIT_ERR_MODEL, "graph input '%s' is listed twice", v->name);
            continue; /* an initializer also listed as input (IR < 4 exporters): not a run-time input */
        }
        if (!v->is_tensor)
            return ox_fail(L, REFIT_ERR_UNSUPPORTED, "graph input '%s' is not a tensor", v->name);
        if (v->elem_type != 0 && v->elem_type != RT_F32)
            return ox_fail(L, REFIT_ERR_UNSUPPORTED,
                           "graph input '%s' is %s; only float32 inputs are supported", v->name,
                           ox_dtype_name(v->elem_type));
        rt_shape s = {v->ndim, {0}};
        int oi = ox_strmap_get(&L->shape_opt, v->name);
        if (oi >= 0) {
            const rt_shape *o = &L->shape_opt_v[oi];
            L->shape_opt_used[oi] = 1;
            if (v->has_shape && o->ndim != v->ndim)
                return ox_fail(L, REFIT_ERR_INVALID_ARG,
                               "input_shape: '%s' is given %d dims but the model's input has %d",
                               v->name, o->ndim, v->ndim);
            for (int k = 0; v->has_shape && k < v->ndim; k++)
                if (v->dims[k] >= 0 && v->dims[k] != o->d[k])
                    return ox_fail(L, REFIT_ERR_INVALID_ARG,
                                   "input_shape: '%s' dim %d is given as %lld but the model fixes it to %lld",
                                   v->name, k, (long long)o->d[k], (long long)v->dims[k]);
            s = *o;
        } else {
            if (!v->has_shape)
                return ox_fail(L, REFIT_ERR_MODEL,
                               "graph input '%s' has no shape; give one with the input_shape option",
                               v->name);
            for (int k = 0; k < v->ndim; k++)
                s.d[k] = v->dims[k] < 0 ? 1 : v->dims[k];
        }
        if (ox_dims_numel(s.d, s.ndim) < 0)
            return ox_fail(L, REFIT_ERR_MODEL, "graph input '%s' has an invalid shape %s", v->name,
                           ox_shp(&s, b1, sizeof b1));
        int idx;
        if ((rc = ox_add_value(L, v->name, RT_VAL_INPUT, RT_F32, &s, NULL, NULL, &idx)))
            return rc;
    }
    for (int i = 0; i < L->n_shape_opt; i++) {
        if (L->shape_opt_used[i])
            continue;
        for (size_t k = 0; k < L->shape_opt.cap; k++)
            if (L->shape_opt.keys[k] && L->shape_opt.vals[k] == i)
                return ox_fail(L, REFIT_ERR_INVALID_ARG,
                               "input_shape: '%s' is not a run-time input of the model",
                               L->shape_opt.keys[k]);
    }
    return 0;
}

static int add_outputs(loader *L)
{
    const ox_graph *g = &L->g;
    if (g->n_outputs == 0)
        return ox_fail(L, REFIT_ERR_MODEL, "the graph has no outputs");
    for (int j = 0; j < g->n_outputs; j++) {
        const char *name = g->outputs[j].name;
        int v = ox_strmap_get(&L->names, name);
        if (v < 0) {
            if (ox_strmap_get(&L->dropped, name) >= 0)
                return ox_fail(L, REFIT_ERR_UNSUPPORTED,
                               "graph output '%s' is a secondary node output, which is not supported", name);
            return ox_fail(L, REFIT_ERR_MODEL, "graph output '%s' is not produced by the graph", name);
        }
        if (L->vals[v].dtype != RT_F32)
            return ox_fail(L, REFIT_ERR_UNSUPPORTED, "graph output '%s' is %s; outputs must be float",
                           name, rt_dtype_name(L->vals[v].dtype));
        if (strcmp(L->vals[v].name, name) != 0) {
            /* a rewired name: give the output its own value */
            int rc;
            rt_shape s = L->vals[v].shape;
            ox_node fake = {.name = name, .op = "Identity"};
            const char *outs[1] = {name};
            fake.out = outs;
            fake.n_out = 1;
            if ((rc = ox_emit(L, &fake, RT_OP_IDENTITY, &v, 1, &s, NULL)))
                return rc;
            v = L->n_vals - 1;
        }
        if (L->vals[v].output_index >= 0)
            return ox_fail(L, REFIT_ERR_MODEL, "graph output '%s' is listed twice", name);
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
        return ox_fail(&L, REFIT_ERR_INVALID_ARG, "rt_graph_from_onnx: out is NULL");
    *out = NULL;
    if (!data || size == 0)
        return ox_fail(&L, REFIT_ERR_MODEL, "empty model");
    int rc = 0;
    int *order = NULL;
    if (opts && opts->refittable && (rc = parse_refittable(&L, opts->refittable)))
        goto done;
    if (opts && opts->input_shape && (rc = parse_input_shape(&L, opts->input_shape)))
        goto done;
    if ((rc = parse_model(&L, data, size)))
        goto done;
    for (int j = 0; j < L.g.n_outputs; j++)
        if (ox_strmap_put(&L.graph_outs, L.g.outputs[j].name, j)) {
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
        if ((rc = ox_build_node(&L, &L.g.nodes[order[i]])))
            goto done;
    if ((rc = add_outputs(&L)))
        goto done;
    if (L.explicit_refit) {
        for (size_t k = 0; k < L.refit_set.cap; k++)
            if (L.refit_set.keys[k] && L.refit_set.vals[k] == 0) {
                rc = ox_fail(&L, REFIT_ERR_NOT_FOUND,
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
