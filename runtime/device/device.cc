#include "runtime/device/device.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace smoe {

std::string Device::ToString() const {
  return is_cpu() ? std::string("cpu") : absl::StrCat("cuda:", index);
}

bool BuiltWithCuda() {
#if MOE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDeviceCount() {
#if MOE_WITH_CUDA
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

StatusOr<DeviceMemory> CudaMemory(int index) {
  if (index < 0 || index >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device ", index, " (", CudaDeviceCount(), " visible)"));
  }
#if MOE_WITH_CUDA
  int previous = 0;
  DeviceMemory memory;
  if (cudaGetDevice(&previous) != cudaSuccess || cudaSetDevice(index) != cudaSuccess ||
      cudaMemGetInfo(&memory.free_bytes, &memory.total_bytes) != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read the memory of cuda:", index, ": ", cudaGetErrorString(cudaGetLastError())));
  }
  cudaSetDevice(previous);
  return memory;
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

StatusOr<Device> ParseDevice(absl::string_view text) {
  if (text == "cpu") return Device::Cpu();
  absl::string_view rest = text;
  if (!absl::ConsumePrefix(&rest, "cuda")) {
    return BadArgument("device", text, "cpu, cuda or cuda:N");
  }
  int index = 0;
  if (!rest.empty() && !(absl::ConsumePrefix(&rest, ":") && absl::SimpleAtoi(rest, &index))) {
    return BadArgument("device", text, "cpu, cuda or cuda:N");
  }
  if (index < 0 || index >= CudaDeviceCount()) {
    return BadArgument("device", text,
                       absl::StrCat("a visible CUDA device (", CudaDeviceCount(), " visible)"));
  }
  return Device::Cuda(index);
}

}  // namespace smoe
