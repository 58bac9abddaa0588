/*
 * profile.c — the reference backend's per-op profiler and intermediate dumps (engine options
 * backend.profile*, backend.dump*; docs/cpu-backend.md "Profiler and dumps").
 *
 * The plan stays read-only: everything that changes while inferences run lives in one
 * cpu_debug, hanging off the plan only when an option asked for it, so a plan without options
 * pays one NULL test per run. Concurrent runs on different contexts take distinct inference
 * numbers from an atomic counter and write disjoint slots of the event buffer; the run that
 * completes the last recorded slot writes the files (the counters' acq_rel orders the slots'
 * stores before that).
 */
#include "cpu.h"
#include "refit.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct cpu_debug {
    int n_steps;
    cpu_step_info *info;      /* per step, filled by the plan */
    const char *isa;
    char *profile_dir;        /* NULL: not profiling */
    int64_t profile_runs, profile_skip;
    char *dump_dir;           /* NULL: no dump */
    int64_t dump_at;
    atomic_uint_fast64_t seq; /* inference numbers handed out */
    atomic_int_fast64_t recorded;
    atomic_int next_ctx;
    pthread_mutex_t lock;     /* ready() and the final write */
    int ready, written;
    cpu_prof_event *ev;       /* profile_runs x n_steps, then one run envelope per run */
};

static int dbg_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

int64_t cpu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

cpu_debug *cpu_debug_new(int n_steps, const char *isa)
{
    cpu_debug *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->info = calloc((size_t)n_steps + 1, sizeof *d->info);
    if (!d->info) {
        free(d);
        return NULL;
    }
    d->n_steps = n_steps;
    d->isa = isa;
    d->profile_runs = 100;
    pthread_mutex_init(&d->lock, NULL);
    return d;
}

cpu_step_info *cpu_debug_info(cpu_debug *d) { return d->info; }

/* A directory we can write into: created if missing (one level), checked writable. */
static int writable_dir(const char *key, const char *dir, char *err, size_t errlen)
{
    if (!*dir) return dbg_fail(err, errlen, REFIT_ERR_INVALID_ARG, "option backend.%s: empty path", key);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return dbg_fail(err, errlen, REFIT_ERR_IO, "option backend.%s: cannot create directory '%s': %s",
                        key, dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return dbg_fail(err, errlen, REFIT_ERR_IO, "option backend.%s: '%s' is not a directory", key, dir);
    if (access(dir, W_OK) != 0)
        return dbg_fail(err, errlen, REFIT_ERR_IO, "option backend.%s: directory '%s' is not writable",
                        key, dir);
    return 0;
}

static int parse_count(const char *key, const char *v, int64_t min, int64_t *out, char *err,
                       size_t errlen)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < min || x > (1LL << 40))
        return dbg_fail(err, errlen, REFIT_ERR_INVALID_ARG,
                        "option backend.%s: must be an integer >= %lld, got '%s'", key,
                        (long long)min, v);
    *out = x;
    return 0;
}

int cpu_debug_key(const char *key)
{
    static const char *const keys[] = {"profile", "profile_runs", "profile_skip", "dump", "dump_at"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

int cpu_debug_set(cpu_debug *d, const char *key, const char *value, char *err, size_t errlen)
{
    int rc;
    if (!strcmp(key, "profile") || !strcmp(key, "dump")) {
        if ((rc = writable_dir(key, value, err, errlen))) return rc;
        char *copy = strdup(value);
        if (!copy) return dbg_fail(err, errlen, REFIT_ERR_NOMEM, "out of memory");
        char **slot = key[0] == 'p' ? &d->profile_dir : &d->dump_dir;
        free(*slot);
        *slot = copy;
        return 0;
    }
    if (!strcmp(key, "profile_runs")) return parse_count(key, value, 1, &d->profile_runs, err, errlen);
    if (!strcmp(key, "profile_skip")) return parse_count(key, value, 0, &d->profile_skip, err, errlen);
    if (!strcmp(key, "dump_at")) return parse_count(key, value, 0, &d->dump_at, err, errlen);
    return dbg_fail(err, errlen, REFIT_ERR_INVALID_ARG, "backend option '%s': not a profiler key", key);
}

int cpu_debug_ctx_id(cpu_debug *d)
{
    pthread_mutex_lock(&d->lock);
    if (!d->ready && d->profile_dir) {
        /* One slot per step and run, plus one envelope per run. */
        d->ev = calloc((size_t)(d->profile_runs * (d->n_steps + 1)), sizeof *d->ev);
        if (!d->ev) {
            fprintf(stderr, "refit: profiler: out of memory for %lld runs; profiling is off\n",
                    (long long)d->profile_runs);
            free(d->profile_dir);
            d->profile_dir = NULL;
        }
    }
    d->ready = 1;
    pthread_mutex_unlock(&d->lock);
    return atomic_fetch_add(&d->next_ctx, 1);
}

uint64_t cpu_debug_next(cpu_debug *d) { return atomic_fetch_add(&d->seq, 1); }

int cpu_debug_dump_due(const cpu_debug *d, uint64_t seq)
{
    return d->dump_dir && seq == (uint64_t)d->dump_at;
}

cpu_prof_event *cpu_prof_slot(cpu_debug *d, uint64_t seq)
{
    if (!d->ev || seq < (uint64_t)d->profile_skip || seq - (uint64_t)d->profile_skip >= (uint64_t)d->profile_runs)
        return NULL;
    return d->ev + (seq - (uint64_t)d->profile_skip) * (uint64_t)(d->n_steps + 1);
}

/* ---- writing ---------------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static FILE *open_in(const char *dir, const char *name, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "refit: cannot write %s: %s\n", path, strerror(errno));
    return f;
}

static void write_trace(const cpu_debug *d, int64_t runs)
{
    char path[4096];
    FILE *f = open_in(d->profile_dir, "trace.json", path, sizeof path);
    if (!f) return;
    int64_t t0 = INT64_MAX;
    for (int64_t r = 0; r < runs; r++)
        if (d->ev[r * (d->n_steps + 1) + d->n_steps].t0 < t0) t0 = d->ev[r * (d->n_steps + 1) + d->n_steps].t0;
    fputs("{\"displayTimeUnit\":\"ms\",\"otherData\":{\"backend\":\"reference\",\"kernels\":", f);
    json_str(f, d->isa);
    fputs("},\"traceEvents\":[\n", f);
    int first = 1;
    for (int64_t r = 0; r < runs; r++) {
        const cpu_prof_event *ev = d->ev + r * (d->n_steps + 1);
        const cpu_prof_event *run = &ev[d->n_steps];
        fprintf(f, "%s{\"name\":\"inference %lld\",\"cat\":\"run\",\"ph\":\"X\",\"pid\":1,\"tid\":%d,"
                   "\"ts\":%.3f,\"dur\":%.3f}",
                first ? "" : ",\n", (long long)(r + d->profile_skip), run->tid,
                (double)(run->t0 - t0) / 1e3, (double)(run->t1 - run->t0) / 1e3);
        first = 0;
        for (int s = 0; s < d->n_steps; s++) {
            const cpu_step_info *in = &d->info[s];
            fputs(",\n{\"name\":", f);
            json_str(f, in->node);
            fputs(",\"cat\":", f);
            json_str(f, in->op);
            fprintf(f, ",\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"step\":%d,"
                       "\"op\":", ev[s].tid, (double)(ev[s].t0 - t0) / 1e3,
                    (double)(ev[s].t1 - ev[s].t0) / 1e3, s);
            json_str(f, in->op);
            fputs(",\"shapes\":", f);
            json_str(f, in->shapes);
            fputs("}}", f);
        }
    }
    fputs("\n]}\n", f);
    if (fclose(f)) fprintf(stderr, "refit: cannot write %s\n", path);
}

/* Totals per distinct op label, in order of first appearance. */
static int op_totals(const cpu_debug *d, const double *step_ns, const char **ops, double *tot, int *calls)
{
    int n = 0;
    for (int s = 0; s < d->n_steps; s++) {
        int k = 0;
        while (k < n && strcmp(ops[k], d->info[s].op)) k++;
        if (k == n) {
            ops[n] = d->info[s].op;
            tot[n] = 0;
            calls[n++] = 0;
        }
        tot[k] += step_ns[s];
        calls[k]++;
    }
    return n;
}

static void write_summary(const cpu_debug *d, int64_t runs)
{
    double *step_ns = calloc((size_t)d->n_steps + 1, sizeof(double) * 3);
    const char **ops = calloc((size_t)d->n_steps + 1, sizeof *ops);
    int *calls = calloc((size_t)d->n_steps + 1, sizeof *calls);
    char path[4096];
    FILE *t = NULL, *j = NULL;
    if (!step_ns || !ops || !calls) goto out;
    double *tot = step_ns + d->n_steps + 1, *best = tot + d->n_steps + 1, all = 0, run_ns = 0;
    for (int s = 0; s < d->n_steps; s++) best[s] = 1e300;
    for (int64_t r = 0; r < runs; r++) {
        const cpu_prof_event *ev = d->ev + r * (d->n_steps + 1);
        for (int s = 0; s < d->n_steps; s++) {
            const double dt = (double)(ev[s].t1 - ev[s].t0);
            step_ns[s] += dt;
            if (dt < best[s]) best[s] = dt; /* the least disturbed run, on a shared machine */
        }
        run_ns += (double)(ev[d->n_steps].t1 - ev[d->n_steps].t0);
    }
    for (int s = 0; s < d->n_steps; s++) all += step_ns[s];
    if (all <= 0) all = 1;
    const int nops = op_totals(d, step_ns, ops, tot, calls);
    if (!(t = open_in(d->profile_dir, "summary.txt", path, sizeof path))) goto out;
    if (!(j = open_in(d->profile_dir, "summary.json", path, sizeof path))) goto out;
    fprintf(t, "reference backend profile: %lld inferences (from #%lld), kernels %s, %d steps, "
               "mean %.1f us per inference\n\n",
            (long long)runs, (long long)d->profile_skip, d->isa, d->n_steps, run_ns / runs / 1e3);
    fprintf(t, "%-40s %7s %12s %10s %7s\n", "op", "calls", "total_us", "mean_us", "share");
    fprintf(j, "{\"runs\":%lld,\"skip\":%lld,\"kernels\":", (long long)runs, (long long)d->profile_skip);
    json_str(j, d->isa);
    fprintf(j, ",\"mean_run_us\":%.3f,\"ops\":[", run_ns / runs / 1e3);
    for (int k = 0; k < nops; k++) {
        const double us = tot[k] / 1e3;
        const long long nc = (long long)calls[k] * runs;
        fprintf(t, "%-40s %7lld %12.1f %10.2f %6.1f%%\n", ops[k], nc, us, us / (double)nc, 100 * tot[k] / all);
        fprintf(j, "%s{\"op\":", k ? "," : "");
        json_str(j, ops[k]);
        fprintf(j, ",\"calls\":%lld,\"total_us\":%.3f,\"mean_us\":%.3f,\"share\":%.4f}", nc, us,
                us / (double)nc, tot[k] / all);
    }
    fprintf(t, "\n%-4s %-24s %-40s %9s %9s %7s  %s\n", "step", "node", "op", "mean_us", "min_us",
            "share", "shapes");
    fputs("],\"steps\":[", j);
    for (int s = 0; s < d->n_steps; s++) {
        const cpu_step_info *in = &d->info[s];
        const double mean = step_ns[s] / runs / 1e3;
        fprintf(t, "%-4d %-24s %-40s %9.2f %9.2f %6.1f%%  %s\n", s, in->node, in->op, mean, best[s] / 1e3,
                100 * step_ns[s] / all, in->shapes);
        fprintf(j, "%s{\"step\":%d,\"node\":", s ? "," : "", s);
        json_str(j, in->node);
        fputs(",\"op\":", j);
        json_str(j, in->op);
        fputs(",\"shapes\":", j);
        json_str(j, in->shapes);
        fprintf(j, ",\"mean_us\":%.3f,\"min_us\":%.3f,\"share\":%.4f}", mean, best[s] / 1e3,
                step_ns[s] / all);
    }
    fputs("]}\n", j);
out:
    if (t && fclose(t)) fprintf(stderr, "refit: cannot write summary.txt\n");
    if (j && fclose(j)) fprintf(stderr, "refit: cannot write summary.json\n");
    free(step_ns);
    free(ops);
    free(calls);
}

/* Writes the trace and summaries of the first `runs` recorded inferences (once). */
static void prof_write(cpu_debug *d, int64_t runs)
{
    pthread_mutex_lock(&d->lock);
    if (!d->written && runs > 0) {
        d->written = 1;
        write_trace(d, runs);
        write_summary(d, runs);
    }
    pthread_mutex_unlock(&d->lock);
}

void cpu_prof_done(cpu_debug *d)
{
    if (atomic_fetch_add(&d->recorded, 1) + 1 == d->profile_runs) prof_write(d, d->profile_runs);
}

void cpu_debug_free(cpu_debug *d)
{
    if (!d) return;
    /* Fewer inferences than profile_runs: write what was recorded (every started run has
     * finished: the engine destroys the plan only after its contexts). */
    if (d->ev) {
        const int64_t n = atomic_load(&d->recorded);
        prof_write(d, n < d->profile_runs ? n : d->profile_runs);
    }
    pthread_mutex_destroy(&d->lock);
    free(d->ev);
    free(d->info);
    free(d->profile_dir);
    free(d->dump_dir);
    free(d);
}

/* ---- dumps ------------------------------------------------------------------------------ */

/* File-name-safe copy of a node or value name. */
static void safe_name(char *out, size_t n, const char *s)
{
    size_t i = 0;
    for (; *s && i + 1 < n; s++) {
        const char c = *s;
        const int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '-' || c == '_';
        out[i++] = ok ? c : '_';
    }
    out[i] = '\0';
}

/* One float32 array as a .npy file (format 1.0, little-endian, C order). */
static int write_npy(const char *path, const float *x, const int64_t *shape, int ndim, size_t numel)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++) n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "), }");
    const int total = (10 + n + 1 + 63) / 64 * 64; /* magic+version+len, header, '\n': 64-aligned */
    while (10 + n + 1 < total) hdr[n++] = ' ';
    hdr[n++] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xff),
                                   (unsigned char)(n >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n &&
             fwrite(x, sizeof(float), numel, f) == numel;
    if (fclose(f)) ok = 0;
    return ok ? 0 : -1;
}

struct cpu_dump {
    const cpu_debug *d;
    FILE *index;
    int n;
    int failed;
};

cpu_dump *cpu_dump_begin(const cpu_debug *d, uint64_t seq)
{
    cpu_dump *w = calloc(1, sizeof *w);
    char path[4096];
    if (!w) return NULL;
    w->d = d;
    if (!(w->index = open_in(d->dump_dir, "index.json", path, sizeof path))) {
        free(w);
        return NULL;
    }
    fprintf(w->index, "{\"inference\":%llu,\"kernels\":", (unsigned long long)seq);
    json_str(w->index, d->isa);
    fputs(",\"fused\":false,\"values\":[", w->index);
    return w;
}

void cpu_dump_value(cpu_dump *w, const char *node, const char *op, const char *value,
                    const float *x, const int64_t *shape, int ndim, size_t numel)
{
    char sn[128], sv[128], file[300], path[4500];
    safe_name(sn, sizeof sn, node);
    safe_name(sv, sizeof sv, value);
    snprintf(file, sizeof file, "%03d_%s__%s.npy", w->n, sn, sv);
    snprintf(path, sizeof path, "%s/%s", w->d->dump_dir, file);
    if (write_npy(path, x, shape, ndim, numel)) {
        fprintf(stderr, "refit: dump: cannot write %s: %s\n", path, strerror(errno));
        w->failed = 1;
        return;
    }
    FILE *f = w->index;
    fprintf(f, "%s\n{\"node\":", w->n ? "," : "");
    json_str(f, node);
    fputs(",\"op\":", f);
    json_str(f, op);
    fputs(",\"output\":", f);
    json_str(f, value);
    fputs(",\"file\":", f);
    json_str(f, file);
    fputs(",\"dtype\":\"float32\",\"shape\":[", f);
    for (int i = 0; i < ndim; i++) fprintf(f, "%s%lld", i ? "," : "", (long long)shape[i]);
    fputs("]}", f);
    w->n++;
}

void cpu_dump_end(cpu_dump *w)
{
    if (!w) return;
    fputs("\n]}\n", w->index);
    if (fclose(w->index) || w->failed)
        fprintf(stderr, "refit: dump in %s is incomplete\n", w->d->dump_dir);
    free(w);
}
