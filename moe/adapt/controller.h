// The adaptive parallel-mode controller (docs/design.md section 6; Tutel's adaptive parallelism
// switching). Host-only policy: it picks a ParallelMode per MoE layer and step from measured step
// times, it never launches a kernel.
//
// Keys. A decision is keyed by (layer, capacity bucket, top_k). The capacity bucket groups the
// per-step workload on a log2 scale of the maximum over ranks of the rows routed to one expert
// (CapacityBucket below): bucket b >= 1 holds loads in [2^(b-1), 2^b), so a key's best mode holds
// while the load stays within a factor of two. The bucket must be identical on every rank:
// compute it from the global maximum (AgreedCapacityBucket, or a value the layer already
// all-reduced).
//
// Exploration. A new key measures every candidate warmup + trials times, round-robin over the
// candidates (so slow drift of the machine biases no candidate): the first `warmup` reports of a
// candidate are discarded (first-use costs: workspace growth, cuBLAS heuristics), the next
// `trials` are kept. Then the key exploits the candidate with the smallest median (ties: the
// earliest candidate) and measures nothing more. A key explores again only after ResetKey, or
// every `reexplore_period` exploiting steps when that is > 0, so the measurements per key are
// bounded: candidates x (warmup + trials) per exploration.
//
// Identical decisions on every rank. Report is a collective over `comm`: it gathers every rank's
// local milliseconds (Communicator::AllGather of a 1-element f32 host tensor) and records the
// slowest rank's, which is what the step costs when ranks wait for each other in the layer's
// collectives; every rank records the same number. Decisions depend only on the recorded numbers
// and on the sequence of calls, so every rank takes the same decision provided every rank makes
// the same calls (Choose, Measuring, Report, ResetKey, Load) with the same keys in the same order
// and was created with the same config and candidates. The communicator must take host buffers
// (the single-rank and MPI communicators do). Report validates its `ms` after the all-reduce, so
// a bad value on one rank gives the same error on every rank instead of a hang.
//
// Prior. SetPrior gives the controller predicted milliseconds per candidate for a key (a cost
// model: moe/adapt/cost_model.h). A key that starts exploring then measures only the candidates
// predicted fastest: at most config.explore_at_most of them, and only those predicted within
// config.explore_within x the fastest prediction (each 0 = no limit; the fastest is always kept).
// So the measurements per exploration stay bounded however many candidates there are (41 at
// W = 2048: r in {0} and the divisors of s, d in {1, 2, 4, 8}, flat and 2dh). The prior must give
// the same numbers on every rank (a function of the key and of values every rank shares).
//
// Forced mode. config.mode = "r1.d1.flat" (any ParallelModeName among the candidates) instead of
// "auto": Choose always returns it, Measuring is false, and Report, Load and Save do nothing (no
// collective, no file).
//
// Persistence. Save writes the table (rank 0 only) as versioned text, one entry per line:
//   sigma-moe adapt table v1
//   best <layer> <bucket> <top_k> <mode> <median_ms>
//   explore <layer> <bucket> <top_k> <mode> <reports> [<kept_ms> ...]
// (blank lines and lines starting with '#' are skipped). "best" is a decided key; "explore" holds
// one candidate's progress in a key still exploring (reports counts the discarded warm-up ones).
// The file is written to <path>.tmp, fsynced and renamed over <path>, so a crash leaves either the
// old or the new table. Load (collective) reads the file on rank 0 and broadcasts its bytes, so
// ranks without access to rank 0's file get the same table. Entries whose mode is not a current
// candidate are dropped (that key explores again).
//
// Logging: rank 0 logs (INFO) each decision change once: the end of an exploration and a new best
// after a re-exploration, with layer, key, mode and median ms. Not thread-safe.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moe/adapt/parallel_mode.h"
#include "runtime/comm/communicator.h"
#include "runtime/core/status.h"

namespace smoe {

struct AdaptConfig {
  // "auto", or a ParallelModeName to force (it must be one of the candidates).
  std::string mode = "auto";
  // Kept measurements per candidate and exploration (>= 1); the decision takes their median.
  int trials = 2;
  // Reports discarded per candidate before its kept ones (>= 0).
  int warmup = 1;
  // Exploiting steps (Choose calls) of a key before it explores again; 0 = never (>= 0).
  int64_t reexplore_period = 0;
  // Table file; empty = no persistence (Load and Save do nothing).
  std::string table_path = "";
  // Save (rank 0) whenever a key's exploration ends, so a restarted run skips it.
  bool save_on_decision = true;
  // With a prior (SetPrior): candidates measured per exploration, the predicted fastest first
  // (0 = all), and the largest predicted ratio to the fastest worth measuring (0 = any; >= 1).
  int explore_at_most = 0;
  double explore_within = 0.0;
};

struct AdaptKey {
  int layer = 0;                // >= 0
  int64_t capacity_bucket = 0;  // >= 0
  int top_k = 1;                // >= 1

  friend auto operator<=>(const AdaptKey&, const AdaptKey&) = default;
};

// One key's state, for metrics and logs.
struct AdaptDecision {
  AdaptKey key;
  bool exploring = false;
  // Decided: the mode in use and its median ms. Exploring: the best candidate among those with
  // all their trials so far (median_ms < 0 when none has them yet).
  ParallelMode mode;
  double median_ms = -1.0;
  // Reports recorded by the current exploration (warm-up ones included); 0 for a loaded decision.
  int64_t reports = 0;
  // Candidates the last exploration measured (all, or what the prior kept); 0 for a loaded one.
  int explored = 0;
};

// ceil(log2(max_rows_per_expert + 1)), i.e. the bit width: 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3.
// max_rows_per_expert >= 0 (checked).
int64_t CapacityBucket(int64_t max_rows_per_expert);

// Collective: CapacityBucket of the maximum over the ranks of `comm` of local_max_rows_per_expert
// (an AllGather of one i64 host value), identical on every rank. InvalidArgument when the local
// value is negative (checked before the collective: a negative load is a bug on that rank).
[[nodiscard]] StatusOr<int64_t> AgreedCapacityBucket(Communicator* comm,
                                                     int64_t local_max_rows_per_expert);
// The same for several loads (one per MoE layer) with one AllGather: element i is the bucket of the
// maximum over the ranks of local_max_rows_per_expert[i]. Every rank passes as many loads.
[[nodiscard]] StatusOr<std::vector<int64_t>> AgreedCapacityBuckets(
    Communicator* comm, std::span<const int64_t> local_max_rows_per_expert);

class AdaptiveController {
 public:
  // `candidates`: the modes valid for the layers' layout, non-empty, distinct, r >= 0, d >= 1.
  // `comm` (the MoE group) outlives the controller. Does not read the table: call Load.
  // InvalidArgument naming the field otherwise.
  [[nodiscard]] static StatusOr<std::unique_ptr<AdaptiveController>> Create(
      const AdaptConfig& config, std::vector<ParallelMode> candidates, Communicator* comm);

  // The mode for the next step of this key: the forced mode; while exploring, the next candidate
  // to measure; afterwards the best. Starts exploring an unseen key. InvalidArgument on a bad key.
  [[nodiscard]] StatusOr<ParallelMode> Choose(const AdaptKey& key);
  // Whether the step Choose just returned a mode for will be recorded by Report (the key is
  // exploring): the caller times that step (which costs it a sync) only then.
  bool Measuring(const AdaptKey& key) const;
  // Collective when Measuring(key): records the step time of `mode`, the mode Choose returned for
  // this key, as the largest over ranks of `ms` (forward + backward of the layer, local clock).
  // Once per Choose. A no-op (no collective) when not measuring. Errors: FailedPrecondition when
  // the key is measuring but has no unreported Choose; InvalidArgument (after the all-reduce, on
  // every rank) when `mode` is not the chosen one or the slowest ms is not finite and >= 0; a Save
  // error on rank 0 when save_on_decision.
  [[nodiscard]] Status Report(const AdaptKey& key, const ParallelMode& mode, double ms);
  // Forgets the key: its next Choose explores again. Call on every rank.
  void ResetKey(const AdaptKey& key);
  // Predicted milliseconds of every candidate (indexed like candidates()) for a key.
  using Prior = std::function<std::vector<double>(const AdaptKey& key)>;
  // The prior (see the top of this file) for the explorations that start from now on: call it
  // before Load and the first Choose, on every rank. A prediction vector of the wrong size, or
  // with a value that is not finite, leaves that key's candidates unpruned (and is logged).
  void SetPrior(Prior prior) { prior_ = std::move(prior); }

  // Collective: replaces the table with the file at config.table_path as read on rank 0 (kept
  // empty when rank 0 has no such file). DataLoss naming "<path>:<line>" for a corrupt file;
  // the table is then left as it was, so the caller may go on with it.
  [[nodiscard]] Status Load();
  // Writes the table to config.table_path, on rank 0 only (other ranks return OK at once).
  [[nodiscard]] Status Save() const;

  // Every key, in key order.
  std::vector<AdaptDecision> Decisions() const;
  // Decisions() as text, one "layer L bucket B k K: <mode> <ms> ms [exploring]" line per key.
  std::string Summary() const;
  // Reports recorded over the controller's life (warm-up ones included).
  int64_t total_reports() const { return total_reports_; }
  bool forced() const { return forced_; }
  const std::vector<ParallelMode>& candidates() const { return candidates_; }

 private:
  struct CandidateStats {
    int64_t reports = 0;       // warm-up ones included
    std::vector<double> kept;  // after the warm-up
    bool pruned = false;       // the prior ruled it out: never measured in this exploration
  };
  struct Entry {
    bool exploring = true;
    std::vector<CandidateStats> stats;  // indexed like candidates_; only while exploring
    int pending = -1;                   // candidate chosen and not yet reported
    int best = -1;                      // decided candidate; the previous one while re-exploring
    double best_ms = -1.0;
    int64_t exploit_steps = 0;
    int explored = 0;  // candidates not pruned in the last exploration
  };
  using Table = std::map<AdaptKey, Entry>;

  AdaptiveController(const AdaptConfig& config, std::vector<ParallelMode> candidates,
                     Communicator* comm, bool forced, ParallelMode forced_mode)
      : config_(config),
        candidates_(std::move(candidates)),
        comm_(comm),
        forced_(forced),
        forced_mode_(forced_mode) {}

  // An exploring entry for `key`, its candidates pruned by the prior.
  Entry NewEntry(const AdaptKey& key) const;
  int NextCandidate(const Entry& entry) const;
  bool ExplorationDone(const Entry& entry) const;
  void Decide(const AdaptKey& key, Entry& entry);
  int CandidateIndex(const ParallelMode& mode) const;
  std::string Serialize() const;
  [[nodiscard]] StatusOr<Table> Parse(absl::string_view text, absl::string_view path) const;

  AdaptConfig config_;
  std::vector<ParallelMode> candidates_;
  Communicator* comm_;
  bool forced_;
  ParallelMode forced_mode_;
  Table table_;
  int64_t total_reports_ = 0;
  Prior prior_;
};

}  // namespace smoe
