// Crash-safe training checkpoints: one directory per step, a textproto manifest and a tensor blob.
//
// Layout: <root>/step_<8-digit step>/
//   manifest.textproto  sigma_moe.proto.CheckpointManifest (runtime/proto/checkpoint.proto): the
//                       config text, step, data position, RNG seed, skipped steps, LR scale, and
//                       per tensor: name, dtype, shape, byte offset, byte size, CRC-32C.
//   tensors.bin         the tensors back to back (64-byte aligned offsets), contiguous row-major,
//                       host byte order (little-endian), in the global logical layout.
//
// Crash safety: a checkpoint is written into <root>/tmp.step_<step>.<pid>/, both files and that
// directory are fsynced, it is renamed to step_<step> and root is fsynced. A crash leaves either
// the old set of checkpoints or the new one plus possibly a tmp.* directory, which readers ignore
// and LoadLatestCheckpoint removes. Readers trust nothing: every manifest is parsed and every
// tensor's CRC-32C checked before a checkpoint counts as valid.
//
// One writer per root at a time (the trainer's rank 0); not safe against concurrent writers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/proto/checkpoint.pb.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// A tensor to save or restore. The view must be contiguous; it may live on any device (it is
// copied through a host buffer with the ExecContext).
struct NamedTensor {
  std::string name;
  TensorView view;
};

// Scalar training state saved beside the tensors.
struct CheckpointMeta {
  std::string config_text;   // the effective RunConfig (ConfigToText)
  int64_t step = 0;          // optimizer steps completed
  int64_t data_position = 0; // where the data loader resumes
  uint64_t rng_seed = 0;     // Philox seed to resume with
  int64_t skipped_steps = 0; // non-finite steps skipped so far
  double lr_scale = 1.0;     // product of the spike-rollback LR reductions so far
};

// "step_00000100" for step 100.
std::string CheckpointDirName(int64_t step);

// Writes the checkpoint of meta.step under `root` (created if missing) as described above, then
// deletes the oldest step_* directories so that at most `keep_last` remain (0 keeps all).
// A checkpoint already present for the same step is replaced atomically.
// Names must be unique and non-empty; views contiguous. Device tensors are copied to the host
// (synchronizing ctx's stream). Errors: InvalidArgument for bad arguments (naming the tensor),
// Internal/DataLoss with the path and errno text for file-system failures.
[[nodiscard]] Status SaveCheckpoint(ExecContext& ctx, const std::string& root,
                                    const CheckpointMeta& meta,
                                    const std::vector<NamedTensor>& tensors, int keep_last);

struct LoadedCheckpoint {
  std::string dir;  // the step_* directory
  CheckpointMeta meta;
  sigma_moe::proto::CheckpointManifest manifest;
};

// Reads and verifies the checkpoint in `dir` (a step_* directory): the manifest parses, its step
// matches the directory name, tensors.bin has the recorded size, and every tensor's bytes match
// their CRC-32C (reads the whole blob once). DataLoss or NotFound naming the file and the reason.
[[nodiscard]] StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir);

// The newest valid checkpoint under `root`. Invalid ones (manifest that does not parse, a failed
// checksum, a missing or truncated file) are reported with MOE_LOG(WARNING) and the reason and
// skipped in favour of the previous one. Leftover tmp.* directories are ignored and removed.
// NotFound when root holds no valid checkpoint (or does not exist).
[[nodiscard]] StatusOr<LoadedCheckpoint> LoadLatestCheckpoint(const std::string& root);

// Copies each named tensor from `checkpoint` into the given contiguous views (on any device;
// synchronizes ctx's stream before returning). InvalidArgument naming the tensor when a name is
// missing from the checkpoint, or the dtype or shape differs; DataLoss if its bytes no longer
// match their checksum. Tensors of the checkpoint not asked for are ignored.
[[nodiscard]] Status RestoreTensors(ExecContext& ctx, const LoadedCheckpoint& checkpoint,
                                    const std::vector<NamedTensor>& tensors);

}  // namespace smoe
