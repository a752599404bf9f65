#include "runtime/train/data/dataset.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/train/data/synthetic_corpus.h"

namespace smoe {
namespace {

void CheckRange(const TokenSource& source, int64_t begin, int64_t n) {
  MOE_CHECK(begin >= 0 && n >= 0 && begin + n <= source.size())
      << source.name() << ": read [" << begin << ", " << begin + n << ") of " << source.size();
}

// Bytes as tokens: the synthetic corpus and text files.
class ByteSource final : public TokenSource {
 public:
  ByteSource(std::string name, std::string bytes)
      : name_(std::move(name)), bytes_(std::move(bytes)) {}
  int64_t size() const override { return static_cast<int64_t>(bytes_.size()); }
  int vocab_size() const override { return 256; }
  std::string name() const override { return name_; }
  void Read(int64_t begin, int64_t n, int32_t* out) const override {
    CheckRange(*this, begin, n);
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(bytes_[begin + i]);
  }

 private:
  std::string name_;
  std::string bytes_;
};

template <typename T>
class VectorSource final : public TokenSource {
 public:
  VectorSource(std::string name, std::vector<T> tokens, int vocab_size)
      : name_(std::move(name)), tokens_(std::move(tokens)), vocab_size_(vocab_size) {}
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  int vocab_size() const override { return vocab_size_; }
  std::string name() const override { return name_; }
  void Read(int64_t begin, int64_t n, int32_t* out) const override {
    CheckRange(*this, begin, n);
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(tokens_[begin + i]);
  }

 private:
  std::string name_;
  std::vector<T> tokens_;
  int vocab_size_;
};

StatusOr<std::string> ReadFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int error = errno;
    const std::string message = absl::StrCat(path, ": cannot open: ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  std::string bytes;
  char buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), file)) > 0) bytes.append(buffer, got);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": read error at byte ", bytes.size()));
  }
  return bytes;
}

uint32_t LoadU32(const std::string& bytes, size_t offset) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[offset + i]);
  return v;
}

}  // namespace

StatusOr<std::unique_ptr<TokenSource>> SyntheticSource(uint64_t seed, int split,
                                                       int64_t num_bytes) {
  if (split < 0) return BadArgument("synthetic corpus split", absl::StrCat(split), ">= 0");
  if (num_bytes < 1) {
    return BadArgument("synthetic corpus num_bytes", absl::StrCat(num_bytes), ">= 1");
  }
  const char* split_name = split == kTrainSplit     ? "train"
                           : split == kHeldoutSplit ? "heldout"
                                                    : nullptr;
  std::string name = split_name != nullptr ? absl::StrCat("synthetic:", split_name)
                                           : absl::StrCat("synthetic:split", split);
  return std::unique_ptr<TokenSource>(
      std::make_unique<ByteSource>(std::move(name), GenerateSyntheticText(seed, split, num_bytes)));
}

StatusOr<std::unique_ptr<TokenSource>> TextFileSource(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": empty file (0 bytes), expected text"));
  }
  return std::unique_ptr<TokenSource>(std::make_unique<ByteSource>(path, std::move(bytes)));
}

StatusOr<std::unique_ptr<TokenSource>> TokenFileSource(const std::string& path, int vocab_size) {
  if (vocab_size < 1 || vocab_size > 65536) {
    return BadArgument(absl::StrCat(path, ": vocab_size"), absl::StrCat(vocab_size),
                       "in [1, 65536] (uint16 token ids)");
  }
  MOE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  const int64_t file_bytes = static_cast<int64_t>(bytes.size());
  if (file_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": empty file (0 bytes), expected an llm.c token file"));
  }
  if (file_bytes < kTokenFileHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header: ", file_bytes,
                                                   " bytes, expected ", kTokenFileHeaderBytes));
  }
  const int32_t magic = static_cast<int32_t>(LoadU32(bytes, 0));
  if (magic != kTokenFileMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": bad magic at byte 0: got ", magic, ", expected ", kTokenFileMagic));
  }
  const int32_t version = static_cast<int32_t>(LoadU32(bytes, 4));
  if (version != kTokenFileVersion) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported version at byte 4: got ",
                                                   version, ", expected ", kTokenFileVersion,
                                                   " (uint16 tokens)"));
  }
  const int64_t num_tokens = static_cast<int32_t>(LoadU32(bytes, 8));
  if (num_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": num_tokens at byte 8: got ", num_tokens, ", expected >= 1"));
  }
  const int64_t expected_bytes = kTokenFileHeaderBytes + 2 * num_tokens;
  if (file_bytes < expected_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated token data: header says ", num_tokens, " tokens (",
                     expected_bytes, " bytes), file ends at byte ", file_bytes, " inside token ",
                     (file_bytes - kTokenFileHeaderBytes) / 2));
  }
  if (file_bytes > expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": trailing data: header says ",
                                                   num_tokens, " tokens (", expected_bytes,
                                                   " bytes), got ", file_bytes, " bytes"));
  }
  std::vector<uint16_t> tokens(num_tokens);
  for (int64_t i = 0; i < num_tokens; ++i) {
    const size_t offset = kTokenFileHeaderBytes + 2 * i;
    const uint16_t token = static_cast<uint16_t>(static_cast<uint8_t>(bytes[offset]) |
                                                 (static_cast<uint8_t>(bytes[offset + 1]) << 8));
    if (token >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token ", i, " (byte ", offset,
                                                     ") is ", token, ", expected < vocab_size ",
                                                     vocab_size));
    }
    tokens[i] = token;
  }
  return std::unique_ptr<TokenSource>(
      std::make_unique<VectorSource<uint16_t>>(path, std::move(tokens), vocab_size));
}

Status WriteTokenFile(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.empty()) return BadArgument(absl::StrCat(path, ": tokens"), "0 tokens", ">= 1");
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return BadArgument(absl::StrCat(path, ": tokens"), absl::StrCat(tokens.size()),
                       "<= 2^31 - 1 (int32 header count)");
  }
  std::string bytes(kTokenFileHeaderBytes + 2 * tokens.size(), '\0');
  const uint32_t header[3] = {static_cast<uint32_t>(kTokenFileMagic),
                              static_cast<uint32_t>(kTokenFileVersion),
                              static_cast<uint32_t>(tokens.size())};
  for (int field = 0; field < 3; ++field) {
    for (int b = 0; b < 4; ++b) bytes[4 * field + b] = static_cast<char>(header[field] >> (8 * b));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    bytes[kTokenFileHeaderBytes + 2 * i] = static_cast<char>(tokens[i] & 0xff);
    bytes[kTokenFileHeaderBytes + 2 * i + 1] = static_cast<char>(tokens[i] >> 8);
  }
  const std::string tmp = path + ".tmp";
  std::FILE* file = std::fopen(tmp.c_str(), "wb");
  if (file == nullptr) {
    return absl::InternalError(
        absl::StrCat(tmp, ": cannot open for writing: ", std::strerror(errno)));
  }
  const bool wrote = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  const bool closed = std::fclose(file) == 0;
  if (!wrote || !closed) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": rename from ", tmp, " failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<TokenSource>> InMemorySource(std::string name, std::vector<int32_t> tokens,
                                                      int vocab_size) {
  if (vocab_size < 1) {
    return BadArgument(absl::StrCat(name, ": vocab_size"), absl::StrCat(vocab_size), ">= 1");
  }
  if (tokens.empty()) return BadArgument(absl::StrCat(name, ": tokens"), "0 tokens", ">= 1");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": token ", i, " is ", tokens[i],
                                                     ", expected in [0, ", vocab_size, ")"));
    }
  }
  return std::unique_ptr<TokenSource>(
      std::make_unique<VectorSource<int32_t>>(std::move(name), std::move(tokens), vocab_size));
}

}  // namespace smoe
