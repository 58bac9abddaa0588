/*
 * refit.h — the C ABI of librefit, refitd's native engine.
 *
 * Conventions
 * - Every symbol starts with `refit_`; every type with `refit_`; constants with `REFIT_`.
 * - Handles are opaque. Each `*_create`/`*_open` has a `*_destroy` that accepts NULL.
 * - Operations return `refit_status` (REFIT_OK == 0). On failure a one-line message naming the
 *   cause is kept *per calling thread* and read with `refit_last_error()`; it stays valid until the
 *   same thread makes its next librefit call. Nothing is kept in a process-wide global.
 * - Byte sizes are `size_t`; indices are `size_t`; shapes are `int64_t` (ONNX dims).
 * - Dtypes use the ONNX `TensorProto.DataType` codes (REFIT_DTYPE_*).
 * - Thread safety: an engine may be shared by any number of threads. A context belongs to one
 *   thread at a time (one per worker, like MagicMind's IContext). Refit/stage/publish may be
 *   called from any thread while other threads run inference; refits are serialised internally.
 *
 * The model crosses into C as the ONNX file itself: librefit carries a small protobuf reader
 * (native/src/onnx_*.c) and resolves the graph (shape inference, static-shape subgraphs) in C. We
 * chose this over parsing in Python because the edge box then needs no `onnx`/`protobuf` wheels,
 * and the C tests and every backend see exactly the graph the daemon sees.
 *
 * Refit guarantee: every inference computes with exactly one complete weight set; `refit` applies
 * all of its tensors or none (everything is validated before anything is published); inference
 * never waits for a refit (strategy quiesce: for one bounded pause per refit). See docs/engine.md
 * for the memory-model argument.
 *
 * Usage:
 *
 *   refit_engine *eng = NULL;
 *   if (refit_engine_open("model.onnx", "reference", NULL, NULL, 0, &eng) != REFIT_OK) {
 *       fprintf(stderr, "%s\n", refit_last_error());
 *       return 1;
 *   }
 *   refit_context *ctx = NULL;
 *   if (refit_context_create(eng, &ctx) != REFIT_OK) { ... }
 *   const void *in[1] = {input};      size_t in_bytes[1] = {sizeof input};
 *   void *out[1] = {output};          size_t out_bytes[1] = {sizeof output};
 *   uint64_t version = 0;
 *   if (refit_context_run(ctx, in, in_bytes, 1, out, out_bytes, 1, &version) != REFIT_OK) { ... }
 *
 *   int64_t kshape[4] = {1, 1, 3, 3};
 *   refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, kshape, ones, sizeof ones};
 *   if (refit_engine_refit(eng, &t, 1, 2, 0) != REFIT_OK)   // version 2, all-or-nothing
 *       fprintf(stderr, "refit refused: %s\n", refit_last_error());   // still serving version 0
 *
 *   refit_context_destroy(ctx);
 *   refit_engine_destroy(eng);
 */
#ifndef REFIT_H
#define REFIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define REFIT_API __declspec(dllexport)
#else
#define REFIT_API __attribute__((visibility("default")))
#endif

#if defined(__GNUC__)
#define REFIT_NODISCARD __attribute__((warn_unused_result))
#else
#define REFIT_NODISCARD
#endif

/* Bumped on every incompatible change to this header. Python checks it at load. */
#define REFIT_ABI_VERSION 3

typedef enum refit_status {
    REFIT_OK = 0,
    REFIT_ERR_INVALID_ARG = 1,   /* NULL where a value is required, bad option, bad index */
    REFIT_ERR_NOT_FOUND = 2,     /* unknown tensor / backend name */
    REFIT_ERR_DTYPE = 3,         /* dtype not accepted for that tensor */
    REFIT_ERR_SHAPE = 4,         /* shape differs from the model's */
    REFIT_ERR_SIZE = 5,          /* byte length differs from dtype x shape */
    REFIT_ERR_DUPLICATE = 6,     /* the same name twice in one refit */
    REFIT_ERR_EMPTY = 7,         /* a refit with no tensors */
    REFIT_ERR_NONFINITE = 8,     /* NaN or Inf in a tensor (unless REFIT_ALLOW_NONFINITE) */
    REFIT_ERR_UNSUPPORTED = 9,   /* op / attribute / dtype the backend cannot run */
    REFIT_ERR_MODEL = 10,        /* malformed or inconsistent model */
    REFIT_ERR_IO = 11,           /* cannot read a file */
    REFIT_ERR_NOMEM = 12,        /* allocation failed */
    REFIT_ERR_CONFLICT = 13,     /* staged set's base is no longer current */
    REFIT_ERR_BACKEND = 14       /* the backend failed at run time */
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
    REFIT_KIND_WEIGHT = 2 /* refittable weights only */
} refit_tensor_kind;

/* Flags for refit/stage. */
#define REFIT_ALLOW_NONFINITE 1u

/* Describes one tensor of the engine. All pointers are owned by the engine and stay valid until
 * refit_engine_destroy(). */
typedef struct refit_tensor_info {
    const char *name;
    int32_t dtype;          /* refit_dtype */
    int32_t ndim;
    const int64_t *shape;   /* ndim entries */
    size_t nbytes;          /* dtype size x product(shape) */
} refit_tensor_info;

/* One tensor handed to refit/stage. The caller keeps ownership of every pointer; librefit copies
 * the data before the call returns. Float weights accept FLOAT32 or FLOAT16 data. */
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

/* ---- library ---------------------------------------------------------------------------- */

/* REFIT_ABI_VERSION of the built library. */
REFIT_API int refit_abi_version(void);
/* Library version, e.g. "0.1.0". Static string, never freed. */
REFIT_API const char *refit_version_string(void);
/* Static name of a status, e.g. "REFIT_ERR_SHAPE". Never NULL. */
REFIT_API const char *refit_status_string(refit_status status);
/* The calling thread's last error message ("" if none). Owned by librefit; valid until this
 * thread's next librefit call. */
REFIT_API const char *refit_last_error(void);
/* Available backends: the built-in ones, then every librefit_backend_<name>.so on the plugin
 * search path (docs/engine.md: "Backends"; plugins are listed, not loaded). The name and the
 * location ("built-in" or the plugin's path) of backend `index` stay valid for the process's
 * lifetime; NULL if out of range. */
REFIT_API size_t refit_backend_count(void);
REFIT_API const char *refit_backend_name(size_t index);
REFIT_API const char *refit_backend_location(size_t index);
/* Loads backend `name` (a plugin: dlopen and api_version check) without opening an engine.
 * REFIT_ERR_NOT_FOUND with a one-line message naming the file and where it looked (or why the
 * file was refused) if it cannot be used. */
REFIT_API REFIT_NODISCARD refit_status refit_backend_probe(const char *name);

/* ---- engine ----------------------------------------------------------------------------- */

/* Opens `model_path` (ONNX) on backend `backend` ("reference", or a plugin's name). Options are
 * `num_options` key/value string pairs, copied before return (see docs/engine.md for keys):
 *   "refittable"      comma-separated initializer names; default: every float initializer
 *   "input_shape"     "name:1x3x224x224[;name2:...]" fixes symbolic input dims (default 1)
 *   "allow_nonfinite" "1" to accept NaN/Inf in refits by default
 *   "initial_version" integer version of the weights in the model file (default 0)
 *   "spare_weights"   "1" (default): keep each weight's last retired buffer for its next refit
 *                     (A/B buffers: a refit writes into memory already faulted in; the memory
 *                     stays at the peak a refit needs anyway). "0" releases it after each refit.
 *   "strategy"        how a refit reaches the serving weights, each keeping the refit guarantee:
 *                     "swap" (default where the backend keeps separate weight sets): prepare a
 *                     new set, publish it with one pointer flip; "quiesce": stop admitting
 *                     inferences, drain, refit the one set in place, verify, resume (a bounded
 *                     pause, see refit_engine_stats); "ab": two instances, refit and verify the
 *                     idle one, flip, bring the other up to date (no pause, twice the memory).
 *   "device"          device id for the backend (default 0; the reference backend has only 0)
 *   "threads"         threads one inference may use (default 1; a hint for device backends)
 *   "backend.<key>"   passed to the backend, which refuses keys it does not know; the
 *                     reference backend's: isa, prepare, profile, profile_runs, profile_skip,
 *                     dump, dump_at (docs/cpu-backend.md, "Profiler and dumps").
 * On success *out owns a new engine (free with refit_engine_destroy); on failure *out is NULL.
 * Returns REFIT_ERR_IO, REFIT_ERR_MODEL, REFIT_ERR_UNSUPPORTED, REFIT_ERR_NOT_FOUND,
 * REFIT_ERR_INVALID_ARG or REFIT_ERR_NOMEM. */
REFIT_API REFIT_NODISCARD refit_status refit_engine_open(const char *model_path, const char *backend,
                                                         const char *const *option_keys,
                                                         const char *const *option_values,
                                                         size_t num_options, refit_engine **out);
/* As refit_engine_open, from `size` bytes of ONNX at `data`; the caller keeps ownership of
 * `data` and may free it when the call returns. */
REFIT_API REFIT_NODISCARD refit_status refit_engine_open_memory(const void *data, size_t size,
                                                                const char *backend,
                                                                const char *const *option_keys,
                                                                const char *const *option_values,
                                                                size_t num_options,
                                                                refit_engine **out);
/* Releases the caller's engine handle. Contexts and staged sets hold their own reference, so
 * they may be destroyed before or after it, in any order; the engine is freed with the last of
 * them. No call may be running on this handle. NULL is a no-op. */
REFIT_API void refit_engine_destroy(refit_engine *engine);

/* Number of tensors of `kind`. */
REFIT_API size_t refit_engine_count(const refit_engine *engine, refit_tensor_kind kind);
/* Fills *info for tensor `index` of `kind`; the strings and shape inside stay owned by the
 * engine. REFIT_ERR_INVALID_ARG if the index is out of range. */
REFIT_API REFIT_NODISCARD refit_status refit_engine_info(const refit_engine *engine,
                                                         refit_tensor_kind kind, size_t index,
                                                         refit_tensor_info *info);
/* Static name of the engine's backend. */
REFIT_API const char *refit_engine_backend(const refit_engine *engine);
/* Version of the weight set currently published. */
REFIT_API uint64_t refit_engine_version(const refit_engine *engine);

/* What the refit strategy has done, for monitoring and benchmarks. Times in nanoseconds. */
typedef struct refit_engine_stats {
    const char *strategy;      /* "swap", "quiesce" or "ab" (static string) */
    uint64_t refits;           /* refits/publishes that made a new set serve */
    uint64_t failed_refits;    /* refused or rolled back: the serving set was left untouched */
    uint64_t last_prepare_ns;  /* the backend's weights_prepare / in-place refit of the last one */
    uint64_t last_publish_ns;  /* pointer flip + waiting out the old set's readers, last one */
    uint64_t last_pause_ns;    /* quiesce: admission stopped -> resumed, last refit */
    uint64_t max_pause_ns;     /* quiesce: the longest such pause so far */
    /* quiesce: the last pause's wait for the inferences in flight; quiesce and ab: the last
     * in-place refit (or commit of staged bytes) and its verification (read-back or canary).
     * Under quiesce the three make up the last pause, less the publish and the wake-up. */
    uint64_t last_drain_ns;
    uint64_t last_inplace_ns;
    uint64_t last_verify_ns;
} refit_engine_stats;
REFIT_API REFIT_NODISCARD refit_status refit_engine_get_stats(refit_engine *engine,
                                                              refit_engine_stats *out);

/* Copies the current value of weight `name` into `dst` (caller-owned, `nbytes` must equal the
 * weight's nbytes; data is in the weight's info dtype) and returns the version it belongs to. */
REFIT_API REFIT_NODISCARD refit_status refit_engine_read_weight(refit_engine *engine, const char *name,
                                                                void *dst, size_t nbytes,
                                                                uint64_t *version);

/* Refits `count` tensors as weight version `version`: validates every name, dtype, shape, byte
 * length and (unless REFIT_ALLOW_NONFINITE) every value first, then publishes the new set
 * atomically. The caller keeps ownership of `tensors` and their data, copied before return.
 * Tensors not named keep their current data (shared, not copied). On any error
 * nothing changes and the message names the tensor and the cause. Inference continues
 * throughout; the call returns once the new set is published and the old set is freed (which
 * waits only for inferences already running on it). */
REFIT_API REFIT_NODISCARD refit_status refit_engine_refit(refit_engine *engine,
                                                          const refit_tensor *tensors, size_t count,
                                                          uint64_t version, uint32_t flags);

/* Stage: the validation and copy half of refit, without publishing. As with refit, the caller
 * keeps ownership of `tensors` and their data (copied before return). *out owns a weight set
 * built on the currently published one (free with refit_staged_destroy); run inference on it
 * with refit_context_run_staged (a shadow check), then refit_engine_publish it or destroy it.
 * A staged handle belongs to one thread at a time: do not run it on one thread while another
 * publishes or destroys it. */
REFIT_API REFIT_NODISCARD refit_status refit_engine_stage(refit_engine *engine,
                                                          const refit_tensor *tensors, size_t count,
                                                          uint64_t version, uint32_t flags,
                                                          refit_staged **out);
/* Publishes a staged set. REFIT_ERR_CONFLICT (nothing changes) if another set was published
 * since it was staged. The staged handle must still be destroyed afterwards.
 * Strategy ab: the staged set *is* the idle instance, so only one may be staged at a time (a
 * second stage, or a refit, gives REFIT_ERR_CONFLICT until it is published or destroyed).
 * Strategy quiesce: the publish is the in-place refit (pause, verify); a backend without separate
 * weight sets cannot run a staged set before that (REFIT_ERR_UNSUPPORTED from run_staged). */
REFIT_API REFIT_NODISCARD refit_status refit_engine_publish(refit_engine *engine, refit_staged *staged);
/* Version a staged set carries. */
REFIT_API uint64_t refit_staged_version(const refit_staged *staged);
/* Releases a staged set (published or not). NULL is a no-op. */
REFIT_API void refit_staged_destroy(refit_staged *staged);

/* ---- contexts and inference ------------------------------------------------------------- */

/* Creates an execution context (its own activation memory). *out is owned by the caller; free
 * with refit_context_destroy (before or after refit_engine_destroy). */
REFIT_API REFIT_NODISCARD refit_status refit_context_create(refit_engine *engine, refit_context **out);
/* NULL is a no-op. */
REFIT_API void refit_context_destroy(refit_context *context);

/* Runs one inference on caller-owned buffers (zero copy): `inputs[i]` holds input i (engine
 * order) with `input_nbytes[i]` bytes, `outputs[j]` receives output j. The caller keeps
 * ownership of all buffers. *version receives the version of the weight set the result was
 * computed with (may be NULL). Never blocks on a refit, except under strategy quiesce, where it
 * waits out the refit's bounded pause. */
REFIT_API REFIT_NODISCARD refit_status refit_context_run(refit_context *context,
                                                         const void *const *inputs,
                                                         const size_t *input_nbytes, size_t num_inputs,
                                                         void *const *outputs,
                                                         const size_t *output_nbytes,
                                                         size_t num_outputs, uint64_t *version);
/* As refit_context_run, computing with the staged (unpublished) set instead. */
REFIT_API REFIT_NODISCARD refit_status refit_context_run_staged(refit_context *context,
                                                                const refit_staged *staged,
                                                                const void *const *inputs,
                                                                const size_t *input_nbytes,
                                                                size_t num_inputs, void *const *outputs,
                                                                const size_t *output_nbytes,
                                                                size_t num_outputs);

#ifdef __cplusplus
}
#endif
#endif /* REFIT_H */
