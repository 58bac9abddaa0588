/* mm_session.cc — model, per-device engines and workers on MagicMind + CNRT (see mm_session.h).
 * Call sequences follow Cambricon's SDK samples (sample_runtime, sample_refit) as collected in
 * MAGICMIND-API.md; re-check them against a real SDK before claiming hardware support. */
#include "mm_session.h"

#include <set>

#include "mm_error.h"

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

// ---- worker -------------------------------------------------------------------------------------

Worker::Worker(Session &s, size_t engine_index, int context_number)
    : s_(s), engine_index_(engine_index), e_(*s.engines_[engine_index])
{
    try {
        ctx_ = e_.create_context();
        set_device(e_.device());
        check_cnrt(cnrtQueueCreate(&queue_), "cnrtQueueCreate");
        check(ctx_->CreateInputTensors(&in_), "CreateInputTensors");
        check(ctx_->CreateOutputTensors(&out_), "CreateOutputTensors");
        if (in_.size() != s.inputs().size() || out_.size() != s.outputs().size())
            throw MmError(kModel, "magicmind: the context's tensors do not match the model's inputs/outputs");
        for (size_t i = 0; i < in_.size(); i++) {
            in_mem_.emplace_back(new DeviceBuffer(e_.device(), s.inputs()[i].nbytes()));
            check(in_[i]->SetDimensions(magicmind::Dims(s.inputs()[i].shape)), "SetDimensions(input)");
            check(in_[i]->SetData(in_mem_.back()->get()), "SetData(input)");
        }
        for (size_t i = 0; i < out_.size(); i++) {
            out_mem_.emplace_back(new DeviceBuffer(e_.device(), s.outputs()[i].nbytes()));
            check(out_[i]->SetData(out_mem_.back()->get()), "SetData(output)");
        }
        if (s.options().static_workspace) {
            size_t ws = e_.max_workspace(s.inputs());
            if (ws) {
                workspace_.reset(new DeviceBuffer(e_.device(), ws));
                check(ctx_->SetWorkspace(workspace_->get(), ws), "SetWorkspace");
            }
        }
        if (!s.options().dump_dir.empty()) {
            magicmind::IContext::ContextDumpInfo d;
            d.SetDumpMode(s.options().dump_all ? magicmind::IContext::ContextDumpInfo::DumpMode::kAllTensors
                                               : magicmind::IContext::ContextDumpInfo::DumpMode::kOutputTensors);
            d.SetPath(s.options().dump_dir + "/device" + std::to_string(e_.device()) + "-context" +
                      std::to_string(context_number));
            d.SetFileFormat(magicmind::IContext::ContextDumpInfo::FileFormat::kText);
            check(ctx_->SetContextDumpInfo(d), "SetContextDumpInfo");
        }
    } catch (...) {
        release(); // the destructor does not run for a constructor that throws
        throw;
    }
}

Worker::~Worker()
{
    release();
    s_.worker_gone(engine_index_);
}

void Worker::release()
{
    for (IRTTensor *t : in_)
        t->Destroy();
    for (IRTTensor *t : out_)
        t->Destroy();
    in_.clear();
    out_.clear();
    if (queue_)
        cnrtQueueDestroy(queue_);
    queue_ = nullptr;
    if (ctx_)
        ctx_->Destroy();
    ctx_ = nullptr;
    workspace_.reset();
    in_mem_.clear();
    out_mem_.clear();
}

void Worker::run(const float *const *inputs, float *const *outputs)
{
    set_device(e_.device()); // the thread's current device: workers of several devices share threads
    for (size_t i = 0; i < in_.size(); i++)
        check_cnrt(cnrtMemcpy(in_mem_[i]->get(), const_cast<float *>(inputs[i]), s_.inputs()[i].nbytes(),
                              CNRT_MEM_TRANS_DIR_HOST2DEV),
                   "cnrtMemcpy(input '" + s_.inputs()[i].name + "' to device)");
    check(ctx_->Enqueue(in_, out_, queue_), "Enqueue");
    check_cnrt(cnrtQueueSync(queue_), "cnrtQueueSync");
    for (size_t i = 0; i < out_.size(); i++)
        check_cnrt(cnrtMemcpy(outputs[i], out_mem_[i]->get(), s_.outputs()[i].nbytes(), CNRT_MEM_TRANS_DIR_DEV2HOST),
                   "cnrtMemcpy(output '" + s_.outputs()[i].name + "' to host)");
}

// ---- session ------------------------------------------------------------------------------------

Session::Session(const std::string &model_path, const Options &opt) : opt_(opt)
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
        std::vector<MappedWeight> map = read_name_map(opt.names);
        for (const MappedWeight &w : map)
            weights_.push_back(TensorDesc{w.engine, w.shape});
        if (!opt.profiler_dir.empty()) {
            magicmind::ProfilerOptions po;
            po.SetHostTracerLevel(magicmind::HostTracerLevel::kCritical);
            po.SetDeviceTracerLevel(magicmind::DeviceTracerLevel::kOn);
            profiler_ = magicmind::CreateIProfiler(po, opt.profiler_dir.c_str());
            if (!profiler_)
                throw MmError(kBackend, "magicmind: CreateIProfiler('" + opt.profiler_dir + "') failed");
            check(profiler_->Start(), "IProfiler::Start");
        }
        for (int id : opt.device_ids)
            engines_.emplace_back(new DeviceEngine(model_, id, opt));
        workers_per_device_.assign(engines_.size(), 0);
        check_refit_names(map, model_path);
    } catch (...) {
        release();
        throw;
    }
}

// The sidecar and the engine must agree on the refittable names: the refitter of a fresh engine
// lists all of them as missing.
void Session::check_refit_names(const std::vector<MappedWeight> &map, const std::string &model_path)
{
    std::vector<std::string> listed = engines_[0]->refittable_names();
    std::set<std::string> engine(listed.begin(), listed.end()), sidecar;
    for (const MappedWeight &w : map) {
        sidecar.insert(w.engine);
        if (!engine.count(w.engine))
            throw MmError(kModel, "name map '" + opt_.names + "': weight '" + w.engine + "' (source '" + w.source +
                                      "') is not a refittable weight of '" + model_path + "'");
    }
    for (const std::string &n : listed)
        if (!sidecar.count(n))
            throw MmError(kModel, "name map '" + opt_.names + "': no row for the engine's refittable weight '" + n +
                                      "' of '" + model_path + "'");
}

Session::~Session() { release(); }

void Session::release()
{
    engines_.clear();
    if (profiler_) {
        profiler_->Stop();
        profiler_->Destroy();
        profiler_ = nullptr;
    }
    if (model_)
        model_->Destroy();
    model_ = nullptr;
}

std::unique_ptr<Worker> Session::worker()
{
    size_t e, n;
    {
        std::lock_guard<std::mutex> lock(mu_);
        e = next_++ % engines_.size();
        if (opt_.contexts_per_device > 0 && workers_per_device_[e] >= opt_.contexts_per_device)
            throw MmError(kInvalidArg, "magicmind: contexts_per_device=" + std::to_string(opt_.contexts_per_device) +
                                           " reached on device " + std::to_string(engines_[e]->device()));
        n = static_cast<size_t>(workers_per_device_[e]++);
    }
    try {
        return std::unique_ptr<Worker>(new Worker(*this, e, static_cast<int>(n)));
    } catch (...) {
        worker_gone(e);
        throw;
    }
}

void Session::worker_gone(size_t engine_index)
{
    std::lock_guard<std::mutex> lock(mu_);
    workers_per_device_[engine_index]--;
}

void Session::refit(const float *const *data, bool *applied)
{
    for (auto &e : engines_)
        e->refit(weights_, data, applied);
}

} // namespace refitd_mm
