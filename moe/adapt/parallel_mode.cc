#include "moe/adapt/parallel_mode.h"

#include <algorithm>
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

std::vector<ParallelMode> CandidateModes(int world, int node_size, int shards,
                                         std::span<const int> pipeline_degrees) {
  std::vector<int> slices;  // r >= 1: the divisors of s
  for (int r = 1; r <= std::max(1, shards); ++r) {
    if (shards % r == 0) slices.push_back(r);
  }
  std::vector<ParallelMode> out = {{0, 1, AllToAllAlgorithm::kFlat}};
  std::vector<AllToAllAlgorithm> algorithms = {AllToAllAlgorithm::kFlat};
  if (node_size > 1 && node_size < world) {
    algorithms.push_back(AllToAllAlgorithm::kTwoDimHierarchical);
  }
  for (AllToAllAlgorithm algorithm : algorithms) {
    for (int r : slices) {
      for (int d : pipeline_degrees) out.push_back({r, d, algorithm});
    }
  }
  return out;
}

}  // namespace smoe
