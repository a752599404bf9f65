#include "fuzz/fuzz_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <system_error>

namespace smoe::fuzz {

namespace fs = std::filesystem;

void Fail(const char* file, int line, const char* condition, const std::string& detail) {
  std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", file, line, condition, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

namespace {

std::string* g_scratch = nullptr;

void RemoveScratch() {
  if (g_scratch == nullptr) return;
  std::error_code error;
  fs::remove_all(*g_scratch, error);
}

bool Writable(const char* dir) { return dir != nullptr && ::access(dir, W_OK | X_OK) == 0; }

}  // namespace

const std::string& ScratchDir() {
  if (g_scratch == nullptr) {
    const char* tmpdir = std::getenv("TMPDIR");
    const char* base = Writable("/dev/shm") ? "/dev/shm" : Writable(tmpdir) ? tmpdir : "/tmp";
    std::string pattern = std::string(base) + "/smoe_fuzz.XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    g_scratch = new std::string(pattern);
    std::atexit(RemoveScratch);
  }
  return *g_scratch;
}

void WriteFileOrDie(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

void RemoveFile(const std::string& path) {
  std::error_code error;
  fs::remove(path, error);
}

uint64_t Hash(absl::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

}  // namespace smoe::fuzz
