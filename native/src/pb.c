/* pb.c — bounds-checked protobuf wire-format reader. See pb.h. */
#include "pb.h"

#include <string.h>

void pb_iter_init(pb_iter *it, const void *data, size_t size)
{
    it->p = (const uint8_t *)data;
    it->end = it->p + (data ? size : 0);
}

int pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    const uint8_t *q = *p;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (q >= end)
            return -1;
        uint8_t b = *q++;
        if (shift == 63 && (b & 0x7e))
            return -1; /* would overflow 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *p = q;
            *out = v;
            return 0;
        }
    }
    return -1;
}

uint32_t pb_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t pb_le64(const uint8_t *p)
{
    return (uint64_t)pb_le32(p) | (uint64_t)pb_le32(p + 4) << 32;
}

int pb_next(pb_iter *it, pb_field *f)
{
    if (it->p >= it->end)
        return 0;
    uint64_t key;
    const uint8_t *p = it->p;
    if (pb_read_varint(&p, it->end, &key) != 0)
        goto bad;
    uint64_t num = key >> 3;
    if (num == 0 || num > 536870911u)
        goto bad;
    f->num = (uint32_t)num;
    f->wire = (int)(key & 7);
    f->u = 0;
    f->data = NULL;
    f->len = 0;
    size_t left;
    switch (f->wire) {
    case PB_VARINT:
        if (pb_read_varint(&p, it->end, &f->u) != 0)
            goto bad;
        break;
    case PB_I64:
        if ((size_t)(it->end - p) < 8)
            goto bad;
        f->u = pb_le64(p);
        p += 8;
        break;
    case PB_I32:
        if ((size_t)(it->end - p) < 4)
            goto bad;
        f->u = pb_le32(p);
        p += 4;
        break;
    case PB_LEN: {
        uint64_t len;
        if (pb_read_varint(&p, it->end, &len) != 0)
            goto bad;
        left = (size_t)(it->end - p);
        if (len > left)
            goto bad;
        f->data = p;
        f->len = (size_t)len;
        p += len;
        break;
    }
    default:
        goto bad;
    }
    it->p = p;
    return 1;
bad:
    it->p = it->end;
    return -1;
}

long pb_count_varints(const pb_field *f)
{
    if (f->wire == PB_VARINT)
        return 1;
    if (f->wire != PB_LEN)
        return -1;
    long n = 0;
    const uint8_t *p = f->data, *end = f->data + f->len;
    while (p < end) {
        uint64_t v;
        if (pb_read_varint(&p, end, &v) != 0)
            return -1;
        n++;
    }
    return n;
}

long pb_get_varints(const pb_field *f, int64_t *dst)
{
    if (f->wire == PB_VARINT) {
        dst[0] = (int64_t)f->u;
        return 1;
    }
    if (f->wire != PB_LEN)
        return -1;
    long n = 0;
    const uint8_t *p = f->data, *end = f->data + f->len;
    while (p < end) {
        uint64_t v;
        if (pb_read_varint(&p, end, &v) != 0)
            return -1;
        dst[n++] = (int64_t)v;
    }
    return n;
}

long pb_count_fixed32(const pb_field *f)
{
    if (f->wire == PB_I32)
        return 1;
    if (f->wire != PB_LEN || f->len % 4)
        return -1;
    return (long)(f->len / 4);
}

long pb_get_floats(const pb_field *f, float *dst)
{
    long n = pb_count_fixed32(f);
    if (n < 0)
        return -1;
    for (long k = 0; k < n; k++) {
        uint32_t bits = f->wire == PB_I32 ? (uint32_t)f->u : pb_le32(f->data + 4 * k);
        memcpy(&dst[k], &bits, 4);
    }
    return n;
}

long pb_count_fixed64(const pb_field *f)
{
    if (f->wire == PB_I64)
        return 1;
    if (f->wire != PB_LEN || f->len % 8)
        return -1;
    return (long)(f->len / 8);
}

long pb_get_fixed64(const pb_field *f, uint64_t *dst)
{
    long n = pb_count_fixed64(f);
    if (n < 0)
        return -1;
    for (long k = 0; k < n; k++)
        dst[k] = f->wire == PB_I64 ? f->u : pb_le64(f->data + 8 * k);
    return n;
}

long pb_get_doubles(const pb_field *f, double *dst)
{
    long n = pb_count_fixed64(f);
    if (n < 0)
        return -1;
    for (long k = 0; k < n; k++) {
        uint64_t bits = f->wire == PB_I64 ? f->u : pb_le64(f->data + 8 * k);
        memcpy(&dst[k], &bits, 8);
    }
    return n;
}
