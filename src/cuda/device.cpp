// Device discovery and device memory shared by the CUDA backends.
#include <array>
#include <memory>
#include <mutex>

#include "cuda/backends.h"
#include "cuda/cuda_check.h"

namespace attend::cuda {

namespace {

class cuda_memory final : public memory_resource {
 public:
  explicit cuda_memory(int index) : index_(index) {}
  void* allocate(std::size_t bytes) override {
    device_guard guard(index_);
    void* p = nullptr;
    ATTEND_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  void deallocate(void* p) noexcept override { static_cast<void>(cudaFree(p)); }
  void copy(void* dst, const void* src, std::size_t bytes, copy_direction dir) override {
    if (bytes == 0) return;
    device_guard guard(index_);
    const cudaMemcpyKind kind = dir == copy_direction::host_to_device   ? cudaMemcpyHostToDevice
                                : dir == copy_direction::device_to_host ? cudaMemcpyDeviceToHost
                                                                        : cudaMemcpyDeviceToDevice;
    ATTEND_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
  }
  void synchronize() override {
    device_guard guard(index_);
    ATTEND_CUDA_CHECK(cudaDeviceSynchronize());
  }
  // Note [Workspace under capture]. The guards pick the device whose streams a null stream (the
  // legacy default stream) and cudaStreamPerThread mean. A query of the legacy stream fails while
  // a blocking stream of its device captures (an implicit dependency), which is an error for the
  // call that would queue work there anyway. Errors are cleared from the runtime's last error, so
  // a later launch check does not report them as its own.
  bool capturing(void* stream) override {
    device_guard guard(index_);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (const cudaError_t e = cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status); e != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      throw_cuda_error(e, "cudaStreamIsCapturing", __FILE__, __LINE__);
    }
    return status != cudaStreamCaptureStatusNone;  // active, or invalidated (the capture fails at its end)
  }
  void* allocate_in_order(std::size_t bytes, void* stream) override {
    device_guard guard(index_);
    void* p = nullptr;
    if (const cudaError_t e = cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)); e != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      throw_cuda_error(e, "cudaMallocAsync", __FILE__, __LINE__);
    }
    return p;
  }
  void deallocate_in_order(void* p, void* stream) noexcept override {
    int previous = -1;  // device_guard throws; this may not
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    const bool switched = previous != index_ && cudaSetDevice(index_) == cudaSuccess;
    if (cudaFreeAsync(p, static_cast<cudaStream_t>(stream)) != cudaSuccess) static_cast<void>(cudaGetLastError());
    if (switched && previous >= 0) static_cast<void>(cudaSetDevice(previous));
  }

 private:
  int index_;
};

constexpr int k_max_devices = 64;

}  // namespace

memory_resource& device_memory(int index) {
  static std::array<std::unique_ptr<cuda_memory>, k_max_devices> all;
  static std::mutex lock;
  if (index < 0 || index >= k_max_devices) throw invalid_argument("cuda device index out of range: " + std::to_string(index));
  const std::lock_guard<std::mutex> hold(lock);
  auto& slot = all[static_cast<std::size_t>(index)];
  if (!slot) slot = std::make_unique<cuda_memory>(index);
  return *slot;
}

std::string device_unusable_reason(int index) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // clear the sticky "no device" state
    return std::string("no CUDA device: cudaGetDeviceCount says ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  }
  if (count == 0) return "no CUDA device: cudaGetDeviceCount says 0 devices";
  if (index >= count)
    return "cuda:" + std::to_string(index) + " does not exist (cudaGetDeviceCount says " + std::to_string(count) + ")";
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index) != cudaSuccess)
    return "cuda:" + std::to_string(index) + ": cannot read its compute capability";
  if (major < 8)
    return "requires compute capability >= 8.0 (Ampere or newer); cuda:" + std::to_string(index) + " has " +
           std::to_string(major) + "." + std::to_string(minor);
  return {};
}

}  // namespace attend::cuda
