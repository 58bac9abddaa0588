/* fake_cnrt.cc — TEST-ONLY FAKE libcnrt.so for refitd's CI (native/tests/fake_neuware). Never
 * shipped. Implements the CNRT 6.x subset refitd's MagicMind backend calls, on the CPU:
 * device count from FAKE_CNRT_DEVICES (default 2), device pointers that fault on host access,
 * cnrtMemcpy as the only way in or out, queues that cnrtQueueSync validates. */
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "cnrt.h"
#include "fake_device.h"

namespace {

struct Block {
    size_t bytes;
    int device;
    std::vector<unsigned char> backing;
};

struct Devices {
    std::mutex mu;
    uintptr_t base = 0, next = 0, end = 0;
    std::map<uintptr_t, Block> blocks; // device address -> block
    std::set<const void *> queues;
};

Devices &devices()
{
    static Devices *d = [] {
        auto *d = new Devices; // leaked on purpose: outlives every static destructor
        const size_t span = size_t(1) << 36; // 64 GiB of address space, no memory behind it
        void *p = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            d->base = d->next = reinterpret_cast<uintptr_t>(p);
            d->end = d->base + span;
        }
        return d;
    }();
    return *d;
}

thread_local int current_device = 0;

int device_count()
{
    const char *s = getenv("FAKE_CNRT_DEVICES");
    int n = s ? atoi(s) : 2;
    return n > 0 ? n : 0;
}

// The block holding [p, p + bytes) or nullptr. Caller holds the mutex.
Block *find(Devices &d, const void *p, size_t bytes, uintptr_t *offset)
{
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = d.blocks.upper_bound(a);
    if (it == d.blocks.begin())
        return nullptr;
    --it;
    if (a < it->first || a - it->first > it->second.bytes || bytes > it->second.bytes - (a - it->first))
        return nullptr;
    *offset = a - it->first;
    return &it->second;
}

} // namespace

extern "C" {

void *fake_cnrt_backing(const void *dev, size_t bytes, int device)
{
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    uintptr_t off = 0;
    Block *b = find(d, dev, bytes, &off);
    if (!b || (device >= 0 && b->device != device))
        return nullptr;
    return b->backing.data() + off;
}

int fake_cnrt_current_device(void) { return current_device; }

int fake_cnrt_queue_valid(const void *queue)
{
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    return d.queues.count(queue) ? 1 : 0;
}

cnrtRet_t cnrtGetDeviceCount(unsigned int *count)
{
    if (!count)
        return cnrtErrorNoDevice;
    *count = static_cast<unsigned int>(device_count());
    return *count ? cnrtSuccess : cnrtErrorNoDevice;
}

cnrtRet_t cnrtSetDevice(int device)
{
    if (device < 0 || device >= device_count())
        return cnrtErrorNoDevice;
    current_device = device;
    return cnrtSuccess;
}

cnrtRet_t cnrtQueueCreate(cnrtQueue_t *queue)
{
    if (!queue)
        return cnrtErrorNoDevice;
    *queue = reinterpret_cast<cnrtQueue_t>(new char[1]);
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    d.queues.insert(*queue);
    return cnrtSuccess;
}

// Enqueue runs synchronously in the fake, so a sync has nothing to wait for; it still refuses a
// queue that does not exist, as the real one would fail on it.
cnrtRet_t cnrtQueueSync(cnrtQueue_t queue) { return fake_cnrt_queue_valid(queue) ? cnrtSuccess : cnrtErrorNoDevice; }

cnrtRet_t cnrtQueueDestroy(cnrtQueue_t queue)
{
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    if (!d.queues.erase(queue))
        return cnrtErrorNoDevice;
    delete[] reinterpret_cast<char *>(queue);
    return cnrtSuccess;
}

cnrtRet_t cnrtMalloc(void **ptr, size_t bytes)
{
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    size_t span = (bytes + 255) & ~size_t(255);
    if (!ptr || !bytes || d.base == 0 || span > d.end - d.next)
        return cnrtErrorNoDevice;
    uintptr_t a = d.next;
    d.next += span + 256; // a gap: an overrun lands in no block
    d.blocks[a] = Block{bytes, current_device, std::vector<unsigned char>(bytes)};
    *ptr = reinterpret_cast<void *>(a);
    return cnrtSuccess;
}

cnrtRet_t cnrtFree(void *ptr)
{
    Devices &d = devices();
    std::lock_guard<std::mutex> lock(d.mu);
    return d.blocks.erase(reinterpret_cast<uintptr_t>(ptr)) ? cnrtSuccess : cnrtErrorNoDevice;
}

cnrtRet_t cnrtMemcpy(void *dst, void *src, size_t bytes, cnrtMemTransDir_t dir)
{
    if (dir != cnrtMemcpyHostToDev && dir != cnrtMemcpyDevToHost)
        return cnrtErrorNoDevice;
    void *dev = dir == cnrtMemcpyHostToDev ? dst : src;
    void *host = dir == cnrtMemcpyHostToDev ? src : dst;
    void *backing = fake_cnrt_backing(dev, bytes, current_device);
    if (!backing || !host)
        return cnrtErrorNoDevice; // not device memory of the current device: a real MLU fails too
    if (dir == cnrtMemcpyHostToDev)
        memcpy(backing, host, bytes);
    else
        memcpy(host, backing, bytes);
    return cnrtSuccess;
}

const char *cnrtGetErrorStr(cnrtRet_t ret)
{
    return ret == cnrtSuccess ? "success (fake cnrt)" : "fake cnrt: invalid device, pointer or queue";
}

} // extern "C"
