/* seed_model.h — builds the seeds' demo model (MagicMind weight_refit sample) as ONNX bytes with a
 * tiny protobuf writer, so the C tests need no files and no Python: input "x" (1,1,3,3), one
 * Conv with a 3x3 kernel "conv.weight" of all `k`, no bias, output "y" (1,1,1,1) = 9k. */
#ifndef SEED_MODEL_H
#define SEED_MODEL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pbwrite.h"

/* Returns malloc'd ONNX bytes of the seed model with the kernel all `k`; *size gets the length. */
static unsigned char *seed_model(float k, size_t *size)
{
    static const int64_t xdims[4] = {1, 1, 3, 3}, ydims[4] = {1, 1, 1, 1};
    wbuf node = {0}, init = {0}, graph = {0}, opset = {0}, model = {0};
    wb_str(&node, 1, "x");
    wb_str(&node, 1, "conv.weight");
    wb_str(&node, 2, "y");
    wb_str(&node, 3, "conv");
    wb_str(&node, 4, "Conv");

    float w[9];
    for (int i = 0; i < 9; i++)
        w[i] = k;
    for (int i = 0; i < 4; i++)
        wb_int(&init, 1, (uint64_t)xdims[i]); /* weight dims (1,1,3,3) == xdims */
    wb_int(&init, 2, 1);
    wb_str(&init, 8, "conv.weight");
    wb_len(&init, 9, w, sizeof w);

    wb_msg(&graph, 1, &node);
    wb_str(&graph, 2, "seed");
    wb_msg(&graph, 5, &init);
    wb_value_info(&graph, 11, "x", xdims, 4);
    wb_value_info(&graph, 12, "y", ydims, 4);

    wb_int(&model, 1, 8); /* ir_version */
    wb_str(&opset, 1, "");
    wb_int(&opset, 2, 13);
    wb_msg(&model, 8, &opset);
    wb_msg(&model, 7, &graph);
    *size = model.n;
    return model.p;
}

#endif
