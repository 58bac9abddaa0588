/* mm_test_tearing.cc — the seeds' multi-thread demo on the MagicMind backend's session against
 * the test-only fake runtime, WITHOUT librefit's strategies: two threads infer non-stop while a
 * third refits the kernel to all-k every 10 ms, k = 0..9 cycling. Every correct output is 9k.
 *   unguarded: RefitEngine runs while Enqueue does. The fake rewrites constants in place,
 *              piecewise, so results tear (an output that is not a multiple of 9): this test
 *              REQUIRES torn > 0, proving the harness can see tearing.
 *   drained:   the refit waits until no inference runs (a plain reader/writer drain, the essence
 *              of librefit's quiesce strategy): this test requires torn == 0.
 * MM_STRESS_INFERENCES (default 100000) inferences per mode. */
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <vector>

#include "mm_session.h"
#include "mm_test_util.h"

using namespace refitd_mm;

namespace {

// Inference admits while no refit holds the gate; a refit waits for in-flight inferences.
struct Drain {
    std::mutex mu;
    std::condition_variable cv;
    int running = 0;
    bool refitting = false;
    void enter()
    {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return !refitting; });
        running++;
    }
    void leave()
    {
        std::lock_guard<std::mutex> l(mu);
        if (--running == 0)
            cv.notify_all();
    }
    void lock()
    {
        std::unique_lock<std::mutex> l(mu);
        refitting = true;
        cv.wait(l, [&] { return running == 0; });
    }
    void unlock()
    {
        std::lock_guard<std::mutex> l(mu);
        refitting = false;
        cv.notify_all();
    }
};

struct Result {
    long inferences = 0, torn = 0, refits = 0;
};

Result run_demo(Session &s, bool guarded, long target)
{
    std::vector<float> zeros(9, 0.0f);
    const float *w0[] = {zeros.data()};
    std::unique_ptr<WeightSet> set = s.weight_set(w0);
    Drain drain;
    std::atomic<long> done(0), torn(0);
    auto infer = [&] {
        std::unique_ptr<Worker> w = s.worker();
        float x[9], y = 0;
        for (float &v : x)
            v = 1.0f;
        const float *in[] = {x};
        float *out[] = {&y};
        while (done.load() < target) {
            if (guarded)
                drain.enter();
            w->run(*set, in, out);
            if (guarded)
                drain.leave();
            if (std::fmod(y, 9.0f) != 0.0f || y < 0 || y > 81)
                torn++;
            done++;
        }
    };
    Result r;
    r.refits = mm_demo(infer, [&](long i) {
        std::vector<float> k(9, static_cast<float>(i % 10));
        const float *wk[] = {k.data()};
        bool applied = false;
        if (guarded)
            drain.lock();
        set->refit(wk, &applied);
        if (guarded)
            drain.unlock();
    });
    r.inferences = done.load();
    r.torn = torn.load();
    return r;
}

} // namespace

int main()
{
    const char *n = getenv("MM_STRESS_INFERENCES");
    long target = n ? atol(n) : 100000;
    std::string dir = mm_temp_dir();
    Options opt;
    std::string model = mm_write_seed(dir, 0.0f);
    opt.names = model + ".names";
    Session s(model, opt);

    Result u = run_demo(s, false, target);
    printf("unguarded: %ld inferences, %ld refits, %ld torn\n", u.inferences, u.refits, u.torn);
    MM_CHECK(u.inferences >= target && u.refits > 0, "demo did not run");
    MM_CHECK(u.torn > 0, "an unguarded in-place refit on the fake runtime must tear: the harness cannot see tearing");

    Result g = run_demo(s, true, target);
    printf("drained:   %ld inferences, %ld refits, %ld torn\n", g.inferences, g.refits, g.torn);
    MM_CHECK(g.inferences >= target && g.refits > 0, "demo did not run");
    MM_CHECK(g.torn == 0, "a drained refit tore %ld results", g.torn);
    return 0;
}
