/* cpuinfo.c — see cpuinfo.h. */
#include "cpuinfo.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

static int x86_features(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) /* also checks the highest leaf */
        return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!fma || !osxsave || !avx)
        return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 6u) != 6u) /* XMM and YMM state enabled by the OS */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    int f = (b >> 5) & 1 ? RT_CPU_AVX2 : 0;
    if (f && ((b >> 16) & 1) && (xlo & 0xe0u) == 0xe0u) /* avx512f + ZMM state */
        f |= RT_CPU_AVX512;
    return f;
}
#else
static int x86_features(void) { return 0; }
#endif

int rt_cpu_features(void)
{
    const char *force = getenv("REFIT_CPU_ISA");
    if (force && (!strcmp(force, "generic") || !strcmp(force, "neon")))
        return 0;
    int f = x86_features();
    if (force && !strcmp(force, "avx2"))
        f &= RT_CPU_AVX2;
    return f;
}
