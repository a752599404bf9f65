// Batches of training windows drawn from a TokenSource, reproducible from one int64.
//
// A batch is B windows of S+1 consecutive tokens; inputs are the first S tokens of each window
// and targets the last S (inputs shifted by one), both row-major [B, S] int32.
//
// Window g (g = 0, 1, 2, ... counts windows over the whole run) starts at
//   kRandom:     PhiloxBits64(seed, g) mod (size - S), uniform with replacement, so any window
//                of the source can be drawn and no epoch bookkeeping is needed;
//   kSequential: (g mod floor((size - 1) / S)) * S, consecutive non-overlapping windows that
//                wrap around (for evaluation: every token is a target once per pass).
// With data parallelism, rank r of W draws the global windows g = i * W + r, i = 0, 1, ..., so
// ranks never draw the same window index and together they consume the single-rank sequence.
//
// The loader's whole state is position() = the number of windows this rank has consumed. A
// checkpoint stores it; Seek(position) then Next() reproduces the same batches, and since
// positions count windows, not batches, a resumed run may even change the batch size.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/train/data/dataset.h"

namespace smoe {

enum class Sampling { kRandom, kSequential };

class BatchLoader {
 public:
  // Checks the arguments: batch >= 1, seq_len >= 1, the source holds at least one window
  // (size >= seq_len + 1), 0 <= rank < world. InvalidArgument naming the source otherwise.
  [[nodiscard]] static StatusOr<BatchLoader> Create(const TokenSource* source, int64_t batch,
                                                    int64_t seq_len, uint64_t seed,
                                                    Sampling sampling = Sampling::kRandom,
                                                    int rank = 0, int world = 1);

  // As Create, but the arguments are checked with MOE_CHECK. `source` must outlive the loader.
  BatchLoader(const TokenSource* source, int64_t batch, int64_t seq_len, uint64_t seed,
              Sampling sampling = Sampling::kRandom, int rank = 0, int world = 1);

  // Fills inputs and targets (resized to batch * seq_len) and advances position by batch.
  void Next(std::vector<int32_t>* inputs, std::vector<int32_t>* targets);

  // Start token of this rank's window number `position` (exposed for tests and logging).
  int64_t WindowStart(int64_t position) const;

  int64_t position() const { return position_; }
  void Seek(int64_t position);  // position >= 0

  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }
  const TokenSource* source() const { return source_; }

 private:
  const TokenSource* source_;
  int64_t batch_;
  int64_t seq_len_;
  uint64_t seed_;
  Sampling sampling_;
  int rank_;
  int world_;
  int64_t position_ = 0;
  std::vector<int32_t> window_;  // scratch for one window of S + 1 tokens
};

}  // namespace smoe
