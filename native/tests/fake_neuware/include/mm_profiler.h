/* mm_profiler.h — test-only FAKE Neuware header for the compile-only check: forwards to the declaration header. */
#include "mm_decl_compile_check.h"
