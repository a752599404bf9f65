#include "moe/adapt/parallel_mode.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace smoe {

std::string ParallelModeName(const ParallelMode& mode) {
  return absl::StrCat("r", mode.r, ".d", mode.d, ".", AllToAllAlgorithmName(mode.algorithm));
}

StatusOr<ParallelMode> ParseParallelMode(absl::string_view name) {
  const std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
  const std::string expected = "r<int >= 0>.d<int >= 1>.<flat|2dh>, e.g. r1.d2.flat";
  if (parts.size() != 3) return BadArgument("parallel mode", name, expected);
  ParallelMode mode;
  if (parts[0].empty() || parts[0][0] != 'r' || !absl::SimpleAtoi(parts[0].substr(1), &mode.r) ||
      mode.r < 0) {
    return BadArgument("parallel mode r", parts[0], expected);
  }
  if (parts[1].empty() || parts[1][0] != 'd' || !absl::SimpleAtoi(parts[1].substr(1), &mode.d) ||
      mode.d < 1) {
    return BadArgument("parallel mode d", parts[1], expected);
  }
  MOE_ASSIGN_OR_RETURN(mode.algorithm, ParseAllToAllAlgorithm(parts[2]));
  return mode;
}

}  // namespace smoe
