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

// Returns 0 when the thread's current stream on CUDA device `device_index` is now one of
// libtorch's pool streams; otherwise 1, with the reason in `message` (NUL-terminated,
// truncated to `capacity`). Never lets a C++ exception cross into Rust.
extern "C" int knas_use_pool_cuda_stream(int device_index, char* message, std::size_t capacity) {
  try {
    if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
      std::snprintf(message, capacity, "this libtorch has no CUDA backend");
      return 1;
    }
    const auto* cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
    cuda->exchangeStream(cuda->getStreamFromGlobalPool(device, /*isHighPriority=*/false));
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, capacity, "%s", e.what());
    return 1;
  } catch (...) {
    std::snprintf(message, capacity, "an unknown C++ exception");
    return 1;
  }
}
