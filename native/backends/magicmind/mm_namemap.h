/* mm_namemap.h — the engine side of the name-map sidecar (<model>.names, docs/magicmind.md).
 * MagicMind's refitter lists weight names but not their shapes, so the backend takes each
 * refittable weight's engine name, dtype and engine-layout shape from the sidecar. The source
 * names and layout transforms in the same file are the Python side's (daemon/refitd/namemap.py). */
#ifndef REFITD_MM_NAMEMAP_H
#define REFITD_MM_NAMEMAP_H

#include <cstdint>
#include <string>
#include <vector>

namespace refitd_mm {

struct MappedWeight {
    std::string kind;           // weight, input or output
    std::string source, engine;
    bool nhwc;                  // layout "NCHW>NHWC": source [O, I, H, W], engine [O, H, W, I]
    std::vector<int64_t> shape; // engine layout
};

// The weight's shape in the source (ONNX) layout.
std::vector<int64_t> source_shape(const MappedWeight &w);
// Copies the weight from source layout (src) into engine layout (dst); numel floats each.
void to_engine_layout(const MappedWeight &w, const float *src, float *dst);

// Reads the sidecar's rows (every kind); throws MmError naming the file and line on a bad one.
std::vector<MappedWeight> read_name_map(const std::string &path);

} // namespace refitd_mm
#endif
