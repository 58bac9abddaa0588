/*
 * onnx_fold.c — load-time evaluation ("folding") of CONST subgraphs.
 * See onnx_internal.h for the two phases.
 */
#include "onnx_internal.h"

/* ============================================================================================
 * load-time evaluation (folding) of CONST subgraphs
 * ========================================================================================== */

/* Copy of a CONST value under a new name (shape-only ops and pass-throughs). */
int ox_const_copy(loader *L, const ox_node *n, int src, const rt_shape *s, const char *name)
{
    const rt_value *x = &L->vals[src];
    void *d;
    int rc = ox_alloc_const(L, n, x->dtype, s, &d);
    if (rc)
        return rc;
    size_t bytes = x->numel * ox_esize(x->dtype);
    if (bytes)
        memcpy(d, x->data, bytes);
    return ox_make_const(L, n, name, x->dtype, s, d);
}

int ox_fold_constant(loader *L, const ox_node *n)
{
    const ox_attr *a = NULL;
    for (int i = 0; i < n->n_attrs; i++) {
        const char *nm = n->attrs[i].name;
        if (!strcmp(nm, "value") || !strcmp(nm, "value_float") || !strcmp(nm, "value_floats") ||
            !strcmp(nm, "value_int") || !strcmp(nm, "value_ints"))
            a = &n->attrs[i];
        else if (!strcmp(nm, "sparse_value") || !strcmp(nm, "value_string") ||
                 !strcmp(nm, "value_strings"))
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute %s not supported", nm);
    }
    if (!a)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "no value attribute");
    rt_shape s = {0};
    void *d = NULL;
    int rc;
    if (a->type == AT_TENSOR) {
        const ox_tensor *t = a->t;
        s.ndim = t->ndim;
        memcpy(s.d, t->dims, sizeof s.d);
        if (t->numel > (size_t)MAX_FOLD_NUMEL)
            return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "constant too large");
        if ((rc = ox_tensor_decode(L, t, &d)))
            return rc;
        return ox_make_const(L, n, n->out[0], ox_is_float_dtype(t->dtype) ? RT_F32 : RT_I64, &s, d);
    }
    if (a->type == AT_FLOAT || a->type == AT_INT) {
        int dt = a->type == AT_FLOAT ? RT_F32 : RT_I64;
        if ((rc = ox_alloc_const(L, n, dt, &s, &d)))
            return rc;
        ox_cset(dt, d, 0, a->f, a->i, a->type == AT_INT);
        return ox_make_const(L, n, n->out[0], dt, &s, d);
    }
    if (a->type == AT_FLOATS || a->type == AT_INTS) {
        int dt = a->type == AT_FLOATS ? RT_F32 : RT_I64;
        size_t cnt = dt == RT_F32 ? a->nfloats : a->nints;
        s.ndim = 1;
        s.d[0] = (int64_t)cnt;
        if ((rc = ox_alloc_const(L, n, dt, &s, &d)))
            return rc;
        for (size_t k = 0; k < cnt; k++)
            ox_cset(dt, d, k, dt == RT_F32 ? a->floats[k] : 0, dt == RT_I64 ? a->ints[k] : 0,
                    dt == RT_I64);
        return ox_make_const(L, n, n->out[0], dt, &s, d);
    }
    return ox_nfail(L, n, REFIT_ERR_MODEL, "value attribute '%s' has an unexpected type", a->name);
}

int ox_fold_shape(loader *L, const ox_node *n, int x)
{
    const rt_shape xs = L->vals[x].shape;
    int64_t r = xs.ndim, start = ox_attr_i(n, "start", 0), end = ox_attr_i(n, "end", r);
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    rt_shape s = {1, {end > start ? end - start : 0}};
    void *d;
    int rc = ox_alloc_const(L, n, RT_I64, &s, &d);
    if (rc)
        return rc;
    for (int64_t i = start; i < end; i++)
        ((int64_t *)d)[i - start] = xs.d[i];
    return ox_make_const(L, n, n->out[0], RT_I64, &s, d);
}

int ox_fold_binary(loader *L, const ox_node *n, const int *vin, int nin)
{
    const char *op = n->op;
    int is_where = !strcmp(op, "Where");
    int need = is_where ? 3 : 2;
    if (nin < need)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "needs %d inputs", need);
    const rt_value *x[3];
    const rt_shape *sh[3];
    for (int i = 0; i < need; i++) {
        x[i] = &L->vals[vin[i]];
        sh[i] = &x[i]->shape;
    }
    rt_shape s;
    if (ox_bcast_shapes(sh, need, &s)) {
        char b1[96], b2[96];
        return ox_nfail(L, n, REFIT_ERR_MODEL, "shapes %s and %s do not broadcast",
                        ox_shp(sh[need - 2], b1, sizeof b1), ox_shp(sh[need - 1], b2, sizeof b2));
    }
    int cmp = !strcmp(op, "Equal") || !strcmp(op, "Less") || !strcmp(op, "Greater");
    int dt;
    if (cmp)
        dt = RT_I64;
    else if (is_where)
        dt = (x[1]->dtype == RT_F32 || x[2]->dtype == RT_F32) ? RT_F32 : RT_I64;
    else
        dt = (x[0]->dtype == RT_F32 || x[1]->dtype == RT_F32) ? RT_F32 : RT_I64;
    int isint = x[need - 2]->dtype == RT_I64 && x[need - 1]->dtype == RT_I64;
    if (!strcmp(op, "Pow")) /* Pow's result has the base's type */
        dt = x[0]->dtype;
    void *d;
    int rc = ox_alloc_const(L, n, dt, &s, &d);
    if (rc)
        return rc;
    size_t numel = rt_shape_numel(&s);
    for (size_t k = 0; k < numel; k++) {
        if (is_where) {
            int c = ox_cget_d(x[0], ox_bcast_off(sh[0], &s, k)) != 0;
            const rt_value *src = c ? x[1] : x[2];
            size_t o = ox_bcast_off(&src->shape, &s, k);
            ox_cset(dt, d, k, ox_cget_d(src, o), ox_cget_i(src, o), src->dtype == RT_I64 && dt == RT_I64);
            continue;
        }
        size_t oa = ox_bcast_off(sh[0], &s, k), ob = ox_bcast_off(sh[1], &s, k);
        if (isint) {
            uint64_t a = (uint64_t)ox_cget_i(x[0], oa), b = (uint64_t)ox_cget_i(x[1], ob);
            int64_t r;
            if (!strcmp(op, "Add"))
                r = (int64_t)(a + b);
            else if (!strcmp(op, "Sub"))
                r = (int64_t)(a - b);
            else if (!strcmp(op, "Mul"))
                r = (int64_t)(a * b);
            else if (!strcmp(op, "Equal"))
                r = a == b;
            else if (!strcmp(op, "Less"))
                r = (int64_t)a < (int64_t)b;
            else if (!strcmp(op, "Greater"))
                r = (int64_t)a > (int64_t)b;
            else if (!strcmp(op, "Min"))
                r = (int64_t)a < (int64_t)b ? (int64_t)a : (int64_t)b;
            else if (!strcmp(op, "Max"))
                r = (int64_t)a > (int64_t)b ? (int64_t)a : (int64_t)b;
            else if (!strcmp(op, "Pow")) {
                r = ox_d2i(pow((double)(int64_t)a, (double)(int64_t)b));
            } else { /* Div: integer division truncates toward zero */
                if (b == 0) {
                    free(d);
                    return ox_nfail(L, n, REFIT_ERR_MODEL, "integer division by zero");
                }
                r = (int64_t)b == -1 ? (int64_t)(0 - a) : (int64_t)a / (int64_t)b;
            }
            ((int64_t *)d)[k] = r;
        } else {
            double a = ox_cget_d(x[0], oa), b = ox_cget_d(x[1], ob), r;
            if (!strcmp(op, "Add"))
                r = a + b;
            else if (!strcmp(op, "Sub"))
                r = a - b;
            else if (!strcmp(op, "Mul"))
                r = a * b;
            else if (!strcmp(op, "Equal"))
                r = a == b;
            else if (!strcmp(op, "Less"))
                r = a < b;
            else if (!strcmp(op, "Greater"))
                r = a > b;
            else if (!strcmp(op, "Min"))
                r = a < b ? a : b;
            else if (!strcmp(op, "Max"))
                r = a > b ? a : b;
            else if (!strcmp(op, "Pow"))
                r = pow(a, b);
            else
                r = a / b;
            ox_cset(dt, d, k, r, 0, 0);
        }
    }
    return ox_make_const(L, n, n->out[0], dt, &s, d);
}

int ox_fold_gather(loader *L, const ox_node *n, const int *vin)
{
    const rt_value *x = &L->vals[vin[0]], *ix = &L->vals[vin[1]];
    int64_t axis;
    if (ox_norm_axis(ox_attr_i(n, "axis", 0), x->shape.ndim, &axis))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "axis out of range");
    rt_shape s;
    s.ndim = x->shape.ndim - 1 + ix->shape.ndim;
    if (s.ndim > RT_MAX_DIMS)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "result has too many dims");
    int k = 0;
    for (int i = 0; i < axis; i++)
        s.d[k++] = x->shape.d[i];
    for (int i = 0; i < ix->shape.ndim; i++)
        s.d[k++] = ix->shape.d[i];
    for (int i = (int)axis + 1; i < x->shape.ndim; i++)
        s.d[k++] = x->shape.d[i];
    void *d;
    int rc = ox_alloc_const(L, n, x->dtype, &s, &d);
    if (rc)
        return rc;
    size_t outer = (size_t)ox_prod_dims(&x->shape, 0, (int)axis);
    size_t inner = (size_t)ox_prod_dims(&x->shape, (int)axis + 1, x->shape.ndim);
    int64_t dim = x->shape.d[axis];
    size_t es = ox_esize(x->dtype), pos = 0;
    for (size_t o = 0; o < outer; o++) {
        for (size_t j = 0; j < ix->numel; j++) {
            int64_t id = ox_cget_i(ix, j);
            if (id < 0)
                id += dim;
            if (id < 0 || id >= dim) {
                free(d);
                return ox_nfail(L, n, REFIT_ERR_MODEL, "index %lld out of range for dim %lld",
                                (long long)ox_cget_i(ix, j), (long long)dim);
            }
            if (inner)
                memcpy((char *)d + pos * es, (const char *)x->data + ((o * (size_t)dim + (size_t)id) * inner) * es,
                       inner * es);
            pos += inner;
        }
    }
    return ox_make_const(L, n, n->out[0], x->dtype, &s, d);
}

int ox_fold_cast(loader *L, const ox_node *n, int src)
{
    int64_t to = ox_attr_i(n, "to", 0);
    const rt_value *x = &L->vals[src];
    int dt = ox_is_float_dtype((int)to) ? RT_F32 : RT_I64;
    if (ox_elem_size((int)to) == 0)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "attribute to=%lld not supported", (long long)to);
    void *d;
    int rc = ox_alloc_const(L, n, dt, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++) {
        if (dt == RT_F32) {
            ((float *)d)[k] = ox_d2f(ox_cget_d(x, k));
        } else {
            int64_t v = to == OX_BOOL ? (ox_cget_d(x, k) != 0) : ox_cget_i(x, k);
            if (to != RT_I64 && to != OX_U64 && to != OX_BOOL)
                v = to == OX_U32 ? (int64_t)(uint32_t)v : ox_i32field_i((int)to, v);
            ((int64_t *)d)[k] = v;
        }
    }
    return ox_make_const(L, n, n->out[0], dt, &x->shape, d);
}

int ox_fold_slice(loader *L, const ox_node *n, const int *vin, int nin)
{
    const rt_value *x = &L->vals[vin[0]];
    int r = x->shape.ndim;
    int64_t starts[RT_MAX_DIMS], ends[RT_MAX_DIMS], axes[RT_MAX_DIMS], steps[RT_MAX_DIMS];
    int ns = 0, ne = 0, na = -1, nst = -1, rc;
    if (L->opset < 10) {
        int c;
        const int64_t *p = ox_attr_ints(n, "starts", &c);
        if (!p || c > RT_MAX_DIMS)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "bad starts attribute");
        memcpy(starts, p, (size_t)c * 8);
        ns = c;
        p = ox_attr_ints(n, "ends", &c);
        if (!p || c > RT_MAX_DIMS)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "bad ends attribute");
        memcpy(ends, p, (size_t)c * 8);
        ne = c;
        p = ox_attr_ints(n, "axes", &c);
        if (p) {
            if (c > RT_MAX_DIMS)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "bad axes attribute");
            memcpy(axes, p, (size_t)c * 8);
            na = c;
        }
    } else {
        if (nin < 3 || vin[1] < 0 || vin[2] < 0)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "needs starts and ends inputs");
        if ((rc = ox_const_ints(L, n, vin[1], "starts", starts, RT_MAX_DIMS, &ns)) ||
            (rc = ox_const_ints(L, n, vin[2], "ends", ends, RT_MAX_DIMS, &ne)))
            return rc;
        if (nin > 3 && vin[3] >= 0 && (rc = ox_const_ints(L, n, vin[3], "axes", axes, RT_MAX_DIMS, &na)))
            return rc;
        if (nin > 4 && vin[4] >= 0 && (rc = ox_const_ints(L, n, vin[4], "steps", steps, RT_MAX_DIMS, &nst)))
            return rc;
    }
    if (ns != ne || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "starts/ends/axes/steps lengths differ");
    int64_t st[RT_MAX_DIMS], sp[RT_MAX_DIMS];
    rt_shape s = x->shape;
    int seen[RT_MAX_DIMS] = {0};
    for (int i = 0; i < r; i++) {
        st[i] = 0;
        sp[i] = 1;
    }
    for (int i = 0; i < ns; i++) {
        int64_t ax = na >= 0 ? axes[i] : i;
        if (ox_norm_axis(ax, r, &ax) || seen[ax]++)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "bad slice axis");
        int64_t step = nst >= 0 ? steps[i] : 1, dim = x->shape.d[ax];
        if (step == 0)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "slice step 0");
        int64_t b = starts[i], e = ends[i];
        if (b < 0)
            b = b < -dim ? -1 : b + dim;
        if (e < 0)
            e = e < -dim ? -1 : e + dim;
        if (step > 0) {
            b = b < 0 ? 0 : b > dim ? dim : b;
            e = e < 0 ? 0 : e > dim ? dim : e;
            s.d[ax] = e > b ? (e - b + step - 1) / step : 0;
        } else {
            b = b < 0 ? 0 : b > dim - 1 ? dim - 1 : b;
            e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
            s.d[ax] = b > e ? (b - e + (-step) - 1) / (-step) : 0;
        }
        st[ax] = b;
        sp[ax] = step;
    }
    void *d;
    if ((rc = ox_alloc_const(L, n, x->dtype, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s), es = ox_esize(x->dtype);
    for (size_t k = 0; k < numel; k++) {
        size_t rem = k, off = 0, stride = 1;
        for (int i = r - 1; i >= 0; i--) {
            size_t c = rem % (size_t)s.d[i];
            rem /= (size_t)s.d[i];
            off += (size_t)(st[i] + (int64_t)c * sp[i]) * stride;
            stride *= (size_t)x->shape.d[i];
        }
        memcpy((char *)d + k * es, (const char *)x->data + off * es, es);
    }
    return ox_make_const(L, n, n->out[0], x->dtype, &s, d);
}

int ox_fold_constant_of_shape(loader *L, const ox_node *n, int src)
{
    int64_t dims[RT_MAX_DIMS];
    int cnt, rc;
    if ((rc = ox_const_ints(L, n, src, "shape", dims, RT_MAX_DIMS, &cnt)))
        return rc;
    rt_shape s = {cnt, {0}};
    for (int i = 0; i < cnt; i++) {
        if (dims[i] < 0)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "negative dim in shape");
        s.d[i] = dims[i];
    }
    const ox_attr *a = ox_attr_get(n, "value");
    int dt = RT_F32;
    double fv = 0;
    int64_t iv = 0;
    if (a && a->type == AT_TENSOR) {
        if (a->t->numel != 1)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "value must hold one element");
        void *one;
        if ((rc = ox_tensor_decode(L, a->t, &one)))
            return rc;
        dt = ox_is_float_dtype(a->t->dtype) ? RT_F32 : RT_I64;
        if (dt == RT_F32)
            fv = ((float *)one)[0];
        else
            iv = ((int64_t *)one)[0];
        free(one);
    }
    void *d;
    if ((rc = ox_alloc_const(L, n, dt, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s);
    for (size_t k = 0; k < numel; k++)
        ox_cset(dt, d, k, fv, iv, dt == RT_I64);
    return ox_make_const(L, n, n->out[0], dt, &s, d);
}

int ox_fold_range(loader *L, const ox_node *n, const int *vin, int nin)
{
    if (nin < 3 || vin[0] < 0 || vin[1] < 0 || vin[2] < 0)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "needs 3 inputs");
    const rt_value *a = &L->vals[vin[0]], *b = &L->vals[vin[1]], *c = &L->vals[vin[2]];
    if (a->numel != 1 || b->numel != 1 || c->numel != 1)
        return ox_nfail(L, n, REFIT_ERR_MODEL, "inputs must be scalars");
    int dt = (a->dtype == RT_F32 || b->dtype == RT_F32 || c->dtype == RT_F32) ? RT_F32 : RT_I64;
    double start = ox_cget_d(a, 0), limit = ox_cget_d(b, 0), delta = ox_cget_d(c, 0);
    if (delta == 0 || !isfinite(start) || !isfinite(limit) || !isfinite(delta))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "bad range");
    double cnt = ceil((limit - start) / delta);
    if (cnt < 0)
        cnt = 0;
    if (cnt > (double)MAX_FOLD_NUMEL)
        return ox_nfail(L, n, REFIT_ERR_UNSUPPORTED, "range too large");
    rt_shape s = {1, {(int64_t)cnt}};
    void *d;
    int rc = ox_alloc_const(L, n, dt, &s, &d);
    if (rc)
        return rc;
    for (int64_t k = 0; k < s.d[0]; k++) {
        if (dt == RT_F32)
            ((float *)d)[k] = ox_d2f(start + (double)k * delta);
        else
            ((int64_t *)d)[k] = (int64_t)((uint64_t)ox_cget_i(a, 0) + (uint64_t)k * (uint64_t)ox_cget_i(c, 0));
    }
    return ox_make_const(L, n, n->out[0], dt, &s, d);
}

int ox_fold_transpose(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    int r = x->shape.ndim, cnt;
    int64_t perm[RT_MAX_DIMS];
    const int64_t *p = ox_attr_ints(n, "perm", &cnt);
    if (p) {
        if (cnt != r)
            return ox_nfail(L, n, REFIT_ERR_MODEL, "perm has %d entries for rank %d", cnt, r);
        int seen[RT_MAX_DIMS] = {0};
        for (int i = 0; i < r; i++) {
            if (p[i] < 0 || p[i] >= r || seen[p[i]]++)
                return ox_nfail(L, n, REFIT_ERR_MODEL, "bad perm");
            perm[i] = p[i];
        }
    } else {
        for (int i = 0; i < r; i++)
            perm[i] = r - 1 - i;
    }
    rt_shape s = {r, {0}};
    size_t istr[RT_MAX_DIMS], st = 1;
    for (int i = r - 1; i >= 0; i--) {
        istr[i] = st;
        st *= (size_t)x->shape.d[i];
    }
    for (int i = 0; i < r; i++)
        s.d[i] = x->shape.d[perm[i]];
    void *d;
    int rc = ox_alloc_const(L, n, x->dtype, &s, &d);
    if (rc)
        return rc;
    size_t numel = x->numel, es = ox_esize(x->dtype);
    for (size_t k = 0; k < numel; k++) {
        size_t rem = k, off = 0;
        for (int i = r - 1; i >= 0; i--) {
            size_t c = rem % (size_t)s.d[i];
            rem /= (size_t)s.d[i];
            off += c * istr[perm[i]];
        }
        memcpy((char *)d + k * es, (const char *)x->data + off * es, es);
    }
    return ox_make_const(L, n, n->out[0], x->dtype, &s, d);
}

/* Elementwise unary ops on a constant (float math in double; integer input keeps its type). */
int ox_fold_unary(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    const char *op = n->op;
    float alpha = ox_attr_f(n, "alpha", 0.01f);
    void *d;
    int rc = ox_alloc_const(L, n, x->dtype, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++) {
        double v = ox_cget_d(x, k), r;
        if (!strcmp(op, "Relu"))
            r = v > 0 ? v : 0;
        else if (!strcmp(op, "LeakyRelu"))
            r = v >= 0 ? v : v * alpha;
        else if (!strcmp(op, "Sigmoid"))
            r = 1.0 / (1.0 + exp(-v));
        else if (!strcmp(op, "Tanh"))
            r = tanh(v);
        else if (!strcmp(op, "Abs"))
            r = fabs(v);
        else if (!strcmp(op, "Sqrt"))
            r = sqrt(v);
        else if (!strcmp(op, "Exp"))
            r = exp(v);
        else if (!strcmp(op, "Log"))
            r = log(v);
        else if (!strcmp(op, "Floor"))
            r = floor(v);
        else if (!strcmp(op, "Ceil"))
            r = ceil(v);
        else if (!strcmp(op, "Reciprocal"))
            r = 1.0 / v;
        else /* Not */
            r = v == 0;
        if (x->dtype == RT_I64 && (!strcmp(op, "Relu") || !strcmp(op, "Abs") || !strcmp(op, "Floor") ||
                                   !strcmp(op, "Ceil")))
            ((int64_t *)d)[k] = !strcmp(op, "Abs") ? (int64_t)(ox_cget_i(x, k) < 0 ? 0 - (uint64_t)ox_cget_i(x, k)
                                                                                : (uint64_t)ox_cget_i(x, k))
                              : !strcmp(op, "Relu") ? (ox_cget_i(x, k) > 0 ? ox_cget_i(x, k) : 0)
                                                    : ox_cget_i(x, k);
        else
            ox_cset(x->dtype, d, k, r, 0, 0);
    }
    return ox_make_const(L, n, n->out[0], x->dtype, &x->shape, d);
}

int ox_fold_expand(loader *L, const ox_node *n, const int *vin)
{
    int64_t dims[RT_MAX_DIMS];
    int cnt, rc;
    if ((rc = ox_const_ints(L, n, vin[1], "shape", dims, RT_MAX_DIMS, &cnt)))
        return rc;
    const rt_value *x = &L->vals[vin[0]];
    rt_shape t = {cnt, {0}}, s;
    for (int i = 0; i < cnt; i++)
        t.d[i] = dims[i];
    const rt_shape *sh[2] = {&x->shape, &t};
    if (ox_dims_numel(t.d, t.ndim) < 0 || ox_bcast_shapes(sh, 2, &s))
        return ox_nfail(L, n, REFIT_ERR_MODEL, "shape does not broadcast with the input");
    void *d;
    if ((rc = ox_alloc_const(L, n, x->dtype, &s, &d)))
        return rc;
    size_t numel = rt_shape_numel(&s), es = ox_esize(x->dtype);
    for (size_t k = 0; k < numel; k++)
        memcpy((char *)d + k * es, (const char *)x->data + ox_bcast_off(&x->shape, &s, k) * es, es);
    return ox_make_const(L, n, n->out[0], x->dtype, &s, d);
}

int ox_fold_neg(loader *L, const ox_node *n, int src)
{
    const rt_value *x = &L->vals[src];
    void *d;
    int rc = ox_alloc_const(L, n, x->dtype, &x->shape, &d);
    if (rc)
        return rc;
    for (size_t k = 0; k < x->numel; k++)
        ox_cset(x->dtype, d, k, -ox_cget_d(x, k), (int64_t)(0 - (uint64_t)ox_cget_i(x, k)), x->dtype == RT_I64);
    return ox_make_const(L, n, n->out[0], x->dtype, &x->shape, d);
}
