/* mm_test_librefit.cc — the seeds' multi-thread demo through librefit's public C ABI on the
 * MagicMind plugin (librefit_backend_magicmind.so, found via REFIT_BACKEND_PATH) against the
 * test-only fake runtime, whose RefitEngine rewrites weights in place, piecewise, under running
 * Enqueues. librefit opens the source ONNX (conv.weight, NCHW); the plugin maps it through the
 * name map to main/mm.const/mm.refit_const:0 (NHWC) in the fake MagicMind model.
 *   strategy quiesce, strategy ab:   zero torn results (an output is torn unless it is exactly
 *                                    9k for the version k it reports), versions monotone;
 *   ab + backend.test_unguarded=1:   TEST-ONLY, the two instances share one engine, so the refit
 *                                    runs under inference: torn results MUST appear;
 *   a refit the runtime refuses (a name left missing): the serving version and outputs stay.
 * MM_STRESS_INFERENCES (default 100000) inferences per strategy, a refit every 10 ms. */
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "mm_test_util.h"
#include "refit.h"

extern "C" unsigned char *mm_seed_onnx(float k, size_t *size);

namespace {

struct Result {
    long inferences = 0, torn = 0, refits = 0, backwards = 0;
};

refit_engine *open_seed(const std::string &onnx, const std::string &mm, const std::vector<std::string> &extra)
{
    std::vector<std::string> kv = {"backend.model", mm};
    kv.insert(kv.end(), extra.begin(), extra.end());
    std::vector<const char *> keys, values;
    for (size_t i = 0; i < kv.size(); i += 2) {
        keys.push_back(kv[i].c_str());
        values.push_back(kv[i + 1].c_str());
    }
    refit_engine *e = nullptr;
    refit_status st = refit_engine_open(onnx.c_str(), "magicmind", keys.data(), values.data(), keys.size(), &e);
    MM_CHECK(st == REFIT_OK, "open: %s", refit_last_error());
    return e;
}

refit_status refit_all(refit_engine *e, float k, uint64_t version)
{
    float w[9];
    for (float &x : w)
        x = k;
    int64_t shape[4] = {1, 1, 3, 3};
    refit_tensor t = {"conv.weight", REFIT_DTYPE_FLOAT32, 4, shape, w, sizeof w};
    return refit_engine_refit(e, &t, 1, version, 0);
}

float infer_once(refit_context *c, uint64_t *version)
{
    float x[9], y = -1;
    for (float &v : x)
        v = 1.0f;
    const void *in[] = {x};
    size_t in_n[] = {sizeof x}, out_n[] = {sizeof y};
    void *out[] = {&y};
    refit_status st = refit_context_run(c, in, in_n, 1, out, out_n, 1, version);
    MM_CHECK(st == REFIT_OK, "run: %s", refit_last_error());
    return y;
}

Result demo(refit_engine *e, long target)
{
    std::atomic<long> done(0), torn(0), backwards(0);
    auto infer = [&] {
        refit_context *c = nullptr;
        MM_CHECK(refit_context_create(e, &c) == REFIT_OK, "context: %s", refit_last_error());
        uint64_t last = 0;
        while (done.load() < target) {
            uint64_t v = 0;
            float y = infer_once(c, &v);
            if (y != 9.0f * static_cast<float>(v % 10))
                torn++;
            if (v < last)
                backwards++;
            last = v;
            done++;
        }
        refit_context_destroy(c);
    };
    const uint64_t v0 = refit_engine_version(e);
    Result r;
    r.refits = mm_demo(infer, [&](long i) {
        uint64_t v = v0 + static_cast<uint64_t>(i);
        MM_CHECK(refit_all(e, static_cast<float>(v % 10), v) == REFIT_OK, "refit: %s", refit_last_error());
    });
    r.inferences = done.load();
    r.torn = torn.load();
    r.backwards = backwards.load();
    return r;
}

// The fake drops the weight once: GetMissingNames still lists it, the plugin refuses before
// RefitEngine, librefit restores and keeps serving the version it had.
void refused_refit(const std::string &onnx, const std::string &mm, const char *strategy)
{
    refit_engine *e = open_seed(onnx, mm, {"strategy", strategy});
    MM_CHECK(refit_all(e, 3.0f, 3) == REFIT_OK, "refit: %s", refit_last_error());
    setenv("FAKE_MAGICMIND_IGNORE_WEIGHT", "main/mm.const/mm.refit_const:0", 1);
    setenv("FAKE_MAGICMIND_IGNORE_COUNT", "1", 1); // refused once; librefit's restore then succeeds
    refit_status st = refit_all(e, 5.0f, 5);
    std::string why = refit_last_error();
    unsetenv("FAKE_MAGICMIND_IGNORE_WEIGHT");
    MM_CHECK(st != REFIT_OK, "%s: a refit the runtime refused reported success", strategy);
    MM_CHECK(why.find("main/mm.const/mm.refit_const:0") != std::string::npos, "%s: message: %s", strategy, why.c_str());
    MM_CHECK(refit_engine_version(e) == 3, "%s: serving version moved to %llu", strategy,
             static_cast<unsigned long long>(refit_engine_version(e)));
    refit_context *c = nullptr;
    MM_CHECK(refit_context_create(e, &c) == REFIT_OK, "context: %s", refit_last_error());
    uint64_t v = 0;
    float y = infer_once(c, &v);
    MM_CHECK(v == 3 && y == 27.0f, "%s: after a refused refit: version %llu output %g", strategy,
             static_cast<unsigned long long>(v), y);
    printf("%s: refused refit kept version 3 (%s)\n", strategy, why.c_str());
    refit_context_destroy(c);
    refit_engine_destroy(e);
}

} // namespace

int main()
{
    const char *n = getenv("MM_STRESS_INFERENCES");
    long target = n ? atol(n) : 100000;
    std::string dir = mm_temp_dir();
    std::string mm = mm_write_seed(dir, 0.0f);
    size_t size = 0;
    unsigned char *bytes = mm_seed_onnx(0.0f, &size);
    std::string onnx = dir + "/seed.onnx";
    FILE *f = fopen(onnx.c_str(), "wb");
    MM_CHECK(f && fwrite(bytes, 1, size, f) == size && fclose(f) == 0, "write %s", onnx.c_str());
    free(bytes);

    struct Mode {
        const char *name;
        std::vector<std::string> options;
        bool must_tear;
    } modes[] = {
        {"quiesce", {"strategy", "quiesce"}, false},
        {"ab", {"strategy", "ab"}, false},
        {"unguarded (test-only)", {"strategy", "ab", "backend.test_unguarded", "1"}, true},
    };
    for (const Mode &m : modes) {
        refit_engine *e = open_seed(onnx, mm, m.options);
        Result r = demo(e, target);
        printf("%-22s %ld inferences, %ld refits, %ld torn, %ld version steps backwards\n", m.name, r.inferences,
               r.refits, r.torn, r.backwards);
        MM_CHECK(r.inferences >= target && r.refits > 1, "%s: the demo did not run", m.name);
        if (m.must_tear) {
            MM_CHECK(r.torn > 0, "%s: no torn result: the test cannot see tearing", m.name);
        } else {
            MM_CHECK(r.torn == 0, "%s: %ld torn results", m.name, r.torn);
            MM_CHECK(r.backwards == 0, "%s: versions went backwards", m.name);
        }
        refit_engine_destroy(e);
    }
    refused_refit(onnx, mm, "quiesce");
    refused_refit(onnx, mm, "ab");
    return 0;
}
