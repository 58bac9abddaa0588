/* mm_namemap.cc — reads the weight rows of a name-map sidecar (format: docs/magicmind.md). */
#include "mm_namemap.h"

#include <fstream>
#include <set>
#include <sstream>

#include "mm_error.h"

namespace refitd_mm {
namespace {

std::vector<std::string> split(const std::string &line, char sep)
{
    std::vector<std::string> out;
    std::string cell;
    std::istringstream in(line);
    while (std::getline(in, cell, sep))
        out.push_back(cell);
    return out;
}

std::vector<int64_t> parse_shape(const std::string &s, const std::string &where)
{
    std::vector<int64_t> dims;
    if (s == "scalar")
        return dims;
    for (const std::string &d : split(s, 'x')) {
        char *end = nullptr;
        long long v = strtoll(d.c_str(), &end, 10);
        if (d.empty() || *end || v <= 0)
            throw MmError(kModel, where + ": shape '" + s + "' is not like 1x3x3x1");
        dims.push_back(v);
    }
    return dims;
}

} // namespace

std::vector<MappedWeight> read_name_map(const std::string &path)
{
    std::ifstream in(path);
    if (!in)
        throw MmError(kIo, "name map '" + path + "': cannot open it (the MagicMind backend needs the sidecar "
                           "next to the model for weight shapes; see docs/magicmind.md)");
    std::vector<MappedWeight> out;
    std::set<std::string> seen;
    std::string line;
    bool header = false;
    for (int no = 1; std::getline(in, line); no++) {
        if (line.empty() || line[0] == '#')
            continue;
        std::string where = "name map '" + path + "' line " + std::to_string(no);
        if (!header) {
            if (line != "refitd-names 1")
                throw MmError(kModel, where + ": first line must be 'refitd-names 1'");
            header = true;
            continue;
        }
        std::vector<std::string> f = split(line, '\t');
        if (f.size() != 6)
            throw MmError(kModel, where + ": expected 6 tab-separated fields (kind source engine dtype shape layout)");
        if (f[0] != "weight")
            continue; // inputs and outputs: the runtime reports their shapes itself
        if (f[3] != "float32")
            throw MmError(kUnsupported, where + ": weight '" + f[2] + "' dtype " + f[3] + " (float32 only)");
        if (!seen.insert(f[2]).second)
            throw MmError(kModel, where + ": engine name '" + f[2] + "' appears twice");
        out.push_back(MappedWeight{f[1], f[2], f[5], parse_shape(f[4], where)});
    }
    if (!header)
        throw MmError(kModel, "name map '" + path + "': empty (first line must be 'refitd-names 1')");
    return out;
}

} // namespace refitd_mm
