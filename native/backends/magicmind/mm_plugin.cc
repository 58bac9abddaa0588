/* mm_plugin.cc — librefit_backend_magicmind.so: the MagicMind backend behind librefit's backend
 * API v3 (native/src/backend.h). C++ inside; every entry point goes through guarded(), so no
 * exception crosses into librefit.
 *
 * librefit opens the *source* ONNX model (names, shapes and initial values of the weights, in
 * source names and NCHW); the MagicMind model file is backend.model, with its name-map sidecar
 * (<model>.names) beside it. This file maps graph weight k to its engine name and layout:
 *   plan      = Session (model deserialised once, profiler, options)
 *   prepared  = WeightSet (an IEngine per device id holding one weight version in device memory)
 *   ctx       = Worker (a CNRT queue, device I/O buffers, an IContext per WeightSet it ran on)
 * Caps: RT_CAP_INPLACE only: an IEngine's weights change only by RefitEngine in place, and every
 * extra set costs a whole engine of device memory, so librefit's default is quiesce; ab (two
 * engines) on request; swap is refused.
 *
 * TEST-ONLY: backend.test_unguarded=1 with strategy ab makes the two instances share one set of
 * device engines, so ab's "idle" refit rewrites the engine that is serving while it runs — the
 * unguarded in-place refit the vendor samples do. Tests use it to prove tearing is visible. */
#include <memory>
#include <vector>

extern "C" {
#include "backend.h"
}
#include "mm_options.h"
#include "mm_session.h"

using namespace refitd_mm;

namespace {

struct Plan {
    std::unique_ptr<Session> session;
    const rt_graph *g = nullptr;
    std::vector<size_t> row_of;          // graph weight k -> session weight index
    bool unguarded = false;              // TEST-ONLY, see the file comment
    std::shared_ptr<WeightSet> first;    // unguarded: the one set every instance shares
};

struct Prepared {
    std::shared_ptr<WeightSet> set;
};

struct Ctx {
    std::unique_ptr<Worker> worker;
};

std::string dims(const std::vector<int64_t> &d)
{
    std::string s;
    for (int64_t x : d)
        s += (s.empty() ? "" : "x") + std::to_string(x);
    return s.empty() ? "scalar" : s;
}

std::vector<int64_t> dims(const rt_shape &s) { return std::vector<int64_t>(s.d, s.d + s.ndim); }

// Every graph weight has exactly one sidecar row with its source name and shape; every engine
// weight has a graph weight. Inputs and outputs agree in count, order, name (through the map's
// input/output rows, else the same name) and size.
void bind_graph(Plan &p)
{
    const Session &s = *p.session;
    const rt_graph *g = p.g;
    std::vector<bool> used(s.name_map().size(), false);
    for (int k = 0; k < g->n_weights; k++) {
        const rt_value &v = g->values[g->weights[k]];
        size_t r = 0;
        while (r < s.name_map().size() && s.name_map()[r].source != v.name)
            r++;
        if (r == s.name_map().size())
            throw MmError(kNotFound, std::string("weight '") + v.name + "': no row in name map '" + s.options().names + "'");
        const MappedWeight &m = s.name_map()[r];
        if (source_shape(m) != dims(v.shape))
            throw MmError(kShape, std::string("weight '") + v.name + "' (engine '" + m.engine + "'): the name map's shape " +
                                      dims(m.shape) + (m.nhwc ? " NHWC is " + dims(source_shape(m)) + " NCHW" : "") +
                                      ", the model's is " + dims(dims(v.shape)));
        used[r] = true;
        p.row_of.push_back(r);
    }
    for (size_t r = 0; r < used.size(); r++)
        if (!used[r])
            throw MmError(kNotFound, "engine weight '" + s.name_map()[r].engine + "' (source '" + s.name_map()[r].source +
                                         "'): not a refittable weight of the ONNX model");
    if (static_cast<size_t>(g->n_inputs) != s.inputs().size() || static_cast<size_t>(g->n_outputs) != s.outputs().size())
        throw MmError(kModel, "the MagicMind model has " + std::to_string(s.inputs().size()) + " input(s) and " +
                                  std::to_string(s.outputs().size()) + " output(s), the ONNX model " +
                                  std::to_string(g->n_inputs) + " and " + std::to_string(g->n_outputs));
    for (int i = 0; i < g->n_inputs + g->n_outputs; i++) {
        bool in = i < g->n_inputs;
        const char *kind = in ? "input" : "output";
        const rt_value &v = g->values[in ? g->inputs[i] : g->outputs[i - g->n_inputs]];
        const TensorDesc &t = in ? s.inputs()[i] : s.outputs()[i - g->n_inputs];
        std::string engine = v.name; // a row of the name map renames it
        for (const MappedWeight &m : s.io_name_map())
            if (m.kind == kind && m.source == v.name) {
                // Activations pass through unchanged: an engine that wants them relaid would
                // compute garbage, so refuse rather than guess.
                if (m.nhwc)
                    throw MmError(kUnsupported, std::string(kind) + " '" + v.name + "': layout NCHW>NHWC for inputs "
                                                "and outputs is not supported (build the model with NCHW I/O)");
                engine = m.engine;
            }
        if (t.name != engine)
            throw MmError(kModel, std::string(kind) + " '" + v.name + "' (#" + std::to_string(in ? i : i - g->n_inputs) +
                                      "): expected engine name '" + engine + "', the MagicMind model's is '" + t.name +
                                      "' (map it with an " + kind + " row in '" + s.options().names + "')");
        if (t.nbytes() != v.numel * sizeof(float))
            throw MmError(kShape, std::string(kind) + " '" + v.name + "' " + dims(dims(v.shape)) +
                                      ": the MagicMind model's '" + t.name + "' is " + dims(t.shape));
    }
}

// The raw (source layout, graph order) set in engine layout and engine order.
struct EngineWeights {
    std::vector<std::vector<float>> data;
    std::vector<const float *> ptrs;
    EngineWeights(const Plan &p, const float *const *raw)
    {
        const Session &s = *p.session;
        data.resize(s.weights().size());
        for (size_t k = 0; k < p.row_of.size(); k++) {
            size_t r = p.row_of[k];
            data[r].resize(s.weights()[r].nbytes() / sizeof(float));
            to_engine_layout(s.name_map()[r], raw[k], data[r].data());
        }
        for (auto &d : data)
            ptrs.push_back(d.data());
    }
};

int plan_create(const rt_graph *g, const rt_backend_config *cfg, void **out, char *err, size_t errlen)
{
    return guarded(err, errlen, [&] {
        std::unique_ptr<Plan> p(new Plan);
        std::vector<const char *> keys, values;
        for (size_t i = 0; cfg && i < cfg->n_options; i++) {
            if (std::string(cfg->option_keys[i]) == "test_unguarded") {
                p->unguarded = std::string(cfg->option_values[i]) == "1";
                continue;
            }
            keys.push_back(cfg->option_keys[i]);
            values.push_back(cfg->option_values[i]);
        }
        std::string model;
        Options o = parse_options(keys.data(), values.data(), keys.size(), cfg ? cfg->device_id : 0, &model);
        p->session.reset(new Session(model, o));
        p->g = g;
        bind_graph(*p);
        *out = p.release();
    });
}

void plan_destroy(void *plan)
{
    try {
        delete static_cast<Plan *>(plan);
    } catch (...) { // a vendor destructor must not take librefit down
    }
}

int ctx_create(void *plan, void **out, char *err, size_t errlen)
{
    return guarded(err, errlen, [&] {
        std::unique_ptr<Ctx> c(new Ctx);
        c->worker = static_cast<Plan *>(plan)->session->worker();
        *out = c.release();
    });
}

void ctx_destroy(void *ctx)
{
    try {
        delete static_cast<Ctx *>(ctx);
    } catch (...) {
    }
}

int weights_prepare(void *plan, const float *const *raw, const void *, const unsigned char *, void **out, char *err,
                    size_t errlen)
{
    return guarded(err, errlen, [&] {
        Plan &p = *static_cast<Plan *>(plan);
        EngineWeights w(p, raw);
        std::unique_ptr<Prepared> h(new Prepared);
        if (p.unguarded && p.first) {
            bool applied = false;
            p.first->refit(w.ptrs.data(), &applied); // TEST-ONLY: in place, under running inferences
            h->set = p.first;
        } else {
            h->set = p.session->weight_set(w.ptrs.data());
            if (p.unguarded)
                p.first = h->set;
        }
        *out = h.release();
    });
}

void weights_release(void *plan, void *prepared)
{
    try {
        Plan &p = *static_cast<Plan *>(plan);
        Prepared *h = static_cast<Prepared *>(prepared);
        if (p.first && h->set == p.first && p.first.use_count() == 2)
            p.first.reset();
        delete h;
    } catch (...) {
    }
}

// Everything is rewritten (MagicMind's refitter wants every name set before RefitEngine); the
// `changed` mask only tells librefit's own bookkeeping apart.
int weights_refit(void *plan, void *prepared, const float *const *raw, const unsigned char *, char *err, size_t errlen)
{
    return guarded(err, errlen, [&] {
        Plan &p = *static_cast<Plan *>(plan);
        EngineWeights w(p, raw);
        bool applied = false;
        static_cast<Prepared *>(prepared)->set->refit(w.ptrs.data(), &applied);
    });
}

int run(void *, void *ctx, const void *prepared, const float *const *inputs, float *const *outputs, char *err,
        size_t errlen)
{
    return guarded(err, errlen, [&] {
        static_cast<Ctx *>(ctx)->worker->run(*static_cast<const Prepared *>(prepared)->set, inputs, outputs);
    });
}

const rt_backend kVtable = {
    RT_BACKEND_API_VERSION,
    "magicmind",
    "Cambricon MagicMind (MLU) through libmagicmind_runtime + libcnrt; refits in place (quiesce or ab)",
    RT_CAP_INPLACE,
    plan_create,
    plan_destroy,
    ctx_create,
    ctx_destroy,
    weights_prepare,
    weights_release,
    weights_refit,
    run,
    nullptr, // weights_commit: RT_CAP_SETS only (a staged handle is a second IEngine); quiesce
    nullptr, // weights_verify   refits in place, and verifies with the canary, inside its pause
};

} // namespace

extern "C" __attribute__((visibility("default"))) const rt_backend *refit_backend_entry(void) { return &kVtable; }
