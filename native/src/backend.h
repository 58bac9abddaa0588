/*
 * backend.h — the backend interface behind librefit's one C ABI (internal).
 *
 * A backend is one `rt_backend` vtable registered in backends.c, ggml-style: it carries the
 * api_version it was written against, and the core refuses one whose version it does not know.
 * The reference CPU backend (cpu/) is the first; the MagicMind backend joins later.
 *
 * Weights: the core owns weight sets (refcounted, published through an atomic pointer, see
 * engine.c). A backend never keeps a pointer into a weight set beyond one `run` call: it receives
 * the set's data array on every run, so a refit needs nothing from the backend in api_version 1.
 * Weight data is always float32, host memory, in the shape of the graph's value.
 */
#ifndef REFIT_BACKEND_H
#define REFIT_BACKEND_H

#include "graph.h"

#define RT_BACKEND_API_VERSION 1

typedef struct rt_backend {
    int api_version;      /* RT_BACKEND_API_VERSION the backend was written against */
    const char *name;     /* "reference" */
    const char *description;

    /* Compiles an execution plan for `g` (which outlives the plan). Returns 0, or a refit_status
     * code with a one-line message in err (e.g. "node 'conv3' (Conv): group=3 does not divide
     * 64 input channels"). */
    int (*plan_create)(const rt_graph *g, void **plan, char *err, size_t errlen);
    void (*plan_destroy)(void *plan);

    /* Per-context state (activation memory, scratch). Called from any thread. */
    int (*ctx_create)(void *plan, void **ctx, char *err, size_t errlen);
    void (*ctx_destroy)(void *ctx);

    /* One inference. weights[k] is graph weight k; inputs[i] graph input i (float32);
     * outputs[j] graph output j (float32, caller-owned, sized for the value). May be called
     * concurrently on different contexts of the same plan. Returns 0 or a refit_status code. */
    int (*run)(void *plan, void *ctx, const float *const *weights, const float *const *inputs,
               float *const *outputs, char *err, size_t errlen);

    /* Optional (NULL: the backend takes no options). An engine option "backend.<key>" reaches
     * the backend as set_option(plan, "<key>", value) right after plan_create, before any
     * context exists. Returns 0, or a refit_status code with a one-line message in err naming
     * the key (unknown keys are refused). */
    int (*set_option)(void *plan, const char *key, const char *value, char *err, size_t errlen);
} rt_backend;

/* Registry (backends.c). */
size_t rt_backend_count(void);
const rt_backend *rt_backend_get(size_t index);
const rt_backend *rt_backend_find(const char *name);

/* The reference CPU backend (cpu/backend.c). */
extern const rt_backend rt_cpu_backend;

#endif
