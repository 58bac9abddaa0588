/* backends.c — the registry of backends behind the one C ABI. A new backend (MagicMind) adds
 * its vtable here; the core refuses any whose api_version it was not built for. */
#include <string.h>

#include "backend.h"

static const rt_backend *const registry[] = {
    &rt_cpu_backend,
};

size_t rt_backend_count(void) { return sizeof registry / sizeof registry[0]; }

const rt_backend *rt_backend_get(size_t index)
{
    return index < rt_backend_count() ? registry[index] : NULL;
}

const rt_backend *rt_backend_find(const char *name)
{
    for (size_t i = 0; i < rt_backend_count(); i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}
