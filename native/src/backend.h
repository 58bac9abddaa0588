/*
 * backend.h — backend API v3: the interface between librefit's core and a backend (internal to
 * librefit, but also the header a plugin backend is compiled against, with graph.h).
 *
 * Conventions
 * - A backend is one `rt_backend` vtable. The reference CPU backend (cpu/) is built in; any other
 *   is a plugin: a shared library `librefit_backend_<name>.so` exporting one C symbol,
 *   `refit_backend_entry` (RT_BACKEND_ENTRY below), which returns its vtable. The core reads
 *   `api_version` (always the first field, in every version) before anything else and refuses a
 *   vtable whose version is not RT_BACKEND_API_VERSION, naming the file (docs/engine.md:
 *   "Backends" has the search path).
 * - Every function returning int returns 0 or a refit_status code (refit.h), and on failure
 *   writes one line naming the cause into err (errlen bytes, always NUL-terminated). A backend
 *   never prints, never exits, never keeps process-wide mutable state that two engines share.
 * - Threads: plan_create/plan_destroy and the weights_* functions are called by one thread at a
 *   time per plan (the core serialises refits); ctx_* and run are called from any thread, run
 *   concurrently on different contexts of one plan and concurrently with weights_prepare /
 *   weights_release of *other* prepared handles. The core never calls weights_refit on a handle
 *   while any run uses it (that is what the quiesce and ab strategies guarantee).
 * - Weights reach a backend as raw float32 host arrays, one per refittable graph weight
 *   (rt_graph.weights order, numel of the weight's value), owned by the core. A backend turns them
 *   into its own prepared form (packed panels, transformed kernels, device memory) in
 *   weights_prepare; run receives that prepared handle and nothing else about the weights.
 *
 * Ownership, per function
 * - plan_create(g, cfg, &plan): `g` and the strings in `cfg` outlive the plan (the core owns
 *   them); the plan is the backend's, freed by plan_destroy. cfg->options are the engine's
 *   "backend.*" options with the prefix removed: the backend refuses any key it does not know
 *   (REFIT_ERR_INVALID_ARG, "backend option 'x': unknown (known: ...)").
 * - ctx_create(plan, &ctx): per-context state (activation memory, a device stream); the backend's,
 *   freed by ctx_destroy. One context is used by one thread at a time.
 * - weights_prepare(plan, raw, base, changed, &prepared): builds a new prepared handle from the
 *   whole raw set. `raw[k]` stays valid and unchanged for as long as the returned handle lives:
 *   the core keeps the raw set alive with it, so a backend may point into it instead of copying.
 *   `base` is NULL or a live handle prepared earlier on the same plan, and `changed[k]` (never
 *   NULL when base is given) is nonzero for each weight whose data differs from base's; a backend
 *   may share or copy whatever of base depends only on unchanged weights (a partial refit then
 *   costs only what changed). base stays owned by the core and may be released before the new
 *   handle. On failure *prepared is untouched and nothing leaks.
 * - weights_release(plan, prepared): frees a handle. Called once per handle, when no run uses
 *   it, before plan_destroy. NULL is never passed.
 * - weights_refit(plan, prepared, raw, changed): optional (NULL: the backend cannot refit in
 *   place). Rewrites the weights marked in `changed` of an existing handle in place, from `raw`
 *   (same lifetime promise as for prepare, replacing the raw set the handle was prepared from).
 *   It may fail part-way, leaving any subset applied (as TensorRT and MagicMind may): the core
 *   then refits the handle back to its previous raw set and verifies it before serving again.
 * - weights_commit(plan, live, staged, changed): optional, with weights_verify (both or neither;
 *   needs RT_CAP_SETS and RT_CAP_INPLACE). The in-place refit split in two, so that the quiesce
 *   strategy's pause holds only a copy: `staged` is a handle weights_prepare built, while runs
 *   kept using `live`, from the new raw set with base = live and the same `changed` mask.
 *   weights_commit rewrites `live` in place so it computes exactly as `staged` does, copying
 *   staged's prepared bytes of the weights marked in `changed` (no transform, no allocation
 *   where avoidable), and from then on refers to staged's raw set (same lifetime promise as for
 *   weights_refit). Never called while a run uses `live`; `staged` is left valid (the core
 *   releases it). It may fail part-way like weights_refit, with the same recovery. It and
 *   weights_verify may run on a thread that runs inferences (the drain's last reader applies the
 *   commit, so the pause does not wait for the refitting thread): still one weights_* call at a
 *   time per plan, the refitting thread blocked meanwhile.
 * - weights_verify(plan, live, staged, changed): the read-back after a commit: 0 if `live` now
 *   holds exactly staged's prepared bytes for the weights marked in `changed`, else
 *   REFIT_ERR_BACKEND naming the first difference. Reads only; the core calls it with no run on
 *   `live`, right after weights_commit (a device backend copies its memory back to compare).
 * - run(plan, ctx, prepared, inputs, outputs): one inference. inputs[i] is graph input i, outputs[j]
 *   graph output j (float32, host, caller-owned, sized for the value).
 *
 * Capabilities (`caps`): RT_CAP_SETS if several prepared handles may be alive at once (needed by
 * the swap strategy and by shadow runs of staged sets); RT_CAP_INPLACE if weights_refit is set
 * (needed by quiesce and ab). The reference backend has both, so CI runs all three strategies.
 *
 * Versions: the core refuses any other api_version than RT_BACKEND_API_VERSION, so every change
 * to this struct's layout bumps it (fields are only ever appended). v3 appended weights_commit and
 * weights_verify (optional: NULL keeps quiesce's in-place refit and canary inside its pause).
 */
#ifndef REFIT_BACKEND_H
#define REFIT_BACKEND_H

#include "graph.h"

#ifdef __cplusplus
extern "C" { /* a plugin backend may be C++ (MagicMind's SDK is) */
#endif

#define RT_BACKEND_API_VERSION 3

/* The one symbol a plugin exports. */
#define RT_BACKEND_ENTRY "refit_backend_entry"

enum { RT_CAP_SETS = 1u, RT_CAP_INPLACE = 2u };

/* What the core passes to plan_create: the engine's device, threads and backend.* options. */
typedef struct rt_backend_config {
    int device_id;                  /* option "device" (default 0) */
    int threads;                    /* option "threads" (default 1): threads one run may use */
    size_t n_options;               /* "backend.<key>" options, prefix stripped */
    const char *const *option_keys;
    const char *const *option_values;
} rt_backend_config;

typedef struct rt_backend {
    int api_version;      /* RT_BACKEND_API_VERSION the backend was written against: keep first */
    const char *name;     /* "reference", "magicmind"; a plugin's must match its file name */
    const char *description;
    unsigned caps;        /* RT_CAP_* */

    int (*plan_create)(const rt_graph *g, const rt_backend_config *cfg, void **plan, char *err,
                       size_t errlen);
    void (*plan_destroy)(void *plan);

    int (*ctx_create)(void *plan, void **ctx, char *err, size_t errlen);
    void (*ctx_destroy)(void *ctx);

    int (*weights_prepare)(void *plan, const float *const *raw, const void *base,
                           const unsigned char *changed, void **prepared, char *err, size_t errlen);
    void (*weights_release)(void *plan, void *prepared);
    int (*weights_refit)(void *plan, void *prepared, const float *const *raw,
                         const unsigned char *changed, char *err, size_t errlen);

    int (*run)(void *plan, void *ctx, const void *prepared, const float *const *inputs,
               float *const *outputs, char *err, size_t errlen);

    /* v3, optional (both or neither): quiesce's stage-then-commit in-place refit. */
    int (*weights_commit)(void *plan, void *live, const void *staged, const unsigned char *changed,
                          char *err, size_t errlen);
    int (*weights_verify)(void *plan, const void *live, const void *staged,
                          const unsigned char *changed, char *err, size_t errlen);
} rt_backend;

/* The entry point's type: `const rt_backend *refit_backend_entry(void)`. */
typedef const rt_backend *(*rt_backend_entry_fn)(void);

/* Registry (backends.c): the built-in backends, then plugins found on the search path. */
size_t rt_backend_count(void);
/* Name of backend `index` (static), its location ("built-in" or the plugin's path), NULL if out
 * of range. The list is scanned once per process. */
const char *rt_backend_name_at(size_t index);
const char *rt_backend_location_at(size_t index);
/* Finds (loading a plugin if needed) backend `name`. On failure returns NULL and writes a one-line
 * message naming the file and where it looked (or the wrong api_version) into err. */
const rt_backend *rt_backend_load(const char *name, char *err, size_t errlen);

/* The reference CPU backend (cpu/backend.c). */
extern const rt_backend rt_cpu_backend;

#ifdef __cplusplus
}
#endif

#endif
