/* mm_options.cc — parsing of the MagicMind backend's options (see mm_options.h). */
#include "mm_options.h"

#include <cstdlib>
#include <sstream>

namespace refitd_mm {
namespace {

const char *const kKnown = "model, names, device_ids, contexts_per_device, memory, profiler_dir, dump_dir, dump_mode";

MmError bad(const std::string &key, const std::string &v, const std::string &expected)
{
    return MmError(kInvalidArg, "backend option '" + key + "'='" + v + "': expected " + expected);
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
            throw bad(key, v, "device ids like 0 or 0,1");
        ids.push_back(static_cast<int>(id));
    }
    if (ids.empty())
        throw bad(key, v, "device ids like 0 or 0,1");
    return ids;
}

} // namespace

Options parse_options(const char *const *keys, const char *const *values, size_t count, int device,
                      std::string *model_path)
{
    Options o;
    o.device_ids = {device};
    model_path->clear();
    for (size_t i = 0; i < count; i++) {
        std::string key = keys[i] ? keys[i] : "", v = values[i] ? values[i] : "";
        if (key == "model")
            *model_path = v;
        else if (key == "names")
            o.names = v;
        else if (key == "device_ids")
            o.device_ids = parse_ids(key, v);
        else if (key == "contexts_per_device") {
            char *end = nullptr;
            long c = strtol(v.c_str(), &end, 10);
            if (v.empty() || *end || c < 0 || c > 1024)
                throw bad(key, v, "0..1024 (0: no limit)");
            o.contexts_per_device = static_cast<int>(c);
        } else if (key == "memory") {
            if (v != "allocator" && v != "static")
                throw bad(key, v, "allocator or static");
            o.static_workspace = v == "static";
        } else if (key == "profiler_dir")
            o.profiler_dir = v;
        else if (key == "dump_dir")
            o.dump_dir = v;
        else if (key == "dump_mode") {
            if (v != "all" && v != "outputs")
                throw bad(key, v, "all or outputs");
            o.dump_all = v == "all";
        } else
            throw MmError(kInvalidArg, "backend option '" + key + "': unknown (known: " + kKnown + ")");
    }
    if (model_path->empty())
        throw MmError(kInvalidArg, "backend option 'model': required (the MagicMind model file, e.g. "
                                   "backend.model=/var/lib/refitd/model.mm)");
    if (o.names.empty())
        o.names = *model_path + ".names";
    return o;
}

} // namespace refitd_mm
