/* mm_session.h — the MagicMind calls behind the backend, in C++:
 *   Session    the model deserialised once, options, the name map (librefit's "plan");
 *   WeightSet  an IEngine per configured device, holding one version of the weights in device
 *              memory (librefit's "prepared" weights): refit in place through IRefitter;
 *   Worker     a CNRT queue and device input/output buffers on one device, plus an IContext
 *              (with its IRTTensors and workspace) per WeightSet it has run on (librefit's ctx).
 * Everything here throws MmError; mm_api.cc is the only caller and catches. */
#ifndef REFITD_MM_SESSION_H
#define REFITD_MM_SESSION_H

#include <map>
#include <memory>
#include <mutex>
#include <set>
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

class WeightSet {
public:
    WeightSet(Session &s, const float *const *engine_weights);
    ~WeightSet();
    // Every weight (engine order and layout) on every device. Not while a worker runs this set.
    void refit(const float *const *engine_weights, bool *applied);
    DeviceEngine &on(size_t device_index) const { return *engines_.at(device_index); }

private:
    Session &s_;
    std::vector<std::unique_ptr<DeviceEngine>> engines_;
};

class Worker {
public:
    Worker(Session &s, size_t device_index, int context_number);
    ~Worker();
    void run(const WeightSet &set, const float *const *inputs, float *const *outputs);
    void forget(const WeightSet *set); // the set is going away: drop its context

private:
    struct Binding {
        magicmind::IContext *ctx = nullptr;
        std::vector<magicmind::IRTTensor *> in, out;
        std::unique_ptr<DeviceBuffer> workspace;
        ~Binding();
    };
    Binding &bind(const WeightSet &set);
    void release();
    Session &s_;
    size_t device_index_;
    int device_, context_number_;
    cnrtQueue_t queue_ = nullptr;
    std::vector<std::unique_ptr<DeviceBuffer>> in_mem_, out_mem_;
    std::mutex mu_; // bindings_: run (this worker's thread) vs forget (a releasing thread)
    std::map<const WeightSet *, std::unique_ptr<Binding>> bindings_;
};

class Session {
public:
    Session(const std::string &model_path, const Options &opt);
    ~Session();
    const std::vector<TensorDesc> &inputs() const { return inputs_; }
    const std::vector<TensorDesc> &outputs() const { return outputs_; }
    const std::vector<MappedWeight> &name_map() const { return map_; }       // weight rows
    const std::vector<MappedWeight> &io_name_map() const { return io_map_; } // input/output rows
    const std::vector<TensorDesc> &weights() const { return weights_; }
    const Options &options() const { return opt_; }
    std::unique_ptr<WeightSet> weight_set(const float *const *engine_weights);
    std::unique_ptr<Worker> worker();

private:
    friend class WeightSet;
    friend class Worker;
    void release();
    void check_refit_names(DeviceEngine &e, const std::string &model_path);
    void set_gone(const WeightSet *set);
    void worker_gone(Worker *w, size_t device_index);
    Options opt_;
    std::string model_path_;
    magicmind::IModel *model_ = nullptr;
    magicmind::IProfiler *profiler_ = nullptr;
    std::vector<TensorDesc> inputs_, outputs_, weights_;
    std::vector<MappedWeight> map_, io_map_;
    std::mutex mu_;
    std::set<Worker *> workers_;
    std::vector<int> workers_per_device_;
    size_t next_ = 0;
    bool names_checked_ = false;
};

} // namespace refitd_mm
#endif
