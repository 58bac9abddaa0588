/* fake_magicmind.cc — TEST-ONLY FAKE libmagicmind_runtime.so for refitd's CI
 * (native/tests/fake_neuware). Never shipped. Implements, on the CPU, exactly the MagicMind
 * subset declared in native/tests/fake_neuware/include/mm_decl_compile_check.h, and behaves the way the vendor
 * promises nothing against:
 *   - engine-side weight names differ from source names (gen_model.py names them
 *     main/mm.const/mm.refit_const:N, as the weight-refit sample shows);
 *   - conv weights are stored NHWC ([O, kh, kw, I]), activations NCHW;
 *   - inputs, outputs, workspace and constants are device memory (fake_cnrt), reached only through
 *     cnrtMemcpy from the host;
 *   - RefitEngine rewrites the engine's constants IN PLACE, element by element, with a pause every
 *     FAKE_MAGICMIND_REFIT_CHUNK elements (default 1) of FAKE_MAGICMIND_REFIT_PAUSE_US (default
 *     20 us), while Enqueue on any context of the engine may be reading them. An unguarded refit
 *     therefore really produces torn results (relaxed atomics per element keep it race-free in
 *     the C++ sense, so TSan reports only real bugs).
 * Test knob: FAKE_MAGICMIND_IGNORE_WEIGHT=<engine name> makes SetNamedWeights accept that name
 * and drop it (only the first FAKE_MAGICMIND_IGNORE_COUNT times after it was set, if that is set),
 * so GetMissingNames still lists it: a runtime that refuses a refit.
 *
 * Model file ("fake-magicmind-model 1", text, written by gen_model.py from an ONNX file):
 *   input NAME NDIM D...            output NAME NDIM D...
 *   weight NAME NDIM D... V...      (float32 values, row-major in the stored layout)
 *   conv X W B|- Y SH SW PT PL PB PR     relu X Y
 */
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "cnrt.h"
#include "fake_device.h"
#include "mm_profiler.h"
#include "mm_runtime.h"

namespace magicmind {

struct FakeAccess {
    static Status error(error::Code c, const std::string &m) { return Status(c, m); }
    static Status ok() { return Status(error::Code::OK, ""); }
    static int64_t count(const Dims &d) { return product(d.dims_); }
    static int64_t product(const std::vector<int64_t> &v)
    {
        int64_t n = 1;
        for (int64_t x : v)
            n *= x;
        return n;
    }
    static IAllocator *allocator(const IModel::EngineConfig &c) { return c.allocator_; }
    static const std::string &device_type(const IModel::EngineConfig &c) { return c.device_type_; }
    static std::string dump_path(const IContext::ContextDumpInfo &d) { return d.path_; }
    static bool dump_all(const IContext::ContextDumpInfo &d)
    {
        return d.mode_ == IContext::ContextDumpInfo::DumpMode::kAllTensors;
    }
};

namespace {

Status invalid(const std::string &m) { return FakeAccess::error(error::Code::INVALID_ARGUMENT, "fake magicmind: " + m); }
Status internal(const std::string &m) { return FakeAccess::error(error::Code::INTERNAL, "fake magicmind: " + m); }

long env_long(const char *name, long dflt)
{
    const char *s = getenv(name);
    return s && *s ? strtol(s, nullptr, 10) : dflt;
}

struct Value {
    std::string name;
    std::vector<int64_t> dims;
    std::vector<float> init; // weights only
    size_t count() const
    {
        size_t n = 1;
        for (int64_t d : dims)
            n *= static_cast<size_t>(d);
        return n;
    }
};

struct Op {
    std::string kind, x, w, b, y;
    int sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0;
};

struct Graph {
    std::vector<Value> inputs, outputs, weights;
    std::vector<Op> ops;
    std::map<std::string, std::vector<int64_t>> shapes; // every value's dims
};

// ---- model parsing ---------------------------------------------------------------------------

bool read_dims(std::istream &in, std::vector<int64_t> *dims)
{
    int n = 0;
    if (!(in >> n) || n < 0 || n > 8)
        return false;
    dims->resize(n);
    for (auto &d : *dims)
        if (!(in >> d) || d <= 0)
            return false;
    return true;
}

std::string parse_graph(std::istream &in, Graph *g)
{
    std::string magic;
    int ver = 0;
    if (!(in >> magic >> ver) || magic != "fake-magicmind-model" || ver != 1)
        return "not a fake-magicmind-model 1 file";
    std::string kind;
    while (in >> kind) {
        if (kind == "input" || kind == "output" || kind == "weight") {
            Value v;
            if (!(in >> v.name) || !read_dims(in, &v.dims))
                return "bad " + kind + " line";
            if (kind == "weight") {
                v.init.resize(v.count());
                for (float &f : v.init)
                    if (!(in >> f))
                        return "weight '" + v.name + "': too few values";
            }
            g->shapes[v.name] = v.dims;
            (kind == "input" ? g->inputs : kind == "output" ? g->outputs : g->weights).push_back(v);
        } else if (kind == "conv") {
            Op o;
            o.kind = kind;
            if (!(in >> o.x >> o.w >> o.b >> o.y >> o.sh >> o.sw >> o.pt >> o.pl >> o.pb >> o.pr))
                return "bad conv line";
            g->ops.push_back(o);
        } else if (kind == "relu") {
            Op o;
            o.kind = kind;
            if (!(in >> o.x >> o.y))
                return "bad relu line";
            g->ops.push_back(o);
        } else {
            return "unknown line '" + kind + "'";
        }
    }
    // Shape inference for intermediates (NCHW activations, NHWC [O, kh, kw, I] filters).
    for (const Op &o : g->ops) {
        if (!g->shapes.count(o.x) || (o.kind == "conv" && !g->shapes.count(o.w)))
            return "op " + o.kind + " reads an undefined value";
        const auto &x = g->shapes[o.x];
        if (o.kind == "relu") {
            g->shapes[o.y] = x;
            continue;
        }
        const auto &w = g->shapes[o.w];
        if (x.size() != 4 || w.size() != 4 || w[3] != x[1])
            return "conv '" + o.y + "': filter is not [O, kh, kw, I] NHWC for this input";
        int64_t oh = (x[2] + o.pt + o.pb - w[1]) / o.sh + 1, ow = (x[3] + o.pl + o.pr - w[2]) / o.sw + 1;
        std::vector<int64_t> y{x[0], w[0], oh, ow};
        if (g->shapes.count(o.y) && g->shapes[o.y] != y)
            return "conv '" + o.y + "': declared shape differs from the computed one";
        g->shapes[o.y] = y;
    }
    return "";
}

// ---- device buffers --------------------------------------------------------------------------

// Device memory from the engine's allocator (the user's IAllocator) or from cnrtMalloc.
struct DeviceBuf {
    IAllocator *alloc = nullptr;
    void *dev = nullptr;
    size_t bytes = 0;
    DeviceBuf() {}
    DeviceBuf(const DeviceBuf &) = delete;
    DeviceBuf &operator=(const DeviceBuf &) = delete;
    bool allocate(IAllocator *a, size_t n)
    {
        alloc = a;
        bytes = n;
        if (a)
            dev = a->AllocateRaw(n, 64);
        else if (cnrtMalloc(&dev, n) != cnrtSuccess)
            dev = nullptr;
        return dev != nullptr;
    }
    ~DeviceBuf()
    {
        if (!dev)
            return;
        if (alloc)
            alloc->DeallocateRaw(dev);
        else
            cnrtFree(dev);
    }
};

float *backing(void *dev, size_t count, int device)
{
    return static_cast<float *>(fake_cnrt_backing(dev, count * sizeof(float), device));
}

// A float read/written as relaxed atomics: RefitEngine and Enqueue touch the same constants
// concurrently by design; per-element atomicity keeps that defined while results still tear.
float load(const float *p)
{
    uint32_t u = __atomic_load_n(reinterpret_cast<const uint32_t *>(p), __ATOMIC_RELAXED);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void store(float *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __atomic_store_n(reinterpret_cast<uint32_t *>(p), u, __ATOMIC_RELAXED);
}

// ---- runtime objects -------------------------------------------------------------------------

class FakeTensor : public IRTTensor {
public:
    FakeTensor(DataType t, std::string n, TensorLocation l) : type_(t), name_(std::move(n)), loc_(l) {}
    Status SetData(void *data) override
    {
        data_ = data;
        return FakeAccess::ok();
    }
    Status SetDimensions(const Dims &dims) override
    {
        dims_ = dims;
        return FakeAccess::ok();
    }
    int64_t bytes() const { return FakeAccess::count(dims_) * 4; }
    void Destroy() override { delete this; }
    DataType type_;
    std::string name_;
    TensorLocation loc_;
    void *data_ = nullptr;
    Dims dims_;
};

class FakeEngine;

class FakeContext : public IContext {
public:
    explicit FakeContext(FakeEngine *e) : engine_(e) {}
    Status CreateInputTensors(std::vector<IRTTensor *> *inputs) override;
    Status CreateOutputTensors(std::vector<IRTTensor *> *outputs) override;
    Status Enqueue(const std::vector<IRTTensor *> &in, const std::vector<IRTTensor *> &out, void *queue) override;
    Status SetWorkspace(void *ws, size_t size) override
    {
        workspace_ = ws;
        workspace_size_ = size;
        return FakeAccess::ok();
    }
    Status SetContextDumpInfo(const ContextDumpInfo &info) override
    {
        dump_path_ = FakeAccess::dump_path(info);
        dump_all_ = FakeAccess::dump_all(info);
        return FakeAccess::ok();
    }
    Status Destroy() override
    {
        delete this;
        return FakeAccess::ok();
    }

private:
    Status tensors(const std::vector<Value> &vals, std::vector<IRTTensor *> *out);
    void dump(const std::map<std::string, float *> &vals);
    FakeEngine *engine_;
    void *workspace_ = nullptr;
    size_t workspace_size_ = 0;
    std::string dump_path_;
    bool dump_all_ = false;
    unsigned long enqueues_ = 0;
};

class FakeEngine : public IEngine {
public:
    FakeEngine(const Graph &g, IAllocator *a, int device) : graph(g), alloc(a), device(device) {}
    Status init()
    {
        for (const Value &w : graph.weights) {
            std::unique_ptr<DeviceBuf> buf(new DeviceBuf);
            if (!buf->allocate(alloc, w.count() * sizeof(float)))
                return internal("out of device memory for constant '" + w.name + "'");
            if (cnrtMemcpy(buf->dev, const_cast<float *>(w.init.data()), buf->bytes, cnrtMemcpyHostToDev) != cnrtSuccess)
                return internal("cannot upload constant '" + w.name + "'");
            consts[w.name] = std::move(buf);
        }
        return FakeAccess::ok();
    }
    IContext *CreateIContext() override
    {
        ++contexts;
        return new FakeContext(this);
    }
    Status QueryContextMaxWorkspaceSize(const std::vector<Dims> &dims, size_t *size) override
    {
        if (!size || dims.size() != graph.inputs.size())
            return invalid("QueryContextMaxWorkspaceSize: one Dims per input expected");
        *size = intermediate_bytes();
        return FakeAccess::ok();
    }
    Status Destroy() override
    {
        delete this;
        return FakeAccess::ok();
    }
    size_t intermediate_bytes() const
    {
        size_t n = 0;
        for (const Op &o : graph.ops)
            if (!is_output(o.y)) {
                size_t c = 1;
                for (int64_t d : graph.shapes.at(o.y))
                    c *= d;
                n += c * sizeof(float);
            }
        return n;
    }
    bool is_output(const std::string &n) const
    {
        for (const Value &v : graph.outputs)
            if (v.name == n)
                return true;
        return false;
    }
    Graph graph;
    IAllocator *alloc;
    int device;
    int contexts = 0;
    std::map<std::string, std::unique_ptr<DeviceBuf>> consts;
};

Status FakeContext::tensors(const std::vector<Value> &vals, std::vector<IRTTensor *> *out)
{
    if (!out)
        return invalid("tensor vector is NULL");
    for (const Value &v : vals) {
        auto *t = new FakeTensor(DataType::FLOAT32, v.name, TensorLocation::kMLU);
        t->SetDimensions(Dims(v.dims));
        out->push_back(t);
    }
    return FakeAccess::ok();
}

Status FakeContext::CreateInputTensors(std::vector<IRTTensor *> *inputs) { return tensors(engine_->graph.inputs, inputs); }
Status FakeContext::CreateOutputTensors(std::vector<IRTTensor *> *outputs) { return tensors(engine_->graph.outputs, outputs); }

void conv(const Op &o, const std::vector<int64_t> &xs, const std::vector<int64_t> &ws, const std::vector<int64_t> &ys,
          const float *x, const float *w, const float *b, float *y)
{
    const int64_t C = xs[1], H = xs[2], W = xs[3], O = ws[0], KH = ws[1], KW = ws[2], OH = ys[2], OW = ys[3];
    for (int64_t n = 0; n < xs[0]; n++)
        for (int64_t oc = 0; oc < O; oc++)
            for (int64_t oy = 0; oy < OH; oy++)
                for (int64_t ox = 0; ox < OW; ox++) {
                    float acc = b ? load(&b[oc]) : 0.0f;
                    for (int64_t ky = 0; ky < KH; ky++)
                        for (int64_t kx = 0; kx < KW; kx++) {
                            int64_t iy = oy * o.sh - o.pt + ky, ix = ox * o.sw - o.pl + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                continue;
                            for (int64_t c = 0; c < C; c++)
                                acc += x[((n * C + c) * H + iy) * W + ix] * load(&w[((oc * KH + ky) * KW + kx) * C + c]);
                        }
                    y[((n * O + oc) * OH + oy) * OW + ox] = acc;
                }
}

Status FakeContext::Enqueue(const std::vector<IRTTensor *> &in, const std::vector<IRTTensor *> &out, void *queue)
{
    const Graph &g = engine_->graph;
    if (!fake_cnrt_queue_valid(queue))
        return invalid("Enqueue: not a queue made by cnrtQueueCreate");
    if (fake_cnrt_current_device() != engine_->device)
        return invalid("Enqueue: the current device (cnrtSetDevice) is not the engine's device");
    if (in.size() != g.inputs.size() || out.size() != g.outputs.size())
        return invalid("Enqueue: wrong number of input or output tensors");
    std::map<std::string, float *> vals; // host backing of every value
    auto bind = [&](const std::vector<IRTTensor *> &ts, const std::vector<Value> &decl) -> Status {
        for (size_t i = 0; i < ts.size(); i++) {
            auto *t = static_cast<FakeTensor *>(ts[i]);
            if (t->name_ != decl[i].name || FakeAccess::count(t->dims_) != static_cast<int64_t>(decl[i].count()))
                return invalid("Enqueue: tensor '" + t->name_ + "' does not match the model's '" + decl[i].name + "'");
            float *p = t->loc_ == TensorLocation::kMLU ? backing(t->data_, decl[i].count(), engine_->device) : nullptr;
            if (!p)
                return invalid("Enqueue: tensor '" + t->name_ + "' has no MLU memory of the engine's device");
            vals[t->name_] = p;
        }
        return FakeAccess::ok();
    };
    Status s = bind(in, g.inputs);
    if (s.ok())
        s = bind(out, g.outputs);
    if (!s.ok())
        return s;
    for (auto &c : engine_->consts)
        vals[c.first] = backing(c.second->dev, c.second->bytes / sizeof(float), engine_->device);

    // Intermediates: the context's workspace when one was set (static strategy), else the
    // engine's allocator / cnrtMalloc on each run (dynamic strategy).
    size_t need = engine_->intermediate_bytes();
    std::unique_ptr<DeviceBuf> scratch;
    void *ws = workspace_;
    if (ws && workspace_size_ < need)
        return invalid("Enqueue: workspace of " + std::to_string(workspace_size_) + " bytes, " + std::to_string(need) + " needed");
    if (!ws && need) {
        scratch.reset(new DeviceBuf);
        if (!scratch->allocate(engine_->alloc, need))
            return internal("Enqueue: out of device memory for intermediates");
        ws = scratch->dev;
    }
    float *wsp = need ? backing(ws, need / sizeof(float), engine_->device) : nullptr;
    if (need && !wsp)
        return invalid("Enqueue: the workspace is not MLU memory of the engine's device");
    for (const Op &o : g.ops) {
        if (!vals.count(o.y)) {
            vals[o.y] = wsp;
            size_t c = 1;
            for (int64_t d : g.shapes.at(o.y))
                c *= d;
            wsp += c;
        }
        const auto &xs = g.shapes.at(o.x);
        if (o.kind == "relu") {
            size_t c = 1;
            for (int64_t d : xs)
                c *= d;
            for (size_t i = 0; i < c; i++)
                vals[o.y][i] = vals[o.x][i] > 0 ? vals[o.x][i] : 0.0f;
        } else {
            conv(o, xs, g.shapes.at(o.w), g.shapes.at(o.y), vals[o.x], vals[o.w], o.b == "-" ? nullptr : vals[o.b], vals[o.y]);
        }
    }
    if (!dump_path_.empty())
        dump(vals);
    ++enqueues_;
    return FakeAccess::ok();
}

// ContextDumpInfo: one text file per tensor (outputs only, or every value) per Enqueue.
void FakeContext::dump(const std::map<std::string, float *> &vals)
{
    const Graph &g = engine_->graph;
    mkdir(dump_path_.c_str(), 0755);
    for (const auto &kv : vals) {
        if (!dump_all_ && !engine_->is_output(kv.first))
            continue;
        std::string file = kv.first;
        for (char &c : file)
            if (c == '/' || c == ':')
                c = '_';
        std::ofstream f(dump_path_ + "/" + std::to_string(enqueues_) + "." + file + ".txt");
        f << "# fake magicmind dump: " << kv.first << "\n";
        size_t c = 1;
        for (int64_t d : g.shapes.at(kv.first))
            c *= d;
        for (size_t i = 0; i < c; i++)
            f << load(&kv.second[i]) << (i + 1 < c ? ' ' : '\n');
    }
}

class FakeModel : public IModel {
public:
    Status DeserializeFromFile(const char *path) override
    {
        std::ifstream f(path ? path : "");
        if (!f)
            return invalid(std::string("cannot open model file '") + (path ? path : "(null)") + "'");
        std::string err = parse_graph(f, &graph_);
        if (!err.empty())
            return invalid(std::string("model '") + path + "': " + err);
        loaded_ = true;
        return FakeAccess::ok();
    }
    std::vector<std::string> GetInputNames() const override { return names(graph_.inputs); }
    std::vector<std::string> GetOutputNames() const override { return names(graph_.outputs); }
    std::vector<Dims> GetInputDimensions() const override { return dims(graph_.inputs); }
    std::vector<Dims> GetOutputDimensions() const override { return dims(graph_.outputs); }
    std::vector<DataType> GetInputDataTypes() const override
    {
        return std::vector<DataType>(graph_.inputs.size(), DataType::FLOAT32);
    }
    std::vector<DataType> GetOutputDataTypes() const override
    {
        return std::vector<DataType>(graph_.outputs.size(), DataType::FLOAT32);
    }
    IEngine *CreateIEngine(const EngineConfig &config) override
    {
        if (!loaded_ || FakeAccess::device_type(config) != "MLU")
            return nullptr;
        auto *e = new FakeEngine(graph_, FakeAccess::allocator(config), fake_cnrt_current_device());
        if (!e->init().ok()) {
            e->Destroy();
            return nullptr;
        }
        return e;
    }
    void Destroy() override { delete this; }

private:
    static std::vector<std::string> names(const std::vector<Value> &v)
    {
        std::vector<std::string> r;
        for (const Value &x : v)
            r.push_back(x.name);
        return r;
    }
    static std::vector<Dims> dims(const std::vector<Value> &v)
    {
        std::vector<Dims> r;
        for (const Value &x : v)
            r.push_back(Dims(x.dims));
        return r;
    }
    Graph graph_;
    bool loaded_ = false;
};

// FAKE_MAGICMIND_IGNORE_WEIGHT / FAKE_MAGICMIND_IGNORE_COUNT (see the file comment).
bool should_ignore(const std::string &name)
{
    static std::atomic<long> dropped(0);
    const char *target = getenv("FAKE_MAGICMIND_IGNORE_WEIGHT");
    if (!target || !*target)
        dropped = 0; // the knob is off: the next time it is set, it counts from zero
    if (!target || name != target)
        return false;
    long limit = env_long("FAKE_MAGICMIND_IGNORE_COUNT", -1);
    if (limit >= 0 && dropped.load() >= limit)
        return false;
    dropped++;
    return true;
}

class FakeRefitter : public IRefitter {
public:
    explicit FakeRefitter(FakeEngine *e) : engine_(e) {}
    Status SetNamedWeights(const std::string &name, IRTTensor *weights) override
    {
        auto it = engine_->consts.find(name);
        if (it == engine_->consts.end())
            return invalid("SetNamedWeights: '" + name + "' is not a refittable constant of this engine");
        auto *t = static_cast<FakeTensor *>(weights);
        if (!t || t->loc_ != TensorLocation::kHost || !t->data_)
            return invalid("SetNamedWeights: '" + name + "' needs a host tensor with data");
        if (static_cast<size_t>(t->bytes()) != it->second->bytes)
            return invalid("SetNamedWeights: '" + name + "' has " + std::to_string(t->bytes()) + " bytes, the engine " +
                           std::to_string(it->second->bytes));
        if (should_ignore(name))
            return FakeAccess::ok(); // test knob: accepted and dropped, so it stays missing
        pending_[name] = static_cast<const float *>(t->data_);
        return FakeAccess::ok();
    }
    Status GetMissingNames(std::vector<std::string> *names) override
    {
        if (!names)
            return invalid("GetMissingNames: NULL");
        names->clear();
        for (const auto &c : engine_->consts)
            if (!pending_.count(c.first))
                names->push_back(c.first);
        return FakeAccess::ok();
    }
    // In place, piecewise, unguarded: exactly what nothing in the vendor's documentation rules out.
    Status RefitEngine() override
    {
        std::vector<std::string> missing;
        GetMissingNames(&missing);
        if (!missing.empty())
            return invalid("RefitEngine: weights not set: " + missing[0] + (missing.size() > 1 ? " and more" : ""));
        long chunk = env_long("FAKE_MAGICMIND_REFIT_CHUNK", 1), pause = env_long("FAKE_MAGICMIND_REFIT_PAUSE_US", 20);
        for (const auto &p : pending_) {
            DeviceBuf &buf = *engine_->consts[p.first];
            float *dst = backing(buf.dev, buf.bytes / sizeof(float), -1);
            for (size_t i = 0; i < buf.bytes / sizeof(float); i++) {
                store(&dst[i], p.second[i]);
                if (pause > 0 && chunk > 0 && (i + 1) % chunk == 0)
                    std::this_thread::sleep_for(std::chrono::microseconds(pause));
            }
        }
        pending_.clear();
        return FakeAccess::ok();
    }
    void Destroy() override { delete this; }

private:
    FakeEngine *engine_;
    std::map<std::string, const float *> pending_;
};

class FakeProfiler : public IProfiler {
public:
    explicit FakeProfiler(std::string dir) : dir_(std::move(dir)) {}
    // The real profiler writes TensorBoard profile data under <dir>/plugins/profile/<time>/; the
    // fake writes one placeholder file there, named as a fake, so the path handling is exercised.
    Status Start() override { return FakeAccess::ok(); }
    Status Stop() override
    {
        std::string d = dir_;
        for (const char *part : {"/plugins", "/profile", "/fake"}) {
            d += part;
            if (mkdir(d.c_str(), 0755) != 0 && errno != EEXIST)
                return internal("profiler: cannot create " + d);
        }
        std::ofstream(d + "/fake.kernel_stats.pb") << "fake magicmind profiler placeholder\n";
        return FakeAccess::ok();
    }
    void Destroy() override { delete this; }

private:
    std::string dir_;
};

} // namespace

// ---- free functions and small value types -----------------------------------------------------

Status::Status(error::Code code, const std::string &message) : code_(code), message_(message) {}
bool Status::ok() const { return code_ == error::Code::OK; }
error::Code Status::code() const { return code_; }
std::string Status::error_message() const { return message_; }
std::string Status::ToString() const { return ok() ? "OK" : message_; }

Dims::Dims() {}
Dims::Dims(const std::vector<int64_t> &dims) : dims_(dims) {}
int64_t Dims::GetDimsNum() const { return static_cast<int64_t>(dims_.size()); }
int64_t Dims::GetDimValue(int64_t i) const { return i >= 0 && i < GetDimsNum() ? dims_[i] : -1; }

void IContext::ContextDumpInfo::SetDumpMode(DumpMode mode) { mode_ = mode; }
void IContext::ContextDumpInfo::SetPath(const std::string &path) { path_ = path; }
void IContext::ContextDumpInfo::SetFileFormat(FileFormat format) { format_ = format; }
void IModel::EngineConfig::SetDeviceType(const std::string &type) { device_type_ = type; }
void IModel::EngineConfig::SetAllocator(IAllocator *allocator) { allocator_ = allocator; }
void ProfilerOptions::SetHostTracerLevel(HostTracerLevel level) { host_ = level; }
void ProfilerOptions::SetDeviceTracerLevel(DeviceTracerLevel level) { device_ = level; }

IRTTensor *CreateIRTTensor(DataType dtype, const std::string &name, Layout, TensorLocation location)
{
    return new FakeTensor(dtype, name, location);
}
IModel *CreateIModel() { return new FakeModel; }
IRefitter *CreateIRefitter(IEngine *engine) { return engine ? new FakeRefitter(static_cast<FakeEngine *>(engine)) : nullptr; }
IProfiler *CreateIProfiler(const ProfilerOptions &, const char *dir) { return new FakeProfiler(dir ? dir : "."); }

} // namespace magicmind
