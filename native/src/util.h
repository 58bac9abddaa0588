/*
 * util.h — small helpers the whole library shares (one of each, internal).
 */
#ifndef REFIT_UTIL_H
#define REFIT_UTIL_H

#include <stdint.h>

/* IEEE 754 binary16 bits -> float32, exactly (subnormals, Inf, NaN payloads kept). */
float rt_half_to_float(uint16_t h);

/* FNV-1a 64-bit hash of a NUL-terminated string (name tables). */
uint64_t rt_hash_str(const char *s);

#endif
