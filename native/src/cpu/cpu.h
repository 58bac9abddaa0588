/*
 * cpu.h — internals of the reference CPU backend (shared by backend.c and the kernel files).
 *
 * Everything here is float32, single-threaded and re-entrant: kernels take all of their scratch
 * from the caller (the context's arena), keep no state between calls and touch no globals, so any
 * number of contexts may run the same plan concurrently.
 */
#ifndef REFIT_CPU_H
#define REFIT_CPU_H

#include <stddef.h>
#include <stdint.h>

#define RT_MAX_DIMS_CPU 8 /* == RT_MAX_DIMS (graph.h) */

/* Epilogue applied to every output element of a GEMM / conv as it leaves the micro-kernel:
 *   y = acc * row_scale[m] + row_bias[m] + col_bias[n];  y += res[m, n];  y = min(max(y, lo), hi)
 * NULL pointers mean 1 / 0 / 0 / no residual. Conv: m = output channel, n = output pixel;
 * folded BatchNorm is row_scale/row_bias, a fused residual Add is res, Relu/Clip is lo/hi. */
typedef struct cpu_epi {
    const float *row_scale;
    const float *row_bias;
    const float *col_bias;
    const float *res;
    int64_t ldr;
    float lo, hi;
} cpu_epi;

/* Micro-kernel: C[MR x NR] (op)= A_panel(MR x kc) * B_panel(kc x NR), packed layouts
 * a[k*MR + i], b[k*NR + j]. flags: CPU_UK_LOAD adds to the existing C, CPU_UK_EPI applies the
 * epilogue (scale/bias arrays have MR / NR entries, never NULL here; res may be NULL). */
#define CPU_UK_LOAD 1
#define CPU_UK_EPI 2
typedef void (*cpu_ukernel_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                               int flags, const float *rs, const float *rb, const float *cb,
                               const float *res, int64_t ldr, float lo, float hi);
/* The same with B read in place: row k at b + boff[k] (wide conv, 1x1 conv, Winograd; no
 * packed panel). AVX-512 only; other ISAs pack those rows. */
typedef void (*cpu_ukind_fn)(int64_t kc, const float *a, const float *b, const int64_t *boff,
                             float *c, int64_t ldc, int flags, const float *rs, const float *rb,
                             const float *cb, const float *res, int64_t ldr, float lo, float hi);

/* Depthwise conv over one channel plane (see conv.c). */
typedef struct cpu_dw_args {
    const float *in;      /* H x W plane */
    const float *in_lo, *in_hi; /* the input tensor around it: [in_lo, in_hi) may be read */
    int64_t H, W;
    const float *w;       /* kh x kw */
    int64_t kh, kw, sh, sw, dh, dw, pt, pl;
    float *out;           /* OH x OW */
    int64_t OH, OW;
    float scale, bias;
    const float *res;     /* OH x OW or NULL */
    float lo, hi;
    float *pad;           /* zero-padded plane, (OH-1)*sh+(kh-1)*dh+1 rows of (OW-1)*sw+(kw-1)*dw+1 */
    int split;            /* CPU_SPLIT_IN / CPU_SPLIT_OUT (see cpu_dw_split_ok), or 0 */
    float *tmp;           /* with split: H*W + CPU_DW_PAD_SLACK floats of scratch */
} cpu_dw_args;
/* Row-split layout of a plane with even W: each row holds its W/2 even columns, then its W/2 odd
 * ones. A 3x3/2 depthwise conv reads it (CPU_SPLIT_IN) with unit-stride loads and no even/odd
 * shuffles; the small-C first layer, a 3x3/1 depthwise conv reading it and a stride-2 reader
 * write it (CPU_SPLIT_OUT), along chains of layout-blind steps only (backend.c, plan_split). */
#define CPU_SPLIT_IN 1
#define CPU_SPLIT_OUT 2
typedef void (*cpu_dw_fn)(const cpu_dw_args *a);
/* A dense 3x3 stride-2 conv with few input channels (a first layer), pl == 1 and W == 2 OW, for
 * the sets that define C3_NV (planes.c): out = clamp(acc * scale + bias (+ res)). */
typedef struct cpu_c3s2_args {
    const float *in;         /* C x H x W */
    int64_t C, H, W, pt;
    const float *w;          /* M x C x 3 x 3 */
    int64_t M, OH, OW;
    const float *scale, *bias; /* per output channel, or NULL (1, 0) */
    const float *res;        /* M x OH x OW or NULL */
    float lo, hi;
    float *out;              /* M x OH x OW */
    float *split;            /* CPU_C3S2_SCRATCH(C, H, M, OW) floats of scratch */
    int split_out;           /* out in the row-split layout (CPU_SPLIT_OUT; OW even) */
} cpu_c3s2_args;
/* 1 if done; 0 if the geometry is not the kernel's (the caller takes another path). With
 * out == NULL only that answer (cpu_conv_path, at plan time). */
typedef int (*cpu_c3s2_fn)(const cpu_c3s2_args *a);
#define CPU_C3S2_MAX_C 4
/* scratch: each input row split into even / odd columns (2 OW + 1 floats), one zero row, the
 * weights regrouped (M C 9) */
#define CPU_C3S2_SCRATCH(C, H, M, OW) (((C) * (H) + 1) * (2 * (OW) + 1) + (M) * (C) * 9)
struct cpu_pool_geom;
/* The 3x3 kernels (planes.c) pad (stride 1) or split (stride 2) a->in into a->pad themselves,
 * writing only image cells: the zero border and CPU_DW_PAD_SLACK floats past the padded plane
 * are the caller's (see cpu_conv_scratch). */
#define CPU_DW_PAD_SLACK 32
/* and after that, for stride 2 read in place, room for copies of the two rows at the input
 * tensor's ends (their neighbouring floats are read; see dw_s2_rows_inplace) */
#define CPU_DW_EDGE_FLOATS(W) (2 * (W) + 96)
/* MaxPool row buffer slack past its padded width: the stride-2 kernel reads 2 vectors + 2. */
#define CPU_POOL_SLACK 48
#define CPU_POOL_MAX_KH 16 /* window rows the stride-2 kernel takes (more: the general loop) */
void cpu_dw3x3s1_portable(const cpu_dw_args *a);
void cpu_dw3x3s2_portable(const cpu_dw_args *a);
int cpu_conv3x3s2_portable(const cpu_c3s2_args *a);
void cpu_maxpool_s2_portable(const struct cpu_pool_geom *g, const float *x, float *y,
                             float *rowm);
#if defined(__aarch64__)
void cpu_dw3x3s1_neon(const cpu_dw_args *a);
void cpu_dw3x3s2_neon(const cpu_dw_args *a);
int cpu_conv3x3s2_neon(const cpu_c3s2_args *a);
void cpu_maxpool_s2_neon(const struct cpu_pool_geom *g, const float *x, float *y,
                         float *rowm);
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
void cpu_dw3x3s1_avx2(const cpu_dw_args *a);
void cpu_dw3x3s2_avx2(const cpu_dw_args *a);
int cpu_conv3x3s2_avx2(const cpu_c3s2_args *a);
void cpu_maxpool_s2_avx2(const struct cpu_pool_geom *g, const float *x, float *y,
                         float *rowm);
void cpu_dw3x3s1_avx512(const cpu_dw_args *a);
void cpu_dw3x3s2_avx512(const cpu_dw_args *a);
int cpu_conv3x3s2_avx512(const cpu_c3s2_args *a);
void cpu_maxpool_s2_avx512(const struct cpu_pool_geom *g, const float *x, float *y,
                           float *rowm);
/* the AVX-512 set's entries: the AVX-512 kernels, or the AVX2 ones on narrow rows (planes.c) */
void cpu_dw3x3s1_avx512set(const cpu_dw_args *a);
void cpu_dw3x3s2_avx512set(const cpu_dw_args *a);
void cpu_maxpool_s2_avx512set(const struct cpu_pool_geom *g, const float *x, float *y,
                              float *rowm);
#endif

/* Max pooling of every plane (ops.c; the stride-2 kernels are in planes.c). scratch: one row of
 * cpu_maxpool_scratch() floats. */
typedef void (*cpu_pool_fn)(const struct cpu_pool_geom *g, const float *x, float *y,
                            float *scratch);

struct cpu_bsrc;
typedef void (*cpu_sgemm_fn)(int64_t M, int64_t N, int64_t K, const float *a, int64_t ars,
                             int64_t acs, const struct cpu_bsrc *bsrc, float *c, int64_t ldc,
                             const cpu_epi *epi, float *scratch);

typedef struct cpu_isa {
    const char *name;     /* "avx512f", "avx2+fma", "neon", "generic" */
    int mr, nr;
    cpu_sgemm_fn sgemm;   /* the GEMM driver compiled for this ISA (see cpu_sgemm) */
    cpu_dw_fn dw3x3s1;    /* 3x3, stride 1, dilation 1 */
    cpu_dw_fn dw3x3s2;    /* 3x3, stride 2, dilation 1, over even/odd column planes */
    cpu_pool_fn maxpool_s2; /* MaxPool, column stride 2, window 2 or 3 columns, no dilation */
    cpu_c3s2_fn conv3x3s2; /* dense 3x3/2 with C <= CPU_C3S2_MAX_C, or NULL (the wide GEMM) */
} cpu_isa;

/* Picks the best kernel set the running CPU supports (rt_cpu_features, cpuinfo.h);
 * REFIT_CPU_ISA=generic|avx2 forces a smaller one (tests, benchmarks). */
const cpu_isa *cpu_isa_select(void);
const cpu_isa *cpu_isa_portable(void);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CPU_HAVE_X86 1
const cpu_isa *cpu_isa_avx2(void);
const cpu_isa *cpu_isa_avx512(void);
#endif

/* ---- GEMM: C[M x N] (ldc) = epi(A[M x K] * B[K x N]) ---------------------------------------- */

/* Source of the B operand: a strided matrix (is_conv 0), an implicit im2col view of an NCHW image
 * (1), or the "wide" view of zero-padded phase planes (2: row k at img + boff[k], see conv.c). */
typedef struct cpu_bsrc {
    int is_conv;
    /* matrix: B[k][n] = b[k*rs + n*cs] */
    const float *b;
    int64_t rs, cs;
    /* conv: one group's channels of one image, C x H x W */
    const float *img;
    const float *phase; /* conv with sw > 1: img split into sw column phases, sw x C x H x Wp, so
                           phase[(p*C + c)*H + y][j] = img[c][y][j*sw + p]; NULL: gather */
    int64_t Wp;
    const int64_t *boff; /* wide conv: B row k starts at img + boff[k] */
    int64_t C, H, W, kh, kw, sh, sw, dh, dw, pt, pl, OH, OW;
} cpu_bsrc;

/* Scratch floats needed by cpu_sgemm for these sizes. */
size_t cpu_sgemm_scratch(const cpu_isa *isa, int64_t M, int64_t N, int64_t K);
/* A[i][k] = a[i*ars + k*acs], or, with acs == CPU_A_PACKED, `a` is already in the packed form
 * cpu_sgemm_pack_a writes (prepared weights: the packing moves out of every run). A row scale
 * (row_scale, may be NULL) is multiplied into the packed rows, as cpu_sgemm does with
 * epi->row_scale when it packs A itself: pass the scale there and not in epi with a packed A,
 * so the epilogue needs no multiply (a packed A with epi->row_scale still works, on the slower
 * full epilogue). scratch: cpu_sgemm_scratch() floats, 64-byte aligned. */
#define CPU_A_PACKED 0
size_t cpu_sgemm_packed_a_floats(const cpu_isa *isa, int64_t M, int64_t K);
void cpu_sgemm_pack_a(const cpu_isa *isa, const float *a, int64_t ars, int64_t acs, int64_t M,
                      int64_t K, const float *row_scale, float *dst);
void cpu_sgemm(const cpu_isa *isa, int64_t M, int64_t N, int64_t K, const float *a, int64_t ars,
               int64_t acs, const cpu_bsrc *bsrc, float *c, int64_t ldc, const cpu_epi *epi,
               float *scratch);

/* y[n] = epi(sum_k x[k] * B[k][n]) for one row x (M == 1: fully connected at batch 1). */
void cpu_gemv(int64_t N, int64_t K, const float *x, const float *b, int64_t brs, int64_t bcs,
              float *y, const cpu_epi *epi);

/* Applies an epilogue in place to C[M x N] (used by paths that are not the micro-kernel). */
void cpu_epi_apply(float *c, int64_t M, int64_t N, int64_t ldc, const cpu_epi *epi);

/* ---- Conv --------------------------------------------------------------------------------- */
typedef struct cpu_conv_geom {
    int64_t N, C, H, W;       /* input */
    int64_t M, OH, OW;        /* output channels, spatial */
    int64_t kh, kw, sh, sw, dh, dw, pt, pl, group;
    int split;                /* depthwise: CPU_SPLIT_IN / CPU_SPLIT_OUT (cpu_dw_args), or 0 */
} cpu_conv_geom;

enum {
    CPU_CONV_GEMM = 0,
    CPU_CONV_1X1 = 1,
    CPU_CONV_DW = 2,
    CPU_CONV_WIDE = 3,
    CPU_CONV_WINO = 4,
    CPU_CONV_C3S2 = 5 /* a wide conv the set's direct small-C 3x3/2 kernel takes (cpu_conv_path) */
};
/* Winograd F(2x2, 3x3) (winograd.c): 3x3, stride 1, no dilation, group 1, >= 16 channels. */
int cpu_wino_ok(const cpu_conv_geom *g);
size_t cpu_wino_scratch(const cpu_isa *isa, const cpu_conv_geom *g);
/* wp: NULL, or w prepared by cpu_wino_prepare (the transformed, packed kernels U). */
void cpu_conv_wino(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
                   const float *wp, float *y, const cpu_epi *epi, float *scratch);
size_t cpu_wino_prepared_floats(const cpu_isa *isa, const cpu_conv_geom *g);
/* Returns 0, or -1 when out of memory. */
int cpu_wino_prepare(const cpu_isa *isa, const cpu_conv_geom *g, const float *w,
                     const float *row_scale, float *dst);
int cpu_conv_kind(const cpu_conv_geom *g);
/* Whether a 3x3 depthwise conv can take the row-split layout as `split` says: CPU_SPLIT_IN
 * (stride 2, pl == 1 and W == 2 OW), + CPU_SPLIT_OUT (the same with even OW), or both (stride 1,
 * "same" padding, even W). */
int cpu_dw_split_ok(const cpu_conv_geom *g, int split);
/* Floats per vector of the set's per-plane kernels over rows of n outputs (planes.c). */
int cpu_dw_vl(const cpu_isa *isa, int64_t n);
/* The path cpu_conv runs for this kernel set: cpu_conv_kind, or CPU_CONV_C3S2. */
int cpu_conv_path(const cpu_isa *isa, const cpu_conv_geom *g);
size_t cpu_conv_scratch(const cpu_isa *isa, const cpu_conv_geom *g);
/* Prepared weights (weights_prepare): floats of w's prepared form for this geometry (0: the path
 * reads w as it is, e.g. depthwise), and the transform raw w -> prepared (0, or -1 when out of
 * memory). A pure function of w and the per-output-channel scale (folded BatchNorm, or NULL),
 * which the prepared form carries (multiplied into the packed rows; Winograd's U is linear in
 * w): the packed layout is the kernels' business. */
size_t cpu_conv_prepared_floats(const cpu_isa *isa, const cpu_conv_geom *g);
int cpu_conv_prepare(const cpu_isa *isa, const cpu_conv_geom *g, const float *w,
                     const float *row_scale, float *dst);
/* epi.row_scale/row_bias index output channels (M entries); epi.res is N x M x OH x OW.
 * wp: NULL (w is packed/transformed on this call) or w's prepared form, prepared with
 * epi.row_scale (paths that read wp take the scale from there, those that read w from epi). */
void cpu_conv(const cpu_isa *isa, const cpu_conv_geom *g, const float *x, const float *w,
              const float *wp, float *y, const cpu_epi *epi, float *scratch);

/* ---- Other ops (ops.c) ---------------------------------------------------------------------- */
enum { CPU_BIN_ADD, CPU_BIN_SUB, CPU_BIN_MUL, CPU_BIN_DIV };
/* numpy broadcasting: shapes are right-aligned into `nd` dims (a_shape/b_shape already padded
 * with leading 1s to nd). */
void cpu_binary(int op, int nd, const int64_t *out_shape, const float *a, const int64_t *a_shape,
                const float *b, const int64_t *b_shape, float *y);
void cpu_clamp(const float *x, float *y, size_t n, float lo, float hi);
void cpu_sigmoid(const float *x, float *y, size_t n);
void cpu_leakyrelu(const float *x, float *y, size_t n, float alpha);
/* Per-channel affine on N x C x S data, then clamp. */
void cpu_channel_affine(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                        const float *scale, const float *bias, float lo, float hi);
/* Folds BatchNorm parameters: scale = g / sqrt(v + eps), bias = b - m * scale (+ conv bias
 * times scale if cbias != NULL). */
void cpu_bn_fold(int64_t C, const float *g, const float *b, const float *m, const float *v,
                 float eps, const float *cbias, float *scale, float *bias);

typedef struct cpu_pool_geom {
    int64_t N, C, H, W, OH, OW;
    int64_t kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int count_include_pad;
} cpu_pool_geom;
size_t cpu_maxpool_scratch(const cpu_pool_geom *g);
int64_t cpu_maxpool_chunk(const cpu_pool_geom *g); /* planes per pass of the stride-2 kernel */
void cpu_maxpool(const cpu_isa *isa, const cpu_pool_geom *g, const float *x, float *y,
                 float *scratch);
void cpu_avgpool(const cpu_pool_geom *g, const float *x, float *y);
void cpu_global_avgpool(const float *x, float *y, int64_t NC, int64_t S);
void cpu_softmax(const float *x, float *y, int64_t outer, int64_t n, int64_t inner);
void cpu_reduce_mean(const float *x, float *y, int nd, const int64_t *shape, uint32_t mask);
void cpu_concat(int n_in, const float *const *xs, const int64_t *inner, int64_t outer, float *y);

/* ---- profiler and intermediate dumps (profile.c) ------------------------------------------- */
/* Options backend.profile / profile_runs / profile_skip / dump / dump_at; see profile.c. */
typedef struct cpu_debug cpu_debug;
typedef struct cpu_step_info {
    const char *node;   /* the step's first node (owned by the graph) */
    char op[96];        /* "Conv+BatchNormalization+Clip": the ops fused into the step */
    char shapes[200];   /* "1x32x56x56 -> 1x192x56x56" */
} cpu_step_info;
typedef struct cpu_prof_event {
    int64_t t0, t1;     /* CLOCK_MONOTONIC ns */
    int tid;            /* context id */
} cpu_prof_event;
int64_t cpu_now_ns(void);
cpu_debug *cpu_debug_new(int n_steps, const char *isa);
cpu_step_info *cpu_debug_info(cpu_debug *d); /* n_steps entries for the plan to fill */
int cpu_debug_key(const char *key);          /* one of the options above (without "backend.") */
int cpu_debug_set(cpu_debug *d, const char *key, const char *value, char *err, size_t errlen);
int cpu_debug_ctx_id(cpu_debug *d);          /* at ctx_create; allocates the event buffer once */
uint64_t cpu_debug_next(cpu_debug *d);       /* this inference's number (0, 1, ...) */
int cpu_debug_dump_due(const cpu_debug *d, uint64_t seq);
/* n_steps step events then the run's envelope, or NULL if inference `seq` is not recorded. */
cpu_prof_event *cpu_prof_slot(cpu_debug *d, uint64_t seq);
void cpu_prof_done(cpu_debug *d);            /* a recorded run finished; the last one writes */
void cpu_debug_free(cpu_debug *d);           /* writes a profile cut short */
typedef struct cpu_dump cpu_dump;
cpu_dump *cpu_dump_begin(const cpu_debug *d, uint64_t seq);
void cpu_dump_value(cpu_dump *w, const char *node, const char *op, const char *value,
                    const float *x, const int64_t *shape, int ndim, size_t numel);
void cpu_dump_end(cpu_dump *w);

/* ---- introspection for tests (backend.c) ---------------------------------------------------- */
int cpu_plan_steps(const void *plan);          /* steps after fusion / aliasing */
size_t cpu_plan_arena_bytes(const void *plan); /* activation arena of one context */
int cpu_plan_split(const void *plan, int step);  /* its conv's CPU_SPLIT_* flags (0 if none) */
const char *cpu_plan_isa(const void *plan);
/* 1 if prepared handles a and b share step `step`'s prepared buffer, 0 if not, -1 if a step has
 * none. */
int cpu_prepared_shares(const void *plan, const void *a, const void *b, int step);

#endif
