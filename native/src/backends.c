/* backends.c — the backend registry: the built-in reference backend, then plugin backends.
 *
 * A plugin is `librefit_backend_<name>.so`, looked for, in order, in
 *   1. each directory of $REFIT_BACKEND_PATH (colon-separated),
 *   2. the directory librefit itself was loaded from (dladdr),
 *   3. REFIT_BACKEND_DIR, fixed when librefit is built (CMake: <prefix>/lib/refit/backends; pip
 *      builds: /usr/local/lib/refit/backends).
 * It is dlopen'ed once (RTLD_NOW | RTLD_LOCAL) and never closed: engines keep pointers into its
 * vtable, and unloading code that other threads may still return into buys nothing. librefit
 * itself never links a vendor SDK, so it keeps loading on boxes without one. */
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifndef REFIT_BACKEND_DIR
#define REFIT_BACKEND_DIR "/usr/local/lib/refit/backends"
#endif

#define PREFIX "librefit_backend_"
#define SUFFIX ".so"
enum { MAX_DIRS = 16, MAX_FOUND = 64, PATH_LEN = 4096 };

static const rt_backend *const builtin[] = {
    &rt_cpu_backend,
};
enum { N_BUILTIN = sizeof builtin / sizeof builtin[0] };

typedef struct found {
    char name[128];
    char path[PATH_LEN];
    const rt_backend *vt; /* NULL until loaded */
} found;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static found plugins[MAX_FOUND]; /* append-only, so names and paths handed out stay valid */
static size_t n_plugins;

/* The search path, in order, as directories; returns how many. */
static size_t search_dirs(char dirs[MAX_DIRS][PATH_LEN])
{
    size_t n = 0;
    const char *env = getenv("REFIT_BACKEND_PATH");
    for (const char *p = env; p && *p && n < MAX_DIRS;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len && len < PATH_LEN) {
            memcpy(dirs[n], p, len);
            dirs[n++][len] = '\0';
        }
        p = end ? end + 1 : p + len;
    }
    Dl_info info;
    if (n < MAX_DIRS && dladdr((void *)&rt_backend_count, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        size_t len = slash ? (size_t)(slash - info.dli_fname) : 0;
        if (len < PATH_LEN) {
            memcpy(dirs[n], slash ? info.dli_fname : ".", slash ? len : 1);
            dirs[n++][slash ? len : 1] = '\0';
        }
    }
    if (n < MAX_DIRS)
        snprintf(dirs[n++], PATH_LEN, "%s", REFIT_BACKEND_DIR);
    return n;
}

/* "dir1, dir2, ..." for messages. */
static void dirs_str(char *buf, size_t len)
{
    static char dirs[MAX_DIRS][PATH_LEN];
    size_t n = search_dirs(dirs), used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", dirs[i]);
}

static int known(const char *name)
{
    for (size_t i = 0; i < N_BUILTIN; i++)
        if (strcmp(builtin[i]->name, name) == 0)
            return 1;
    for (size_t i = 0; i < n_plugins; i++)
        if (strcmp(plugins[i].name, name) == 0)
            return 1;
    return 0;
}

/* Adds the plugin files on the search path not listed yet (the search path is re-read on every
 * call, so setting REFIT_BACKEND_PATH later still works; the first file found for a name wins).
 * Caller holds lock. */
static void scan(void)
{
    static char dirs[MAX_DIRS][PATH_LEN];
    size_t nd = search_dirs(dirs);
    for (size_t d = 0; d < nd; d++) {
        DIR *dir = opendir(dirs[d]);
        if (!dir)
            continue;
        for (struct dirent *ent; (ent = readdir(dir)) && n_plugins < MAX_FOUND;) {
            size_t len = strlen(ent->d_name), pre = strlen(PREFIX), suf = strlen(SUFFIX);
            if (len <= pre + suf || strncmp(ent->d_name, PREFIX, pre) ||
                strcmp(ent->d_name + len - suf, SUFFIX) || len - pre - suf >= sizeof plugins[0].name)
                continue;
            found *f = &plugins[n_plugins];
            memcpy(f->name, ent->d_name + pre, len - pre - suf);
            f->name[len - pre - suf] = '\0';
            if (known(f->name))
                continue;
            int w = snprintf(f->path, sizeof f->path, "%s/%s", dirs[d], ent->d_name);
            if (w < 0 || (size_t)w >= sizeof f->path)
                continue;  /* a path too long to open: skip it rather than try a truncated one */
            f->vt = NULL;
            n_plugins++;
        }
        closedir(dir);
    }
}

size_t rt_backend_count(void)
{
    pthread_mutex_lock(&lock);
    scan();
    size_t n = N_BUILTIN + n_plugins;
    pthread_mutex_unlock(&lock);
    return n;
}

const char *rt_backend_name_at(size_t index)
{
    if (index < N_BUILTIN)
        return builtin[index]->name;
    pthread_mutex_lock(&lock);
    scan();
    const char *name = index - N_BUILTIN < n_plugins ? plugins[index - N_BUILTIN].name : NULL;
    pthread_mutex_unlock(&lock);
    return name;
}

const char *rt_backend_location_at(size_t index)
{
    if (index < N_BUILTIN)
        return "built-in";
    pthread_mutex_lock(&lock);
    scan();
    const char *path = index - N_BUILTIN < n_plugins ? plugins[index - N_BUILTIN].path : NULL;
    pthread_mutex_unlock(&lock);
    return path;
}

/* dlopens f and checks its vtable. Caller holds lock. */
static const rt_backend *load_plugin(found *f, char *err, size_t errlen)
{
    if (f->vt)
        return f->vt;
    void *h = dlopen(f->path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, errlen, "backend '%s': cannot load %s: %s", f->name, f->path, why ? why : "?");
        return NULL;
    }
    rt_backend_entry_fn entry = NULL;
    void *sym = dlsym(h, RT_BACKEND_ENTRY);
    memcpy(&entry, &sym, sizeof entry); /* object -> function pointer, as POSIX allows */
    const rt_backend *vt = entry ? entry() : NULL;
    if (!vt) {
        snprintf(err, errlen, "backend '%s': %s exports no %s() returning a backend", f->name,
                 f->path, RT_BACKEND_ENTRY);
        return NULL; /* the handle stays open: harmless, and dlclose could run its destructors */
    }
    if (vt->api_version != RT_BACKEND_API_VERSION) {
        snprintf(err, errlen, "backend '%s': %s implements backend API %d, this librefit needs %d",
                 f->name, f->path, vt->api_version, RT_BACKEND_API_VERSION);
        return NULL;
    }
    if (!vt->name || strcmp(vt->name, f->name) || !vt->plan_create || !vt->plan_destroy ||
        !vt->ctx_create || !vt->ctx_destroy || !vt->weights_prepare || !vt->weights_release ||
        !vt->run || ((vt->caps & RT_CAP_INPLACE) && !vt->weights_refit) ||
        !vt->weights_commit != !vt->weights_verify ||
        (vt->weights_commit && (vt->caps & (RT_CAP_SETS | RT_CAP_INPLACE)) != (RT_CAP_SETS | RT_CAP_INPLACE))) {
        snprintf(err, errlen, "backend '%s': %s returns an incomplete vtable (name '%s', a NULL "
                 "function, RT_CAP_INPLACE without weights_refit, or weights_commit without "
                 "weights_verify, RT_CAP_SETS and RT_CAP_INPLACE)", f->name, f->path,
                 vt->name ? vt->name : "(null)");
        return NULL;
    }
    f->vt = vt;
    return vt;
}

const rt_backend *rt_backend_load(const char *name, char *err, size_t errlen)
{
    for (size_t i = 0; i < N_BUILTIN; i++)
        if (strcmp(builtin[i]->name, name) == 0)
            return builtin[i];
    pthread_mutex_lock(&lock);
    scan();
    const rt_backend *vt = NULL;
    size_t i = 0;
    for (; i < n_plugins && strcmp(plugins[i].name, name); i++)
        ;
    if (i < n_plugins) {
        vt = load_plugin(&plugins[i], err, errlen);
    } else {
        char where[1024];
        dirs_str(where, sizeof where);
        snprintf(err, errlen, "unknown backend '%s': not built in, and no %s%s%s in %s (set "
                 "REFIT_BACKEND_PATH to add a directory)", name, PREFIX, name, SUFFIX, where);
    }
    pthread_mutex_unlock(&lock);
    return vt;
}
