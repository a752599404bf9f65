#include "runtime/train/data/batch_loader.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/philox.h"

namespace smoe {
namespace {

// Separates the loader's Philox stream from other users of the same seed (weight init, dropout).
constexpr uint64_t kLoaderStream = 0x6C6F616465723031ull;  // "loader01"

}  // namespace

StatusOr<BatchLoader> BatchLoader::Create(const TokenSource* source, int64_t batch, int64_t seq_len,
                                          uint64_t seed, Sampling sampling, int rank, int world) {
  if (source == nullptr) return BadArgument("batch loader source", "null", "a TokenSource");
  const std::string name = source->name();
  if (batch < 1) return BadArgument(absl::StrCat(name, ": batch"), absl::StrCat(batch), ">= 1");
  if (seq_len < 1) {
    return BadArgument(absl::StrCat(name, ": seq_len"), absl::StrCat(seq_len), ">= 1");
  }
  if (source->size() < seq_len + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": shorter than one window: ", source->size(),
                     " tokens, expected >= seq_len + 1 = ", seq_len + 1));
  }
  if (world < 1 || rank < 0 || rank >= world) {
    return BadArgument(absl::StrCat(name, ": rank/world"), absl::StrCat(rank, "/", world),
                       "0 <= rank < world");
  }
  return BatchLoader(source, batch, seq_len, seed, sampling, rank, world);
}

BatchLoader::BatchLoader(const TokenSource* source, int64_t batch, int64_t seq_len, uint64_t seed,
                         Sampling sampling, int rank, int world)
    : source_(source),
      batch_(batch),
      seq_len_(seq_len),
      seed_(seed ^ kLoaderStream),
      sampling_(sampling),
      rank_(rank),
      world_(world) {
  MOE_CHECK(source != nullptr);
  MOE_CHECK_GE(batch, 1);
  MOE_CHECK_GE(seq_len, 1);
  MOE_CHECK_GE(source->size(), seq_len + 1) << source->name();
  MOE_CHECK(world >= 1 && rank >= 0 && rank < world);
  window_.resize(seq_len + 1);
}

int64_t BatchLoader::WindowStart(int64_t position) const {
  MOE_CHECK_GE(position, 0);
  const uint64_t g = static_cast<uint64_t>(position) * world_ + rank_;
  if (sampling_ == Sampling::kSequential) {
    const uint64_t windows = static_cast<uint64_t>((source_->size() - 1) / seq_len_);
    return static_cast<int64_t>(g % windows) * seq_len_;
  }
  // Two Philox lanes make 64 bits, so the modulo bias is below 2^-30 for any real source.
  const uint64_t bits =
      (static_cast<uint64_t>(PhiloxBits(seed_, 2 * g)) << 32) | PhiloxBits(seed_, 2 * g + 1);
  return static_cast<int64_t>(bits % static_cast<uint64_t>(source_->size() - seq_len_));
}

void BatchLoader::Next(std::vector<int32_t>* inputs, std::vector<int32_t>* targets) {
  MOE_CHECK(inputs != nullptr && targets != nullptr);
  inputs->resize(batch_ * seq_len_);
  targets->resize(batch_ * seq_len_);
  for (int64_t b = 0; b < batch_; ++b) {
    source_->Read(WindowStart(position_ + b), seq_len_ + 1, window_.data());
    std::copy(window_.begin(), window_.end() - 1, inputs->begin() + b * seq_len_);
    std::copy(window_.begin() + 1, window_.end(), targets->begin() + b * seq_len_);
  }
  position_ += batch_;
}

void BatchLoader::Seek(int64_t position) {
  MOE_CHECK_GE(position, 0);
  position_ = position;
}

}  // namespace smoe
