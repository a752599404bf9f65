// Checks shared by the data fuzz targets: a TokenSource that loaded, read through BatchLoader.
#pragma once

#include <cstdint>
#include <vector>
#include "absl/strings/string_view.h"

#include "fuzz/fuzz_util.h"
#include "runtime/train/data/batch_loader.h"
#include "runtime/train/data/dataset.h"

namespace smoe::fuzz {

// Reads every token (each in [0, vocab)) and returns them.
inline std::vector<int32_t> ReadAll(const TokenSource& source) {
  FUZZ_CHECK(source.size() >= 1) << source.name();
  std::vector<int32_t> tokens(static_cast<size_t>(source.size()));
  source.Read(0, source.size(), tokens.data());
  for (int32_t token : tokens) {
    FUZZ_CHECK(token >= 0 && token < source.vocab_size()) << source.name() << ": token " << token;
  }
  return tokens;
}

// A BatchLoader over `source` with batch, seq_len, sampling, rank and world derived from `seed`
// (seq_len sometimes longer than the source): Create fails exactly when the source is shorter
// than one window; otherwise two batches are drawn and each window must be S + 1 consecutive
// tokens of the source, targets = inputs shifted by one.
inline void CheckBatches(const TokenSource& source, const std::vector<int32_t>& tokens,
                         uint64_t seed) {
  const int64_t size = source.size();
  const int64_t batch = 1 + static_cast<int64_t>(seed % 4);
  const int64_t seq_len = 1 + static_cast<int64_t>((seed >> 8) % static_cast<uint64_t>(size + 1));
  const Sampling sampling = (seed >> 32) & 1 ? Sampling::kSequential : Sampling::kRandom;
  const int world = 1 + static_cast<int>((seed >> 40) % 4);
  const int rank = static_cast<int>((seed >> 48) % static_cast<uint64_t>(world));
  StatusOr<BatchLoader> loader =
      BatchLoader::Create(&source, batch, seq_len, seed, sampling, rank, world);
  if (size < seq_len + 1) {
    FUZZ_CHECK(absl::IsInvalidArgument(loader.status())) << loader.status();
    return;
  }
  FUZZ_CHECK(loader.ok()) << loader.status();
  loader->Seek(static_cast<int64_t>((seed >> 16) % 1000));
  std::vector<int32_t> inputs, targets;
  for (int round = 0; round < 2; ++round) {
    const int64_t position = loader->position();
    loader->Next(&inputs, &targets);
    FUZZ_CHECK(static_cast<int64_t>(inputs.size()) == batch * seq_len);
    FUZZ_CHECK(static_cast<int64_t>(targets.size()) == batch * seq_len);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t start = loader->WindowStart(position + b);
      FUZZ_CHECK(start >= 0 && start + seq_len + 1 <= size) << "window at " << start;
      for (int64_t i = 0; i < seq_len; ++i) {
        FUZZ_CHECK(inputs[b * seq_len + i] == tokens[start + i]);
        FUZZ_CHECK(targets[b * seq_len + i] == tokens[start + i + 1]);
      }
    }
  }
}

}  // namespace smoe::fuzz
