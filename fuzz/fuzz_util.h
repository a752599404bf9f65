// Helpers shared by the fuzz targets of fuzz/ (issue 15). Each target defines the libFuzzer entry
// point LLVMFuzzerTestOneInput; fuzz/CMakeLists.txt builds it either with libFuzzer (clang,
// scripts/fuzz.sh) or, in every normal build, with replay_main.cc, which runs it over the seed
// corpus and the saved regression inputs (CTest fuzz_replay_<target>, label unit).
//
// A target fails (aborts) only when the code under test breaks a documented promise: a crash, a
// sanitizer report, or a FUZZ_CHECK of an invariant (an error of the wrong kind, a round trip that
// changes the value, a "valid" result that its consumer cannot use).
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include "absl/strings/string_view.h"

namespace smoe::fuzz {

[[noreturn]] void Fail(const char* file, int line, const char* condition,
                       const std::string& detail);

// FUZZ_CHECK(cond) << "detail";  aborts with the condition and the detail when cond is false.
class FailStream {
 public:
  FailStream(const char* file, int line, const char* condition)
      : file_(file), line_(line), condition_(condition) {}
  [[noreturn]] ~FailStream() { Fail(file_, line_, condition_, stream_.str()); }
  template <typename T>
  FailStream& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  const char* file_;
  int line_;
  const char* condition_;
  std::ostringstream stream_;
};

// (A statement: wrap it in braces under an if.)
#define FUZZ_CHECK(cond) \
  if (cond) {            \
  } else                 \
    ::smoe::fuzz::FailStream(__FILE__, __LINE__, #cond)

// A private scratch directory of this process (under /dev/shm when it is writable, else $TMPDIR or
// /tmp), created on first use and removed at exit.
const std::string& ScratchDir();

// Writes `bytes` to `path` (replacing it); aborts when that fails (a harness failure).
void WriteFileOrDie(const std::string& path, absl::string_view bytes);

// Removes `path` if it exists.
void RemoveFile(const std::string& path);

// FNV-1a of the input: derives the parameters a target varies (batch size, rank, ...) from the
// input without taking bytes away from the file it writes.
uint64_t Hash(absl::string_view bytes);

inline absl::string_view AsText(const uint8_t* data, size_t size) {
  return absl::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace smoe::fuzz
