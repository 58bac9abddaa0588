/* test_refit.c — the C ABI's refit contract on the seeds' model: demo outputs, every refused refit
 * (named tensor, nothing changed), stage/shadow/publish/conflict, float16, per-thread errors. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "refit.h"
#include "seed_model.h"
#include "seed_run.h"


static const int64_t KSHAPE[4] = {1, 1, 3, 3};

static refit_engine *open_seed(float k, const char *const *keys, const char *const *vals, size_t n)
{
    size_t size;
    unsigned char *bytes = seed_model(k, &size);
    refit_engine *e = NULL;
    refit_status st = refit_engine_open_memory(bytes, size, "reference", keys, vals, n, &e);
    free(bytes);
    CHECK(st == REFIT_OK, "open: %s", refit_status_string(st));
    return e;
}

static refit_status refit_all(refit_engine *e, float k, uint64_t version)
{
    float w[9];
    for (int i = 0; i < 9; i++)
        w[i] = k;
    refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, KSHAPE, w, sizeof w};
    return refit_engine_refit(e, &t, 1, version, 0);
}

static void test_seed_demo(void)
{
    refit_engine *e = open_seed(0, NULL, NULL, 0);
    refit_context *c = NULL;
    CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
    uint64_t v = 99;
    CHECK(infer(c, &v) == 0.0f && v == 0, "initial output 0 at version 0, got v=%llu", (unsigned long long)v);
    CHECK(refit_all(e, 1, 1) == REFIT_OK, "refit to ones");
    float y = infer(c, &v);
    CHECK(y == 9.0f && v == 1, "after refit: y=%g v=%llu", y, (unsigned long long)v);
    CHECK(refit_engine_version(e) == 1, "engine version");
    float back[9];
    uint64_t rv = 0;
    CHECK(refit_engine_read_weight(e, "conv.weight", back, sizeof back, &rv) == REFIT_OK && back[4] == 1 && rv == 1,
          "read back");
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

static void test_info(void)
{
    refit_engine *e = open_seed(0, NULL, NULL, 0);
    CHECK(refit_engine_count(e, REFIT_KIND_INPUT) == 1, "one input");
    CHECK(refit_engine_count(e, REFIT_KIND_OUTPUT) == 1, "one output");
    CHECK(refit_engine_count(e, REFIT_KIND_WEIGHT) == 1, "one weight");
    refit_tensor_info info;
    CHECK(refit_engine_info(e, REFIT_KIND_WEIGHT, 0, &info) == REFIT_OK && strcmp(info.name, "conv.weight") == 0 &&
              info.ndim == 4 && info.shape[3] == 3 && info.nbytes == 36 && info.dtype == REFIT_DTYPE_FLOAT32,
          "weight info");
    CHECK(refit_engine_info(e, REFIT_KIND_WEIGHT, 1, &info) == REFIT_ERR_INVALID_ARG, "index out of range");
    CHECK(strcmp(refit_engine_backend(e), "reference") == 0, "backend name");
    refit_engine_destroy(e);
    refit_engine_destroy(NULL); /* a no-op */
    refit_context_destroy(NULL);
    refit_staged_destroy(NULL);
}

/* Every refused refit names the tensor and the cause, and changes nothing. */
static void test_bad_refits(void)
{
    refit_engine *e = open_seed(2, NULL, NULL, 0);
    refit_context *c = NULL;
    CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
    float w[9], big[16];
    for (int i = 0; i < 9; i++)
        w[i] = 5;
    int64_t wrong_shape[4] = {1, 1, 2, 2}, short_shape[2] = {3, 3};
    refit_tensor good = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, KSHAPE, w, sizeof w};
    struct {
        refit_tensor t[2];
        size_t n;
        refit_status want;
        const char *needle;
    } cases[] = {
        {{{"nope", REFIT_DTYPE_FLOAT32, 4, KSHAPE, w, sizeof w}}, 1, REFIT_ERR_NOT_FOUND, "'nope'"},
        {{{"conv.weight", REFIT_DTYPE_INT64, 4, KSHAPE, w, sizeof w}}, 1, REFIT_ERR_DTYPE, "int64"},
        {{{"conv.weight", REFIT_DTYPE_FLOAT64, 4, KSHAPE, w, sizeof w}}, 1, REFIT_ERR_DTYPE, "float64"},
        {{{"conv.weight", REFIT_DTYPE_FLOAT32, 4, wrong_shape, w, 16}}, 1, REFIT_ERR_SHAPE, "[1, 1, 2, 2]"},
        {{{"conv.weight", REFIT_DTYPE_FLOAT32, 2, short_shape, w, sizeof w}}, 1, REFIT_ERR_SHAPE, "[3, 3]"},
        {{{"conv.weight", REFIT_DTYPE_FLOAT32, 4, KSHAPE, big, sizeof big}}, 1, REFIT_ERR_SIZE, "64 bytes"},
        {{good, good}, 2, REFIT_ERR_DUPLICATE, "twice"},
        {{good}, 0, REFIT_ERR_EMPTY, "no tensors"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        refit_status st = refit_engine_refit(e, cases[i].t, cases[i].n, 7, 0);
        CHECK(st == cases[i].want, "case %zu: got %s want %s", i, refit_status_string(st),
              refit_status_string(cases[i].want));
        CHECK(strstr(refit_last_error(), cases[i].needle) != NULL, "case %zu message '%s' lacks '%s'", i,
              refit_last_error(), cases[i].needle);
        if (cases[i].n)
            CHECK(strstr(refit_last_error(), cases[i].t[0].name) != NULL, "case %zu names the tensor", i);
    }
    /* NaN and Inf: refused by default, accepted with REFIT_ALLOW_NONFINITE. */
    w[4] = NAN;
    CHECK(refit_engine_refit(e, &good, 1, 7, 0) == REFIT_ERR_NONFINITE && strstr(refit_last_error(), "NaN at element 4"),
          "NaN refused");
    w[4] = INFINITY;
    CHECK(refit_engine_refit(e, &good, 1, 7, 0) == REFIT_ERR_NONFINITE && strstr(refit_last_error(), "+Inf"),
          "Inf refused");
    uint64_t v = 0;
    CHECK(infer(c, &v) == 18.0f && v == 0 && refit_engine_version(e) == 0, "still serving version 0 (all 2)");
    CHECK(refit_engine_refit(e, &good, 1, 8, REFIT_ALLOW_NONFINITE) == REFIT_OK, "Inf allowed by flag");
    CHECK(isinf(infer(c, &v)) && v == 8, "Inf served when allowed");
    refit_context_destroy(c);
    refit_engine_destroy(e);

    /* The engine option makes non-finite values acceptable by default. */
    const char *k[1] = {"allow_nonfinite"}, *val[1] = {"1"};
    e = open_seed(0, k, val, 1);
    w[4] = NAN;
    CHECK(refit_engine_refit(e, &good, 1, 1, 0) == REFIT_OK, "allow_nonfinite option");
    refit_engine_destroy(e);
}

static void test_options(void)
{
    size_t size;
    unsigned char *bytes = seed_model(0, &size);
    refit_engine *e = NULL;
    const char *k1[1] = {"bogus"}, *v1[1] = {"1"};
    CHECK(refit_engine_open_memory(bytes, size, "reference", k1, v1, 1, &e) == REFIT_ERR_INVALID_ARG && !e &&
              strstr(refit_last_error(), "unknown option 'bogus'"),
          "unknown option");
    const char *k2[1] = {"initial_version"}, *v2[1] = {"41"};
    CHECK(refit_engine_open_memory(bytes, size, "reference", k2, v2, 1, &e) == REFIT_OK &&
              refit_engine_version(e) == 41,
          "initial_version");
    refit_engine_destroy(e);
    e = NULL;
    const char *k3[1] = {"spare_weights"}, *v3[1] = {"2"}, *v4[1] = {"0"};
    CHECK(refit_engine_open_memory(bytes, size, "reference", k3, v3, 1, &e) == REFIT_ERR_INVALID_ARG &&
              strstr(refit_last_error(), "spare_weights"),
          "bad spare_weights");
    CHECK(refit_engine_open_memory(bytes, size, "reference", k3, v4, 1, &e) == REFIT_OK, "spare_weights=0");
    if (e) { /* without spares every refit allocates afresh; results are the same */
        refit_context *c = NULL;
        CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
        uint64_t v = 0;
        for (int k = 1; k <= 3; k++)
            CHECK(refit_all(e, (float)k, (uint64_t)k) == REFIT_OK && infer(c, &v) == 9.0f * k && v == (uint64_t)k,
                  "refit %d without spares", k);
        refit_context_destroy(c);
    }
    refit_engine_destroy(e);
    e = NULL;
    CHECK(refit_engine_open_memory(bytes, size, "warp-drive", NULL, NULL, 0, &e) == REFIT_ERR_NOT_FOUND &&
              strstr(refit_last_error(), "warp-drive"),
          "unknown backend");
    CHECK(refit_engine_open_memory(bytes, size / 2, "reference", NULL, NULL, 0, &e) != REFIT_OK && !e,
          "truncated model refused");
    CHECK(refit_engine_open("/nonexistent/model.onnx", "reference", NULL, NULL, 0, &e) == REFIT_ERR_IO &&
              strstr(refit_last_error(), "/nonexistent/model.onnx"),
          "missing file");
    free(bytes);
}

static void test_stage_publish(void)
{
    refit_engine *e = open_seed(1, NULL, NULL, 0);
    refit_context *c = NULL;
    CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
    float w[9], x[9], y = 0;
    for (int i = 0; i < 9; i++)
        w[i] = 3, x[i] = 1;
    refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, KSHAPE, w, sizeof w};
    refit_staged *s = NULL;
    CHECK(refit_engine_stage(e, &t, 1, 5, 0, &s) == REFIT_OK && refit_staged_version(s) == 5, "stage");
    const void *in[1] = {x};
    void *out[1] = {&y};
    size_t in_n[1] = {sizeof x}, out_n[1] = {sizeof y};
    CHECK(refit_context_run_staged(c, s, in, in_n, 1, out, out_n, 1) == REFIT_OK && y == 27, "shadow run sees 27");
    uint64_t v;
    CHECK(infer(c, &v) == 9 && v == 0, "serving still version 0 while staged");
    CHECK(refit_engine_publish(e, s) == REFIT_OK, "publish");
    CHECK(infer(c, &v) == 27 && v == 5, "serving version 5");
    CHECK(refit_engine_publish(e, s) == REFIT_ERR_INVALID_ARG, "double publish refused");
    refit_staged_destroy(s);

    /* A set staged on version 5 conflicts once version 6 is published. */
    CHECK(refit_engine_stage(e, &t, 1, 7, 0, &s) == REFIT_OK, "stage 7");
    CHECK(refit_all(e, 4, 6) == REFIT_OK, "refit 6");
    CHECK(refit_engine_publish(e, s) == REFIT_ERR_CONFLICT && strstr(refit_last_error(), "version 6"), "conflict");
    CHECK(infer(c, &v) == 36 && v == 6, "version 6 serves after the conflict");
    refit_staged_destroy(s);
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

static uint16_t float_to_half_simple(float f) /* exact for small integers */
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    uint32_t sign = (b >> 16) & 0x8000u;
    int exp = (int)((b >> 23) & 0xff) - 127 + 15;
    if ((b & 0x7fffffffu) == 0)
        return (uint16_t)sign;
    return (uint16_t)(sign | ((uint32_t)exp << 10) | ((b >> 13) & 0x3ffu));
}

static void test_float16(void)
{
    refit_engine *e = open_seed(0, NULL, NULL, 0);
    refit_context *c = NULL;
    CHECK(refit_context_create(e, &c) == REFIT_OK, "context");
    uint16_t h[9];
    for (int i = 0; i < 9; i++)
        h[i] = float_to_half_simple(2.5f);
    refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT16, 4, KSHAPE, h, sizeof h};
    CHECK(refit_engine_refit(e, &t, 1, 3, 0) == REFIT_OK, "float16 refit");
    uint64_t v;
    CHECK(infer(c, &v) == 22.5f && v == 3, "float16 weights converted");
    h[0] = 0x7e00; /* NaN */
    CHECK(refit_engine_refit(e, &t, 1, 4, 0) == REFIT_ERR_NONFINITE, "float16 NaN refused");
    t.nbytes = 36;
    CHECK(refit_engine_refit(e, &t, 1, 4, 0) == REFIT_ERR_SIZE && strstr(refit_last_error(), "needs 18"),
          "float16 size checked");
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

/* Error text is per thread: a failure on one thread does not overwrite another's. */
static void *fail_in_thread(void *arg)
{
    refit_engine *e = arg;
    refit_tensor t = {"other.thread", REFIT_DTYPE_FLOAT32, 4, KSHAPE, NULL, 36};
    if (refit_engine_refit(e, &t, 1, 1, 0) == REFIT_OK)
        return NULL; /* must fail: unknown name */
    return strstr(refit_last_error(), "other.thread") ? arg : NULL;
}

static void test_thread_errors(void)
{
    refit_engine *e = open_seed(0, NULL, NULL, 0);
    refit_tensor t = {"main.thread", REFIT_DTYPE_FLOAT32, 4, KSHAPE, NULL, 36};
    CHECK(refit_engine_refit(e, &t, 1, 1, 0) == REFIT_ERR_NOT_FOUND, "main failure");
    pthread_t th;
    void *res = NULL;
    pthread_create(&th, NULL, fail_in_thread, e);
    pthread_join(th, &res);
    CHECK(res == e, "other thread saw its own message");
    CHECK(strstr(refit_last_error(), "main.thread") != NULL, "main thread's message intact: %s", refit_last_error());
    refit_engine_destroy(e);
}

int main(void)
{
    CHECK(refit_abi_version() == REFIT_ABI_VERSION, "abi version");
    CHECK(refit_backend_count() >= 1 && strcmp(refit_backend_name(0), "reference") == 0, "registry");
    test_seed_demo();
    test_info();
    test_bad_refits();
    test_options();
    test_stage_publish();
    test_float16();
    test_thread_errors();
    return CHECK_SUMMARY("test_refit");
}
