/*
 * onnx_shape.c — shape inference for the shape-only ops (Reshape, Flatten, Squeeze,
 * Unsqueeze, Identity/Dropout pass-throughs) and the spatial geometry of Conv and the pools.
 * See onnx_internal.h for the two phases.
 */
#include "onnx_internal.h"

/* ============================================================================================
 * shape-only ops (folded on CONST data, RT_OP_RESHAPE / RT_OP_FLATTEN on run-time data)
 * ========================================================================================== */

int ox_reshape_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *sh, int cnt,
                     int allowzero, rt_shape *o)
{
    char b1[128], b2[128];
    if (cnt > RT_MAX_DIMS)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "target shape has %d dims", cnt);
    int64_t numel = (int64_t)rt_shape_numel(in), prod = 1;
    int unknown = -1, has_zero = 0;
    o->ndim = cnt;
    for (int i = 0; i < cnt; i++) {
        int64_t v = sh[i];
        if (v == 0 && !allowzero) {
            if (i >= in->ndim)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "shape entry %d is 0 but the input has %d dims",
                                i, in->ndim);
            v = in->d[i];
        }
        if (v == 0)
            has_zero = 1;
        if (v == -1) {
            if (unknown >= 0)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "more than one -1 in the target shape");
            unknown = i;
            o->d[i] = 1;
            continue;
        }
        if (v < -1 || v > MAX_NUMEL)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "invalid target dim %lld", (long long)v);
        o->d[i] = v;
        if (v && prod > MAX_NUMEL / v)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "target shape too large");
        prod *= v;
    }
    if (unknown >= 0) {
        if (allowzero && has_zero)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "allowzero with both 0 and -1 in the target shape");
        if (prod == 0 || numel % prod)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "cannot reshape %s (%lld elements) to %s",
                            ox_shp(in, b1, sizeof b1), (long long)numel, ox_shp(o, b2, sizeof b2));
        o->d[unknown] = numel / prod;
    } else if (prod != numel) {
        return ox_nfail(L, n, REFIT_ERR_MODEL, "cannot reshape %s (%lld elements) to %s (%lld)",
                        ox_shp(in, b1, sizeof b1), (long long)numel, ox_shp(o, b2, sizeof b2),
                        (long long)prod);
    }
    return 0;
}

/* Axes of Squeeze/Unsqueeze/ReduceMean: attribute before `input_opset`, else optional input 1.
 * *cnt = -1 if absent. */
int ox_get_axes(loader *L, const ox_node *n, const int *vin, int nin, int64_t input_opset,
                int64_t *axes, int *cnt)
{
    *cnt = -1;
    if (L->opset < input_opset) {
        int c;
        const int64_t *p = ox_attr_ints(n, "axes", &c);
        if (p) {
            if (c > RT_MAX_DIMS)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "too many axes");
            memcpy(axes, p, (size_t)c * sizeof *axes);
            *cnt = c;
        }
        return 0;
    }
    if (nin > 1 && vin[1] >= 0)
        return ox_const_ints(L, n, vin[1], "axes", axes, RT_MAX_DIMS, cnt);
    return 0;
}

int ox_squeeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                     int cnt, rt_shape *o)
{
    int drop[RT_MAX_DIMS] = {0};
    if (cnt < 0) {
        for (int i = 0; i < in->ndim; i++)
            drop[i] = in->d[i] == 1;
    } else {
        for (int i = 0; i < cnt; i++) {
            int64_t a;
            if (ox_norm_axis(axes[i], in->ndim, &a))
                return ox_nfail(L, n, REFIT_ERR_MODEL, "axis %lld out of range", (long long)axes[i]);
            if (in->d[a] != 1)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "cannot squeeze axis %lld of size %lld",
                                (long long)a, (long long)in->d[a]);
            drop[a] = 1;
        }
    }
    o->ndim = 0;
    for (int i = 0; i < in->ndim; i++)
        if (!drop[i])
            o->d[o->ndim++] = in->d[i];
    return 0;
}

int ox_unsqueeze_shape(loader *L, const ox_node *n, const rt_shape *in, const int64_t *axes,
                       int cnt, rt_shape *o)
{
    if (cnt < 0)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "missing axes");
    int r = in->ndim + cnt;
    if (r > RT_MAX_DIMS)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has %d dims (at most %d)", r, RT_MAX_DIMS);
    int mark[RT_MAX_DIMS] = {0};
    for (int i = 0; i < cnt; i++) {
        int64_t a;
        if (ox_norm_axis(axes[i], r, &a) || mark[a])
            return ox_nfail(L, n, REFIT_ERR_MODEL, "bad axis %lld", (long long)axes[i]);
        mark[a] = 1;
    }
    o->ndim = r;
    for (int i = 0, j = 0; i < r; i++)
        o->d[i] = mark[i] ? 1 : in->d[j++];
    return 0;
}

/* Shape-only op: fold if the data is CONST, else a run-time reshape (never of int data). */
int ox_reshape_like(loader *L, const ox_node *n, int src, const rt_shape *s, rt_op op, int64_t axis)
{
    int rc = ox_check_shape(L, n, s);
    if (rc)
        return rc;
    if (ox_is_kind(L, src, RT_VAL_CONST))
        return ox_const_copy(L, n, src, s, n->out[0]);
    if (L->vals[src].dtype != RT_F32)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "input '%s' is not float", L->vals[src].name);
    rt_attrs a;
    memset(&a, 0, sizeof a);
    a.axis = axis;
    return ox_emit(L, n, op, &src, 1, s, &a);
}

/* Identity-like pass-through of a value: a CONST is copied under the new name (so folding can go
 * on); a run-time value is simply rewired, unless the name is a graph output, which then gets a
 * real RT_OP_IDENTITY node so it keeps its own buffer. */
int ox_passthrough(loader *L, const ox_node *n, int src)
{
    const char *name = n->out[0];
    if (ox_is_kind(L, src, RT_VAL_CONST))
        return ox_const_copy(L, n, src, &L->vals[src].shape, name);
    if (ox_strmap_get(&L->graph_outs, name) >= 0) {
        rt_shape s = L->vals[src].shape;
        return ox_emit(L, n, RT_OP_IDENTITY, &src, 1, &s, NULL);
    }
    return ox_strmap_put(&L->names, name, src) ? NOMEM(L) : 0;
}

/* Identity: PyTorch aliases identical initial tensors as Identity(initializer). The alias becomes
 * its own refittable weight (a copy of the source's initial data), so both names stay
 * independently refittable. With an explicit refittable set, the alias is a weight iff its own
 * name is in the set. */
int ox_do_identity(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    const char *name = n->out[0];
    int want;
    if (!L->explicit_refit)
        want = x->kind == RT_VAL_WEIGHT;
    else
        want = (x->kind == RT_VAL_WEIGHT || x->kind == RT_VAL_CONST) && x->dtype == RT_F32 &&
               ox_strmap_get(&L->refit_set, name) >= 0;
    if (!want && x->kind == RT_VAL_WEIGHT) {
        /* a weight aliased under a name that is not refittable: a constant snapshot */
        float *d = malloc(x->numel ? x->numel * sizeof *d : 1);
        if (!d)
            return NOMEM(L);
        if (x->numel)
            memcpy(d, L->winit[src], x->numel * sizeof *d);
        rt_shape s = x->shape;
        return ox_make_const(L, n, name, RT_F32, &s, d);
    }
    if (!want)
        return ox_passthrough(L, n, src);
    const float *from = x->kind == RT_VAL_WEIGHT ? L->winit[src] : (const float *)x->data;
    float *d = malloc(x->numel ? x->numel * sizeof *d : 1);
    if (!d)
        return NOMEM(L);
    if (x->numel)
        memcpy(d, from, x->numel * sizeof *d);
    rt_shape s = x->shape;
    int idx;
    if (L->explicit_refit)
        ox_strmap_put(&L->refit_set, name, 1);
    return ox_add_value(L, name, RT_VAL_WEIGHT, RT_F32, &s, NULL, d, &idx);
}

/* ============================================================================================
 * run-time ops: attribute resolution and shape inference
 * ========================================================================================== */

/* Resolves kernel/strides/pads/dilations/auto_pad/ceil_mode for Conv and pools into a (2-D) and
 * the output spatial size into o (o->d[2..] filled, o->ndim = x->ndim). 1-D is promoted to 2-D:
 * the H axis gets kernel 1, stride 1, dilation 1, no padding. kernel_in is the kernel from the
 * weight (Conv) or NULL (pools: kernel_shape attribute required). */
int ox_spatial_geom(loader *L, const ox_node *n, const rt_shape *x, const int64_t *kernel_in,
                    int allow_ceil, rt_attrs *a, rt_shape *o)
{
    int nsp = x->ndim - 2;
    if (nsp < 1 || nsp > 2)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "%d-D input (only 1-D and 2-D spatial supported)",
                        nsp < 0 ? 0 : nsp);
    int c;
    int64_t k[2] = {1, 1}, s[2] = {1, 1}, dl[2] = {1, 1}, pb[2] = {0, 0}, pe[2] = {0, 0};
    int off = 2 - nsp; /* 1-D: fill only the W slot */
    const int64_t *p = ox_attr_ints(n, "kernel_shape", &c);
    if (p) {
        if (c != nsp)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "kernel_shape has %d entries for %d spatial dims", c, nsp);
        for (int i = 0; i < nsp; i++) {
            if (kernel_in && p[i] != kernel_in[i])
                return ox_nfail(L, n, REFIT_ERR_MODEL, "kernel_shape does not match the weight");
            k[off + i] = p[i];
        }
    } else if (kernel_in) {
        for (int i = 0; i < nsp; i++)
            k[off + i] = kernel_in[i];
    } else {
        return ox_nfail(L, n, REFIT_ERR_MODEL, "missing kernel_shape");
    }
    if ((p = ox_attr_ints(n, "strides", &c))) {
        if (c != nsp)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "strides has %d entries", c);
        for (int i = 0; i < nsp; i++)
            s[off + i] = p[i];
    }
    if ((p = ox_attr_ints(n, "dilations", &c))) {
        if (c != nsp)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "dilations has %d entries", c);
        for (int i = 0; i < nsp; i++)
            dl[off + i] = p[i];
    }
    const char *ap = ox_attr_s(n, "auto_pad", "NOTSET");
    int mode; /* 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID */
    if (!strcmp(ap, "NOTSET") || !ap[0])
        mode = 0;
    else if (!strcmp(ap, "SAME_UPPER"))
        mode = 1;
    else if (!strcmp(ap, "SAME_LOWER"))
        mode = 2;
    else if (!strcmp(ap, "VALID"))
        mode = 3;
    else
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute auto_pad=%.40s not supported", ap);
    if (mode == 0 && (p = ox_attr_ints(n, "pads", &c))) {
        if (c != 2 * nsp)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "pads has %d entries for %d spatial dims", c, nsp);
        for (int i = 0; i < nsp; i++) {
            pb[off + i] = p[i];
            pe[off + i] = p[nsp + i];
        }
    }
    int64_t ceil_mode = allow_ceil ? ox_attr_i(n, "ceil_mode", 0) : 0;
    if (ceil_mode != 0 && ceil_mode != 1)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute ceil_mode=%lld not supported",
                        (long long)ceil_mode);
    int64_t in[2] = {nsp == 2 ? x->d[2] : 1, x->d[x->ndim - 1]}, out[2];
    for (int i = 0; i < 2; i++) {
        if (k[i] < 1 || s[i] < 1 || dl[i] < 1 || pb[i] < 0 || pe[i] < 0 || k[i] > (1 << 20) ||
            s[i] > (1 << 20) || dl[i] > (1 << 20) || pb[i] > (1 << 20) || pe[i] > (1 << 20))
            return ox_nfail(L, n, REFIT_ERR_MODEL, "invalid kernel/stride/dilation/pad value");
        int64_t ek = dl[i] * (k[i] - 1) + 1;
        if (mode == 1 || mode == 2) {
            out[i] = (in[i] + s[i] - 1) / s[i];
            int64_t total = (out[i] - 1) * s[i] + ek - in[i];
            if (total < 0)
                total = 0;
            pb[i] = mode == 1 ? total / 2 : total - total / 2;
            pe[i] = total - pb[i];
        } else {
            int64_t num = in[i] + pb[i] + pe[i] - ek;
            if (num < 0)
                return ox_nfail(L, n, REFIT_ERR_MODEL,
                                "kernel (%lld, dilated %lld) larger than the padded input (%lld)",
                                (long long)k[i], (long long)ek, (long long)(in[i] + pb[i] + pe[i]));
            if (ceil_mode) { /* NOTSET or VALID (no pads); onnxruntime and PyTorch agree */
                out[i] = (num + s[i] - 1) / s[i] + 1;
                /* the last window must start inside the input or its left padding */
                if ((out[i] - 1) * s[i] >= in[i] + pb[i])
                    out[i]--;
            } else {
                out[i] = num / s[i] + 1;
            }
        }
        a->kernel[i] = k[i];
        a->strides[i] = s[i];
        a->dilations[i] = dl[i];
        a->pads[i] = pb[i];
        a->pads[2 + i] = pe[i];
    }
    o->ndim = x->ndim;
    if (nsp == 2)
        o->d[2] = out[0];
    o->d[x->ndim - 1] = out[1];
    return 0;
}
