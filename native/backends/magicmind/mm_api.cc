/* mm_api.cc — the C face of the MagicMind backend (mm_api.h): option parsing and the one place
 * where C++ exceptions stop. Every entry point catches everything, so a vendor failure becomes a
 * status code and a one-line message, never an exception in librefit. */
#include "mm_api.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>

#include "mm_error.h"
#include "mm_session.h"

using refitd_mm::MmError;

struct mmb_engine {
    std::unique_ptr<refitd_mm::Session> session;
};

struct mmb_worker {
    std::unique_ptr<refitd_mm::Worker> worker;
};

namespace {

int fail(char *err, size_t errlen, int code, const std::string &msg)
{
    if (err && errlen) {
        std::string line = msg.substr(0, msg.find('\n')); // one line, whatever the vendor wrote
        snprintf(err, errlen, "%s", line.c_str());
    }
    return code;
}

template <class F>
int guarded(char *err, size_t errlen, F f)
{
    try {
        f();
        return 0;
    } catch (const MmError &e) {
        return fail(err, errlen, e.code, e.what());
    } catch (const std::bad_alloc &) {
        return fail(err, errlen, refitd_mm::kNomem, "magicmind backend: out of host memory");
    } catch (const std::exception &e) {
        return fail(err, errlen, refitd_mm::kBackend, std::string("magicmind backend: ") + e.what());
    } catch (...) {
        return fail(err, errlen, refitd_mm::kBackend, "magicmind backend: unknown C++ exception");
    }
}

std::vector<int> parse_ids(const std::string &key, const std::string &v)
{
    std::vector<int> ids;
    std::istringstream in(v);
    std::string part;
    while (std::getline(in, part, ',')) {
        char *end = nullptr;
        long id = strtol(part.c_str(), &end, 10);
        if (part.empty() || *end || id < 0 || id > 1023)
            throw MmError(refitd_mm::kInvalidArg, "option " + key + "='" + v + "': expected device ids like 0 or 0,1");
        ids.push_back(static_cast<int>(id));
    }
    if (ids.empty())
        throw MmError(refitd_mm::kInvalidArg, "option " + key + "='" + v + "': no device id");
    return ids;
}

refitd_mm::Options parse_options(const char *model_path, const char *const *keys, const char *const *values, size_t n)
{
    refitd_mm::Options o;
    o.names = std::string(model_path) + ".names";
    for (size_t i = 0; i < n; i++) {
        std::string k = keys[i] ? keys[i] : "", v = values[i] ? values[i] : "";
        std::string key = k.compare(0, 8, "backend.") == 0 ? k.substr(8) : k;
        if (key == "names")
            o.names = v;
        else if (key == "device_ids")
            o.device_ids = parse_ids(k, v);
        else if (key == "contexts_per_device") {
            char *end = nullptr;
            long c = strtol(v.c_str(), &end, 10);
            if (v.empty() || *end || c < 0 || c > 1024)
                throw MmError(refitd_mm::kInvalidArg, "option " + k + "='" + v + "': expected 0..1024");
            o.contexts_per_device = static_cast<int>(c);
        } else if (key == "memory") {
            if (v != "allocator" && v != "static")
                throw MmError(refitd_mm::kInvalidArg, "option " + k + "='" + v + "': expected allocator or static");
            o.static_workspace = v == "static";
        } else if (key == "profiler_dir")
            o.profiler_dir = v;
        else if (key == "dump_dir")
            o.dump_dir = v;
        else if (key == "dump_mode") {
            if (v != "all" && v != "outputs")
                throw MmError(refitd_mm::kInvalidArg, "option " + k + "='" + v + "': expected all or outputs");
            o.dump_all = v == "all";
        } else
            throw MmError(refitd_mm::kInvalidArg, "unknown magicmind option '" + k +
                                                      "' (known: names, device_ids, contexts_per_device, memory, "
                                                      "profiler_dir, dump_dir, dump_mode)");
    }
    return o;
}

const std::vector<refitd_mm::TensorDesc> *list(const mmb_engine *e, int kind)
{
    if (!e)
        return nullptr;
    switch (kind) {
    case MMB_INPUT:
        return &e->session->inputs();
    case MMB_OUTPUT:
        return &e->session->outputs();
    case MMB_WEIGHT:
        return &e->session->weights();
    default:
        return nullptr;
    }
}

} // namespace

extern "C" {

int mmb_open(const char *model_path, const char *const *keys, const char *const *values, size_t count,
             mmb_engine **out, char *err, size_t errlen)
{
    if (!model_path || !out)
        return fail(err, errlen, refitd_mm::kInvalidArg, "mmb_open: NULL model path or out");
    *out = nullptr;
    return guarded(err, errlen, [&] {
        std::unique_ptr<mmb_engine> e(new mmb_engine);
        e->session.reset(new refitd_mm::Session(model_path, parse_options(model_path, keys, values, count)));
        *out = e.release();
    });
}

void mmb_close(mmb_engine *engine)
{
    try {
        delete engine;
    } catch (...) { // a destructor of vendor objects must not take librefit down
    }
}

size_t mmb_count(const mmb_engine *engine, int kind)
{
    const auto *l = list(engine, kind);
    return l ? l->size() : 0;
}

int mmb_info_get(const mmb_engine *engine, int kind, size_t index, mmb_info *info)
{
    const auto *l = list(engine, kind);
    if (!l || index >= l->size() || !info)
        return refitd_mm::kInvalidArg;
    const refitd_mm::TensorDesc &t = (*l)[index];
    info->name = t.name.c_str();
    info->ndim = static_cast<int32_t>(t.shape.size());
    info->shape = t.shape.data();
    info->nbytes = t.nbytes();
    return 0;
}

int mmb_worker_create(mmb_engine *engine, mmb_worker **out, char *err, size_t errlen)
{
    if (!engine || !out)
        return fail(err, errlen, refitd_mm::kInvalidArg, "mmb_worker_create: NULL engine or out");
    *out = nullptr;
    return guarded(err, errlen, [&] {
        std::unique_ptr<mmb_worker> w(new mmb_worker);
        w->worker = engine->session->worker();
        *out = w.release();
    });
}

void mmb_worker_destroy(mmb_worker *worker)
{
    try {
        delete worker;
    } catch (...) {
    }
}

int mmb_run(mmb_worker *worker, const float *const *inputs, float *const *outputs, char *err, size_t errlen)
{
    if (!worker || !inputs || !outputs)
        return fail(err, errlen, refitd_mm::kInvalidArg, "mmb_run: NULL worker, inputs or outputs");
    return guarded(err, errlen, [&] { worker->worker->run(inputs, outputs); });
}

int mmb_refit(mmb_engine *engine, const float *const *weights, int *applied, char *err, size_t errlen)
{
    bool ran = false;
    if (applied)
        *applied = 0;
    if (!engine || !weights)
        return fail(err, errlen, refitd_mm::kInvalidArg, "mmb_refit: NULL engine or weights");
    int rc = guarded(err, errlen, [&] { engine->session->refit(weights, &ran); });
    if (applied)
        *applied = ran ? 1 : 0;
    return rc;
}

} // extern "C"
