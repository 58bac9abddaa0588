/* mm_test_util.h — shared bits of the MagicMind backend's C++ tests (run against the test-only
 * fake Neuware runtime, native/tests/fake_neuware): a temp dir, the seeds' model written as a
 * fake MagicMind model + name-map sidecar, and the one assertion macro. */
#ifndef MM_TEST_UTIL_H
#define MM_TEST_UTIL_H

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#define MM_CHECK(cond, ...)                                                                         \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                           \
            fputc('\n', stderr);                                                                    \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

inline std::string mm_temp_dir()
{
    const char *base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/mm_test.XXXXXX";
    char *d = mkdtemp(&tmpl[0]);
    MM_CHECK(d != nullptr, "mkdtemp");
    return tmpl;
}

// The seeds' demo model (MagicMind weight_refit): input x (1,1,3,3), one 3x3 conv without bias
// whose kernel is all `k`, output y (1,1,1,1) = 9k. Engine-side the kernel is named as in the
// weight-refit sample and stored NHWC [1,3,3,1]. Writes <dir>/seed.mm and seed.mm.names.
inline std::string mm_write_seed(const std::string &dir, float k)
{
    std::string model = dir + "/seed.mm";
    std::ofstream m(model);
    m << "fake-magicmind-model 1\ninput x 4 1 1 3 3\noutput y 4 1 1 1 1\n"
      << "weight main/mm.const/mm.refit_const:0 4 1 3 3 1";
    for (int i = 0; i < 9; i++)
        m << ' ' << k;
    m << "\nconv x main/mm.const/mm.refit_const:0 - y 1 1 0 0 0 0\n";
    std::ofstream n(model + ".names");
    n << "# written by mm_test_util.h\nrefitd-names 1\n"
      << "weight\tconv.weight\tmain/mm.const/mm.refit_const:0\tfloat32\t1x3x3x1\tNCHW>NHWC\n"
      << "input\tx\tx\tfloat32\t1x1x3x3\t-\noutput\ty\ty\tfloat32\t1x1x1x1\t-\n";
    return model;
}

// The seeds' multi-thread demo: `infer()` on two threads (each loops until the shared target is
// reached), `refit(i)` for i = 1, 2, ... every 10 ms until both are done. Returns the refit count.
template <class Infer, class Refit>
long mm_demo(Infer infer, Refit refit)
{
    std::atomic<bool> stop(false);
    long refits = 0;
    std::thread refitter([&] {
        for (long i = 1; !stop.load(); i++) {
            refit(i);
            refits++;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    });
    std::thread a(infer), b(infer);
    a.join();
    b.join();
    stop = true;
    refitter.join();
    return refits;
}

#endif
