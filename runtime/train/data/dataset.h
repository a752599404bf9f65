// Token sources for training: the built-in synthetic corpus, plain text files (bytes) and
// llm.c-style token files. All live in host memory; the trainer copies batches to the device.
//
// Errors name the source and the position: a missing file is NotFound; an empty file, a bad
// header, truncated token data or a token id >= vocab is InvalidArgument with the byte offset
// (and token index) where the problem is.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/status.h"

namespace smoe {

// A finite sequence of token ids in [0, vocab_size()). Immutable after creation, so Read may be
// called from several threads at once.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  virtual int vocab_size() const = 0;
  // File path, or "synthetic:<split>" for the built-in corpus.
  virtual std::string name() const = 0;
  // Copies tokens [begin, begin + n) into out. Requires 0 <= begin, n >= 0, begin + n <= size()
  // (MOE_CHECK: callers validate ranges).
  virtual void Read(int64_t begin, int64_t n, int32_t* out) const = 0;
};

// The first num_bytes bytes of the synthetic corpus stream (seed, split) as byte tokens
// (vocab 256). split >= 0 (0 train, 1 held-out), num_bytes >= 1; else InvalidArgument.
[[nodiscard]] StatusOr<std::unique_ptr<TokenSource>> SyntheticSource(uint64_t seed, int split,
                                                                     int64_t num_bytes);

// The bytes of a file as tokens (vocab 256). NotFound when it cannot be opened, InvalidArgument
// when it is empty.
[[nodiscard]] StatusOr<std::unique_ptr<TokenSource>> TextFileSource(const std::string& path);

// llm.c token file: a header of 256 little-endian int32 {kTokenFileMagic, kTokenFileVersion,
// num_tokens, 0...}, then num_tokens little-endian uint16 token ids. Every token is checked
// against vocab_size (1 <= vocab_size <= 65536) when the file is loaded. InvalidArgument on a
// short header, bad magic or version, num_tokens < 1, a file size that does not match num_tokens
// (truncated or trailing data), or a token id >= vocab_size.
inline constexpr int32_t kTokenFileMagic = 20240520;
inline constexpr int32_t kTokenFileVersion = 1;
inline constexpr int64_t kTokenFileHeaderBytes = 256 * 4;
[[nodiscard]] StatusOr<std::unique_ptr<TokenSource>> TokenFileSource(const std::string& path,
                                                                     int vocab_size);

// Writes `tokens` as an llm.c token file (for tests and tools). Writes `path` + ".tmp" then
// renames it, so a reader never sees a partial file. InvalidArgument when tokens is empty;
// Internal naming the path when it cannot be written.
[[nodiscard]] Status WriteTokenFile(const std::string& path, const std::vector<uint16_t>& tokens);

// A source over tokens already in memory (for tests and callers that tokenize themselves).
// Every id must be in [0, vocab_size); InvalidArgument naming `name` and the index otherwise.
[[nodiscard]] StatusOr<std::unique_ptr<TokenSource>> InMemorySource(std::string name,
                                                                    std::vector<int32_t> tokens,
                                                                    int vocab_size);

}  // namespace smoe
