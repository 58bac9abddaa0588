/* mm_namemap.cc — reads the weight rows of a name-map sidecar (format: docs/magicmind.md). */
#include "mm_namemap.h"

#include <algorithm>
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
        if (f[0] != "weight" && f[0] != "input" && f[0] != "output")
            throw MmError(kModel, where + ": kind '" + f[0] + "' (known: weight, input, output)");
        if (f[3] != "float32")
            throw MmError(kUnsupported, where + ": " + f[0] + " '" + f[2] + "' dtype " + f[3] + " (float32 only)");
        if (!seen.insert(f[0] + "\t" + f[2]).second)
            throw MmError(kModel, where + ": engine name '" + f[2] + "' appears twice");
        MappedWeight w{f[0], f[1], f[2], f[5] == "NCHW>NHWC", parse_shape(f[4], where)};
        if (f[5] != "-" && !w.nhwc)
            throw MmError(kModel, where + ": layout '" + f[5] + "' (known: - and NCHW>NHWC)");
        if (w.nhwc && w.shape.size() != 4)
            throw MmError(kModel, where + ": layout NCHW>NHWC needs a 4-D weight, '" + f[2] + "' has " +
                                      std::to_string(w.shape.size()) + " dims");
        out.push_back(w);
    }
    if (!header)
        throw MmError(kModel, "name map '" + path + "': empty (first line must be 'refitd-names 1')");
    return out;
}

std::vector<int64_t> source_shape(const MappedWeight &w)
{
    if (!w.nhwc)
        return w.shape;
    return {w.shape[0], w.shape[3], w.shape[1], w.shape[2]};
}

void to_engine_layout(const MappedWeight &w, const float *src, float *dst)
{
    size_t n = 1;
    for (int64_t d : w.shape)
        n *= static_cast<size_t>(d);
    if (!w.nhwc) {
        std::copy(src, src + n, dst);
        return;
    }
    const size_t O = w.shape[0], H = w.shape[1], W = w.shape[2], I = w.shape[3];
    for (size_t o = 0; o < O; o++)
        for (size_t i = 0; i < I; i++)
            for (size_t h = 0; h < H; h++)
                for (size_t x = 0; x < W; x++)
                    dst[((o * H + h) * W + x) * I + i] = src[((o * I + i) * H + h) * W + x];
}

} // namespace refitd_mm
