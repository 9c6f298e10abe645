// Gives the calling thread a CUDA stream of its own, taken from libtorch's stream pool.
//
// libtorch launches every kernel on the thread's "current stream", which is the device's
// default stream unless something sets another. Worker threads measuring different
// architectures (measures/pool.rs) then queue all their small kernels on that one stream,
// and the GPU runs them one after another however many threads launch them. On streams
// of their own, kernels of different architectures can run side by side.
//
// The `tch` bindings do not expose streams, so this is the one piece of C++ in knas. It
// goes through c10's device-generic guard interface rather than c10/cuda's headers: those
// include the CUDA toolkit's, which a machine building knas for the CPU need not have.
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

namespace {

const c10::impl::DeviceGuardImplInterface* cuda_guard() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    throw std::runtime_error("this libtorch has no CUDA backend");
  }
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

// The pool stream of each (device, worker slot), taken once. libtorch hands its pool's
// streams out in rotation; taking a new one for every worker thread of every batch would
// spread a long run over all of them, and the caching allocator and cuBLAS keep memory
// per stream. With this, worker i always launches on the same stream.
c10::Stream slot_stream(const c10::impl::DeviceGuardImplInterface* cuda, c10::Device device, int slot) {
  // Never destroyed (as libtorch's own stream pools): a thread may still ask while the
  // process exits.
  static auto* lock = new std::mutex;
  static auto* streams = new std::map<std::pair<int, int>, c10::Stream>;
  const std::lock_guard<std::mutex> guard(*lock);
  const auto key = std::make_pair(static_cast<int>(device.index()), slot);
  auto found = streams->find(key);
  if (found == streams->end()) {
    found = streams->emplace(key, cuda->getStreamFromGlobalPool(device, /*isHighPriority=*/false)).first;
  }
  return found->second;
}

template <typename F>
int guarded(char* message, std::size_t capacity, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, capacity, "%s", e.what());
  } catch (...) {
    std::snprintf(message, capacity, "an unknown C++ exception");
  }
  return 1;
}

}  // namespace

// Makes the pool stream of worker `slot` the calling thread's current stream on CUDA device
// `device_index`. Returns 0, or 1 with the reason in `message` (NUL-terminated, truncated
// to `capacity`). Never lets a C++ exception cross into Rust.
extern "C" int knas_use_pool_cuda_stream(int device_index, int slot, char* message, std::size_t capacity) {
  return guarded(message, capacity, [&] {
    const auto* cuda = cuda_guard();
    const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
    cuda->exchangeStream(slot_stream(cuda, device, slot));
  });
}

// Sets `*is_default` to whether the calling thread's current stream on the device is the
// device's default stream (for tests). Returns as above.
extern "C" int knas_on_default_cuda_stream(int device_index, int* is_default, char* message, std::size_t capacity) {
  return guarded(message, capacity, [&] {
    const auto* cuda = cuda_guard();
    const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
    *is_default = cuda->getStream(device) == cuda->getDefaultStream(device) ? 1 : 0;
  });
}
