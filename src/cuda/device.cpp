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
  // Note [Workspace under capture]. The guard picks the device whose legacy default stream a null
  // stream means. On that stream the query fails while another stream captures in global mode (an
  // implicit dependency), which is an error for the call that would queue work there anyway.
  bool capturing(void* stream) override {
    device_guard guard(index_);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    ATTEND_CUDA_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status));
    return status != cudaStreamCaptureStatusNone;  // active, or invalidated (the capture fails at its end)
  }
  void* allocate_in_order(std::size_t bytes, void* stream) override {
    device_guard guard(index_);
    void* p = nullptr;
    ATTEND_CUDA_CHECK(cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)));
    return p;
  }
  void deallocate_in_order(void* p, void* stream) noexcept override {
    static_cast<void>(cudaFreeAsync(p, static_cast<cudaStream_t>(stream)));
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
