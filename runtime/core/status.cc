#include "runtime/core/status.h"

#include <cstdio>
#include <cstdlib>

namespace smoe::internal {

CheckFailure::CheckFailure(const char* file, int line, const std::string& condition) {
  stream_ << file << ":" << line << ": check failed: " << condition << " ";
}

CheckFailure::~CheckFailure() {
  std::fprintf(stderr, "%s\n", stream_.str().c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace smoe::internal
