/*
 * onnx_ops.c — the op table (name, attributes with their opsets, fold and build functions)
 * and the node dispatch that runs it; the run-time ops' attribute checks and shape inference.
 * See onnx_internal.h for the two phases.
 */
#include "onnx_internal.h"

/* 1-D Conv/pools are promoted to 2-D for the backends: the input [N, C, L] and the weight
 * [M, C/g, k] go through an RT_OP_RESHAPE to [N, C, 1, L] / [M, C/g, 1, k] (folded for a CONST;
 * backends alias reshapes, so this costs no copy), the op runs 4-D, and a final RT_OP_RESHAPE
 * gives the model's 3-D output value. The weight keeps its 3-D shape for refit. */
static int to_4d(loader *L, const ox_node *n, int src, const char *tag, int *out)
{
    rt_shape s = L->vals[src].shape;
    s.ndim = 4;
    s.d[3] = s.d[2];
    s.d[2] = 1;
    size_t ln = strlen(n->name) + strlen(tag) + 16;
    char *vn = ox_aalloc(L, ln), *nn = ox_aalloc(L, ln);
    if (!vn || !nn)
        return NOMEM(L);
    snprintf(vn, ln, "%s::refit_%s4d", n->name, tag);
    snprintf(nn, ln, "%s::reshape_%s", n->name, tag);
    int rc = ox_is_kind(L, src, RT_VAL_CONST) ? ox_const_copy(L, n, src, &s, vn)
                                            : ox_emit_named(L, n, nn, RT_OP_RESHAPE, &src, 1, &s, NULL, vn);
    *out = L->n_vals - 1;
    return rc;
}

/* Emits `op` 4-D for a 1-D node (see to_4d): ins[0] (and ins[1] for Conv) are reshaped first. */
static int emit_1d_as_2d(loader *L, const ox_node *n, rt_op op, const int *ins, int nin,
                         const rt_shape *o3, const rt_attrs *a)
{
    int v[3] = {ins[0], nin > 1 ? ins[1] : -1, nin > 2 ? ins[2] : -1}, rc;
    if ((rc = to_4d(L, n, ins[0], "x", &v[0])))
        return rc;
    if (op == RT_OP_CONV && (rc = to_4d(L, n, ins[1], "w", &v[1])))
        return rc;
    rt_shape o4 = {4, {o3->d[0], o3->d[1], 1, o3->d[2]}};
    size_t ln = strlen(n->out[0]) + 16, lnn = strlen(n->name) + 24;
    char *vn = ox_aalloc(L, ln), *nn = ox_aalloc(L, lnn);
    if (!vn || !nn)
        return NOMEM(L);
    snprintf(vn, ln, "%s::refit_4d", n->out[0]);
    if ((rc = ox_emit_named(L, n, n->name, op, v, nin, &o4, a, vn)))
        return rc;
    int y4 = L->n_vals - 1;
    snprintf(nn, lnn, "%s::reshape_out", n->name);
    return ox_emit_named(L, n, nn, RT_OP_RESHAPE, &y4, 1, o3, NULL, n->out[0]);
}

static int op_conv(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = ox_need_f32(L, n, vin, nin, 0)) || (rc = ox_need_f32(L, n, vin, nin, 1)))
        return rc;
    int has_b = nin > 2 && vin[2] >= 0;
    if (has_b && (rc = ox_need_f32(L, n, vin, nin, 2)))
        return rc;
    const rt_shape *x = &L->vals[vin[0]].shape, *w = &L->vals[vin[1]].shape;
    if (x->ndim < 3 || x->ndim > 4)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "input %s: only 1-D and 2-D convolution supported",
                        ox_shp(x, b1, sizeof b1));
    if (w->ndim != x->ndim)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "weight %s does not match input %s",
                        ox_shp(w, b1, sizeof b1), ox_shp(x, b2, sizeof b2));
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.group = ox_attr_i(n, "group", 1);
    int64_t C = x->d[1], M = w->d[0];
    if (a.group < 1 || M % a.group)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "group=%lld does not divide %lld output channels",
                        (long long)a.group, (long long)M);
    if (w->d[1] * a.group != C)
        return ox_nfail(L, n, REFIT_ERR_MODEL,
                        "weight %s expects %lld input channels (group=%lld) but the input %s has %lld",
                        ox_shp(w, b1, sizeof b1), (long long)(w->d[1] * a.group), (long long)a.group,
                        ox_shp(x, b2, sizeof b2), (long long)C);
    if (has_b && (L->vals[vin[2]].numel != (size_t)M || L->vals[vin[2]].shape.ndim != 1))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "bias %s does not match %lld output channels",
                        ox_shp(&L->vals[vin[2]].shape, b1, sizeof b1), (long long)M);
    rt_shape o;
    if ((rc = ox_spatial_geom(L, n, x, &w->d[2], 0, &a, &o)))
        return rc;
    o.d[0] = x->d[0];
    o.d[1] = M;
    int ins[3] = {vin[0], vin[1], has_b ? vin[2] : -1};
    if (x->ndim == 3)
        return emit_1d_as_2d(L, n, RT_OP_CONV, ins, has_b ? 3 : 2, &o, &a);
    return ox_emit(L, n, RT_OP_CONV, ins, has_b ? 3 : 2, &o, &a);
}

static int op_pool(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    if ((rc = ox_need_f32(L, n, vin, nin, 0)))
        return rc;
    const rt_shape *x = &L->vals[vin[0]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.group = 1;
    if (op == RT_OP_MAXPOOL && ox_attr_i(n, "storage_order", 0) != 0 && n->n_out > 1 && n->out[1][0])
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute storage_order=1 not supported");
    if (op == RT_OP_AVGPOOL) {
        int64_t cip = ox_attr_i(n, "count_include_pad", 0);
        if (cip != 0 && cip != 1)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute count_include_pad=%lld not supported",
                            (long long)cip);
        a.count_include_pad = (int)cip;
    }
    rt_shape o;
    if ((rc = ox_spatial_geom(L, n, x, NULL, 1, &a, &o)))
        return rc;
    o.d[0] = x->d[0];
    o.d[1] = x->d[1];
    if (x->ndim == 3)
        return emit_1d_as_2d(L, n, op, vin, 1, &o, &a);
    return ox_emit(L, n, op, vin, 1, &o, &a);
}

static int op_gemm(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = ox_need_f32(L, n, vin, nin, 0)) || (rc = ox_need_f32(L, n, vin, nin, 1)))
        return rc;
    int has_c = nin > 2 && vin[2] >= 0;
    if (has_c && (rc = ox_need_f32(L, n, vin, nin, 2)))
        return rc;
    const rt_shape *A = &L->vals[vin[0]].shape, *B = &L->vals[vin[1]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.alpha = ox_attr_f(n, "alpha", 1.0f);
    a.beta = ox_attr_f(n, "beta", 1.0f);
    a.trans_a = (ox_attr_i(n, "transA", 0) != 0) ^ L->cur_tr[0];
    a.trans_b = (ox_attr_i(n, "transB", 0) != 0) ^ L->cur_tr[1];
    if (A->ndim != 2 || B->ndim != 2)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "A %s and B %s must be 2-D", ox_shp(A, b1, sizeof b1),
                        ox_shp(B, b2, sizeof b2));
    int64_t M = a.trans_a ? A->d[1] : A->d[0], K = a.trans_a ? A->d[0] : A->d[1];
    int64_t K2 = a.trans_b ? B->d[1] : B->d[0], N = a.trans_b ? B->d[0] : B->d[1];
    if (K != K2)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: A %s%s has K=%lld, B %s%s has K=%lld",
                        ox_shp(A, b1, sizeof b1), a.trans_a ? "^T" : "", (long long)K,
                        ox_shp(B, b2, sizeof b2), a.trans_b ? "^T" : "", (long long)K2);
    rt_shape o = {2, {M, N}};
    if (has_c) {
        const rt_shape *C = &L->vals[vin[2]].shape;
        int ok = C->ndim <= 2;
        for (int i = 0; ok && i < C->ndim; i++) {
            int64_t want = o.d[2 - C->ndim + i];
            ok = C->d[i] == 1 || C->d[i] == want;
        }
        if (!ok)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "C %s does not broadcast to %s",
                            ox_shp(C, b1, sizeof b1), ox_shp(&o, b2, sizeof b2));
    }
    int ins[3] = {vin[0], vin[1], has_c ? vin[2] : -1};
    return ox_emit(L, n, RT_OP_GEMM, ins, has_c ? 3 : 2, &o, &a);
}

/* MatMul(A, Transpose(W)) with W [N, K]: Gemm(A2, W, transB=1) where A2 is A viewed as
 * [prod(A.shape[:-1]), K], and the result viewed back as A.shape[:-1] + [N]. */
static int matmul_transposed_b(loader *L, const ox_node *n, const int *vin)
{
    char b1[96], b2[96];
    const rt_shape A = L->vals[vin[0]].shape, W = L->vals[vin[1]].shape;
    if (W.ndim != 2 || A.ndim < 1 || A.d[A.ndim - 1] != W.d[1])
        return ox_nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: %s x %s^T", ox_shp(&A, b1, sizeof b1),
                        ox_shp(&W, b2, sizeof b2));
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.alpha = 1.0f;
    a.beta = 1.0f;
    a.trans_b = 1;
    int64_t K = W.d[1], N = W.d[0], M = ox_prod_dims(&A, 0, A.ndim - 1);
    rt_shape o = A;
    o.d[o.ndim - 1] = N;
    rt_shape g2 = {2, {M, N}};
    if (A.ndim == 2) {
        int ins[2] = {vin[0], vin[1]};
        return ox_emit(L, n, RT_OP_GEMM, ins, 2, &o, &a);
    }
    size_t ln = strlen(n->name) + strlen(n->out[0]) + 32;
    char *nn = ox_aalloc(L, ln), *vn = ox_aalloc(L, ln);
    if (!nn || !vn)
        return NOMEM(L);
    rt_shape a2 = {2, {M, K}};
    int rc, ins[2] = {vin[0], vin[1]};
    snprintf(nn, ln, "%s::reshape_a", n->name);
    snprintf(vn, ln, "%s::refit_a2d", n->out[0]);
    if ((rc = ox_emit_named(L, n, nn, RT_OP_RESHAPE, &vin[0], 1, &a2, NULL, vn)))
        return rc;
    ins[0] = L->n_vals - 1;
    snprintf(vn, ln, "%s::refit_2d", n->out[0]);
    if ((rc = ox_emit_named(L, n, n->name, RT_OP_GEMM, ins, 2, &g2, &a, vn)))
        return rc;
    int y = L->n_vals - 1;
    snprintf(nn, ln, "%s::reshape_out", n->name);
    return ox_emit_named(L, n, nn, RT_OP_RESHAPE, &y, 1, &o, NULL, n->out[0]);
}

static int op_matmul(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = ox_need_f32(L, n, vin, nin, 0)) || (rc = ox_need_f32(L, n, vin, nin, 1)))
        return rc;
    if (L->cur_tr[0])
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "a run-time Transpose as the first operand is not supported");
    if (L->cur_tr[1])
        return matmul_transposed_b(L, n, vin);
    const rt_shape *A = &L->vals[vin[0]].shape, *B = &L->vals[vin[1]].shape;
    if (A->ndim < 1 || B->ndim < 1)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "MatMul of a scalar");
    rt_shape a2 = *A, b2s = *B;
    if (a2.ndim == 1) { a2.ndim = 2; a2.d[1] = a2.d[0]; a2.d[0] = 1; }
    if (b2s.ndim == 1) { b2s.ndim = 2; b2s.d[1] = 1; }
    int64_t K = a2.d[a2.ndim - 1], K2 = b2s.d[b2s.ndim - 2];
    if (K != K2)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "inner dims differ: %s x %s", ox_shp(A, b1, sizeof b1),
                        ox_shp(B, b2, sizeof b2));
    rt_shape ba = a2, bb = b2s, bo;
    ba.ndim -= 2;
    bb.ndim -= 2;
    const rt_shape *bs[2] = {&ba, &bb};
    if (ox_bcast_shapes(bs, 2, &bo))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "batch dims of %s and %s do not broadcast",
                        ox_shp(A, b1, sizeof b1), ox_shp(B, b2, sizeof b2));
    rt_shape o = bo;
    if (A->ndim > 1)
        o.d[o.ndim++] = a2.d[a2.ndim - 2];
    if (B->ndim > 1) {
        if (o.ndim >= RT_MAX_DIMS)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "too many dims");
        o.d[o.ndim++] = b2s.d[b2s.ndim - 1];
    }
    return ox_emit(L, n, RT_OP_MATMUL, vin, 2, &o, NULL);
}

static int op_binary(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    char b1[96], b2[96];
    if ((rc = ox_need_f32(L, n, vin, nin, 0)) || (rc = ox_need_f32(L, n, vin, nin, 1)))
        return rc;
    const rt_shape *s[2] = {&L->vals[vin[0]].shape, &L->vals[vin[1]].shape};
    rt_shape o;
    if (ox_bcast_shapes(s, 2, &o))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "shapes %s and %s do not broadcast",
                        ox_shp(s[0], b1, sizeof b1), ox_shp(s[1], b2, sizeof b2));
    return ox_emit(L, n, op, vin, 2, &o, NULL);
}

static int op_batchnorm(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    char b1[96];
    for (int k = 0; k < 5; k++)
        if ((rc = ox_need_f32(L, n, vin, nin, k)))
            return rc;
    if (ox_attr_i(n, "training_mode", 0) != 0)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute training_mode=1 not supported");
    if (ox_attr_i(n, "spatial", 1) != 1)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute spatial=0 not supported");
    const rt_shape *x = &L->vals[vin[0]].shape;
    if (x->ndim < 2)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "input %s has no channel dim", ox_shp(x, b1, sizeof b1));
    for (int k = 1; k < 5; k++)
        if (L->vals[vin[k]].numel != (size_t)x->d[1] || L->vals[vin[k]].shape.ndim != 1)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "'%s' %s does not match %lld channels",
                            L->vals[vin[k]].name, ox_shp(&L->vals[vin[k]].shape, b1, sizeof b1),
                            (long long)x->d[1]);
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.epsilon = ox_attr_f(n, "epsilon", 1e-5f);
    rt_shape o = *x;
    return ox_emit(L, n, RT_OP_BATCHNORM, vin, 5, &o, &a);
}

static int op_concat(loader *L, const ox_node *n, const int *vin, int nin)
{
    char b1[96], b2[96];
    if (nin < 1)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "no inputs");
    const ox_attr *ax = ox_attr_get(n, "axis");
    if (!ax)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "missing axis attribute");
    int all_const = 1, any_float = 0, any_int = 0;
    for (int i = 0; i < nin; i++) {
        if (vin[i] < 0)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "empty input name");
        all_const &= ox_is_kind(L, vin[i], RT_VAL_CONST);
        if (L->vals[vin[i]].dtype == RT_F32)
            any_float = 1;
        else
            any_int = 1;
    }
    const rt_shape *s0 = &L->vals[vin[0]].shape;
    int64_t axis;
    if (ox_norm_axis(ax->i, s0->ndim, &axis))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range for %s", (long long)ax->i,
                        ox_shp(s0, b1, sizeof b1));
    rt_shape o = *s0;
    o.d[axis] = 0;
    for (int i = 0; i < nin; i++) {
        const rt_shape *si = &L->vals[vin[i]].shape;
        int ok = si->ndim == s0->ndim;
        for (int k = 0; ok && k < si->ndim; k++)
            ok = k == axis || si->d[k] == s0->d[k];
        if (!ok)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "input %s does not match %s outside axis %lld",
                            ox_shp(si, b1, sizeof b1), ox_shp(s0, b2, sizeof b2), (long long)axis);
        o.d[axis] += si->d[axis];
    }
    int rc = ox_check_shape(L, n, &o);
    if (rc)
        return rc;
    if (all_const) {
        if (any_float && any_int)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "inputs of different types");
        int dt = L->vals[vin[0]].dtype;
        void *d;
        if ((rc = ox_alloc_const(L, n, dt, &o, &d)))
            return rc;
        size_t outer = (size_t)ox_prod_dims(&o, 0, (int)axis), es = ox_esize(dt), pos = 0;
        for (size_t b = 0; b < outer; b++) {
            for (int i = 0; i < nin; i++) {
                const rt_value *v = &L->vals[vin[i]];
                size_t chunk = (size_t)ox_prod_dims(&v->shape, (int)axis, v->shape.ndim);
                if (chunk)
                    memcpy((char *)d + pos * es, (const char *)v->data + b * chunk * es, chunk * es);
                pos += chunk;
            }
        }
        return ox_make_const(L, n, n->out[0], dt, &o, d);
    }
    for (int i = 0; i < nin; i++)
        if ((rc = ox_need_f32(L, n, vin, nin, i)))
            return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.axis = axis;
    return ox_emit(L, n, RT_OP_CONCAT, vin, nin, &o, &a);
}

static int op_softmax(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    if ((rc = ox_need_f32(L, n, vin, nin, 0)))
        return rc;
    const rt_shape x = L->vals[vin[0]].shape;
    int64_t axis;
    if (x.ndim < 1 || ox_norm_axis(ox_attr_i(n, "axis", L->opset < 13 ? 1 : -1), x.ndim, &axis))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
    rt_attrs a;
    memset(&a, 0, sizeof a);
    if (L->opset >= 13 || axis == x.ndim - 1) {
        a.axis = axis;
        return ox_emit(L, n, RT_OP_SOFTMAX, vin, 1, &x, &a);
    }
    /* Before opset 13 the input is coerced to 2-D [prod(:axis), prod(axis:)] and softmax runs
     * over the second dim: Reshape -> Softmax(axis 1) -> Reshape back. */
    rt_shape s2 = {2, {ox_prod_dims(&x, 0, (int)axis), ox_prod_dims(&x, (int)axis, x.ndim)}};
    size_t len = strlen(n->out[0]) + 32;
    char *nm1 = ox_aalloc(L, len), *nm2 = ox_aalloc(L, len), *nn = ox_aalloc(L, strlen(n->name) + 32);
    if (!nm1 || !nm2 || !nn)
        return NOMEM(L);
    snprintf(nm1, len, "%s::refit_2d_in", n->out[0]);
    snprintf(nm2, len, "%s::refit_2d_out", n->out[0]);
    int v1, v2;
    snprintf(nn, strlen(n->name) + 32, "%s::reshape_in", n->name);
    if ((rc = ox_emit_named(L, n, nn, RT_OP_RESHAPE, vin, 1, &s2, NULL, nm1)))
        return rc;
    v1 = L->n_vals - 1;
    a.axis = 1;
    if ((rc = ox_emit_named(L, n, n->name, RT_OP_SOFTMAX, &v1, 1, &s2, &a, nm2)))
        return rc;
    v2 = L->n_vals - 1;
    snprintf(nn, strlen(n->name) + 32, "%s::reshape_out", n->name);
    return ox_emit_named(L, n, nn, RT_OP_RESHAPE, &v2, 1, &x, NULL, n->out[0]);
}

static int op_reducemean(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc, cnt;
    int64_t axes[RT_MAX_DIMS];
    if ((rc = ox_need_f32(L, n, vin, nin, 0)) || (rc = ox_get_axes(L, n, vin, nin, 18, axes, &cnt)))
        return rc;
    const rt_shape x = L->vals[vin[0]].shape;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.keepdims = ox_attr_i(n, "keepdims", 1) != 0;
    if (cnt <= 0) {
        if (cnt == 0 || L->opset >= 18) {
            if (ox_attr_i(n, "noop_with_empty_axes", 0))
                return ox_passthrough(L, n, vin[0]);
        }
        for (int i = 0; i < x.ndim; i++)
            a.reduce_mask |= 1u << i;
    } else {
        for (int i = 0; i < cnt; i++) {
            int64_t ax;
            if (ox_norm_axis(axes[i], x.ndim, &ax))
                return ox_nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range", (long long)axes[i]);
            a.reduce_mask |= 1u << ax;
        }
    }
    rt_shape o = {0, {0}};
    for (int i = 0; i < x.ndim; i++) {
        if (a.reduce_mask & (1u << i)) {
            if (a.keepdims)
                o.d[o.ndim++] = 1;
        } else {
            o.d[o.ndim++] = x.d[i];
        }
    }
    return ox_emit(L, n, RT_OP_REDUCEMEAN, vin, 1, &o, &a);
}

/* Clip bound k (1 = min, 2 = max) given as an input (opset >= 11). */
static int clip_bound(loader *L, const ox_node *n, const int *vin, int nin, int k, float *val,
                      int *from_input, int *in_idx)
{
    *in_idx = -1;
    if (k >= nin || vin[k] < 0)
        return 0;
    const rt_value *v = &L->vals[vin[k]];
    if (v->numel != 1)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "bound '%s' is not a scalar", v->name);
    if (v->kind == RT_VAL_CONST) {
        *val = ox_d2f(ox_cget_d(v, 0));
        return 0;
    }
    if (v->kind == RT_VAL_WEIGHT) {
        *from_input = 1;
        *in_idx = vin[k];
        return 0;
    }
    return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "bound '%s' computed at run time not supported", v->name);
}

static int op_clip(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    if ((rc = ox_need_f32(L, n, vin, nin, 0)))
        return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.clip_min = -INFINITY;
    a.clip_max = INFINITY;
    int ins[3] = {vin[0], -1, -1}, nins = 1;
    if (L->opset < 11) {
        a.clip_min = ox_attr_f(n, "min", -INFINITY);
        a.clip_max = ox_attr_f(n, "max", INFINITY);
    } else {
        if ((rc = clip_bound(L, n, vin, nin, 1, &a.clip_min, &a.clip_min_from_input, &ins[1])) ||
            (rc = clip_bound(L, n, vin, nin, 2, &a.clip_max, &a.clip_max_from_input, &ins[2])))
            return rc;
        if (a.clip_min_from_input || a.clip_max_from_input)
            nins = 3;
    }
    rt_shape o = L->vals[vin[0]].shape;
    return ox_emit(L, n, RT_OP_CLIP, ins, nins, &o, &a);
}

static int op_unary(loader *L, const ox_node *n, const int *vin, int nin, rt_op op)
{
    int rc;
    if ((rc = ox_need_f32(L, n, vin, nin, 0)))
        return rc;
    rt_attrs a;
    memset(&a, 0, sizeof a);
    if (op == RT_OP_LEAKYRELU)
        a.alpha = ox_attr_f(n, "alpha", 0.01f);
    rt_shape o = L->vals[vin[0]].shape;
    if (op == RT_OP_GLOBALAVGPOOL) {
        if (o.ndim < 3 || o.ndim > 4)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "only 1-D and 2-D spatial inputs supported");
        for (int i = 2; i < o.ndim; i++)
            o.d[i] = 1;
    }
    return ox_emit(L, n, op, vin, 1, &o, &a);
}

/* ============================================================================================
 * per-op fold and build functions (the op table's entries point here)
 * ========================================================================================== */

/* A fold or build function that does not handle this node returns OX_DECLINE (error codes are
 * positive, success is 0): a fold that declines leaves the node to the build function, a build
 * that declines leaves it to the generic refusal. */
#define OX_DECLINE (-1)

#define NEED(k)                                                                     \
    do {                                                                            \
        if (nin <= (k) || vin[k] < 0)                                               \
            return ox_nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", (int)(k));  \
    } while (0)

/* fold functions: called only when every input is CONST and input 0 is present */

static int fold_gather(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(1);
    return ox_fold_gather(L, n, vin);
}

/* elementwise ops with every input required (Where has 3, the others 2) */
static int fold_elementwise(loader *L, const ox_node *n, const int *vin, int nin)
{
    for (int i = 0; i < nin; i++)
        if (vin[i] < 0)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "missing input #%d", i);
    return ox_fold_binary(L, n, vin, nin);
}

/* one-line adapters for the fold functions that read input 0 only */
#define FOLD_INPUT0(fn, helper)                                                     \
    static int fn(loader *L, const ox_node *n, const int *vin, int nin)             \
    {                                                                               \
        (void)nin;                                                                  \
        return helper(L, n, vin[0]);                                                \
    }
FOLD_INPUT0(fold_constant_of_shape, ox_fold_constant_of_shape)
FOLD_INPUT0(fold_unary, ox_fold_unary)
FOLD_INPUT0(fold_transpose, ox_fold_transpose)
FOLD_INPUT0(fold_neg, ox_fold_neg)
FOLD_INPUT0(fold_cast, ox_fold_cast)
#undef FOLD_INPUT0

/* variadic Min / Max: folded for two inputs only */
static int fold_min_max(loader *L, const ox_node *n, const int *vin, int nin)
{
    return nin == 2 ? fold_elementwise(L, n, vin, nin) : OX_DECLINE;
}

static int fold_expand(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(1);
    return ox_fold_expand(L, n, vin);
}

/* Shape-only ops and Concat fold in their build function, which computes a CONST result when
 * its data is CONST; declining here still gets them the fold path's input-0 check. */
static int fold_in_build(loader *L, const ox_node *n, const int *vin, int nin)
{
    (void)L, (void)n, (void)vin, (void)nin;
    return OX_DECLINE;
}

/* build functions: called for every node of the op the fold function did not take */

static int build_constant(loader *L, const ox_node *n, const int *vin, int nin)
{
    (void)vin, (void)nin;
    return ox_fold_constant(L, n);
}

static int build_shape(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    return ox_fold_shape(L, n, vin[0]);
}

static int build_identity(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    return ox_do_identity(L, n, vin[0]);
}

static int build_dropout(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    if (nin > 2 && vin[2] >= 0) {
        const rt_value *tm = &L->vals[vin[2]];
        if (tm->kind != RT_VAL_CONST || tm->numel != 1 || ox_cget_d(tm, 0) != 0)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "training_mode must be a constant false");
    }
    return ox_passthrough(L, n, vin[0]);
}

static int build_cast(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    if (ox_attr_i(n, "to", 0) == RT_F32 && L->vals[vin[0]].dtype == RT_F32)
        return ox_passthrough(L, n, vin[0]);
    if (L->vals[vin[0]].kind != RT_VAL_WEIGHT)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "Cast to %s on run-time data not supported",
                        ox_dtype_name((int)ox_attr_i(n, "to", 0)));
    return OX_DECLINE; /* a weight cast to another type: the generic refusal explains how to fold it */
}

static int build_size(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    rt_shape s = {0, {0}};
    int64_t *d = malloc(sizeof *d);
    if (!d)
        return NOMEM(L);
    *d = (int64_t)L->vals[vin[0]].numel;
    return ox_make_const(L, n, n->out[0], RT_I64, &s, d);
}

/* A run-time Transpose is an identity (rewired) or a 2-D swap recorded as a view that its
 * MatMul / Gemm consumer reads transposed (see the op table's tview). */
static int build_transpose(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    const rt_value *x = &L->vals[vin[0]];
    int c;
    const int64_t *perm = ox_attr_ints(n, "perm", &c);
    int r = x->shape.ndim, identity = 1;
    if (perm) {
        int seen[RT_MAX_DIMS] = {0};
        if (c != r)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "perm has %d entries for rank %d", c, r);
        for (int i = 0; i < r; i++)
            if (perm[i] < 0 || perm[i] >= r || seen[perm[i]]++)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "perm is not a permutation");
    }
    for (int i = 0; i < r; i++)
        identity &= (perm ? perm[i] : r - 1 - i) == i;
    if (identity)
        return ox_passthrough(L, n, vin[0]);
    int swap2 = r == 2; /* the only non-identity permutation of 2 dims */
    if (!swap2)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                        "Transpose of run-time data or a weight is supported only for 2-D perm [1, 0] "
                        "feeding MatMul/Gemm");
    if (ox_strmap_get(&L->graph_outs, n->out[0]) >= 0)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "a run-time Transpose as a graph output is not supported");
    return ox_strmap_put(&L->tviews, n->out[0], vin[0]) ? NOMEM(L) : 0;
}

static int build_reshape(loader *L, const ox_node *n, const int *vin, int nin)
{
    int rc;
    NEED(0);
    NEED(1);
    int64_t sh[RT_MAX_DIMS];
    int cnt;
    if ((rc = ox_const_ints(L, n, vin[1], "shape", sh, RT_MAX_DIMS, &cnt)))
        return rc;
    rt_shape o;
    if ((rc = ox_reshape_shape(L, n, &L->vals[vin[0]].shape, sh, cnt, (int)ox_attr_i(n, "allowzero", 0), &o)))
        return rc;
    return ox_reshape_like(L, n, vin[0], &o, RT_OP_RESHAPE, 0);
}

static int build_flatten(loader *L, const ox_node *n, const int *vin, int nin)
{
    NEED(0);
    const rt_shape *x = &L->vals[vin[0]].shape;
    int64_t axis = ox_attr_i(n, "axis", 1);
    if (axis < 0)
        axis += x->ndim;
    if (axis < 0 || axis > x->ndim)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
    rt_shape o = {2, {ox_prod_dims(x, 0, (int)axis), ox_prod_dims(x, (int)axis, x->ndim)}};
    return ox_reshape_like(L, n, vin[0], &o, RT_OP_FLATTEN, axis);
}

/* Squeeze (squeeze = 1) and Unsqueeze: axes from the attribute (opset < 13) or input 1 */
static int build_squeeze_like(loader *L, const ox_node *n, const int *vin, int nin, int squeeze)
{
    int rc;
    NEED(0);
    int64_t axes[RT_MAX_DIMS];
    int cnt;
    if ((rc = ox_get_axes(L, n, vin, nin, 13, axes, &cnt)))
        return rc;
    rt_shape o;
    rc = squeeze ? ox_squeeze_shape(L, n, &L->vals[vin[0]].shape, axes, cnt, &o)
                 : ox_unsqueeze_shape(L, n, &L->vals[vin[0]].shape, axes, cnt, &o);
    if (rc)
        return rc;
    return ox_reshape_like(L, n, vin[0], &o, RT_OP_RESHAPE, 0);
}

static int build_squeeze(loader *L, const ox_node *n, const int *vin, int nin)
{
    return build_squeeze_like(L, n, vin, nin, 1);
}

static int build_unsqueeze(loader *L, const ox_node *n, const int *vin, int nin)
{
    return build_squeeze_like(L, n, vin, nin, 0);
}

/* one-line adapters from the table's signature to the ops above that take an rt_op */
#define BUILD_AS(fn, helper, rtop)                                                  \
    static int fn(loader *L, const ox_node *n, const int *vin, int nin)             \
    {                                                                               \
        return helper(L, n, vin, nin, rtop);                                        \
    }
BUILD_AS(build_add, op_binary, RT_OP_ADD)
BUILD_AS(build_sub, op_binary, RT_OP_SUB)
BUILD_AS(build_mul, op_binary, RT_OP_MUL)
BUILD_AS(build_div, op_binary, RT_OP_DIV)
BUILD_AS(build_relu, op_unary, RT_OP_RELU)
BUILD_AS(build_sigmoid, op_unary, RT_OP_SIGMOID)
BUILD_AS(build_leakyrelu, op_unary, RT_OP_LEAKYRELU)
BUILD_AS(build_globalavgpool, op_unary, RT_OP_GLOBALAVGPOOL)
BUILD_AS(build_maxpool, op_pool, RT_OP_MAXPOOL)
BUILD_AS(build_avgpool, op_pool, RT_OP_AVGPOOL)
#undef BUILD_AS

/* ============================================================================================
 * the op table
 * ========================================================================================== */

/* One row per op the loader accepts: its name; the attributes ONNX defines for it, with the
 * opsets that define them (`since` is the first opset with the attribute, `until` the last, 0:
 * still defined); `fold`, run when every input is CONST (NULL: never evaluated at load); `build`,
 * run otherwise or when fold declines (NULL: the op exists only at load); `tview`, the inputs
 * (bit i: input i) that may be a run-time Transpose view read transposed.
 *
 * The attributes were generated from onnx.defs.get_schema(op, opset).attributes for opsets
 * 7..OX_ATTR_TABLE_OPSET (tests/test_onnx_loader.py checks them against the installed onnx
 * package). A node's attribute outside this set is refused, as onnxruntime does: the loader
 * would otherwise ignore it and compute something else than the model means. Sorted by op
 * (strcmp order) for bsearch. A new op is one row here plus its fold and/or build function. */
#define OX_ATTR_TABLE_OPSET 28
#define OX_MAX_OP_ATTRS 9 /* Constant has 8; the last entry is always {NULL} */
typedef int (*ox_op_fn)(loader *L, const ox_node *n, const int *vin, int nin);
typedef struct ox_attr_spec {
    const char *name;
    int since, until;
} ox_attr_spec;
typedef struct ox_op {
    const char *op;
    ox_attr_spec a[OX_MAX_OP_ATTRS];
    ox_op_fn fold, build;
    unsigned tview;
} ox_op;
static const ox_op op_table[] = {
    {"Abs", {{0}}, fold_unary, NULL, 0},
    {"Add", {{0}}, fold_elementwise, build_add, 0},
    {"AveragePool",
     {{"auto_pad", 7, 0}, {"count_include_pad", 7, 0}, {"kernel_shape", 7, 0}, {"pads", 7, 0},
      {"strides", 7, 0}, {"ceil_mode", 10, 0}, {"dilations", 19, 0}},
     NULL, build_avgpool, 0},
    {"BatchNormalization",
     {{"epsilon", 7, 0}, {"momentum", 7, 0}, {"spatial", 7, 8}, {"training_mode", 14, 0}},
     NULL, op_batchnorm, 0},
    {"Cast", {{"to", 7, 0}, {"saturate", 19, 0}, {"round_mode", 24, 0}}, fold_cast, build_cast, 0},
    {"Ceil", {{0}}, fold_unary, NULL, 0},
    {"Clip", {{"max", 7, 10}, {"min", 7, 10}}, NULL, op_clip, 0},
    {"Concat", {{"axis", 7, 0}}, fold_in_build, op_concat, 0},
    {"Constant",
     {{"value", 7, 0}, {"sparse_value", 11, 0}, {"value_float", 12, 0}, {"value_floats", 12, 0},
      {"value_int", 12, 0}, {"value_ints", 12, 0}, {"value_string", 12, 0},
      {"value_strings", 12, 0}},
     NULL, build_constant, 0},
    {"ConstantOfShape", {{"value", 9, 0}}, fold_constant_of_shape, NULL, 0},
    {"Conv",
     {{"auto_pad", 7, 0}, {"dilations", 7, 0}, {"group", 7, 0}, {"kernel_shape", 7, 0},
      {"pads", 7, 0}, {"strides", 7, 0}},
     NULL, op_conv, 0},
    {"Div", {{0}}, fold_elementwise, build_div, 0},
    {"Dropout", {{"ratio", 7, 11}, {"seed", 12, 0}}, NULL, build_dropout, 0},
    {"Equal", {{0}}, fold_elementwise, NULL, 0},
    {"Exp", {{0}}, fold_unary, NULL, 0},
    {"Expand", {{0}}, fold_expand, NULL, 0},
    {"Flatten", {{"axis", 7, 0}}, fold_in_build, build_flatten, 0},
    {"Floor", {{0}}, fold_unary, NULL, 0},
    {"Gather", {{"axis", 7, 0}}, fold_gather, NULL, 0},
    {"Gemm", {{"alpha", 7, 0}, {"beta", 7, 0}, {"transA", 7, 0}, {"transB", 7, 0}}, NULL, op_gemm, 3},
    {"GlobalAveragePool", {{0}}, NULL, build_globalavgpool, 0},
    {"Greater", {{0}}, fold_elementwise, NULL, 0},
    {"Identity", {{0}}, NULL, build_identity, 0},
    {"LeakyRelu", {{"alpha", 7, 0}}, fold_unary, build_leakyrelu, 0},
    {"Less", {{0}}, fold_elementwise, NULL, 0},
    {"Log", {{0}}, fold_unary, NULL, 0},
    {"MatMul", {{0}}, NULL, op_matmul, 2},
    {"Max", {{0}}, fold_min_max, NULL, 0},
    {"MaxPool",
     {{"auto_pad", 7, 0}, {"kernel_shape", 7, 0}, {"pads", 7, 0}, {"strides", 7, 0},
      {"storage_order", 8, 0}, {"ceil_mode", 10, 0}, {"dilations", 10, 0}},
     NULL, build_maxpool, 0},
    {"Min", {{0}}, fold_min_max, NULL, 0},
    {"Mul", {{0}}, fold_elementwise, build_mul, 0},
    {"Neg", {{0}}, fold_neg, NULL, 0},
    {"Not", {{0}}, fold_unary, NULL, 0},
    {"Pow", {{0}}, fold_elementwise, NULL, 0},
    {"Range", {{"stash_type", 27, 0}}, ox_fold_range, NULL, 0},
    {"Reciprocal", {{0}}, fold_unary, NULL, 0},
    {"ReduceMean", {{"axes", 7, 17}, {"keepdims", 7, 0}, {"noop_with_empty_axes", 18, 0}}, NULL,
     op_reducemean, 0},
    {"Relu", {{0}}, fold_unary, build_relu, 0},
    {"Reshape", {{"allowzero", 14, 0}}, fold_in_build, build_reshape, 0},
    {"Shape", {{"end", 15, 0}, {"start", 15, 0}}, NULL, build_shape, 0},
    {"Sigmoid", {{0}}, fold_unary, build_sigmoid, 0},
    {"Size", {{0}}, NULL, build_size, 0},
    {"Slice", {{"axes", 7, 9}, {"ends", 7, 9}, {"starts", 7, 9}}, ox_fold_slice, NULL, 0},
    {"Softmax", {{"axis", 7, 0}}, NULL, op_softmax, 0},
    {"Sqrt", {{0}}, fold_unary, NULL, 0},
    {"Squeeze", {{"axes", 7, 12}}, fold_in_build, build_squeeze, 0},
    {"Sub", {{0}}, fold_elementwise, build_sub, 0},
    {"Tanh", {{0}}, fold_unary, NULL, 0},
    {"Transpose", {{"perm", 7, 0}}, fold_transpose, build_transpose, 0},
    {"Unsqueeze", {{"axes", 7, 12}}, fold_in_build, build_unsqueeze, 0},
    {"Where", {{0}}, fold_elementwise, NULL, 0},
};

static int op_cmp(const void *key, const void *ent)
{
    return strcmp((const char *)key, ((const ox_op *)ent)->op);
}

static const ox_op *find_op(const char *op)
{
    return bsearch(op, op_table, sizeof op_table / sizeof op_table[0], sizeof op_table[0], op_cmp);
}

/* ============================================================================================
 * node dispatch
 * ========================================================================================== */

/* Every attribute name of a node whose op is in op_table must be one ONNX defines for that op at
 * the model's opset. Ops not in the table are refused later as unsupported. */
static int check_attr_names(loader *L, const ox_node *n, const ox_op *t)
{
    if (!t)
        return 0;
    for (int i = 0; i < n->n_attrs; i++) {
        const char *name = n->attrs[i].name;
        const ox_attr_spec *s = t->a;
        while (s->name && strcmp(s->name, name) != 0)
            s++;
        if (!s->name)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "unknown attribute '%.80s'", name);
        if (L->opset < s->since)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                            "unknown attribute '%s' (%s defines it from opset %d; the model imports "
                            "opset %lld)", name, t->op, s->since, (long long)L->opset);
        if (s->until && L->opset > s->until)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                            "unknown attribute '%s' (%s defines it in opsets %d to %d; the model "
                            "imports opset %lld)", name, t->op, s->since, s->until, (long long)L->opset);
    }
    return 0;
}

/* The refusal for an op the table knows that neither its fold nor its build function took. */
static int refuse(loader *L, const ox_node *n, const ox_op *t, const int *vin, int nin)
{
    if (!t->fold)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "unsupported op");
    for (int i = 0; i < nin; i++)
        if (vin[i] >= 0 && L->vals[vin[i]].kind == RT_VAL_WEIGHT)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                            "unsupported op on a refittable weight ('%s'); it is evaluated at load "
                            "only when all its inputs are constants (leave '%s' out of the "
                            "'refittable' option to fold it)", L->vals[vin[i]].name, L->vals[vin[i]].name);
    return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                    "unsupported op on run-time data (only evaluated at load when all its inputs "
                    "are constants)");
}

int ox_build_node(loader *L, const ox_node *n)
{
    const ox_op *t = find_op(n->op);
    int rc;
    if (n->domain[0] && strcmp(n->domain, "ai.onnx") != 0)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "domain '%.60s' not supported", n->domain);
    if ((rc = check_attr_names(L, n, t)))
        return rc;
    if (n->n_out < 1 || !n->out[0][0])
        return ox_nfail(L, n, REFIT_ERR_MODEL, "no output");
    if ((rc = ox_reserve_vals(L, 8)) || (rc = ox_reserve_nodes(L, 4)))
        return rc;
    int nin = n->n_in;
    while (nin > 0 && !n->in[nin - 1][0])
        nin--; /* trailing omitted optional inputs */
    int *vin = ox_aalloc(L, (size_t)(nin + 1) * sizeof *vin);
    if (!vin)
        return NOMEM(L);
    int all_const = nin > 0;
    L->cur_tr[0] = L->cur_tr[1] = 0;
    for (int i = 0; i < nin; i++) {
        if (!n->in[i][0]) {
            vin[i] = -1;
            continue;
        }
        vin[i] = ox_strmap_get(&L->names, n->in[i]);
        if (vin[i] < 0 && (vin[i] = ox_strmap_get(&L->tviews, n->in[i])) >= 0) {
            int ok = t && i < 2 && (t->tview >> i & 1);
            if (!ok)
                return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                                "input '%s' is a Transpose of '%s' at run time, supported only as a "
                                "MatMul second operand or a Gemm operand", n->in[i], L->vals[vin[i]].name);
            L->cur_tr[i] = 1;
            all_const = 0;
            continue;
        }
        if (vin[i] < 0) {
            if (ox_strmap_get(&L->dropped, n->in[i]) >= 0)
                return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED,
                                "input '%s' is a secondary output (e.g. BatchNormalization running "
                                "stats, Dropout mask, MaxPool indices), which is not supported",
                                n->in[i]);
            return ox_nfail(L, n, REFIT_ERR_MODEL, "input '%s' is not defined", n->in[i]);
        }
        if (L->vals[vin[i]].kind != RT_VAL_CONST)
            all_const = 0;
    }
    /* Secondary outputs: we produce only output 0. Record the others so a consumer gets a clear
     * message. */
    for (int i = 1; i < n->n_out; i++)
        if (n->out[i][0] && ox_strmap_put(&L->dropped, n->out[i], 1))
            return NOMEM(L);
    for (int i = 1; i < n->n_out; i++)
        if (n->out[i][0] && ox_strmap_get(&L->graph_outs, n->out[i]) >= 0)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "output #%d ('%s') as a graph output is not supported",
                            i, n->out[i]);
    if (!t)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "unsupported op");
    if (all_const && t->fold) {
        NEED(0); /* every fold function reads input 0; an omitted one must not reach them */
        if ((rc = t->fold(L, n, vin, nin)) != OX_DECLINE)
            return rc;
    }
    if (t->build && (rc = t->build(L, n, vin, nin)) != OX_DECLINE)
        return rc;
    return refuse(L, n, t, vin, nin);
}
#undef NEED
