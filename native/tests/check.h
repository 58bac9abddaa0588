/* check.h — the C tests' one assertion macro. CHECK(cond, fmt, ...) counts a pass or prints the
 * failing condition with its location, the message, the label (e.g. the kernel set under test)
 * and librefit's per-thread last error; CHECK_SUMMARY prints the closing "N passed, N failed"
 * line and yields the exit status. */
#ifndef REFIT_TESTS_CHECK_H
#define REFIT_TESTS_CHECK_H

#include <stdio.h>

#include "refit.h"

static int check_passed, check_failed;
static const char *check_label = "";

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (cond) {                                                                            \
            check_passed++;                                                                    \
        } else {                                                                               \
            check_failed++;                                                                    \
            fprintf(stderr, "FAIL %s%s:%d: %s: ", check_label, __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, " [last error: %s]\n", refit_last_error());                        \
        }                                                                                      \
    } while (0)

#define CHECK_SUMMARY(name)                                                                    \
    (printf("%s: %d passed, %d failed\n", (name), check_passed, check_failed), check_failed ? 1 : 0)

#endif
