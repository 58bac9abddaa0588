/* graph.c — helpers over the resolved graph IR shared by loader, core and backends. */
#include "graph.h"

#include <stdio.h>
#include <stdlib.h>

size_t rt_dtype_size(int dtype)
{
    switch (dtype) {
    case RT_F32: return 4;
    case RT_U8: return 1;
    case RT_I8: return 1;
    case RT_I32: return 4;
    case RT_I64: return 8;
    case RT_F16: return 2;
    case RT_F64: return 8;
    default: return 0;
    }
}

const char *rt_dtype_name(int dtype)
{
    switch (dtype) {
    case RT_F32: return "float32";
    case RT_U8: return "uint8";
    case RT_I8: return "int8";
    case RT_I32: return "int32";
    case RT_I64: return "int64";
    case RT_F16: return "float16";
    case RT_F64: return "float64";
    default: break;
    }
    /* Unknown codes: a small static table covers every int, so the pointer stays valid. */
    static const char *const names[] = {"dtype#0",  "dtype#1",  "dtype#2",  "dtype#3",  "dtype#4",
                                        "dtype#5",  "dtype#6",  "dtype#7",  "dtype#8",  "dtype#9",
                                        "dtype#10", "dtype#11", "dtype#12", "dtype#13", "dtype#14",
                                        "dtype#15", "dtype#16", "dtype#17", "dtype#18", "dtype#19",
                                        "dtype#20", "dtype#21", "dtype#22", "dtype#23"};
    if (dtype >= 0 && dtype < (int)(sizeof names / sizeof names[0]))
        return names[dtype];
    return "dtype#?";
}

const char *rt_op_name(rt_op op)
{
    static const char *const names[RT_OP_COUNT] = {
        [RT_OP_CONV] = "Conv",
        [RT_OP_GEMM] = "Gemm",
        [RT_OP_MATMUL] = "MatMul",
        [RT_OP_ADD] = "Add",
        [RT_OP_SUB] = "Sub",
        [RT_OP_MUL] = "Mul",
        [RT_OP_DIV] = "Div",
        [RT_OP_RELU] = "Relu",
        [RT_OP_CLIP] = "Clip",
        [RT_OP_SIGMOID] = "Sigmoid",
        [RT_OP_LEAKYRELU] = "LeakyRelu",
        [RT_OP_BATCHNORM] = "BatchNormalization",
        [RT_OP_MAXPOOL] = "MaxPool",
        [RT_OP_AVGPOOL] = "AveragePool",
        [RT_OP_GLOBALAVGPOOL] = "GlobalAveragePool",
        [RT_OP_FLATTEN] = "Flatten",
        [RT_OP_RESHAPE] = "Reshape",
        [RT_OP_CONCAT] = "Concat",
        [RT_OP_SOFTMAX] = "Softmax",
        [RT_OP_REDUCEMEAN] = "ReduceMean",
        [RT_OP_IDENTITY] = "Identity",
    };
    if ((int)op < 0 || op >= RT_OP_COUNT || !names[op])
        return "?";
    return names[op];
}

size_t rt_shape_numel(const rt_shape *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim && i < RT_MAX_DIMS; i++)
        n *= (size_t)(s->d[i] < 0 ? 0 : s->d[i]);
    return n;
}

const char *rt_shape_str(const rt_shape *s, char *buf, size_t len)
{
    if (!buf || len == 0)
        return "";
    size_t used = 0;
    int w = snprintf(buf, len, "[");
    used = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < s->ndim && i < RT_MAX_DIMS && used < len; i++) {
        w = snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)s->d[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

void rt_graph_destroy(rt_graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_values; i++) {
        free(g->values[i].name);
        free(g->values[i].data);
    }
    for (int i = 0; i < g->n_nodes; i++)
        free(g->nodes[i].name);
    if (g->weight_init)
        for (int k = 0; k < g->n_weights; k++)
            free(g->weight_init[k]);
    free(g->values);
    free(g->nodes);
    free(g->inputs);
    free(g->outputs);
    free(g->weights);
    free(g->weight_init);
    free(g);
}
