/*
 * onnx_internal.h — what the ONNX loader's files share (private to native/src/onnx_*.c).
 *
 * ONNX model bytes -> resolved rt_graph (see graph.h for the contract), in two phases:
 *   1. parse (onnx_load.c): the protobuf messages (ModelProto, GraphProto, NodeProto,
 *      AttributeProto, TensorProto, ValueInfoProto) are read with pb.c into small structs
 *      allocated in an arena. Tensor payloads are only validated here (count vs shape), and
 *      decoded later, once, into the buffer that ends up owned by the graph.
 *   2. build: nodes are topologically sorted (onnx_load.c), then resolved one by one in that order
 *      through the op table (onnx_ops.c): Constant nodes and every node whose inputs are all CONST
 *      are evaluated at load ("folding", onnx_fold.c; Shape is folded whatever its input, since
 *      all shapes are static), Identity/Dropout are rewired, and every other supported op becomes
 *      an rt_node with its output shape inferred (onnx_shape.c, onnx_ops.c) and its attributes
 *      resolved to defaults. Finally nodes not needed for any graph output are dropped and the
 *      value table is compacted (onnx_load.c).
 *
 * Refittable weights are never folded or renamed: a node that reads a WEIGHT is never evaluated
 * at load (only Shape of it is, which does not depend on its data).
 */
#ifndef REFIT_ONNX_INTERNAL_H
#define REFIT_ONNX_INTERNAL_H

#include "graph.h"
#include "pb.h"
#include "refit.h"
#include "util.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ONNX loader assumes a little-endian host (raw_data is little-endian)"
#endif

/* Upper bounds that keep a corrupt model from asking for absurd allocations. */
#define MAX_NUMEL ((int64_t)1 << 40)       /* elements of any value's shape */
#define MAX_FOLD_NUMEL ((int64_t)1 << 26)  /* elements of a tensor computed at load */

/* ============================================================================================
 * arena (parse-phase memory, freed in one go)
 * ========================================================================================== */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t mem[];
} arena_blk;
/* ============================================================================================
 * parsed ONNX structures
 * ========================================================================================== */

/* ONNX TensorProto.DataType codes beyond those in graph.h. */
enum { OX_U16 = 4, OX_I16 = 5, OX_STRING = 8, OX_BOOL = 9, OX_U32 = 12, OX_U64 = 13, OX_BF16 = 16 };

typedef struct ox_tensor {
    const char *name;
    int dtype;
    int ndim;
    int64_t dims[RT_MAX_DIMS];
    size_t numel;
    const uint8_t *msg; /* the TensorProto bytes, re-read when decoding typed fields */
    size_t msglen;
    int has_raw;
    const uint8_t *raw;
    size_t rawlen;
} ox_tensor;

enum { AT_UNDEF = 0, AT_FLOAT = 1, AT_INT = 2, AT_STRING = 3, AT_TENSOR = 4, AT_GRAPH = 5,
       AT_FLOATS = 6, AT_INTS = 7 };

typedef struct ox_attr {
    const char *name;
    int type;
    float f;
    int64_t i;
    const char *s;
    ox_tensor *t;
    float *floats;
    size_t nfloats;
    int64_t *ints;
    size_t nints;
} ox_attr;

typedef struct ox_node {
    const char *name; /* as displayed: ONNX name or "<op_type>#<index>" */
    const char *op;
    const char *domain;
    const char **in;
    int n_in;
    const char **out;
    int n_out;
    ox_attr *attrs;
    int n_attrs;
} ox_node;

typedef struct ox_vi {
    const char *name;
    int elem_type;  /* 0 if unknown */
    int is_tensor;  /* TypeProto is a tensor_type (or absent) */
    int has_shape;
    int ndim;
    int64_t dims[RT_MAX_DIMS]; /* -1: symbolic or missing */
} ox_vi;

typedef struct ox_graph {
    ox_node *nodes;
    int n_nodes;
    ox_tensor *inits;
    int n_inits;
    ox_vi *inputs;
    int n_inputs;
    ox_vi *outputs;
    int n_outputs;
} ox_graph;

/* ============================================================================================
 * string -> int map (open addressing)
 * ========================================================================================== */

typedef struct strmap {
    const char **keys;
    int *vals;
    size_t cap, n;
} strmap;
/* ============================================================================================
 * loader state and errors
 * ========================================================================================== */

typedef struct loader {
    char *err;
    size_t errlen;
    arena_blk *arena;
    int64_t opset;
    int64_t ir_version;
    ox_graph g;

    /* refittable set (NULL: every float initializer) */
    int explicit_refit;
    strmap refit_set;   /* name -> 0 (unmatched) / 1 (matched) */
    const char **refit_names;
    int n_refit_names;
    /* input_shape option */
    strmap shape_opt;   /* name -> index into shape_opt_v */
    rt_shape *shape_opt_v;
    int *shape_opt_used;
    int n_shape_opt;

    /* build */
    rt_value *vals;
    float **winit; /* parallel to vals: initial data of WEIGHT values */
    int n_vals, cap_vals;
    int n_weights;
    int n_inputs;
    rt_node *nodes;
    int n_nodes, cap_nodes;
    strmap names;       /* value name -> value index */
    strmap dropped;     /* secondary node outputs we do not produce -> node index */
    strmap graph_outs;  /* graph output names */
    /* Transpose (2-D, perm [1, 0]) of a value that is not a constant, typically a weight: the
     * dynamo exporter writes nn.Linear as MatMul(x, Transpose(weight)). No value is made; the
     * name maps to the source, and MatMul/Gemm read it as a transposed operand. */
    strmap tviews;      /* Transpose output name -> source value index */
    int cur_tr[2];      /* node being built: input 0 / 1 is a transposed view */
} loader;
#define NOMEM(L) ox_fail((L), REFIT_ERR_NOMEM, "out of memory while loading the model")
#define BAD_PB(L, what) ox_fail((L), REFIT_ERR_MODEL, "malformed ONNX: truncated or corrupt %s", (what))

/* onnx_load.c: errors, arena, string maps, protobuf parsing, value/node helpers */
int ox_strmap_get(const strmap *m, const char *key);
int ox_strmap_put(strmap *m, const char *key, int val);
int ox_fail(loader *L, int code, const char *fmt, ...);
int ox_nfail(loader *L, const ox_node *n, int code, const char *fmt, ...);
void *ox_aalloc(loader *L, size_t size);
size_t ox_elem_size(int dtype);
int ox_is_float_dtype(int dtype);
const char *ox_dtype_name(int dtype);
int64_t ox_dims_numel(const int64_t *d, int ndim);
float ox_d2f(double d);
int64_t ox_i32field_i(int dtype, int64_t v);
int ox_tensor_decode(loader *L, const ox_tensor *t, void **out);
const ox_attr *ox_attr_get(const ox_node *n, const char *name);
int64_t ox_attr_i(const ox_node *n, const char *name, int64_t def);
float ox_attr_f(const ox_node *n, const char *name, float def);
const char *ox_attr_s(const ox_node *n, const char *name, const char *def);
const int64_t *ox_attr_ints(const ox_node *n, const char *name, int *cnt);
int ox_reserve_vals(loader *L, int extra);
int ox_reserve_nodes(loader *L, int extra);
int ox_add_value(loader *L, const char *name, rt_value_kind kind, int dtype, const rt_shape *s,
                 void *data, float *winit, int *idx);
int ox_check_shape(loader *L, const ox_node *n, const rt_shape *s);
const char *ox_shp(const rt_shape *s, char *buf, size_t len);
int ox_emit_named(loader *L, const ox_node *n, const char *nodename, rt_op op, const int *ins,
                  int nin, const rt_shape *s, const rt_attrs *a, const char *outname);
int ox_emit(loader *L, const ox_node *n, rt_op op, const int *ins, int nin, const rt_shape *s,
            const rt_attrs *a);
int ox_make_const(loader *L, const ox_node *n, const char *name, int dtype, const rt_shape *s,
                  void *data);
size_t ox_esize(int dtype);
int ox_alloc_const(loader *L, const ox_node *n, int dtype, const rt_shape *s, void **data);
int ox_is_kind(const loader *L, int v, rt_value_kind k);
double ox_cget_d(const rt_value *v, size_t k);
int64_t ox_d2i(double x);
int64_t ox_cget_i(const rt_value *v, size_t k);
void ox_cset(int dtype, void *data, size_t k, double d, int64_t i, int use_int);
int ox_const_ints(loader *L, const ox_node *n, int v, const char *what, int64_t *dst, int max,
                  int *cnt);
int ox_need_f32(loader *L, const ox_node *n, const int *vin, int nin, int k);
int ox_norm_axis(int64_t axis, int rank, int64_t *out);
int64_t ox_prod_dims(const rt_shape *s, int from, int to);
int ox_bcast_shapes(const rt_shape *const *in, int n, rt_shape *o);
size_t ox_bcast_off(const rt_shape *in, const rt_shape *o, size_t k);

/* onnx_fold.c: load-time evaluation of CONST subgraphs */
int ox_const_copy(loader *L, const ox_node *n, int src, const rt_shape *s, const char *name);
int ox_fold_constant(loader *L, const ox_node *n);
int ox_fold_shape(loader *L, const ox_node *n, int x);
int ox_fold_binary(loader *L, const ox_node *n, const int *vin, int nin);
int ox_fold_gather(loader *L, const ox_node *n, const int *vin);
int ox_fold_cast(loader *L, const ox_node *n, int src);
int ox_fold_slice(loader *L, const ox_node *n, const int *vin, int nin);
int ox_fold_constant_of_shape(loader *L, const ox_node *n, int src);
int ox_fold_range(loader *L, const ox_node *n, const int *vin, int nin);
int ox_fold_transpose(loader *L, const ox_node *n, int src);
int ox_fold_unary(loader *L, const ox_node *n, int src);
int ox_fold_expand(loader *L, const ox_node *n, const int *vin);
int ox_fold_neg(loader *L, const ox_node *n, int src);

/* onnx_shape.c: shape-only ops and spatial geometry */
int ox_reshape_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *sh, int cnt,
                     int allowzero, rt_shape *o);
int ox_get_axes(loader *L, const ox_node *n, const int *vin, int nin, int64_t input_opset,
                int64_t *axes, int *cnt);
int ox_squeeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                     int cnt, rt_shape *o);
int ox_unsqueeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                       int cnt, rt_shape *o);
int ox_reshape_like(loader *L, const ox_node *n, int src, const rt_shape *s, rt_op op, int64_t axis);
int ox_passthrough(loader *L, const ox_node *n, int src);
int ox_do_identity(loader *L, const ox_node *n, int src);
int ox_spatial_geom(loader *L, const ox_node *n, const rt_shape *x, const int64_t *kernel_in,
                    int allow_ceil, rt_attrs *a, rt_shape *o);

/* onnx_ops.c: the op table and node dispatch */
int ox_build_node(loader *L, const ox_node *n);

#endif
