/* mm_session.h — the MagicMind calls behind the backend, in C++: a model deserialised once, an
 * IEngine per device id, and workers (an IContext, a CNRT queue and device buffers each).
 * Everything here throws MmError; mm_api.cc is the only caller and catches. */
#ifndef REFITD_MM_SESSION_H
#define REFITD_MM_SESSION_H

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cnrt.h"
#include "mm_namemap.h"
#include "mm_profiler.h"
#include "mm_runtime.h"

namespace refitd_mm {

struct Options {
    std::string names;                 // sidecar path
    std::vector<int> device_ids{0};
    int contexts_per_device = 0;       // 0: no limit
    bool static_workspace = false;     // "memory": static (workspace) vs allocator
    std::string profiler_dir, dump_dir;
    bool dump_all = true;
};

struct TensorDesc {
    std::string name;
    std::vector<int64_t> shape;
    size_t nbytes() const;
};

// Device memory through CNRT for MagicMind's IAllocator; outlives the engines that use it.
class CnrtAllocator : public magicmind::IAllocator {
public:
    explicit CnrtAllocator(int device) : device_(device) {}
    void *AllocateRaw(size_t size, size_t alignment) override;
    void DeallocateRaw(void *ptr) override;

private:
    int device_;
};

// One device buffer (cnrtMalloc/cnrtFree), freed on destruction.
class DeviceBuffer {
public:
    DeviceBuffer(int device, size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    void *get() const { return ptr_; }

private:
    void *ptr_ = nullptr;
};

class DeviceEngine {
public:
    DeviceEngine(magicmind::IModel *model, int device, const Options &opt);
    ~DeviceEngine();
    int device() const { return device_; }
    magicmind::IContext *create_context(); // serialised: not thread-safe on one engine (SDK sample)
    size_t max_workspace(const std::vector<TensorDesc> &inputs);
    std::vector<std::string> refittable_names();
    void refit(const std::vector<TensorDesc> &weights, const float *const *data, bool *applied);

private:
    int device_;
    std::unique_ptr<CnrtAllocator> alloc_; // declared first: destroyed after the engine
    magicmind::IEngine *engine_ = nullptr;
    std::mutex mu_;
};

class Session;

class Worker {
public:
    Worker(Session &s, size_t engine_index, int context_number);
    ~Worker();
    void run(const float *const *inputs, float *const *outputs);

private:
    void release();
    Session &s_;
    size_t engine_index_;
    DeviceEngine &e_;
    magicmind::IContext *ctx_ = nullptr;
    cnrtQueue_t queue_ = nullptr;
    std::vector<magicmind::IRTTensor *> in_, out_;
    std::vector<std::unique_ptr<DeviceBuffer>> in_mem_, out_mem_;
    std::unique_ptr<DeviceBuffer> workspace_;
};

class Session {
public:
    Session(const std::string &model_path, const Options &opt);
    ~Session();
    const std::vector<TensorDesc> &inputs() const { return inputs_; }
    const std::vector<TensorDesc> &outputs() const { return outputs_; }
    const std::vector<TensorDesc> &weights() const { return weights_; }
    const Options &options() const { return opt_; }
    std::unique_ptr<Worker> worker();
    void refit(const float *const *data, bool *applied);

private:
    void release();
    void check_refit_names(const std::vector<MappedWeight> &map, const std::string &model_path);
    Options opt_;
    magicmind::IModel *model_ = nullptr;
    magicmind::IProfiler *profiler_ = nullptr;
    std::vector<TensorDesc> inputs_, outputs_, weights_;
    std::vector<std::unique_ptr<DeviceEngine>> engines_;
    std::mutex mu_;
    std::vector<int> workers_per_device_;
    size_t next_ = 0;
    friend class Worker;
    void worker_gone(size_t engine_index);
};

} // namespace refitd_mm
#endif
