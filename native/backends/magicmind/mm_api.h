/*
 * mm_api.h — the MagicMind backend's C face inside the plugin (C linkage, no exceptions cross it).
 *
 * librefit's backend vtable (native/src/backend.h) is implemented on top of these calls by
 * mm_plugin.cc; the C++ tests (native/tests/mm_*.cc) call them directly against the test-only
 * fake runtime. Conventions: every function returns 0 or a refit_status code (refit.h) and then
 * writes a one-line message naming the cause into err (errlen bytes, always terminated). Weights
 * and tensors are float32 host memory in the engine's layout and order (mmb_info).
 */
#ifndef REFITD_MM_API_H
#define REFITD_MM_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmb_engine mmb_engine; /* a model on every configured device */
typedef struct mmb_worker mmb_worker; /* one IContext + CNRT queue + device buffers, one thread at a time */

enum { MMB_INPUT = 0, MMB_OUTPUT = 1, MMB_WEIGHT = 2 };

typedef struct mmb_info {
    const char *name;       /* engine-side name; owned by the engine */
    int32_t ndim;
    const int64_t *shape;   /* engine layout */
    size_t nbytes;
} mmb_info;

/* Opens a MagicMind model file. Options (key/value strings, copied; "backend." prefix optional):
 *   names                the name-map sidecar (default <model>.names): engine weight names and
 *                        shapes, which the runtime does not report
 *   device_ids           "0" (default) or "0,1": an IEngine per device
 *   contexts_per_device  at most N worker contexts per device (default 0: no limit)
 *   memory               "allocator" (default: an IAllocator on cnrtMalloc) or "static"
 *                        (QueryContextMaxWorkspaceSize once, one workspace per context)
 *   profiler_dir         MagicMind profiler on, TensorBoard profile data written there
 *   dump_dir, dump_mode  ContextDumpInfo: intermediate tensors per Enqueue; mode "all"|"outputs" */
int mmb_open(const char *model_path, const char *const *keys, const char *const *values, size_t count,
             mmb_engine **out, char *err, size_t errlen);
void mmb_close(mmb_engine *engine);

size_t mmb_count(const mmb_engine *engine, int kind);
int mmb_info_get(const mmb_engine *engine, int kind, size_t index, mmb_info *info);
/* A worker on the next device in round-robin order. */
int mmb_worker_create(mmb_engine *engine, mmb_worker **out, char *err, size_t errlen);
void mmb_worker_destroy(mmb_worker *worker);
/* One inference: host inputs -> device (cnrtMemcpy), Enqueue, cnrtQueueSync, device -> host. */
int mmb_run(mmb_worker *worker, const float *const *inputs, float *const *outputs, char *err, size_t errlen);

/* Rewrites every weight (all of them, engine order) in place on every device's engine:
 * CreateIRefitter, SetNamedWeights each, GetMissingNames must be empty, then RefitEngine.
 * Not safe while any worker of this engine runs: the caller quiesces (or uses a second engine).
 * *applied (may be NULL) tells whether RefitEngine ran on any device, i.e. whether the device
 * weights may have changed even though an error is returned. */
int mmb_refit(mmb_engine *engine, const float *const *weights, int *applied, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
