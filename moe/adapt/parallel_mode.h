// The parallel mode of one MoE layer for one step (docs/design.md section 6). A value type: the
// controller (moe/adapt/controller.h) picks one per layer and step, the layer executes it; the
// parameter layout is the same in every mode, so switching moves no parameter bytes.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "moe/dispatch/all_to_all.h"
#include "runtime/core/status.h"

namespace smoe {

struct ParallelMode {
  // r = 0: data parallel over experts (all-gather the expert weights, run every expert on local
  // tokens, reduce-scatter the expert gradients back to their owners; no token all-to-all).
  // r >= 1: expert parallel (tokens all-to-all to the experts' owners); r > 1 adds model-parallel
  // slices of H when experts are sharded (E < W), and r must divide s = W / E.
  int r = 1;
  // Pipelining degree d >= 1: the dispatched rows go in d chunks, so the exchange of chunk i + 1
  // can overlap the expert compute of chunk i. Results equal d = 1 up to summation order.
  int d = 1;
  AllToAllAlgorithm algorithm = AllToAllAlgorithm::kFlat;

  friend bool operator==(const ParallelMode&, const ParallelMode&) = default;
};

// "r1.d2.flat": the form logs, the controller's table and the config use.
std::string ParallelModeName(const ParallelMode& mode);
// Inverse of ParallelModeName; InvalidArgument naming the part that does not parse.
[[nodiscard]] StatusOr<ParallelMode> ParseParallelMode(absl::string_view name);

// The modes valid for a layout of `shards` = s ranks per expert (1 when E >= W) on `world` ranks
// in nodes of `node_size`: r0.d1.flat first, then for each algorithm (flat; 2dh too when
// 1 < node_size < world), each r dividing s (ascending) and each of `pipeline_degrees` (d >= 1,
// in the given order), r.d.algorithm. At W = 2048 over 128 experts (s = 16) with d in {1, 2, 4, 8}
// that is 1 + 2 x 5 x 4 = 41 modes.
std::vector<ParallelMode> CandidateModes(int world, int node_size, int shards,
                                         std::span<const int> pipeline_degrees);

}  // namespace smoe
