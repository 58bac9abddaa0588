/* seed_run.h — running the seeds' demo model in the C tests: one inference with x all ones,
 * CHECKed, returning the output (9 x the kernel value) and its weight version. */
#ifndef SEED_RUN_H
#define SEED_RUN_H

#include "check.h"
#include "refit.h"

static float infer(refit_context *c, uint64_t *version)
{
    float x[9], y = -1;
    for (int i = 0; i < 9; i++)
        x[i] = 1;
    const void *in[1] = {x};
    void *out[1] = {&y};
    size_t in_n[1] = {sizeof x}, out_n[1] = {sizeof y};
    refit_status st = refit_context_run(c, in, in_n, 1, out, out_n, 1, version);
    CHECK(st == REFIT_OK, "run: %s", refit_status_string(st));
    return y;
}

#endif
