// Copies, fills, random fills and casts over TensorViews, on CPU and CUDA.
//
// All take contiguous views (checked) and enqueue on ctx's stream. Device-side work requires
// ctx.device() to match the tensors' device. Random fills are counter-based
// (runtime/core/philox.h): element i of `dst` takes stream position offset + i, so CPU and CUDA
// fill bit-identical values for the same (seed, offset), in f32; in bf16 the f32 value is rounded
// to nearest even.
#pragma once

#include <cstddef>
#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// dst = src. Same dtype and element count; any pair of devices. Copies that end on the host
// synchronize ctx's stream before returning (the data is ready to read); others are async.
// A host source may be changed or freed as soon as Copy returns: host-to-device copies of up to
// internal::kMaxStagedCopyBytes go through ctx.host_staging() (pinned; no host sync); larger
// ones synchronize ctx's stream (checkpoint loads, not the training loop).
[[nodiscard]] Status Copy(ExecContext& ctx, const TensorView& src, const TensorView& dst);
// A new contiguous tensor on `device` holding src's values.
[[nodiscard]] StatusOr<Tensor> CopyTo(ExecContext& ctx, const TensorView& src, Device device);
// Every element of dst = value (converted to dst's dtype; bf16 rounds to nearest even).
[[nodiscard]] Status Fill(ExecContext& ctx, const TensorView& dst, double value);
// Uniform in [low, high): low + (high - low) * u, u from PhiloxUniform. Floating dtypes only.
[[nodiscard]] Status FillUniform(ExecContext& ctx, const TensorView& dst, uint64_t seed,
                                 uint64_t offset, float low, float high);
// Normal: mean + stddev * z, z from PhiloxNormal. Floating dtypes only.
[[nodiscard]] Status FillNormal(ExecContext& ctx, const TensorView& dst, uint64_t seed,
                                uint64_t offset, float mean, float stddev);
// dst = src converted between f32 and bf16 (or a same-dtype copy); same device and element count.
[[nodiscard]] Status Cast(ExecContext& ctx, const TensorView& src, const TensorView& dst);

// out = a + alpha * b, elementwise over f32 or bf16 (one dtype), fp32 math; out may alias a or b.
[[nodiscard]] Status Axpy(ExecContext& ctx, const TensorView& a, float alpha, const TensorView& b,
                          const TensorView& out);

namespace internal {
inline constexpr size_t kMaxStagedCopyBytes = size_t{16} << 20;
// Backends, called after validation. Sizes are element counts; pointers are device pointers.
enum class RandomKind { kUniform, kNormal };
[[nodiscard]] Status FillCuda(ExecContext& ctx, const TensorView& dst, double value);
[[nodiscard]] Status FillRandomCuda(ExecContext& ctx, const TensorView& dst, RandomKind kind,
                                    uint64_t seed, uint64_t offset, float a, float b);
[[nodiscard]] Status AxpyCuda(ExecContext& ctx, const TensorView& a, float alpha,
                              const TensorView& b, const TensorView& out);
[[nodiscard]] Status CastCuda(ExecContext& ctx, const TensorView& src, const TensorView& dst);
}  // namespace internal

}  // namespace smoe
