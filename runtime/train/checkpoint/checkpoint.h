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
// Invalid checkpoints (issue 15): a step_* directory that LoadCheckpoint rejects (DataLoss or
// NotFound: a manifest that does not parse, a size or CRC-32C that does not match tensors.bin, a
// missing file) is never deleted and never counted. Retention and PrepareCheckpointDir rename it
// to step_<step>.invalid (step_<step>.invalid.1, .2, ... when that name is taken) with a WARNING
// giving the reason; that name is no checkpoint to any reader, so a person can inspect it.
//
// One writer per root at a time (the trainer's rank 0); not safe against concurrent writers.
//
// Test hook: with the environment variable SMOE_TEST_CRASH_BEFORE_RENAME=<step>, SaveCheckpoint
// of that step raises SIGKILL after its files are written and fsynced under tmp.step_*, before the
// rename that publishes them (tests/e2e/checkpoint_fault_test.sh, crash_before_rename). Other
// values and other steps are ignored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
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
  std::string config_text;    // the effective RunConfig (ConfigToText)
  int64_t step = 0;           // optimizer steps completed
  int64_t data_position = 0;  // where the data loader resumes
  uint64_t rng_seed = 0;      // Philox seed to resume with
  int64_t skipped_steps = 0;  // non-finite steps skipped so far
  double lr_scale = 1.0;      // product of the spike-rollback LR reductions so far
};

// "step_00000100" for step 100.
std::string CheckpointDirName(int64_t step);

// Writes the checkpoint of meta.step under `root` (created if missing) as described above, then
// applies retention when keep_last > 0 (0 keeps all and reads nothing): the new checkpoint is
// always kept; every other step_* directory is verified with LoadCheckpoint, newest first; an
// invalid one is moved aside (see above), and of the valid ones the newest keep_last - 1 are kept
// and the rest deleted. So at most keep_last valid checkpoints remain, and a valid one is never
// deleted while an invalid one is kept. Cost: each save with keep_last > 0 reads the blobs of the
// other checkpoints under root once.
// A checkpoint already present for the same step is replaced atomically.
// Names must be unique and non-empty; views contiguous; meta's scalars in the ranges LoadCheckpoint
// accepts. Device tensors are copied to the host
// (synchronizing ctx's stream). Errors: InvalidArgument for bad arguments (naming the tensor);
// for file-system failures (a full disk, RLIMIT_FSIZE: the process must ignore SIGXFSZ to get
// the error) the status of that failure, its message prefixed with the checkpoint being written
// and naming the path and the errno text; the checkpoints already under root are then untouched.
[[nodiscard]] Status SaveCheckpoint(ExecContext& ctx, const std::string& root,
                                    const CheckpointMeta& meta,
                                    const std::vector<NamedTensor>& tensors, int keep_last);

struct LoadedCheckpoint {
  std::string dir;  // the step_* directory
  CheckpointMeta meta;
  sigma_moe::proto::CheckpointManifest manifest;
};

// Reads and verifies the checkpoint in `dir` (a step_* directory): the manifest parses, its step
// matches the directory name, its scalars are in range (step, data_position, skipped_steps >= 0;
// lr_scale finite and > 0), tensors.bin has the recorded size, every tensor index entry has a
// known dtype and a size that its dtype and shape give (without overflow) and lies inside
// tensors.bin, and every tensor's bytes match their CRC-32C (reads the whole blob once). DataLoss
// or NotFound naming the file and the reason.
[[nodiscard]] StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir);

// The newest valid checkpoint under `root`. Invalid ones (manifest that does not parse, a failed
// checksum, a missing or truncated file) are reported with MOE_LOG(WARNING) and the reason and
// skipped in favour of the previous one (left where they are). Leftover tmp.* directories are
// ignored and removed. NotFound when root holds no valid checkpoint (or does not exist).
[[nodiscard]] StatusOr<LoadedCheckpoint> LoadLatestCheckpoint(const std::string& root);

// True for the codes with which LoadCheckpoint rejects a checkpoint as invalid (DataLoss,
// NotFound); other codes are failures to read it, which say nothing about the checkpoint.
bool IsInvalidCheckpoint(const Status& status);

// Renames the checkpoint directory `dir` to "<dir>.invalid", or "<dir>.invalid.<n>" with the
// smallest n >= 1 whose name is free, fsyncs its parent and logs a WARNING naming both paths and
// `reason`. Returns the new path. Internal with the path and the error text when the rename fails.
[[nodiscard]] StatusOr<std::string> MoveAsideInvalidCheckpoint(const std::string& dir,
                                                               absl::string_view reason);

// What a training run does with its checkpoint root before its first step (in a multi-rank run,
// rank 0 only; the others then LoadCheckpoint the directory it chose). Leftover tmp.* directories
// are removed first; then, with
//   resume = true: the step_* directories are verified newest first until a valid one, which is
//     returned; the invalid ones newer than it are moved aside (MoveAsideInvalidCheckpoint).
//     When root holds step_* directories and none is valid: FailedPrecondition naming each one
//     and what is wrong with it, and saying how to go on (move them out of root, or start fresh
//     with checkpoint.resume=false); nothing under root is changed then.
//   resume = false: every step_* directory is verified; the invalid ones are moved aside, the
//     valid ones left alone; returns NotFound (nothing to resume from).
// NotFound when root does not exist or holds no step_* directory. Errors reading a checkpoint
// other than its being invalid (IsInvalidCheckpoint) are returned as they are.
[[nodiscard]] StatusOr<LoadedCheckpoint> PrepareCheckpointDir(const std::string& root, bool resume);

// Copies each named tensor from `checkpoint` into the given contiguous views (on any device;
// synchronizes ctx's stream before returning). InvalidArgument naming the tensor when a name is
// missing from the checkpoint, or the dtype or shape differs; DataLoss if its bytes no longer
// match their checksum. Tensors of the checkpoint not asked for are ignored.
[[nodiscard]] Status RestoreTensors(ExecContext& ctx, const LoadedCheckpoint& checkpoint,
                                    const std::vector<NamedTensor>& tensors);

}  // namespace smoe
