/*
 * pb.h — a minimal, bounds-checked protobuf wire-format reader (internal).
 *
 * Used by the ONNX loader. It never reads outside [data, data + size): every length prefix is
 * checked against the bytes that remain, and any truncated or malformed input makes the reader
 * report an error instead of crashing. No allocation happens here; callers decode repeated
 * scalar fields into arrays they size with the pb_count_* functions first.
 *
 * Wire types: 0 VARINT, 1 I64 (fixed 64-bit), 2 LEN (length-delimited), 5 I32 (fixed 32-bit).
 * Groups (3/4) are refused: ONNX never uses them.
 */
#ifndef REFIT_PB_H
#define REFIT_PB_H

#include <stddef.h>
#include <stdint.h>

enum { PB_VARINT = 0, PB_I64 = 1, PB_LEN = 2, PB_I32 = 5 };

/* One field of a message. For VARINT/I64/I32 the value is in `u` (raw bits); for LEN `data`
 * points into the caller's buffer and `len` bytes follow it. */
typedef struct pb_field {
    uint32_t num;
    int wire;
    uint64_t u;
    const uint8_t *data;
    size_t len;
} pb_field;

typedef struct pb_iter {
    const uint8_t *p;
    const uint8_t *end;
} pb_iter;

void pb_iter_init(pb_iter *it, const void *data, size_t size);
/* Reads the next field. Returns 1 with *f filled, 0 at the clean end of the message, -1 if the
 * message is truncated or malformed (the iterator then stays at the end). */
int pb_next(pb_iter *it, pb_field *f);
/* Reads one varint from [*p, end); advances *p. Returns 0 or -1 (truncated / longer than 10 bytes). */
int pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out);

/* Repeated scalar fields arrive either packed (one LEN field) or unpacked (one field per
 * element); these accept both. pb_count_* returns the number of elements the field contributes
 * (or -1 if the field has the wrong wire type or is malformed); pb_get_* appends them to dst,
 * which has room for at least that many, and returns the count written or -1. */
long pb_count_varints(const pb_field *f);
long pb_get_varints(const pb_field *f, int64_t *dst);  /* int32/int64/uint64/enum as int64 */
long pb_count_fixed32(const pb_field *f);
long pb_get_floats(const pb_field *f, float *dst);
long pb_count_fixed64(const pb_field *f);
long pb_get_doubles(const pb_field *f, double *dst);
long pb_get_fixed64(const pb_field *f, uint64_t *dst);

/* Little-endian loads from possibly unaligned bytes. */
uint32_t pb_le32(const uint8_t *p);
uint64_t pb_le64(const uint8_t *p);

#endif
