/* mm_session.cc — model, per-device engines and workers on MagicMind + CNRT (see mm_session.h).
 * Call sequences follow Cambricon's SDK samples (sample_runtime, sample_refit) as collected in
 * MAGICMIND-API.md; re-check them against a real SDK before claiming hardware support. */
#include "mm_session.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "mm_error.h"

// API generations (MAGICMIND-API.md): this backend uses CNRT 5+/6 names (cnrtQueueCreate,
// cnrtSetDevice; CNRT < 5 had cnrtCreateQueue + cnrtInit) and MagicMind >= 0.13 (member
// CreateInputTensors since 0.12, EngineConfig::SetDeviceType since 0.13). Older SDKs stop here.
#if defined(CNRT_MAJOR_VERSION) && CNRT_MAJOR_VERSION < 5
#error "refitd's MagicMind backend needs CNRT 5 or newer (cnrtQueueCreate, cnrtSetDevice)"
#endif
#if defined(MM_MAJOR_VERSION) && defined(MM_MINOR_VERSION) && MM_MAJOR_VERSION == 0 && MM_MINOR_VERSION < 13
#error "refitd's MagicMind backend needs MagicMind 0.13 or newer (EngineConfig::SetDeviceType)"
#endif

namespace refitd_mm {

using magicmind::IRTTensor;

size_t TensorDesc::nbytes() const
{
    size_t n = sizeof(float);
    for (int64_t d : shape)
        n *= static_cast<size_t>(d);
    return n;
}

namespace {

std::vector<int64_t> dims_of(const magicmind::Dims &d)
{
    std::vector<int64_t> v;
    for (int64_t i = 0; i < d.GetDimsNum(); i++)
        v.push_back(d.GetDimValue(i));
    return v;
}

std::string join(const std::vector<std::string> &v)
{
    std::string s;
    for (const std::string &x : v)
        s += (s.empty() ? "" : ", ") + x;
    return s;
}

// MagicMind reports shapes as Dims; refitd needs them static (no -1) and float32.
std::vector<TensorDesc> describe(const std::vector<std::string> &names, const std::vector<magicmind::Dims> &dims,
                                 const std::vector<magicmind::DataType> &types, const char *kind)
{
    std::vector<TensorDesc> out;
    for (size_t i = 0; i < names.size(); i++) {
        TensorDesc t{names[i], dims_of(dims.at(i))};
        for (int64_t d : t.shape)
            if (d <= 0)
                throw MmError(kUnsupported, std::string(kind) + " '" + t.name + "': dynamic dimension " +
                                                std::to_string(d) + " (build the model with static input shapes)");
        if (types.at(i) != magicmind::DataType::FLOAT32)
            throw MmError(kUnsupported, std::string(kind) + " '" + t.name + "': only float32 tensors are supported");
        out.push_back(t);
    }
    return out;
}

// Makes `dir` and its parents (the vendor documents neither dump nor profiler directories as
// created for us); throws naming the directory.
void make_dirs(const std::string &dir, const char *what)
{
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/')
            continue;
        std::string part = dir.substr(0, i);
        if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
            throw MmError(kIo, std::string(what) + " '" + dir + "': cannot create " + part + ": " + strerror(errno));
    }
}

void set_device(int device) { check_cnrt(cnrtSetDevice(device), "cnrtSetDevice(" + std::to_string(device) + ")"); }

} // namespace

// ---- memory ---------------------------------------------------------------------------------

void *CnrtAllocator::AllocateRaw(size_t size, size_t)
{
    void *p = nullptr; // cnrtMalloc's alignment covers every MagicMind request (*inferred*)
    if (cnrtSetDevice(device_) != CNRT_RET_SUCCESS || cnrtMalloc(&p, size) != CNRT_RET_SUCCESS)
        return nullptr;
    return p;
}

void CnrtAllocator::DeallocateRaw(void *ptr)
{
    if (ptr && cnrtSetDevice(device_) == CNRT_RET_SUCCESS)
        cnrtFree(ptr);
}

DeviceBuffer::DeviceBuffer(int device, size_t bytes)
{
    set_device(device);
    check_cnrt(cnrtMalloc(&ptr_, bytes), "cnrtMalloc(" + std::to_string(bytes) + " bytes)");
}

DeviceBuffer::~DeviceBuffer()
{
    if (ptr_)
        cnrtFree(ptr_);
}

// ---- engine per device ------------------------------------------------------------------------

DeviceEngine::DeviceEngine(magicmind::IModel *model, int device, const Options &opt) : device_(device)
{
    set_device(device);
    magicmind::IModel::EngineConfig config;
    config.SetDeviceType("MLU");
    // Static strategy: the context gets one workspace sized by QueryContextMaxWorkspaceSize, and
    // MagicMind ignores an allocator then (sample_runtime), so set one only for the dynamic case.
    if (!opt.static_workspace) {
        alloc_.reset(new CnrtAllocator(device));
        config.SetAllocator(alloc_.get());
    }
    engine_ = model->CreateIEngine(config);
    if (!engine_)
        throw MmError(kBackend, "magicmind: CreateIEngine on device " + std::to_string(device) +
                                    " failed (model not built for this MLU, or out of device memory)");
}

DeviceEngine::~DeviceEngine()
{
    if (engine_) {
        cnrtSetDevice(device_);
        engine_->Destroy();
    }
}

magicmind::IContext *DeviceEngine::create_context()
{
    std::lock_guard<std::mutex> lock(mu_);
    set_device(device_);
    magicmind::IContext *c = engine_->CreateIContext();
    if (!c)
        throw MmError(kBackend, "magicmind: CreateIContext on device " + std::to_string(device_) + " failed");
    return c;
}

std::vector<std::string> DeviceEngine::refittable_names()
{
    std::lock_guard<std::mutex> lock(mu_);
    set_device(device_);
    magicmind::IRefitter *r = magicmind::CreateIRefitter(engine_);
    if (!r)
        throw MmError(kBackend, "magicmind: CreateIRefitter failed (was the model built with enable_refit?)");
    std::vector<std::string> names;
    magicmind::Status s = r->GetMissingNames(&names); // a fresh refitter misses every weight
    r->Destroy();
    check(s, "GetMissingNames");
    return names;
}

size_t DeviceEngine::max_workspace(const std::vector<TensorDesc> &inputs)
{
    std::vector<magicmind::Dims> dims;
    for (const TensorDesc &t : inputs)
        dims.push_back(magicmind::Dims(t.shape));
    size_t size = 0;
    std::lock_guard<std::mutex> lock(mu_);
    check(engine_->QueryContextMaxWorkspaceSize(dims, &size), "QueryContextMaxWorkspaceSize");
    return size;
}

// The SDK sample's order: GetMissingNames lists all, SetNamedWeights each, missing must then be
// empty, RefitEngine. Everything before RefitEngine leaves the device weights untouched.
void DeviceEngine::refit(const std::vector<TensorDesc> &weights, const float *const *data, bool *applied)
{
    std::lock_guard<std::mutex> lock(mu_);
    set_device(device_);
    magicmind::IRefitter *r = magicmind::CreateIRefitter(engine_);
    if (!r)
        throw MmError(kBackend, "magicmind: CreateIRefitter failed (was the model built with enable_refit?)");
    std::vector<IRTTensor *> host;
    auto cleanup = [&] {
        for (IRTTensor *t : host)
            t->Destroy();
        r->Destroy();
    };
    try {
        for (size_t i = 0; i < weights.size(); i++) {
            IRTTensor *t = magicmind::CreateIRTTensor(magicmind::DataType::FLOAT32, "const_data", magicmind::Layout::NONE,
                                                      magicmind::TensorLocation::kHost);
            if (!t)
                throw MmError(kNomem, "magicmind: CreateIRTTensor for weight '" + weights[i].name + "' failed");
            host.push_back(t);
            check(t->SetDimensions(magicmind::Dims(weights[i].shape)), "SetDimensions('" + weights[i].name + "')");
            check(t->SetData(const_cast<float *>(data[i])), "SetData('" + weights[i].name + "')");
            check(r->SetNamedWeights(weights[i].name, t), "SetNamedWeights('" + weights[i].name + "')");
        }
        std::vector<std::string> missing;
        check(r->GetMissingNames(&missing), "GetMissingNames");
        if (!missing.empty())
            throw MmError(kBackend, "magicmind: device " + std::to_string(device_) +
                                        ": the refitter still misses weight(s) " + join(missing) +
                                        " after SetNamedWeights; nothing was refitted");
        *applied = true; // from here the device weights may change, even if RefitEngine fails
        check(r->RefitEngine(), "RefitEngine on device " + std::to_string(device_));
    } catch (...) {
        cleanup();
        throw;
    }
    cleanup();
}

// ---- weight set ---------------------------------------------------------------------------------

WeightSet::WeightSet(Session &s, const float *const *engine_weights) : s_(s)
{
    for (int id : s.options().device_ids)
        engines_.emplace_back(new DeviceEngine(s.model_, id, s.options()));
    s.check_refit_names(*engines_[0], s.model_path_);
    bool applied = false;
    refit(engine_weights, &applied); // the model file's constants may be older than the core's set
}

WeightSet::~WeightSet()
{
    s_.set_gone(this);
    engines_.clear();
}

void WeightSet::refit(const float *const *engine_weights, bool *applied)
{
    for (auto &e : engines_)
        e->refit(s_.weights(), engine_weights, applied);
}

// ---- worker -------------------------------------------------------------------------------------

Worker::Binding::~Binding()
{
    for (IRTTensor *t : in)
        t->Destroy();
    for (IRTTensor *t : out)
        t->Destroy();
    if (ctx)
        ctx->Destroy();
}

Worker::Worker(Session &s, size_t device_index, int context_number)
    : s_(s), device_index_(device_index), device_(s.options().device_ids[device_index]), context_number_(context_number)
{
    try {
        set_device(device_);
        check_cnrt(cnrtQueueCreate(&queue_), "cnrtQueueCreate");
        for (const TensorDesc &t : s.inputs())
            in_mem_.emplace_back(new DeviceBuffer(device_, t.nbytes()));
        for (const TensorDesc &t : s.outputs())
            out_mem_.emplace_back(new DeviceBuffer(device_, t.nbytes()));
    } catch (...) {
        release(); // the destructor does not run for a constructor that throws
        throw;
    }
}

Worker::~Worker()
{
    release();
    s_.worker_gone(this, device_index_);
}

void Worker::release()
{
    {
        std::lock_guard<std::mutex> lock(mu_);
        bindings_.clear();
    }
    if (queue_)
        cnrtQueueDestroy(queue_);
    queue_ = nullptr;
    in_mem_.clear();
    out_mem_.clear();
}

void Worker::forget(const WeightSet *set)
{
    std::lock_guard<std::mutex> lock(mu_);
    bindings_.erase(set);
}

// An IContext of `set`'s engine on this worker's device, its tensors bound to the worker's device
// buffers; made on the first run with that set.
Worker::Binding &Worker::bind(const WeightSet &set)
{
    auto it = bindings_.find(&set);
    if (it != bindings_.end())
        return *it->second;
    DeviceEngine &e = set.on(device_index_);
    std::unique_ptr<Binding> b(new Binding);
    b->ctx = e.create_context();
    check(b->ctx->CreateInputTensors(&b->in), "CreateInputTensors");
    check(b->ctx->CreateOutputTensors(&b->out), "CreateOutputTensors");
    if (b->in.size() != s_.inputs().size() || b->out.size() != s_.outputs().size())
        throw MmError(kModel, "magicmind: the context's tensors do not match the model's inputs/outputs");
    for (size_t i = 0; i < b->in.size(); i++) {
        check(b->in[i]->SetDimensions(magicmind::Dims(s_.inputs()[i].shape)), "SetDimensions(input)");
        check(b->in[i]->SetData(in_mem_[i]->get()), "SetData(input)");
    }
    for (size_t i = 0; i < b->out.size(); i++)
        check(b->out[i]->SetData(out_mem_[i]->get()), "SetData(output)");
    if (s_.options().static_workspace) {
        size_t ws = e.max_workspace(s_.inputs());
        if (ws) {
            b->workspace.reset(new DeviceBuffer(device_, ws));
            check(b->ctx->SetWorkspace(b->workspace->get(), ws), "SetWorkspace");
        }
    }
    if (!s_.options().dump_dir.empty()) {
        using Dump = magicmind::IContext::ContextDumpInfo;
        Dump d;
        d.SetDumpMode(s_.options().dump_all ? Dump::DumpMode::kAllTensors : Dump::DumpMode::kOutputTensors);
        d.SetPath(s_.options().dump_dir + "/device" + std::to_string(device_) + "-context" + std::to_string(context_number_));
        d.SetFileFormat(Dump::FileFormat::kText);
        check(b->ctx->SetContextDumpInfo(d), "SetContextDumpInfo");
    }
    Binding &ref = *b;
    bindings_[&set] = std::move(b);
    return ref;
}

void Worker::run(const WeightSet &set, const float *const *inputs, float *const *outputs)
{
    std::lock_guard<std::mutex> lock(mu_);
    set_device(device_); // the thread's current device: workers of several devices share threads
    Binding &b = bind(set);
    for (size_t i = 0; i < in_mem_.size(); i++)
        check_cnrt(cnrtMemcpy(in_mem_[i]->get(), const_cast<float *>(inputs[i]), s_.inputs()[i].nbytes(),
                              CNRT_MEM_TRANS_DIR_HOST2DEV),
                   "cnrtMemcpy(input '" + s_.inputs()[i].name + "' to device)");
    check(b.ctx->Enqueue(b.in, b.out, queue_), "Enqueue");
    check_cnrt(cnrtQueueSync(queue_), "cnrtQueueSync");
    for (size_t i = 0; i < out_mem_.size(); i++)
        check_cnrt(cnrtMemcpy(outputs[i], out_mem_[i]->get(), s_.outputs()[i].nbytes(), CNRT_MEM_TRANS_DIR_DEV2HOST),
                   "cnrtMemcpy(output '" + s_.outputs()[i].name + "' to host)");
}

// ---- session ------------------------------------------------------------------------------------

Session::Session(const std::string &model_path, const Options &opt) : opt_(opt), model_path_(model_path)
{
    unsigned int count = 0;
    check_cnrt(cnrtGetDeviceCount(&count), "cnrtGetDeviceCount (is the MLU driver loaded?)");
    for (int id : opt.device_ids)
        if (id < 0 || static_cast<unsigned int>(id) >= count)
            throw MmError(kInvalidArg, "magicmind: device id " + std::to_string(id) + " out of range (" +
                                           std::to_string(count) + " MLU device(s) found)");
    model_ = magicmind::CreateIModel();
    if (!model_)
        throw MmError(kNomem, "magicmind: CreateIModel failed");
    try {
        check(model_->DeserializeFromFile(model_path.c_str()), "DeserializeFromFile('" + model_path + "')", kModel);
        inputs_ = describe(model_->GetInputNames(), model_->GetInputDimensions(), model_->GetInputDataTypes(), "input");
        outputs_ = describe(model_->GetOutputNames(), model_->GetOutputDimensions(), model_->GetOutputDataTypes(), "output");
        for (const MappedWeight &w : read_name_map(opt.names)) {
            (w.kind == "weight" ? map_ : io_map_).push_back(w);
            if (w.kind == "weight")
                weights_.push_back(TensorDesc{w.engine, w.shape});
        }
        if (!opt.dump_dir.empty())
            make_dirs(opt.dump_dir, "backend option dump_dir");
        if (!opt.profiler_dir.empty()) {
            make_dirs(opt.profiler_dir, "backend option profiler_dir");
            magicmind::ProfilerOptions po;
            po.SetHostTracerLevel(magicmind::HostTracerLevel::kCritical);
            po.SetDeviceTracerLevel(magicmind::DeviceTracerLevel::kOn);
            profiler_ = magicmind::CreateIProfiler(po, opt.profiler_dir.c_str());
            if (!profiler_)
                throw MmError(kBackend, "magicmind: CreateIProfiler('" + opt.profiler_dir + "') failed");
            check(profiler_->Start(), "IProfiler::Start");
        }
        workers_per_device_.assign(opt.device_ids.size(), 0);
    } catch (...) {
        release();
        throw;
    }
}

// The sidecar and the engine must agree on the refittable names: a fresh engine's refitter lists
// every one of them as missing. Checked on the first engine made.
void Session::check_refit_names(DeviceEngine &e, const std::string &model_path)
{
    if (names_checked_)
        return;
    std::vector<std::string> listed = e.refittable_names();
    std::set<std::string> engine(listed.begin(), listed.end()), sidecar;
    for (const MappedWeight &w : map_) {
        sidecar.insert(w.engine);
        if (!engine.count(w.engine))
            throw MmError(kModel, "name map '" + opt_.names + "': weight '" + w.engine + "' (source '" + w.source +
                                      "') is not a refittable weight of '" + model_path + "'");
    }
    for (const std::string &n : listed)
        if (!sidecar.count(n))
            throw MmError(kModel, "name map '" + opt_.names + "': no row for the engine's refittable weight '" + n +
                                      "' of '" + model_path + "'");
    names_checked_ = true;
}

Session::~Session() { release(); }

void Session::release()
{
    if (profiler_) {
        profiler_->Stop();
        profiler_->Destroy();
        profiler_ = nullptr;
    }
    if (model_)
        model_->Destroy();
    model_ = nullptr;
}

std::unique_ptr<WeightSet> Session::weight_set(const float *const *engine_weights)
{
    return std::unique_ptr<WeightSet>(new WeightSet(*this, engine_weights));
}

std::unique_ptr<Worker> Session::worker()
{
    size_t d;
    int n;
    {
        std::lock_guard<std::mutex> lock(mu_);
        d = next_++ % opt_.device_ids.size();
        if (opt_.contexts_per_device > 0 && workers_per_device_[d] >= opt_.contexts_per_device)
            throw MmError(kInvalidArg, "magicmind: contexts_per_device=" + std::to_string(opt_.contexts_per_device) +
                                           " reached on device " + std::to_string(opt_.device_ids[d]));
        n = workers_per_device_[d]++;
    }
    std::unique_ptr<Worker> w;
    try {
        w.reset(new Worker(*this, d, n));
    } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        workers_per_device_[d]--;
        throw;
    }
    std::lock_guard<std::mutex> lock(mu_);
    workers_.insert(w.get());
    return w;
}

void Session::worker_gone(Worker *w, size_t device_index)
{
    std::lock_guard<std::mutex> lock(mu_);
    if (workers_.erase(w))
        workers_per_device_[device_index]--;
}

// A weight set is released only when no run uses it (the core's promise): drop every worker's
// context of it before its engines go.
void Session::set_gone(const WeightSet *set)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (Worker *w : workers_)
        w->forget(set);
}

} // namespace refitd_mm
