/* fake_device.h — TEST-ONLY FAKE: the fake CNRT's "device memory" as the fake MagicMind runtime
 * reaches it. Never shipped. A device pointer lies in a PROT_NONE address range, so any host
 * dereference faults (as on a real MLU, device memory is reached only through cnrtMemcpy); the
 * bytes live in a host backing block that only the fakes translate to. */
#ifndef FAKE_DEVICE_H
#define FAKE_DEVICE_H

#include <cstddef>

extern "C" {
/* Host backing for [dev, dev + bytes) if that range lies inside one allocation of the calling
 * thread's current device (or any device when device < 0); NULL otherwise. */
__attribute__((visibility("default"))) void *fake_cnrt_backing(const void *dev, size_t bytes, int device);
/* The calling thread's current device (cnrtSetDevice; 0 by default). */
__attribute__((visibility("default"))) int fake_cnrt_current_device(void);
/* Whether `queue` is a live queue made by cnrtQueueCreate. */
__attribute__((visibility("default"))) int fake_cnrt_queue_valid(const void *queue);
}

#endif
