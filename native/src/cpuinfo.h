/* cpuinfo.h — which SIMD instruction sets this CPU may use (internal). One probe for the whole
 * library: the CPU backend picks its kernel set from it, the core its weight-copy routine. */
#ifndef REFIT_CPUINFO_H
#define REFIT_CPUINFO_H

enum { RT_CPU_AVX2 = 1, RT_CPU_AVX512 = 2 }; /* AVX2 implies FMA here */

/* Bitmask of usable features: cpuid + xgetbv (the OS must save the vector state), because some
 * toolchains' __builtin_cpu_supports runtime does not know recent CPUs. REFIT_CPU_ISA=generic
 * (or neon) masks everything, =avx2 masks AVX-512: for tests and benchmarks. 0 off x86-64. */
int rt_cpu_features(void);

#endif
