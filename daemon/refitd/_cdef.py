"""The cffi declarations of librefit: native/include/refit.h without its macros.

Kept in one place; tests/test_engine_abi.py preprocesses the real header and fails if the two drift.
"""

CDEF = """
typedef enum refit_status {
    REFIT_OK = 0,
    REFIT_ERR_INVALID_ARG = 1,
    REFIT_ERR_NOT_FOUND = 2,
    REFIT_ERR_DTYPE = 3,
    REFIT_ERR_SHAPE = 4,
    REFIT_ERR_SIZE = 5,
    REFIT_ERR_DUPLICATE = 6,
    REFIT_ERR_EMPTY = 7,
    REFIT_ERR_NONFINITE = 8,
    REFIT_ERR_UNSUPPORTED = 9,
    REFIT_ERR_MODEL = 10,
    REFIT_ERR_IO = 11,
    REFIT_ERR_NOMEM = 12,
    REFIT_ERR_CONFLICT = 13,
    REFIT_ERR_BACKEND = 14
} refit_status;

typedef enum refit_dtype {
    REFIT_DTYPE_FLOAT32 = 1,
    REFIT_DTYPE_UINT8 = 2,
    REFIT_DTYPE_INT8 = 3,
    REFIT_DTYPE_INT32 = 6,
    REFIT_DTYPE_INT64 = 7,
    REFIT_DTYPE_FLOAT16 = 10,
    REFIT_DTYPE_FLOAT64 = 11
} refit_dtype;

typedef enum refit_tensor_kind {
    REFIT_KIND_INPUT = 0,
    REFIT_KIND_OUTPUT = 1,
    REFIT_KIND_WEIGHT = 2
} refit_tensor_kind;

typedef struct refit_tensor_info {
    const char *name;
    int32_t dtype;
    int32_t ndim;
    const int64_t *shape;
    size_t nbytes;
} refit_tensor_info;

typedef struct refit_tensor {
    const char *name;
    int32_t dtype;
    int32_t ndim;
    const int64_t *shape;
    const void *data;
    size_t nbytes;
} refit_tensor;

typedef struct refit_engine refit_engine;
typedef struct refit_context refit_context;
typedef struct refit_staged refit_staged;

int refit_abi_version(void);
const char *refit_version_string(void);
const char *refit_status_string(refit_status status);
const char *refit_last_error(void);
size_t refit_backend_count(void);
const char *refit_backend_name(size_t index);
const char *refit_backend_location(size_t index);
refit_status refit_backend_probe(const char *name);
refit_status refit_engine_open(const char *model_path, const char *backend, const char *const *option_keys, const char *const *option_values, size_t num_options, refit_engine **out);
refit_status refit_engine_open_memory(const void *data, size_t size, const char *backend, const char *const *option_keys, const char *const *option_values, size_t num_options, refit_engine **out);
void refit_engine_destroy(refit_engine *engine);
size_t refit_engine_count(const refit_engine *engine, refit_tensor_kind kind);
refit_status refit_engine_info(const refit_engine *engine, refit_tensor_kind kind, size_t index, refit_tensor_info *info);
const char *refit_engine_backend(const refit_engine *engine);
uint64_t refit_engine_version(const refit_engine *engine);
typedef struct refit_engine_stats {
    const char *strategy;
    uint64_t refits;
    uint64_t failed_refits;
    uint64_t last_prepare_ns;
    uint64_t last_publish_ns;
    uint64_t last_pause_ns;
    uint64_t max_pause_ns;
    uint64_t last_drain_ns;
    uint64_t last_inplace_ns;
    uint64_t last_verify_ns;
} refit_engine_stats;
refit_status refit_engine_get_stats(refit_engine *engine, refit_engine_stats *out);
refit_status refit_engine_read_weight(refit_engine *engine, const char *name, void *dst, size_t nbytes, uint64_t *version);
refit_status refit_engine_refit(refit_engine *engine, const refit_tensor *tensors, size_t count, uint64_t version, uint32_t flags);
refit_status refit_engine_stage(refit_engine *engine, const refit_tensor *tensors, size_t count, uint64_t version, uint32_t flags, refit_staged **out);
refit_status refit_engine_publish(refit_engine *engine, refit_staged *staged);
uint64_t refit_staged_version(const refit_staged *staged);
void refit_staged_destroy(refit_staged *staged);
refit_status refit_context_create(refit_engine *engine, refit_context **out);
void refit_context_destroy(refit_context *context);
refit_status refit_context_run(refit_context *context, const void *const *inputs, const size_t *input_nbytes, size_t num_inputs, void *const *outputs, const size_t *output_nbytes, size_t num_outputs, uint64_t *version);
refit_status refit_context_run_staged(refit_context *context, const refit_staged *staged, const void *const *inputs, const size_t *input_nbytes, size_t num_inputs, void *const *outputs, const size_t *output_nbytes, size_t num_outputs);
"""
