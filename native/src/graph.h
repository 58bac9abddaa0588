/*
 * graph.h — librefit's resolved model graph (internal, not part of the ABI).
 *
 * Produced by the ONNX loader (onnx.c: rt_graph_from_onnx) and consumed read-only by the core
 * (engine.c) and by every backend. Everything here is *resolved*: every value has a static shape,
 * shape-computing subgraphs (Shape/Gather/Unsqueeze/Concat/... feeding Reshape) are already folded
 * into constants, Constant and Identity-of-constant nodes are gone, and nodes are in a valid
 * execution (topological) order. Weights are never folded or renamed: a node reads a weight's data
 * through the weight set it is given at run time.
 */
#ifndef REFIT_GRAPH_H
#define REFIT_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* a plugin backend may be C++ (MagicMind's SDK is) */
#endif

#define RT_MAX_DIMS 8
#define RT_MAX_NODE_INPUTS 8 /* Concat with more inputs is refused at load */

/* ONNX TensorProto.DataType codes (same numbers as refit_dtype). */
enum { RT_F32 = 1, RT_U8 = 2, RT_I8 = 3, RT_I32 = 6, RT_I64 = 7, RT_F16 = 10, RT_F64 = 11 };

typedef struct rt_shape {
    int ndim;
    int64_t d[RT_MAX_DIMS];
} rt_shape;

typedef enum rt_value_kind {
    RT_VAL_INPUT = 0,        /* graph input; data from the caller at run time */
    RT_VAL_WEIGHT = 1,       /* refittable weight; data from the weight set at run time */
    RT_VAL_CONST = 2,        /* constant known at load (non-refittable initializer, folded) */
    RT_VAL_INTERMEDIATE = 3  /* produced by a node; lives in the context's activation memory */
} rt_value_kind;

typedef struct rt_value {
    char *name;           /* ONNX value name (owned) */
    rt_value_kind kind;
    int dtype;            /* RT_F32 for every value a node computes; RT_I64 for folded shape consts */
    rt_shape shape;
    size_t numel;
    int index;            /* INPUT: graph input index; WEIGHT: weight index; else -1 */
    int output_index;     /* >= 0 if this value is graph output #output_index, else -1 */
    void *data;           /* CONST: owned data (float for RT_F32, int64_t for RT_I64); else NULL */
} rt_value;
/* Loader notes (onnx.c, see docs/onnx-loader.md):
 * - A WEIGHT is always dtype RT_F32 whatever the initializer's declared type (float16/float64/
 *   bfloat16 data is converted when loaded; the declared type is not kept). Integer initializers
 *   are never weights: they are CONST (RT_I64) structure (shapes, axes, indices).
 * - CONST values are RT_F32 or RT_I64. Nodes that compute at run time only ever read RT_F32 values
 *   (the loader refuses int data flowing into them), so a backend may treat any input as float.
 * - 1-D Conv/MaxPool/AveragePool are promoted to 2-D: the loader reshapes the input [N, C, L]
 *   (and a Conv weight [M, C/g, k]) to [N, C, 1, L] ([M, C/g, 1, k]) with RT_OP_RESHAPE nodes,
 *   runs the op on 4-D values (kernel[0] = strides[0] = dilations[0] = 1, pads[0] = pads[2] = 0)
 *   and reshapes its output back; the weight value itself keeps its 3-D shape for refit. So
 *   backends only ever see 4-D Conv/pool nodes.
 * - RT_OP_RESHAPE / RT_OP_FLATTEN have exactly one input (the data); the output value's shape is
 *   the target. Squeeze/Unsqueeze of run-time data become RT_OP_RESHAPE; pre-13 Softmax with
 *   axis < ndim-1 becomes RESHAPE -> SOFTMAX(axis 1 of 2-D) -> RESHAPE.
 * - Identity(weight) (PyTorch's tied-weight alias) is a separate WEIGHT under the Identity's
 *   output name, with a copy of the source's initial data.
 * - MatMul(x, Transpose(W)) (the dynamo exporter's nn.Linear) becomes RT_OP_GEMM reading W with
 *   trans_b = 1 (x of rank > 2 is reshaped to 2-D and back), so W keeps its name and shape. */

typedef enum rt_op {
    RT_OP_CONV,
    RT_OP_GEMM,
    RT_OP_MATMUL,
    RT_OP_ADD,
    RT_OP_SUB,
    RT_OP_MUL,
    RT_OP_DIV,
    RT_OP_RELU,
    RT_OP_CLIP,
    RT_OP_SIGMOID,
    RT_OP_LEAKYRELU,
    RT_OP_BATCHNORM,
    RT_OP_MAXPOOL,
    RT_OP_AVGPOOL,
    RT_OP_GLOBALAVGPOOL,
    RT_OP_FLATTEN,  /* pure reshape of contiguous data */
    RT_OP_RESHAPE,  /* pure reshape of contiguous data (also Squeeze/Unsqueeze on runtime data) */
    RT_OP_CONCAT,
    RT_OP_SOFTMAX,
    RT_OP_REDUCEMEAN,
    RT_OP_IDENTITY, /* copy; only where an Identity reads a runtime value */
    RT_OP_COUNT
} rt_op;

/* Attributes, resolved to defaults by the loader. Only the fields of the node's op are meaningful. */
typedef struct rt_attrs {
    /* Conv / MaxPool / AveragePool (2-D spatial; 1-D is promoted to 2-D by the loader) */
    int64_t kernel[2];     /* kh, kw */
    int64_t strides[2];
    int64_t pads[4];       /* top, left, bottom, right (auto_pad already resolved) */
    int64_t dilations[2];
    int64_t group;
    int count_include_pad; /* AveragePool */
    /* Gemm */
    float alpha, beta;
    int trans_a, trans_b;
    /* LeakyRelu alpha in `alpha`; BatchNormalization epsilon in `epsilon` */
    float epsilon;
    /* Clip: bounds already resolved from attributes or constant inputs (-inf/+inf if absent).
     * If a bound is a *weight* input, in[1]/in[2] name it and the kernel must read it at run
     * time instead (clip_min_from_input / clip_max_from_input). */
    float clip_min, clip_max;
    int clip_min_from_input, clip_max_from_input;
    /* Concat / Softmax / Flatten axis, normalised to be non-negative */
    int64_t axis;
    /* ReduceMean: which axes of the input are reduced (mask over input dims), keepdims */
    uint32_t reduce_mask;
    int keepdims;
} rt_attrs;

typedef struct rt_node {
    rt_op op;
    char *name;      /* ONNX node name, or "<op_type>#<index>" if the model left it empty (owned) */
    int n_in;
    int in[RT_MAX_NODE_INPUTS]; /* value indices; -1 for an omitted optional input */
    int out;                    /* the single value it produces */
    rt_attrs a;
} rt_node;

typedef struct rt_graph {
    rt_value *values;
    int n_values;
    rt_node *nodes;        /* in execution order */
    int n_nodes;
    int *inputs;           /* value index of graph input i */
    int n_inputs;
    int *outputs;          /* value index of graph output j (may be an INPUT/WEIGHT/CONST value) */
    int n_outputs;
    int *weights;          /* value index of refittable weight k (order = refit ABI order) */
    int n_weights;
    void **weight_init;    /* initial data of weight k, float32, numel of its value (owned; the
                              core takes it into the first weight set and leaves NULL behind) */
} rt_graph;

/* Loader options (from refit_engine_open's key/value pairs; the core parses them). */
typedef struct rt_load_options {
    const char *refittable;  /* NULL: every float initializer; else comma-separated names */
    const char *input_shape; /* NULL or "name:1x3x224x224;name2:..." */
} rt_load_options;

/* Builds a resolved graph from ONNX bytes. Returns 0 and *out on success; on failure returns a
 * refit_status code and writes a one-line message naming the cause (op and node name for an
 * unsupported op/attribute) into err. */
int rt_graph_from_onnx(const void *data, size_t size, const rt_load_options *opts, rt_graph **out,
                       char *err, size_t errlen);
void rt_graph_destroy(rt_graph *g);

/* Helpers shared by loader, core and backends (graph.c). */
size_t rt_dtype_size(int dtype);        /* 0 for unknown */
const char *rt_dtype_name(int dtype);   /* "float32", ... or "dtype#N" */
const char *rt_op_name(rt_op op);
size_t rt_shape_numel(const rt_shape *s);
/* Formats a shape as "[1, 3, 224, 224]" into buf. */
const char *rt_shape_str(const rt_shape *s, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
