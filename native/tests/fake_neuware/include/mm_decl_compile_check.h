/*
 * mm_decl_compile_check.h — COMPILE-ONLY CHECK. Declares exactly the MagicMind and CNRT symbols
 * refitd's MagicMind backend (native/backends/magicmind/) calls, with the signatures collected in
 * /work/shared/MAGICMIND-API.md (how Cambricon's samples, MegEngine and Paddle-Lite call them; the
 * vendor headers are not public). It is NOT the vendor's header: it is never installed, never
 * linked into anything shipped, and proves only that the backend's calls match these signatures.
 * Re-check every line against a real Neuware SDK before claiming hardware support.
 *
 * Used by: the compile check (make mm-compile-check: backend sources against this header, x86_64
 * and aarch64, -Wall -Wextra -Werror) and the test-only fake Neuware tree
 * (native/tests/fake_neuware/, where this file lives: include/ forwards mm_runtime.h, mm_profiler.h and cnrt.h here,
 * its lib64/ fakes implement these declarations on the CPU).
 *
 * Where the public callers do not settle a type, it is marked "inferred". Enumerator values are
 * ours (only the names appear in public code); the backend never depends on a value.
 * Every name declared here is used by the backend: tests/test_magicmind_build.py checks that.
 */
#ifndef REFITD_MM_DECL_COMPILE_CHECK_H
#define REFITD_MM_DECL_COMPILE_CHECK_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

/* ---- CNRT 6.x (cnrt.h) ------------------------------------------------------------------- */
extern "C" {
typedef enum {
    cnrtSuccess = 0,
    cnrtErrorNoDevice = 100, /* inferred: any non-zero value is a failure */
} cnrtRet_t;
#define CNRT_RET_SUCCESS cnrtSuccess
typedef enum {
    cnrtMemcpyHostToDev = 0,
    cnrtMemcpyDevToHost = 2,
} cnrtMemTransDir_t;
#define CNRT_MEM_TRANS_DIR_HOST2DEV cnrtMemcpyHostToDev
#define CNRT_MEM_TRANS_DIR_DEV2HOST cnrtMemcpyDevToHost
#define CNRT_MAJOR_VERSION 6
typedef struct cnrtQueue *cnrtQueue_t;

cnrtRet_t cnrtGetDeviceCount(unsigned int *count);
cnrtRet_t cnrtSetDevice(int device);
cnrtRet_t cnrtQueueCreate(cnrtQueue_t *queue);
cnrtRet_t cnrtQueueSync(cnrtQueue_t queue);
cnrtRet_t cnrtQueueDestroy(cnrtQueue_t queue);
cnrtRet_t cnrtMalloc(void **ptr, size_t bytes);
cnrtRet_t cnrtFree(void *ptr);
cnrtRet_t cnrtMemcpy(void *dst, void *src, size_t bytes, cnrtMemTransDir_t dir); /* src not const */
const char *cnrtGetErrorStr(cnrtRet_t ret);
}

/* ---- MagicMind runtime (mm_common.h, mm_status.h, mm_runtime.h) -------------------------- */
#define MM_MAJOR_VERSION 1
#define MM_MINOR_VERSION 0

namespace magicmind {

enum class DataType : int { FLOAT32 = 1, INT32 = 6 }; /* inferred: enum class */
enum class Layout : int { NONE = 0 };
enum class TensorLocation : int { kHost = 0, kMLU = 1, kRemoteMLU = 2 };

namespace error {
enum class Code : int { OK = 0, INVALID_ARGUMENT = 3, INTERNAL = 13, UNAVAILABLE = 14 };
}

struct FakeAccess; /* the test-only fake runtime's door into private storage; not vendor API */

class Status {
public:
    bool ok() const;
    error::Code code() const;
    std::string error_message() const;
    std::string ToString() const;

private:
    friend struct FakeAccess;
    Status(error::Code code, const std::string &message);
    error::Code code_;
    std::string message_;
};

class Dims {
public:
    Dims();
    explicit Dims(const std::vector<int64_t> &dims);
    int64_t GetDimsNum() const;
    int64_t GetDimValue(int64_t index) const;

private:
    friend struct FakeAccess;
    std::vector<int64_t> dims_;
};

class IRTTensor {
public:
    virtual Status SetData(void *data) = 0;
    virtual Status SetDimensions(const Dims &dims) = 0;
    virtual void Destroy() = 0;

protected:
    virtual ~IRTTensor() {}
};
IRTTensor *CreateIRTTensor(DataType dtype, const std::string &name, Layout layout, TensorLocation location);

class IAllocator {
public:
    virtual void *AllocateRaw(size_t size, size_t alignment) = 0;
    virtual void DeallocateRaw(void *ptr) = 0;
    virtual ~IAllocator() {}
};

class IContext {
public:
    class ContextDumpInfo {
    public:
        enum class DumpMode : int { kOutputTensors = 1, kAllTensors = 2 };
        enum class FileFormat : int { kText = 0, kBinary = 1 };
        void SetDumpMode(DumpMode mode);
        void SetPath(const std::string &path);
        void SetFileFormat(FileFormat format);

    private:
        friend struct FakeAccess; /* the fake runtime's storage, not vendor layout */
        DumpMode mode_ = DumpMode::kAllTensors;
        FileFormat format_ = FileFormat::kText;
        std::string path_;
    };
    virtual Status CreateInputTensors(std::vector<IRTTensor *> *inputs) = 0;
    virtual Status CreateOutputTensors(std::vector<IRTTensor *> *outputs) = 0;
    /* inferred: the queue is void* (mm_runtime.h does not include cnrt.h) */
    virtual Status Enqueue(const std::vector<IRTTensor *> &inputs, const std::vector<IRTTensor *> &outputs,
                           void *queue) = 0;
    virtual Status SetWorkspace(void *workspace, size_t size) = 0;
    virtual Status SetContextDumpInfo(const ContextDumpInfo &info) = 0;
    virtual Status Destroy() = 0;

protected:
    virtual ~IContext() {}
};

class IEngine {
public:
    virtual IContext *CreateIContext() = 0;
    virtual Status QueryContextMaxWorkspaceSize(const std::vector<Dims> &input_dims, size_t *size) = 0;
    virtual Status Destroy() = 0;

protected:
    virtual ~IEngine() {}
};

class IModel {
public:
    class EngineConfig {
    public:
        void SetDeviceType(const std::string &type);
        void SetAllocator(IAllocator *allocator);

    private:
        friend struct FakeAccess;
        std::string device_type_;
        IAllocator *allocator_ = nullptr;
    };
    virtual Status DeserializeFromFile(const char *path) = 0;
    virtual std::vector<std::string> GetInputNames() const = 0;
    virtual std::vector<std::string> GetOutputNames() const = 0;
    virtual std::vector<Dims> GetInputDimensions() const = 0;
    virtual std::vector<Dims> GetOutputDimensions() const = 0;
    virtual std::vector<DataType> GetInputDataTypes() const = 0;
    virtual std::vector<DataType> GetOutputDataTypes() const = 0;
    virtual IEngine *CreateIEngine(const EngineConfig &config) = 0;
    virtual void Destroy() = 0;

protected:
    virtual ~IModel() {}
};
IModel *CreateIModel();

class IRefitter {
public:
    virtual Status SetNamedWeights(const std::string &name, IRTTensor *weights) = 0;
    virtual Status GetMissingNames(std::vector<std::string> *names) = 0;
    virtual Status RefitEngine() = 0;
    virtual void Destroy() = 0;

protected:
    virtual ~IRefitter() {}
};
IRefitter *CreateIRefitter(IEngine *engine);

/* ---- mm_profiler.h ----------------------------------------------------------------------- */
enum class HostTracerLevel : int { kOff = 0, kCritical = 1 };
enum class DeviceTracerLevel : int { kOff = 0, kOn = 1 };
class ProfilerOptions {
public:
    void SetHostTracerLevel(HostTracerLevel level);
    void SetDeviceTracerLevel(DeviceTracerLevel level);

private:
    friend struct FakeAccess;
    HostTracerLevel host_ = HostTracerLevel::kOff;
    DeviceTracerLevel device_ = DeviceTracerLevel::kOff;
};
class IProfiler {
public:
    virtual Status Start() = 0;
    virtual Status Stop() = 0;
    virtual void Destroy() = 0;

protected:
    virtual ~IProfiler() {}
};
IProfiler *CreateIProfiler(const ProfilerOptions &options, const char *output_dir);

} // namespace magicmind

#endif
