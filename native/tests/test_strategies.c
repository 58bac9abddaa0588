/* test_strategies.c — the backend API from the outside: the refit strategies (swap, quiesce, ab)
 * on the reference backend and on the test-only plugin backend (native/tests/plugin/testplug.c,
 * loaded through the plugin path: it sits next to this executable), failing refits under each
 * strategy (the serving version and its outputs stay) — quiesce's staging before its pause
 * included —, plugin loading and its refusals, engine
 * options passed to the backend, and destroying an engine before its contexts and staged sets. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "refit.h"
#include "seed_model.h"
#include "seed_run.h"

static const int64_t KSHAPE[4] = {1, 1, 3, 3};
static const char *const STRATEGIES[] = {"swap", "quiesce", "ab"};

static refit_status open_seed(const char *backend, const char *strategy, const char *key,
                              const char *val, refit_engine **e)
{
    size_t size;
    unsigned char *bytes = seed_model(0, &size);
    const char *keys[2] = {"strategy", key}, *vals[2] = {strategy, val};
    refit_status st = refit_engine_open_memory(bytes, size, backend, keys, vals, key ? 2 : 1, e);
    free(bytes);
    return st;
}

static refit_tensor kernel_of(float *w, float k)
{
    for (int i = 0; i < 9; i++)
        w[i] = k;
    refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, KSHAPE, w, 9 * sizeof(float)};
    return t;
}

/* Refit, stage/shadow/publish and a refused refit on one engine. */
static void exercise(const char *backend, const char *strategy)
{
    refit_engine *e = NULL;
    CHECK(open_seed(backend, strategy, NULL, NULL, &e) == REFIT_OK, "%s/%s: open", backend, strategy);
    if (!e)
        return;
    refit_engine_stats st;
    CHECK(refit_engine_get_stats(e, &st) == REFIT_OK && strcmp(st.strategy, strategy) == 0,
          "%s: the engine reports its strategy", strategy);
    refit_context *c = NULL;
    CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
    float w[9];
    uint64_t v = 99;
    refit_tensor t = kernel_of(w, 2);
    CHECK(refit_engine_refit(e, &t, 1, 1, 0) == REFIT_OK, "%s/%s: refit", backend, strategy);
    CHECK(infer(c, &v) == 18.0f && v == 1, "%s/%s: 9 x 2 at version 1, got v=%llu", backend,
          strategy, (unsigned long long)v);

    t = kernel_of(w, 3);
    refit_staged *s = NULL;
    CHECK(refit_engine_stage(e, &t, 1, 2, 0, &s) == REFIT_OK, "%s/%s: stage", backend, strategy);
    float x[9], y = 0;
    for (int i = 0; i < 9; i++)
        x[i] = 1;
    const void *in[1] = {x};
    void *out[1] = {&y};
    size_t in_n[1] = {sizeof x}, out_n[1] = {sizeof y};
    CHECK(refit_context_run_staged(c, s, in, in_n, 1, out, out_n, 1) == REFIT_OK && y == 27.0f,
          "%s/%s: shadow run on the staged set gives 27, got %g", backend, strategy, y);
    CHECK(infer(c, &v) == 18.0f && v == 1, "%s/%s: still serving version 1 while staged", backend, strategy);
    if (strcmp(strategy, "ab") == 0) {
        refit_staged *s2 = NULL;
        CHECK(refit_engine_stage(e, &t, 1, 3, 0, &s2) == REFIT_ERR_CONFLICT && !s2 &&
              strstr(refit_last_error(), "idle instance"),
              "ab: a second staged set while the idle instance is held is refused");
        CHECK(refit_engine_refit(e, &t, 1, 3, 0) == REFIT_ERR_CONFLICT, "ab: so is a refit");
    }
    CHECK(refit_engine_publish(e, s) == REFIT_OK, "%s/%s: publish", backend, strategy);
    refit_staged_destroy(s);
    CHECK(infer(c, &v) == 27.0f && v == 2, "%s/%s: published version 2", backend, strategy);

    /* A refused refit: nothing changes. */
    int64_t bad_shape[4] = {1, 1, 3, 4};
    float wb[12] = {0};
    refit_tensor bad = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, bad_shape, wb, sizeof wb};
    CHECK(refit_engine_refit(e, &bad, 1, 3, 0) == REFIT_ERR_SHAPE, "%s/%s: bad shape refused", backend, strategy);
    CHECK(infer(c, &v) == 27.0f && v == 2 && refit_engine_version(e) == 2,
          "%s/%s: after the refused refit: version 2, output 27", backend, strategy);
    /* A partial refit after it still works (the instances track what they hold). */
    t = kernel_of(w, 4);
    CHECK(refit_engine_refit(e, &t, 1, 4, 0) == REFIT_OK && infer(c, &v) == 36.0f && v == 4,
          "%s/%s: refit after the refusal", backend, strategy);
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

/* Opens the seed model (option key=val when key is set) with a context, refits version 1
 * (kernel all 1) and checks it serves 9. Returns 0, with nothing left open, if any step fails. */
static int serving_v1(const char *backend, const char *strategy, const char *key, const char *val,
                      refit_engine **e, refit_context **c)
{
    *e = NULL;
    *c = NULL;
    CHECK(open_seed(backend, strategy, key, val, e) == REFIT_OK, "%s/%s %s: open", backend, strategy,
          key ? key : "");
    if (!*e)
        return 0;
    float w[9];
    uint64_t v = 0;
    refit_tensor t = kernel_of(w, 1);
    int ok = refit_context_create(*e, c) == REFIT_OK && refit_engine_refit(*e, &t, 1, 1, 0) == REFIT_OK &&
             infer(*c, &v) == 9.0f && v == 1;
    CHECK(ok, "%s/%s: version 1 serves 9", backend, strategy);
    if (!ok) {
        refit_context_destroy(*c);
        refit_engine_destroy(*e);
    }
    return ok;
}

/* The plugin's injected failures (in-place refits; swap: prepare): the serving set and its
 * outputs must stay, verified where a refit was applied in place. */
static void inplace_faults(const char *strategy, const char *fault)
{
    refit_engine *e = NULL;
    /* The second refit's backend write is #2 under quiesce; under ab it is #3 (the first refit
     * wrote the idle instance, #1, then brought the other up to date, #2); under swap it is
     * prepare #3 (the first was the open's). */
    const char *nth = strcmp(strategy, "quiesce") == 0 ? "2" : "3";
    refit_context *c = NULL;
    if (!serving_v1("testplug", strategy, fault, nth, &e, &c))
        return;
    float w[9];
    uint64_t v = 0;
    refit_tensor t = kernel_of(w, 5);
    refit_status st = refit_engine_refit(e, &t, 1, 2, 0);
    CHECK(st == REFIT_ERR_BACKEND, "%s %s: the faulty refit fails, got %s", strategy, fault,
          refit_status_string(st));
    /* A silent corruption: quiesce's read-back after the commit sees it, ab's canary. */
    const char *cause = strcmp(fault, "backend.corrupt_refit") ? "injected failure"
                        : strcmp(strategy, "quiesce") == 0    ? "read-back"
                                                              : "non-finite";
    CHECK(strstr(refit_last_error(), cause),
          "%s %s: the message names the cause: %s", strategy, fault, refit_last_error());
    float y = infer(c, &v);
    CHECK(y == 9.0f && v == 1 && refit_engine_version(e) == 1,
          "%s %s: still version 1 with its output 9 after the failure, got %g v=%llu", strategy,
          fault, y, (unsigned long long)v);
    refit_engine_stats stats;
    CHECK(refit_engine_get_stats(e, &stats) == REFIT_OK && stats.failed_refits == 1 &&
          stats.refits == 1, "%s: stats count the failure", strategy);
    t = kernel_of(w, 6);
    CHECK(refit_engine_refit(e, &t, 1, 3, 0) == REFIT_OK && infer(c, &v) == 54.0f && v == 3,
          "%s %s: the next refit serves", strategy, fault);
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

/* quiesce on a backend with weights_commit prepares and verifies the new set before its pause:
 * a failure there (the prepare, or the canary on the staged handle: finite weights whose output
 * overflows) refuses the refit without pausing, and the serving set and its outputs stay. */
static void staging_faults(const char *backend, const char *fault, float bad_kernel)
{
    refit_engine *e = NULL;
    /* testplug's prepare #1 is the open's, #2 the first refit's staging, #3 the second's. */
    refit_context *c = NULL;
    if (!serving_v1(backend, "quiesce", fault, fault ? "3" : NULL, &e, &c))
        return;
    float w[9];
    uint64_t v = 0;
    refit_tensor t;
    refit_engine_stats before, after;
    CHECK(refit_engine_get_stats(e, &before) == REFIT_OK && before.last_pause_ns > 0,
          "%s staging: the refit paused once", backend);
    t = kernel_of(w, bad_kernel);
    refit_status st = refit_engine_refit(e, &t, 1, 2, 0);
    const char *msg = refit_last_error();
    CHECK(st == REFIT_ERR_BACKEND && strstr(msg, fault ? "injected failure" : "non-finite") &&
              strstr(msg, "version 1 still serves, unchanged"),
          "%s staging %s: refused before the pause, named: %s", backend, fault ? fault : "canary", msg);
    float y = infer(c, &v);
    CHECK(y == 9.0f && v == 1 && refit_engine_version(e) == 1,
          "%s staging: still version 1 with its output 9, got %g v=%llu", backend, y, (unsigned long long)v);
    CHECK(refit_engine_get_stats(e, &after) == REFIT_OK && after.failed_refits == 1 &&
              after.last_pause_ns == before.last_pause_ns && after.max_pause_ns == before.max_pause_ns,
          "%s staging: the refused refit took no pause", backend);
    t = kernel_of(w, 6);
    CHECK(refit_engine_refit(e, &t, 1, 3, 0) == REFIT_OK && infer(c, &v) == 54.0f && v == 3,
          "%s staging: the next refit serves", backend);
    CHECK(refit_engine_get_stats(e, &after) == REFIT_OK && after.last_inplace_ns > 0 &&
              after.last_pause_ns >= after.last_drain_ns + after.last_inplace_ns + after.last_verify_ns,
          "%s staging: the pause is broken down (drain %llu + commit %llu + read-back %llu <= %llu ns)",
          backend, (unsigned long long)after.last_drain_ns, (unsigned long long)after.last_inplace_ns,
          (unsigned long long)after.last_verify_ns, (unsigned long long)after.last_pause_ns);
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

static void plugins(void)
{
    int listed = 0;
    for (size_t i = 0; i < refit_backend_count(); i++)
        if (strcmp(refit_backend_name(i), "testplug") == 0)
            listed = strstr(refit_backend_location(i), "librefit_backend_testplug.so") != NULL;
    CHECK(listed, "the test plugin is listed with its path");
    CHECK(strcmp(refit_backend_location(0), "built-in") == 0, "the reference backend is built in");
    CHECK(refit_backend_probe("testplug") == REFIT_OK, "the test plugin loads");

    refit_engine *e = NULL;
    CHECK(open_seed("nosuch", "swap", NULL, NULL, &e) == REFIT_ERR_NOT_FOUND && !e, "missing plugin");
    const char *msg = refit_last_error();
    CHECK(strstr(msg, "librefit_backend_nosuch.so") && strstr(msg, "REFIT_BACKEND_PATH") &&
              !strchr(msg, '\n'),
          "a missing plugin's one line names the file and where it looked: %s", msg);
    CHECK(refit_backend_probe("testplug_badapi") == REFIT_ERR_NOT_FOUND, "wrong api_version refused");
    msg = refit_last_error();
    CHECK(strstr(msg, "librefit_backend_testplug_badapi.so") && strstr(msg, "backend API 1") &&
              strstr(msg, "needs 3"),
          "the wrong api_version's one line names the file and both versions: %s", msg);
    CHECK(open_seed("testplug_badapi", "swap", NULL, NULL, &e) == REFIT_ERR_NOT_FOUND && !e,
          "an engine on it is refused too");
}

static void options(void)
{
    refit_engine *e = NULL;
    CHECK(open_seed("reference", "swap", "backend.nope", "1", &e) == REFIT_ERR_INVALID_ARG && !e &&
              strstr(refit_last_error(), "'nope'") && strstr(refit_last_error(), "reference"),
          "unknown backend option named: %s", refit_last_error());
    CHECK(open_seed("testplug", "swap", "backend.nope", "1", &e) == REFIT_ERR_INVALID_ARG && !e &&
              strstr(refit_last_error(), "nope"),
          "the plugin refuses its unknown option: %s", refit_last_error());
    CHECK(open_seed("reference", "swap", "device", "1", &e) == REFIT_ERR_INVALID_ARG && !e &&
              strstr(refit_last_error(), "one device"),
          "device 1 on the reference backend: %s", refit_last_error());
    CHECK(open_seed("reference", "sideways", NULL, NULL, &e) == REFIT_ERR_INVALID_ARG && !e &&
              strstr(refit_last_error(), "sideways"),
          "unknown strategy: %s", refit_last_error());
    CHECK(open_seed("reference", "swap", "backend.isa", "generic", &e) == REFIT_OK, "backend.isa=generic");
    refit_engine_destroy(e);
    e = NULL;
    CHECK(open_seed("reference", "quiesce", "threads", "4", &e) == REFIT_OK, "threads=4 accepted");
    refit_engine_destroy(e);
}

/* The engine handle goes first; contexts and staged sets keep it alive (ASan checks the rest). */
static void destroy_order(const char *strategy)
{
    refit_engine *e = NULL;
    CHECK(open_seed("reference", strategy, NULL, NULL, &e) == REFIT_OK, "open");
    if (!e)
        return;
    refit_context *c = NULL;
    refit_staged *s = NULL;
    float w[9];
    refit_tensor t = kernel_of(w, 7);
    CHECK(refit_context_create(e, &c) == REFIT_OK && refit_engine_stage(e, &t, 1, 1, 0, &s) == REFIT_OK,
          "context and staged set");
    refit_engine_destroy(e);
    uint64_t v = 9;
    CHECK(infer(c, &v) == 0.0f && v == 0, "%s: a context still runs after its engine handle is gone", strategy);
    refit_staged_destroy(s);
    refit_context_destroy(c);
}

int main(void)
{
    for (int i = 0; i < 3; i++) {
        exercise("reference", STRATEGIES[i]);
        exercise("testplug", STRATEGIES[i]);
        destroy_order(STRATEGIES[i]);
    }
    inplace_faults("swap", "backend.fail_prepare");
    for (int i = 1; i < 3; i++) {
        inplace_faults(STRATEGIES[i], "backend.fail_refit");
        inplace_faults(STRATEGIES[i], "backend.corrupt_refit");
    }
    staging_faults("testplug", "backend.fail_prepare", 5);
    staging_faults("testplug", NULL, 3e38f);
    staging_faults("reference", NULL, 3e38f);
    plugins();
    options();
    return CHECK_SUMMARY("test_strategies");
}
