/* mm_options.h — the MagicMind backend's engine options (librefit passes "backend.<key>" with
 * the prefix removed) and the exception barrier every plugin entry point goes through. */
#ifndef REFITD_MM_OPTIONS_H
#define REFITD_MM_OPTIONS_H

#include <cstddef>
#include <cstdio>
#include <new>
#include <string>

#include "mm_error.h"
#include "mm_session.h"

namespace refitd_mm {

// Keys (docs/magicmind.md): model, names, device_ids, contexts_per_device, memory, profiler_dir,
// dump_dir, dump_mode. `device` is the engine's device id (librefit's "device" option), used
// when device_ids is not given. Throws MmError naming a bad or unknown key.
Options parse_options(const char *const *keys, const char *const *values, size_t count, int device,
                      std::string *model_path);

// Writes the first line of `msg` into err (errlen bytes, terminated); returns code.
inline int fail(char *err, size_t errlen, int code, const std::string &msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg.substr(0, msg.find('\n')).c_str());
    return code;
}

// Runs f; any exception becomes a refit_status code and a one-line message. Nothing crosses.
template <class F>
int guarded(char *err, size_t errlen, F f)
{
    try {
        f();
        return 0;
    } catch (const MmError &e) {
        return fail(err, errlen, e.code, e.what());
    } catch (const std::bad_alloc &) {
        return fail(err, errlen, kNomem, "magicmind backend: out of host memory");
    } catch (const std::exception &e) {
        return fail(err, errlen, kBackend, std::string("magicmind backend: ") + e.what());
    } catch (...) {
        return fail(err, errlen, kBackend, "magicmind backend: unknown C++ exception");
    }
}

} // namespace refitd_mm
#endif
