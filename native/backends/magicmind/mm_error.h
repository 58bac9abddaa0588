/* mm_error.h — how the MagicMind backend turns vendor failures into one-line errors. Inside the
 * plugin failures are exceptions (MmError carries a refit_status code); mm_api.cc catches every
 * exception at the C boundary, so none crosses into librefit. */
#ifndef REFITD_MM_ERROR_H
#define REFITD_MM_ERROR_H

#include <stdexcept>
#include <string>

#include "cnrt.h"
#include "mm_runtime.h"

namespace refitd_mm {

// refit_status codes used here (refit.h; the plugin does not include it to stay C++-only).
enum Code { kInvalidArg = 1, kNotFound = 2, kShape = 4, kUnsupported = 9, kModel = 10, kIo = 11, kNomem = 12, kBackend = 14 };

struct MmError : std::runtime_error {
    MmError(int code, const std::string &what) : std::runtime_error(what), code(code) {}
    int code;
};

// A MagicMind call that failed: "magicmind: <what>: <vendor message>".
inline void check(const magicmind::Status &s, const std::string &what, int code = kBackend)
{
    if (!s.ok())
        throw MmError(code, "magicmind: " + what + ": " + s.ToString());
}

inline void check_cnrt(cnrtRet_t r, const std::string &what)
{
    if (r != CNRT_RET_SUCCESS)
        throw MmError(kBackend, "cnrt: " + what + " failed (" + std::to_string(static_cast<int>(r)) + ": " +
                                    cnrtGetErrorStr(r) + ")");
}

} // namespace refitd_mm
#endif
