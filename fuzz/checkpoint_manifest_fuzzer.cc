// Fuzz target: a checkpoint directory's manifest.textproto (with its tensor index) and tensors.bin,
// read by LoadCheckpoint and, when it says valid, restored with RestoreTensors.
//
// Input: <flags byte> <manifest text> [NUL <tensors.bin bytes>] (no NUL: tensors.bin is absent).
// CRC-32Cs and sizes are out of a fuzzer's reach, so flags may fix them up first in a manifest
// that parses (then re-printed): bit 0: each in-range tensor's crc32c; bit 1: tensors_file_size;
// bit 2: tensor_count; bit 3: the directory is "ckpt" (no step in its name, so the step check is
// skipped) instead of step_00000001.
//
// Checks: LoadCheckpoint says valid, or DataLoss/NotFound (its contract: the checkpoint is
// invalid); a valid one is usable: its meta has the ranges the trainer relies on (step,
// data_position and skipped_steps >= 0, lr_scale finite and > 0), each entry's extents multiply
// to its size without overflow and lie inside tensors.bin, and RestoreTensors into CPU tensors of
// the saved dtypes and shapes succeeds and gives the blob's bytes.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "runtime/core/dtype.h"
#include "runtime/device/exec_context.h"
#include "runtime/proto/checkpoint.pb.h"
#include "runtime/tensor/tensor.h"
#include "runtime/train/checkpoint/checkpoint.h"
#include "runtime/train/checkpoint/crc32c.h"
#include "runtime/train/config/config.h"

namespace {

using sigma_moe::proto::CheckpointManifest;
using sigma_moe::proto::TensorEntry;

// Restores are skipped for tensors larger than this (the fuzzer's inputs are small anyway).
constexpr uint64_t kMaxRestoreBytes = uint64_t{1} << 20;

class NoErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
};

std::string FixUp(std::string manifest_text, const std::string* blob, uint8_t flags) {
  if ((flags & 7) == 0) return manifest_text;
  CheckpointManifest manifest;
  NoErrors quiet;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&quiet);
  if (!parser.ParseFromString(manifest_text, &manifest)) {
    return manifest_text;
  }
  const uint64_t blob_size = blob == nullptr ? 0 : blob->size();
  if (flags & 1) {
    for (TensorEntry& entry : *manifest.mutable_tensors()) {
      if (blob != nullptr && entry.offset() <= blob_size &&
          entry.size() <= blob_size - entry.offset()) {
        entry.set_crc32c(smoe::Crc32c(blob->data() + entry.offset(), entry.size()));
      }
    }
  }
  if (flags & 2) manifest.set_tensors_file_size(blob_size);
  if (flags & 4) manifest.set_tensor_count(manifest.tensors_size());
  std::string text;
  FUZZ_CHECK(google::protobuf::TextFormat::PrintToString(manifest, &text));
  return text;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace smoe;
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const absl::string_view rest = fuzz::AsText(data + 1, size - 1);
  const size_t nul = rest.find('\0');
  std::string manifest_text(rest.substr(0, nul));
  std::string blob;
  const bool has_blob = nul != absl::string_view::npos;
  if (has_blob) blob = std::string(rest.substr(nul + 1));
  manifest_text = FixUp(std::move(manifest_text), has_blob ? &blob : nullptr, flags);

  static const std::string dirs[2] = {fuzz::ScratchDir() + "/step_00000001",
                                      fuzz::ScratchDir() + "/ckpt"};
  static const bool made = [] {
    for (const std::string& dir : dirs) {
      FUZZ_CHECK(std::filesystem::create_directories(dir)) << dir;
    }
    return true;
  }();
  (void)made;
  const std::string& dir = dirs[(flags >> 3) & 1];
  fuzz::WriteFileOrDie(dir + "/manifest.textproto", manifest_text);
  if (has_blob) {
    fuzz::WriteFileOrDie(dir + "/tensors.bin", blob);
  } else {
    fuzz::RemoveFile(dir + "/tensors.bin");
  }

  const StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(dir);
  if (!loaded.ok()) {
    FUZZ_CHECK(IsInvalidCheckpoint(loaded.status())) << loaded.status();
    return 0;
  }
  const CheckpointMeta& meta = loaded->meta;
  FUZZ_CHECK(meta.step >= 0) << meta.step;
  FUZZ_CHECK(meta.data_position >= 0) << meta.data_position;
  FUZZ_CHECK(meta.skipped_steps >= 0) << meta.skipped_steps;
  FUZZ_CHECK(std::isfinite(meta.lr_scale) && meta.lr_scale > 0) << meta.lr_scale;
  (void)ParseConfigText(meta.config_text, "manifest config_text");  // must not crash

  std::vector<Tensor> storage;
  std::vector<NamedTensor> restore;
  for (const TensorEntry& entry : loaded->manifest.tensors()) {
    const StatusOr<DType> dtype = ParseDType(entry.dtype());
    FUZZ_CHECK(dtype.ok()) << entry.dtype();
    uint64_t numel = 1;
    for (int64_t extent : entry.shape()) {
      FUZZ_CHECK(extent >= 0) << entry.name() << ": extent " << extent;
      FUZZ_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(extent), &numel))
          << entry.name() << ": the extents overflow";
    }
    uint64_t bytes = 0;
    FUZZ_CHECK(!__builtin_mul_overflow(numel, DTypeSize(*dtype), &bytes))
        << entry.name() << ": the size overflows";
    FUZZ_CHECK(bytes == entry.size()) << entry.name() << ": " << bytes << " vs " << entry.size();
    FUZZ_CHECK(entry.offset() <= blob.size() && entry.size() <= blob.size() - entry.offset());
    if (entry.size() > kMaxRestoreBytes) continue;
    StatusOr<Tensor> tensor =
        Tensor::Empty(Shape(entry.shape().begin(), entry.shape().end()), *dtype, Device::Cpu());
    FUZZ_CHECK(tensor.ok()) << tensor.status();
    restore.push_back({entry.name(), tensor->view()});
    storage.push_back(*std::move(tensor));
  }
  const Status restored = RestoreTensors(ExecContext::Cpu(), *loaded, restore);
  FUZZ_CHECK(restored.ok()) << restored;
  for (const NamedTensor& tensor : restore) {
    for (const TensorEntry& entry : loaded->manifest.tensors()) {
      if (entry.name() != tensor.name) continue;
      FUZZ_CHECK(entry.size() == 0 ||
                 std::memcmp(tensor.view.data(), blob.data() + entry.offset(), entry.size()) == 0)
          << tensor.name;
    }
  }
  return 0;
}
