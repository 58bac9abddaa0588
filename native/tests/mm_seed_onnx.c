/* mm_seed_onnx.c — the seeds' model as ONNX bytes for the MagicMind backend's C++ tests (the
 * C tests' seed_model.h, whose protobuf writer is C, not C++). */
#include <stddef.h>

#include "seed_model.h"

unsigned char *mm_seed_onnx(float k, size_t *size) { return seed_model(k, size); }
