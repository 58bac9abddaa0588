/* test_refit_stress.c — the seeds' multi-thread demo as a stress test: inference threads run
 * non-stop while a writer refits the kernel to all-v as version v every REFIT_STRESS_PERIOD_US
 * (default 10 ms), alternating plain refits and stage+publish. Every output must equal 9 x the
 * version returned with it (a torn mix of two sets would not), and each thread must see versions in
 * non-decreasing order. Run once per refit strategy (REFIT_STRESS_STRATEGIES, default
 * "swap,quiesce,ab"). Sizes: REFIT_STRESS_INFERENCES (default 100000, total per strategy),
 * REFIT_STRESS_THREADS (default 2), REFIT_STRESS_MIN_REFITS (default 100). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "refit.h"
#include "seed_model.h"

static refit_engine *engine;
static atomic_long inferences, torn, backwards, errors;
static atomic_int stop;

static long env_long(const char *name, long def)
{
    const char *s = getenv(name);
    return s && *s ? strtol(s, NULL, 10) : def;
}

static void *reader(void *arg)
{
    (void)arg;
    refit_context *c = NULL;
    if (refit_context_create(engine, &c) != REFIT_OK) {
        atomic_fetch_add(&errors, 1);
        return NULL;
    }
    float x[9], y;
    for (int i = 0; i < 9; i++)
        x[i] = 1;
    const void *in[1] = {x};
    void *out[1] = {&y};
    size_t in_n[1] = {sizeof x}, out_n[1] = {sizeof y};
    uint64_t last = 0, v = 0;
    while (!atomic_load(&stop)) {
        if (refit_context_run(c, in, in_n, 1, out, out_n, 1, &v) != REFIT_OK) {
            atomic_fetch_add(&errors, 1);
            continue;
        }
        if (y != 9.0f * (float)v)
            atomic_fetch_add(&torn, 1);
        if (v < last)
            atomic_fetch_add(&backwards, 1);
        last = v;
        atomic_fetch_add(&inferences, 1);
    }
    refit_context_destroy(c);
    return NULL;
}

/* One run under `strategy`; returns 1 if it held the contract. */
static int stress(const char *strategy)
{
    atomic_store(&inferences, 0);
    atomic_store(&torn, 0);
    atomic_store(&backwards, 0);
    atomic_store(&errors, 0);
    atomic_store(&stop, 0);
    long total = env_long("REFIT_STRESS_INFERENCES", 100000);
    long nthreads = env_long("REFIT_STRESS_THREADS", 2);
    long period_us = env_long("REFIT_STRESS_PERIOD_US", 10000);
    long min_refits = env_long("REFIT_STRESS_MIN_REFITS", 100);
    if (nthreads < 1 || nthreads > 64)
        nthreads = 2;
    size_t size;
    unsigned char *bytes = seed_model(0, &size);
    const char *keys[1] = {"strategy"}, *vals[1] = {strategy};
    if (refit_engine_open_memory(bytes, size, "reference", keys, vals, 1, &engine) != REFIT_OK) {
        fprintf(stderr, "open: %s\n", refit_last_error());
        free(bytes);
        return 0;
    }
    free(bytes);
    pthread_t th[64];
    for (long i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, reader, NULL);

    static const int64_t kshape[4] = {1, 1, 3, 3};
    long refits = 0, refit_errors = 0;
    uint64_t version = 0;
    while (atomic_load(&inferences) < total || refits < min_refits) {
        struct timespec ts = {period_us / 1000000, (period_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
        float w[9];
        version++;
        for (int i = 0; i < 9; i++)
            w[i] = (float)version;
        refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, kshape, w, sizeof w};
        refit_status st;
        if (version % 2) {
            st = refit_engine_refit(engine, &t, 1, version, 0);
        } else {
            refit_staged *s = NULL;
            st = refit_engine_stage(engine, &t, 1, version, 0, &s);
            if (st == REFIT_OK)
                st = refit_engine_publish(engine, s);
            refit_staged_destroy(s);
        }
        if (st != REFIT_OK) {
            fprintf(stderr, "refit %llu: %s\n", (unsigned long long)version, refit_last_error());
            refit_errors++;
        }
        refits++;
    }
    atomic_store(&stop, 1);
    for (long i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    refit_engine_stats stats;
    if (refit_engine_get_stats(engine, &stats) != REFIT_OK)
        refit_errors++;
    refit_engine_destroy(engine);

    long n = atomic_load(&inferences), t = atomic_load(&torn), b = atomic_load(&backwards), e = atomic_load(&errors);
    printf("stress [%s]: %ld inferences on %ld threads, %ld refits, %ld torn, %ld out of order, "
           "%ld errors, longest pause %.1f us\n", strategy, n, nthreads, refits, t, b,
           e + refit_errors, (double)stats.max_pause_ns / 1e3);
    return n >= total && refits >= min_refits && t == 0 && b == 0 && e == 0 && refit_errors == 0 &&
           stats.refits == (uint64_t)refits;
}

int main(void)
{
    const char *list = getenv("REFIT_STRESS_STRATEGIES");
    char buf[128];
    snprintf(buf, sizeof buf, "%s", list && *list ? list : "swap,quiesce,ab");
    int passed = 0, failed = 0;
    for (char *save = NULL, *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        if (stress(s))
            passed++;
        else
            failed++;
    }
    printf("test_refit_stress: %d passed, %d failed\n", passed, failed);
    return failed || !passed ? 1 : 0;
}
