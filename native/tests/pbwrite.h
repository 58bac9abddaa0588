/* pbwrite.h — a tiny protobuf writer for the C tests' synthetic ONNX models. */
#ifndef REFIT_TESTS_PBWRITE_H
#define REFIT_TESTS_PBWRITE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct wbuf {
    unsigned char *p;
    size_t n, cap;
} wbuf;

static inline void wb_bytes(wbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static inline void wb_varint(wbuf *b, uint64_t v)
{
    unsigned char t[10];
    int n = 0;
    do {
        t[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    wb_bytes(b, t, (size_t)n);
}

/* A varint field. */
static inline void wb_int(wbuf *b, unsigned field, uint64_t v)
{
    wb_varint(b, (uint64_t)field << 3);
    wb_varint(b, v);
}

/* A length-delimited field. */
static inline void wb_len(wbuf *b, unsigned field, const void *d, size_t n)
{
    wb_varint(b, (uint64_t)field << 3 | 2);
    wb_varint(b, n);
    wb_bytes(b, d, n);
}

static inline void wb_str(wbuf *b, unsigned field, const char *s) { wb_len(b, field, s, strlen(s)); }

/* Appends sub-message `m` as field `field` and releases m. */
static inline void wb_msg(wbuf *b, unsigned field, wbuf *m)
{
    wb_len(b, field, m->p, m->n);
    free(m->p);
    memset(m, 0, sizeof *m);
}

/* A ValueInfoProto (field `field` of a GraphProto): float tensor `name` of shape dims[ndim]. */
static inline void wb_value_info(wbuf *b, unsigned field, const char *name, const int64_t *dims, int ndim)
{
    wbuf shape = {0}, tensor = {0}, type = {0}, vi = {0};
    for (int i = 0; i < ndim; i++) {
        wbuf dim = {0};
        wb_int(&dim, 1, (uint64_t)dims[i]);
        wb_msg(&shape, 1, &dim);
    }
    wb_int(&tensor, 1, 1); /* elem_type FLOAT */
    wb_msg(&tensor, 2, &shape);
    wb_msg(&type, 1, &tensor);
    wb_str(&vi, 1, name);
    wb_msg(&vi, 2, &type);
    wb_msg(b, field, &vi);
}

#endif
