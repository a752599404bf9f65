#include "runtime/train/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "runtime/core/logging.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/checkpoint/crc32c.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;
using sigma_moe::proto::CheckpointManifest;
using sigma_moe::proto::TensorEntry;

constexpr char kManifestFile[] = "manifest.textproto";
constexpr char kTensorsFile[] = "tensors.bin";
constexpr char kStepPrefix[] = "step_";
constexpr char kTempPrefix[] = "tmp.";
constexpr int kFormatVersion = 1;
constexpr uint64_t kAlignment = 64;
// Reads and checksums in chunks so that verifying a large blob needs little memory.
constexpr size_t kChunkBytes = size_t{1} << 22;

Status ErrnoError(absl::string_view what, const std::string& path, int error) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(error)));
}

// A file descriptor closed on destruction.
class File {
 public:
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }

  [[nodiscard]] Status Open(const std::string& path, int flags) {
    path_ = path;
    fd_ = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoError("cannot open", path, errno);
    return absl::OkStatus();
  }

  [[nodiscard]] Status Write(const void* data, size_t size) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, bytes, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("cannot write", path_, errno);
      }
      bytes += n;
      size -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  // Reads exactly `size` bytes at `offset`; DataLoss when the file ends first.
  [[nodiscard]] Status ReadAt(void* data, size_t size, uint64_t offset) {
    char* bytes = static_cast<char*>(data);
    while (size > 0) {
      const ssize_t n = ::pread(fd_, bytes, size, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("cannot read", path_, errno);
      }
      if (n == 0) {
        return absl::DataLossError(absl::StrCat(path_, ": ends before byte ", offset + size));
      }
      bytes += n;
      size -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
    return absl::OkStatus();
  }

  [[nodiscard]] Status Sync() {
    if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", path_, errno);
    return absl::OkStatus();
  }

  [[nodiscard]] StatusOr<uint64_t> Size() {
    struct stat info;
    if (::fstat(fd_, &info) != 0) return ErrnoError("cannot stat", path_, errno);
    return static_cast<uint64_t>(info.st_size);
  }

  [[nodiscard]] Status Close() {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoError("cannot close", path_, errno);
    return absl::OkStatus();
  }

 private:
  int fd_ = -1;
  std::string path_;
};

// fsync of a directory makes the creation, rename or removal of its entries durable.
Status SyncDirectory(const std::string& path) {
  File dir;
  MOE_RETURN_IF_ERROR(dir.Open(path, O_RDONLY | O_DIRECTORY));
  MOE_RETURN_IF_ERROR(dir.Sync());
  return dir.Close();
}

Status FsError(absl::string_view what, const fs::path& path, const std::error_code& error) {
  return absl::InternalError(absl::StrCat(what, " ", path.string(), ": ", error.message()));
}

// The step of a directory named step_<digits>, or -1.
int64_t StepOfDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, kStepPrefix) || name.empty()) return -1;
  if (!std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  int64_t step = -1;
  return absl::SimpleAtoi(name, &step) ? step : -1;
}

// step_* directories under root, newest first.
StatusOr<std::vector<std::pair<int64_t, fs::path>>> ListCheckpointDirs(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> dirs;
  std::error_code error;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    const int64_t step = StepOfDirName(it->path().filename().string());
    if (step >= 0 && it->is_directory()) dirs.emplace_back(step, it->path());
  }
  if (error) return FsError("cannot list", root, error);
  std::sort(dirs.begin(), dirs.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return dirs;
}

Status RemoveAll(const fs::path& path) {
  std::error_code error;
  fs::remove_all(path, error);
  if (error) return FsError("cannot remove", path, error);
  return absl::OkStatus();
}

Status ValidateTensors(const std::vector<NamedTensor>& tensors) {
  std::set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensor& tensor = tensors[i];
    if (tensor.name.empty()) {
      return BadArgument(absl::StrCat("tensors[", i, "].name"), "\"\"", "a non-empty name");
    }
    if (!names.insert(tensor.name).second) {
      return BadArgument(absl::StrCat("tensor ", tensor.name), "a second tensor of that name",
                         "unique names");
    }
    MOE_RETURN_IF_ERROR(CheckContiguous(absl::StrCat("tensor ", tensor.name), tensor.view));
    if (tensor.view.numel() > 0 && tensor.view.data() == nullptr) {
      return BadArgument(absl::StrCat("tensor ", tensor.name), "a null data pointer",
                         "data for a non-empty tensor");
    }
  }
  return absl::OkStatus();
}

// The bytes of `view` on the host: the view's own memory when it is on the CPU, else a copy.
StatusOr<const void*> HostBytes(ExecContext& ctx, const TensorView& view, Tensor* staging) {
  if (view.device().is_cpu() || view.numel() == 0) return static_cast<const void*>(view.data());
  MOE_ASSIGN_OR_RETURN(*staging, CopyTo(ctx, view, Device::Cpu()));
  return static_cast<const void*>(staging->data());
}

Status WriteCheckpointFiles(ExecContext& ctx, const fs::path& dir, const CheckpointMeta& meta,
                            const std::vector<NamedTensor>& tensors) {
  CheckpointManifest manifest;
  manifest.set_format_version(kFormatVersion);
  manifest.set_step(meta.step);
  manifest.set_data_position(meta.data_position);
  manifest.set_rng_seed(meta.rng_seed);
  manifest.set_skipped_steps(meta.skipped_steps);
  manifest.set_lr_scale(meta.lr_scale);
  manifest.set_config_text(meta.config_text);
  manifest.set_tensors_file(kTensorsFile);

  const std::string blob_path = (dir / kTensorsFile).string();
  File blob;
  MOE_RETURN_IF_ERROR(blob.Open(blob_path, O_WRONLY | O_CREAT | O_TRUNC));
  const char zeros[kAlignment] = {};
  uint64_t offset = 0;
  for (const NamedTensor& tensor : tensors) {
    const uint64_t padding = (kAlignment - offset % kAlignment) % kAlignment;
    MOE_RETURN_IF_ERROR(blob.Write(zeros, padding));
    offset += padding;
    Tensor staging;
    MOE_ASSIGN_OR_RETURN(const void* bytes, HostBytes(ctx, tensor.view, &staging));
    const size_t size = tensor.view.nbytes();
    MOE_RETURN_IF_ERROR(blob.Write(bytes, size));

    TensorEntry* entry = manifest.add_tensors();
    entry->set_name(tensor.name);
    entry->set_dtype(std::string(DTypeName(tensor.view.dtype())));
    for (int64_t extent : tensor.view.shape()) entry->add_shape(extent);
    entry->set_offset(offset);
    entry->set_size(size);
    entry->set_crc32c(Crc32c(bytes, size));
    offset += size;
  }
  MOE_RETURN_IF_ERROR(blob.Sync());
  MOE_RETURN_IF_ERROR(blob.Close());
  manifest.set_tensors_file_size(offset);
  manifest.set_tensor_count(manifest.tensors_size());

  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(manifest, &text)) {
    return absl::InternalError("cannot print the checkpoint manifest");
  }
  File manifest_file;
  MOE_RETURN_IF_ERROR(
      manifest_file.Open((dir / kManifestFile).string(), O_WRONLY | O_CREAT | O_TRUNC));
  MOE_RETURN_IF_ERROR(manifest_file.Write(text.data(), text.size()));
  MOE_RETURN_IF_ERROR(manifest_file.Sync());
  MOE_RETURN_IF_ERROR(manifest_file.Close());
  return SyncDirectory(dir.string());
}

// Retention (see SaveCheckpoint in the header). `written`, just saved, is kept unread.
Status Prune(const fs::path& root, int keep_last, const fs::path& written) {
  if (keep_last <= 0) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(auto dirs, ListCheckpointDirs(root));
  int kept = 1;  // `written`
  for (const auto& [step, dir] : dirs) {
    if (dir == written) continue;
    StatusOr<LoadedCheckpoint> checkpoint = LoadCheckpoint(dir.string());
    if (!checkpoint.ok()) {
      if (!IsInvalidCheckpoint(checkpoint.status())) return checkpoint.status();
      MOE_RETURN_IF_ERROR(
          MoveAsideInvalidCheckpoint(dir.string(), checkpoint.status().message()).status());
      continue;
    }
    if (kept < keep_last) {
      ++kept;
      continue;
    }
    MOE_RETURN_IF_ERROR(RemoveAll(dir));
  }
  return SyncDirectory(root.string());
}

// Removes the tmp.* directories a crash left under root (logged; a failure only warns).
void RemoveLeftoverTemps(const fs::path& root) {
  std::error_code error;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    if (absl::StartsWith(it->path().filename().string(), kTempPrefix)) {
      MOE_LOG(INFO) << "removing leftover temporary checkpoint " << it->path().string();
      if (Status status = RemoveAll(it->path()); !status.ok()) {
        MOE_LOG(WARNING) << status.message();
      }
    }
  }
}

// The same status with `context` before its message.
Status WithContext(const Status& status, absl::string_view context) {
  return Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

// SMOE_TEST_CRASH_BEFORE_RENAME=<step> (see the header): dies as in a power cut, just before the
// rename that publishes the checkpoint.
void MaybeCrashBeforeRename(int64_t step) {
  const char* value = std::getenv("SMOE_TEST_CRASH_BEFORE_RENAME");
  int64_t crash_step = -1;
  if (value != nullptr && absl::SimpleAtoi(value, &crash_step) && crash_step == step) {
    MOE_LOG(WARNING) << "SMOE_TEST_CRASH_BEFORE_RENAME=" << value
                     << ": raising SIGKILL before publishing the checkpoint of step " << step;
    ::raise(SIGKILL);
  }
}

class ManifestErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit ManifestErrors(std::string path) : path_(std::move(path)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors_.push_back(absl::StrCat(path_, ":", line + 1, ":", column + 1, ": ", message));
  }
  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::string path_;
  std::vector<std::string> errors_;
};

StatusOr<std::string> ReadSmallFile(const std::string& path) {
  File file;
  if (Status status = file.Open(path, O_RDONLY); !status.ok()) {
    return absl::NotFoundError(status.message());
  }
  MOE_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  std::string text(size, '\0');
  MOE_RETURN_IF_ERROR(file.ReadAt(text.data(), text.size(), 0));
  return text;
}

// Checks that entry describes a tensor that fits in a blob of `blob_size` bytes.
Status CheckEntry(const std::string& manifest_path, const TensorEntry& entry, uint64_t blob_size) {
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": tensor ", entry.name(), ": ", why));
  };
  StatusOr<DType> dtype = ParseDType(entry.dtype());
  if (!dtype.ok()) return bad(absl::StrCat("unknown dtype \"", entry.dtype(), "\""));
  // In uint64 with overflow checks: wrapped around, a product of huge extents could equal a
  // small size and pass for a tensor no allocation can hold.
  uint64_t numel = 1;
  for (int64_t extent : entry.shape()) {
    if (extent < 0) return bad("negative extent");
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(extent), &numel)) {
      return bad(absl::StrCat("shape [", absl::StrJoin(entry.shape(), ", "), "] overflows"));
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, uint64_t{DTypeSize(*dtype)}, &bytes) || bytes != entry.size()) {
    return bad(absl::StrCat("size ", entry.size(), " does not match its dtype and shape"));
  }
  if (entry.offset() > blob_size || entry.size() > blob_size - entry.offset()) {
    return bad(absl::StrCat("bytes [", entry.offset(), ", ", entry.offset() + entry.size(),
                            ") outside ", kTensorsFile, " of ", blob_size, " bytes"));
  }
  return absl::OkStatus();
}

StatusOr<uint32_t> ChecksumRange(File& blob, uint64_t offset, uint64_t size) {
  std::vector<char> buffer(static_cast<size_t>(std::min<uint64_t>(size, kChunkBytes)));
  uint32_t crc = 0;
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, buffer.size()));
    MOE_RETURN_IF_ERROR(blob.ReadAt(buffer.data(), n, offset));
    crc = Crc32c(buffer.data(), n, crc);
    offset += n;
    size -= n;
  }
  return crc;
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("%s%08d", kStepPrefix, step); }

Status SaveCheckpoint(ExecContext& ctx, const std::string& root, const CheckpointMeta& meta,
                      const std::vector<NamedTensor>& tensors, int keep_last) {
  if (root.empty()) return BadArgument("root", "\"\"", "a directory");
  if (meta.step < 0) return BadArgument("meta.step", absl::StrCat(meta.step), ">= 0");
  if (meta.data_position < 0) {
    return BadArgument("meta.data_position", absl::StrCat(meta.data_position), ">= 0");
  }
  if (meta.skipped_steps < 0) {
    return BadArgument("meta.skipped_steps", absl::StrCat(meta.skipped_steps), ">= 0");
  }
  if (!std::isfinite(meta.lr_scale) || meta.lr_scale <= 0) {
    return BadArgument("meta.lr_scale", absl::StrCat(meta.lr_scale), "finite and > 0");
  }
  if (keep_last < 0) return BadArgument("keep_last", absl::StrCat(keep_last), ">= 0");
  MOE_RETURN_IF_ERROR(ValidateTensors(tensors));

  const fs::path root_path(root);
  std::error_code error;
  fs::create_directories(root_path, error);
  if (error) return FsError("cannot create", root_path, error);

  const std::string name = CheckpointDirName(meta.step);
  const fs::path temp = root_path / absl::StrCat(kTempPrefix, name, ".", ::getpid());
  const fs::path final_dir = root_path / name;
  MOE_RETURN_IF_ERROR(RemoveAll(temp));
  fs::create_directory(temp, error);
  if (error) return FsError("cannot create", temp, error);
  if (Status status = WriteCheckpointFiles(ctx, temp, meta, tensors); !status.ok()) {
    (void)RemoveAll(temp);
    return WithContext(status, absl::StrCat("checkpoint ", name, " not written under ", root,
                                            " (the checkpoints already there are untouched)"));
  }
  MaybeCrashBeforeRename(meta.step);

  // rename() cannot replace a non-empty directory: move an existing checkpoint of this step aside
  // first. A crash in between leaves the new one complete under its tmp.* name and the old one
  // under another tmp.* name; both are then ignored, and the previous step is used.
  fs::path replaced;
  if (fs::exists(final_dir, error)) {
    replaced = root_path / absl::StrCat(kTempPrefix, name, ".", ::getpid(), ".replaced");
    MOE_RETURN_IF_ERROR(RemoveAll(replaced));
    fs::rename(final_dir, replaced, error);
    if (error) return FsError("cannot rename", final_dir, error);
  }
  fs::rename(temp, final_dir, error);
  if (error) return FsError("cannot rename", temp, error);
  MOE_RETURN_IF_ERROR(SyncDirectory(root));
  if (!replaced.empty()) MOE_RETURN_IF_ERROR(RemoveAll(replaced));
  return Prune(root_path, keep_last, final_dir);
}

StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir) {
  const fs::path dir_path(dir);
  const std::string manifest_path = (dir_path / kManifestFile).string();
  MOE_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(manifest_path));
  if (text.empty()) return absl::DataLossError(absl::StrCat(manifest_path, ": empty file"));

  LoadedCheckpoint checkpoint;
  checkpoint.dir = dir;
  CheckpointManifest& manifest = checkpoint.manifest;
  ManifestErrors errors(manifest_path);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &manifest)) {
    return absl::DataLossError(absl::StrCat("cannot parse manifest: ", errors.Joined()));
  }
  if (manifest.format_version() != kFormatVersion) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": format_version ",
                                            manifest.format_version(), ", expected ",
                                            kFormatVersion));
  }
  if (manifest.tensor_count() != manifest.tensors_size()) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": ", manifest.tensors_size(),
                                            " tensors, tensor_count says ", manifest.tensor_count(),
                                            " (truncated?)"));
  }
  const int64_t dir_step = StepOfDirName(dir_path.filename().string());
  if (dir_step >= 0 && dir_step != manifest.step()) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": step ", manifest.step(),
                                            " does not match the directory name"));
  }
  // The scalars a resume takes over (the manifest has no checksum of its own): a value no run
  // writes would make the trainer abort (a negative data position) or train with a zero or
  // non-finite learning rate.
  auto out_of_range = [&](absl::string_view field, absl::string_view value,
                          absl::string_view expected) {
    return absl::DataLossError(
        absl::StrCat(manifest_path, ": ", field, " ", value, ", expected ", expected));
  };
  if (manifest.step() < 0) return out_of_range("step", absl::StrCat(manifest.step()), ">= 0");
  if (manifest.data_position() < 0) {
    return out_of_range("data_position", absl::StrCat(manifest.data_position()), ">= 0");
  }
  if (manifest.skipped_steps() < 0) {
    return out_of_range("skipped_steps", absl::StrCat(manifest.skipped_steps()), ">= 0");
  }
  if (!std::isfinite(manifest.lr_scale()) || manifest.lr_scale() <= 0) {
    return out_of_range("lr_scale", absl::StrCat(manifest.lr_scale()), "finite and > 0");
  }
  if (manifest.tensors_file() != kTensorsFile) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": tensors_file \"",
                                            manifest.tensors_file(), "\", expected ",
                                            kTensorsFile));
  }

  const std::string blob_path = (dir_path / kTensorsFile).string();
  File blob;
  if (Status status = blob.Open(blob_path, O_RDONLY); !status.ok()) {
    return absl::NotFoundError(status.message());
  }
  MOE_ASSIGN_OR_RETURN(uint64_t blob_size, blob.Size());
  if (blob_size != manifest.tensors_file_size()) {
    return absl::DataLossError(absl::StrCat(blob_path, ": ", blob_size, " bytes, manifest says ",
                                            manifest.tensors_file_size()));
  }
  std::set<std::string> names;
  for (const TensorEntry& entry : manifest.tensors()) {
    MOE_RETURN_IF_ERROR(CheckEntry(manifest_path, entry, blob_size));
    if (!names.insert(entry.name()).second) {
      return absl::DataLossError(
          absl::StrCat(manifest_path, ": tensor ", entry.name(), " listed twice"));
    }
    MOE_ASSIGN_OR_RETURN(uint32_t crc, ChecksumRange(blob, entry.offset(), entry.size()));
    if (crc != entry.crc32c()) {
      return absl::DataLossError(absl::StrFormat("%s: tensor %s: CRC-32C %08x, manifest says %08x",
                                                 blob_path, entry.name(), crc, entry.crc32c()));
    }
  }

  CheckpointMeta& meta = checkpoint.meta;
  meta.config_text = manifest.config_text();
  meta.step = manifest.step();
  meta.data_position = manifest.data_position();
  meta.rng_seed = manifest.rng_seed();
  meta.skipped_steps = manifest.skipped_steps();
  meta.lr_scale = manifest.lr_scale();
  return checkpoint;
}

StatusOr<LoadedCheckpoint> LoadLatestCheckpoint(const std::string& root) {
  const fs::path root_path(root);
  std::error_code error;
  if (!fs::is_directory(root_path, error)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint directory ", root));
  }
  RemoveLeftoverTemps(root_path);
  MOE_ASSIGN_OR_RETURN(auto dirs, ListCheckpointDirs(root_path));
  for (const auto& [step, dir] : dirs) {
    StatusOr<LoadedCheckpoint> checkpoint = LoadCheckpoint(dir.string());
    if (checkpoint.ok()) return checkpoint;
    MOE_LOG(WARNING) << "skipping invalid checkpoint " << dir.string() << ": "
                     << checkpoint.status().message();
  }
  return absl::NotFoundError(
      absl::StrCat("no valid checkpoint under ", root, " (", dirs.size(), " invalid)"));
}

bool IsInvalidCheckpoint(const Status& status) {
  return absl::IsDataLoss(status) || absl::IsNotFound(status);
}

StatusOr<std::string> MoveAsideInvalidCheckpoint(const std::string& dir, absl::string_view reason) {
  const fs::path from(dir);
  const std::string base = absl::StrCat(from.filename().string(), ".invalid");
  fs::path to = from.parent_path() / base;
  std::error_code error;
  // rename() would silently replace an empty directory of the chosen name: take a free one.
  for (int n = 1;; ++n) {
    const bool taken = fs::exists(to, error);
    if (error) return FsError("cannot check", to, error);
    if (!taken) break;
    to = from.parent_path() / absl::StrCat(base, ".", n);
  }
  fs::rename(from, to, error);
  if (error) return FsError("cannot move aside the invalid checkpoint", from, error);
  MOE_RETURN_IF_ERROR(SyncDirectory(from.parent_path().string()));
  MOE_LOG(WARNING) << "invalid checkpoint " << from.string() << " (" << reason
                   << ") moved aside to " << to.string() << " (not deleted; it is no longer read)";
  return to.string();
}

StatusOr<LoadedCheckpoint> PrepareCheckpointDir(const std::string& root, bool resume) {
  const fs::path root_path(root);
  std::error_code error;
  if (!fs::is_directory(root_path, error)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint directory ", root));
  }
  RemoveLeftoverTemps(root_path);
  MOE_ASSIGN_OR_RETURN(auto dirs, ListCheckpointDirs(root_path));
  std::vector<std::pair<fs::path, Status>> invalid;
  StatusOr<LoadedCheckpoint> chosen = absl::NotFoundError(
      resume ? absl::StrCat("no checkpoint under ", root)
             : absl::StrCat("not resuming (checkpoint.resume is false) from ", root));
  for (const auto& [step, dir] : dirs) {
    StatusOr<LoadedCheckpoint> checkpoint = LoadCheckpoint(dir.string());
    if (checkpoint.ok()) {
      if (!resume) continue;
      chosen = *std::move(checkpoint);
      break;
    }
    if (!IsInvalidCheckpoint(checkpoint.status())) return checkpoint.status();
    invalid.emplace_back(dir, checkpoint.status());
  }
  if (resume && !chosen.ok() && !invalid.empty()) {
    std::string list;
    for (const auto& [dir, status] : invalid) {
      absl::StrAppend(&list, "\n  ", dir.string(), ": ", status.message());
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint.dir ", root, " holds ", invalid.size(),
        " checkpoint(s) and none is valid:", list,
        "\nNothing was changed and no step was trained. To go on, either move them out of ", root,
        " (to inspect them, or to resume from another copy put there), or start from step "
        "0 on purpose with --set checkpoint.resume=false (they are then moved aside as "
        "step_*.invalid, not deleted)."));
  }
  for (const auto& [dir, status] : invalid) {
    MOE_RETURN_IF_ERROR(MoveAsideInvalidCheckpoint(dir.string(), status.message()).status());
  }
  return chosen;
}

Status RestoreTensors(ExecContext& ctx, const LoadedCheckpoint& checkpoint,
                      const std::vector<NamedTensor>& tensors) {
  std::map<std::string, const TensorEntry*> entries;
  for (const TensorEntry& entry : checkpoint.manifest.tensors()) entries[entry.name()] = &entry;

  const std::string blob_path = (fs::path(checkpoint.dir) / kTensorsFile).string();
  File blob;
  MOE_RETURN_IF_ERROR(blob.Open(blob_path, O_RDONLY));
  for (const NamedTensor& tensor : tensors) {
    const std::string field = absl::StrCat("tensor ", tensor.name);
    auto found = entries.find(tensor.name);
    if (found == entries.end()) {
      return BadArgument(field, absl::StrCat("no such tensor in ", checkpoint.dir),
                         "a tensor saved in the checkpoint");
    }
    const TensorEntry& entry = *found->second;
    const absl::string_view dtype_name = DTypeName(tensor.view.dtype());
    if (entry.dtype() != dtype_name) {
      return BadArgument(absl::StrCat(field, " dtype"), dtype_name,
                         absl::StrCat(entry.dtype(), " (as saved)"));
    }
    const Shape saved(entry.shape().begin(), entry.shape().end());
    if (saved != tensor.view.shape()) {
      return BadArgument(absl::StrCat(field, " shape"), tensor.view.shape().ToString(),
                         absl::StrCat(saved.ToString(), " (as saved)"));
    }
    MOE_RETURN_IF_ERROR(CheckContiguous(field, tensor.view));
    if (tensor.view.numel() == 0) continue;

    Tensor staging;
    void* host = tensor.view.data();
    if (!tensor.view.device().is_cpu()) {
      MOE_ASSIGN_OR_RETURN(staging, Tensor::Empty(saved, tensor.view.dtype(), Device::Cpu()));
      host = staging.data();
    }
    MOE_RETURN_IF_ERROR(blob.ReadAt(host, entry.size(), entry.offset()));
    if (Crc32c(host, entry.size()) != entry.crc32c()) {
      return absl::DataLossError(
          absl::StrCat(blob_path, ": tensor ", tensor.name, ": checksum mismatch on restore"));
    }
    if (!tensor.view.device().is_cpu()) {
      MOE_RETURN_IF_ERROR(Copy(ctx, staging.view(), tensor.view));
      // The copy may still read `staging`, which is freed at the end of this iteration.
      MOE_RETURN_IF_ERROR(ctx.Synchronize());
    }
  }
  return absl::OkStatus();
}

}  // namespace smoe
