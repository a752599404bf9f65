// A small leveled logger (Debian's abseil has no absl/log).
//   MOE_LOG(INFO) << "step " << step;
// Levels: DEBUG < INFO < WARNING < ERROR. The threshold comes from the environment variable
// MOE_LOG_LEVEL (debug|info|warning|error, default info) or SetLogLevel. Lines go to stderr,
// one write per line, so lines from threads do not interleave.
#pragma once

#include <sstream>

namespace smoe {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

namespace internal {

class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace internal
}  // namespace smoe

#define MOE_LOG_LEVEL_DEBUG ::smoe::LogLevel::kDebug
#define MOE_LOG_LEVEL_INFO ::smoe::LogLevel::kInfo
#define MOE_LOG_LEVEL_WARNING ::smoe::LogLevel::kWarning
#define MOE_LOG_LEVEL_ERROR ::smoe::LogLevel::kError

#define MOE_LOG(level)                                 \
  if (MOE_LOG_LEVEL_##level < ::smoe::GetLogLevel()) { \
  } else                                               \
    ::smoe::internal::LogLine(MOE_LOG_LEVEL_##level, __FILE__, __LINE__).stream()
