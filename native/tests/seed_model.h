/* seed_model.h — builds the seeds' demo model (MagicMind weight_refit sample) as ONNX bytes with a
 * tiny protobuf writer, so the C tests need no files and no Python: input "x" (1,1,3,3), one
 * Conv with a 3x3 kernel "conv.weight" of all `k`, no bias, output "y" (1,1,1,1) = 9k. */
#ifndef SEED_MODEL_H
#define SEED_MODEL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct pbuf {
    unsigned char *p;
    size_t n, cap;
} pbuf;

static void pb_raw(pbuf *b, const void *data, size_t len)
{
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void pb_varint(pbuf *b, uint64_t v)
{
    unsigned char c;
    do {
        c = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v)
            c |= 0x80;
        pb_raw(b, &c, 1);
    } while (v);
}

static void pb_int(pbuf *b, int field, uint64_t v)
{
    pb_varint(b, (uint64_t)field << 3);
    pb_varint(b, v);
}

static void pb_bytes(pbuf *b, int field, const void *data, size_t len)
{
    pb_varint(b, ((uint64_t)field << 3) | 2);
    pb_varint(b, len);
    pb_raw(b, data, len);
}

static void pb_str(pbuf *b, int field, const char *s) { pb_bytes(b, field, s, strlen(s)); }

static void pb_msg(pbuf *b, int field, pbuf *sub)
{
    pb_bytes(b, field, sub->p, sub->n);
    free(sub->p);
    memset(sub, 0, sizeof *sub);
}

/* ValueInfoProto for a float tensor of shape dims[ndim]. */
static void seed_value_info(pbuf *graph, int field, const char *name, const int64_t *dims, int ndim)
{
    pbuf shape = {0}, tensor = {0}, type = {0}, vi = {0};
    for (int i = 0; i < ndim; i++) {
        pbuf dim = {0};
        pb_int(&dim, 1, (uint64_t)dims[i]);
        pb_msg(&shape, 1, &dim);
    }
    pb_int(&tensor, 1, 1); /* elem_type FLOAT */
    pb_msg(&tensor, 2, &shape);
    pb_msg(&type, 1, &tensor);
    pb_str(&vi, 1, name);
    pb_msg(&vi, 2, &type);
    pb_msg(graph, field, &vi);
}

/* Returns malloc'd ONNX bytes of the seed model with the kernel all `k`; *size gets the length. */
static unsigned char *seed_model(float k, size_t *size)
{
    static const int64_t xdims[4] = {1, 1, 3, 3}, ydims[4] = {1, 1, 1, 1};
    pbuf node = {0}, init = {0}, graph = {0}, opset = {0}, model = {0};
    pb_str(&node, 1, "x");
    pb_str(&node, 1, "conv.weight");
    pb_str(&node, 2, "y");
    pb_str(&node, 3, "conv");
    pb_str(&node, 4, "Conv");

    float w[9];
    for (int i = 0; i < 9; i++)
        w[i] = k;
    for (int i = 0; i < 4; i++)
        pb_int(&init, 1, (uint64_t)xdims[i]); /* weight dims (1,1,3,3) == xdims */
    pb_int(&init, 2, 1);
    pb_str(&init, 8, "conv.weight");
    pb_bytes(&init, 9, w, sizeof w);

    pb_msg(&graph, 1, &node);
    pb_str(&graph, 2, "seed");
    pb_msg(&graph, 5, &init);
    seed_value_info(&graph, 11, "x", xdims, 4);
    seed_value_info(&graph, 12, "y", ydims, 4);

    pb_int(&model, 1, 8); /* ir_version */
    pb_str(&opset, 1, "");
    pb_int(&opset, 2, 13);
    pb_msg(&model, 8, &opset);
    pb_msg(&model, 7, &graph);
    *size = model.n;
    return model.p;
}

#endif
