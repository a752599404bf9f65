// Where tensors live and kernels run: the host CPU or CUDA device n.
#pragma once

#include <cstddef>
#include <string>

#include "runtime/core/status.h"

namespace smoe {

enum class DeviceType { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static Device Cpu() { return Device{DeviceType::kCpu, 0}; }
  static Device Cuda(int index = 0) { return Device{DeviceType::kCuda, index}; }
  bool is_cpu() const { return type == DeviceType::kCpu; }
  bool is_cuda() const { return type == DeviceType::kCuda; }
  std::string ToString() const;  // "cpu" or "cuda:0"

  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && (a.type == DeviceType::kCpu || a.index == b.index);
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

// True when this build has the CUDA backend.
bool BuiltWithCuda();
// Number of CUDA devices visible to this process (0 without the CUDA backend or a GPU).
int CudaDeviceCount();
// True when at least one GPU can run our kernels.
inline bool CudaAvailable() { return CudaDeviceCount() > 0; }

// Free and total memory of CUDA device `index` in bytes, as the driver reports them now
// (FailedPrecondition without the CUDA backend or the device).
struct DeviceMemory {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};
[[nodiscard]] StatusOr<DeviceMemory> CudaMemory(int index);

// Parses "cpu", "cuda" or "cuda:N"; the device must exist for CUDA.
[[nodiscard]] StatusOr<Device> ParseDevice(absl::string_view text);

}  // namespace smoe
