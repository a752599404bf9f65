#include "runtime/train/data/batch_loader.h"

#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

// Token i is i % vocab, so every window's start can be recovered from its first token.
std::unique_ptr<TokenSource> Ramp(int64_t n, int vocab = 1 << 20) {
  std::vector<int32_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(i % vocab);
  auto source = InMemorySource("ramp", std::move(tokens), vocab);
  MOE_CHECK_OK(source.status());
  return std::move(source).value();
}

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch&) const = default;
};

std::vector<Batch> Draw(BatchLoader& loader, int n) {
  std::vector<Batch> batches(n);
  for (Batch& b : batches) loader.Next(&b.inputs, &b.targets);
  return batches;
}

TEST(BatchLoaderTest, WindowsAreConsecutiveAndTargetsShifted) {
  auto source = Ramp(1000);
  BatchLoader loader(source.get(), 4, 16, 42);
  for (const Batch& batch : Draw(loader, 50)) {
    ASSERT_EQ(batch.inputs.size(), 64u);
    ASSERT_EQ(batch.targets.size(), 64u);
    for (int b = 0; b < 4; ++b) {
      const int32_t start = batch.inputs[b * 16];
      ASSERT_GE(start, 0);
      ASSERT_LE(start + 16, 999);  // the last target is token start + 16 <= size - 1
      for (int s = 0; s < 16; ++s) {
        ASSERT_EQ(batch.inputs[b * 16 + s], start + s);
        ASSERT_EQ(batch.targets[b * 16 + s], start + s + 1);
      }
    }
  }
  EXPECT_EQ(loader.position(), 200);
}

TEST(BatchLoaderTest, HandWorkedTinySource) {
  // 5 tokens, S = 4: exactly one window, [10 11 12 13] -> [11 12 13 14].
  MOE_ASSERT_OK_AND_ASSIGN(auto source, InMemorySource("tiny", {10, 11, 12, 13, 14}, 20));
  BatchLoader loader(source.get(), 2, 4, 7);
  std::vector<int32_t> inputs, targets;
  loader.Next(&inputs, &targets);
  EXPECT_EQ(inputs, (std::vector<int32_t>{10, 11, 12, 13, 10, 11, 12, 13}));
  EXPECT_EQ(targets, (std::vector<int32_t>{11, 12, 13, 14, 11, 12, 13, 14}));
}

TEST(BatchLoaderTest, RandomStartsCoverTheWholeRange) {
  auto source = Ramp(40);
  BatchLoader loader(source.get(), 1, 8, 3);
  std::set<int64_t> starts;
  for (int64_t p = 0; p < 2000; ++p) {
    const int64_t start = loader.WindowStart(p);
    ASSERT_GE(start, 0);
    ASSERT_LE(start, 40 - 9);
    starts.insert(start);
  }
  EXPECT_EQ(starts.size(), 32u);  // every start in [0, 31] is drawn
}

TEST(BatchLoaderTest, SameSeedSameBatchesDifferentSeedDifferent) {
  auto source = Ramp(100000);
  BatchLoader a(source.get(), 8, 32, 5), b(source.get(), 8, 32, 5), c(source.get(), 8, 32, 6);
  const auto batches_a = Draw(a, 10);
  EXPECT_EQ(batches_a, Draw(b, 10));
  EXPECT_NE(batches_a, Draw(c, 10));
  // Consecutive batches differ.
  EXPECT_NE(batches_a[0], batches_a[1]);
}

TEST(BatchLoaderTest, SeekResumesExactly) {
  auto source = Ramp(100000);
  BatchLoader run(source.get(), 4, 32, 9);
  const auto all = Draw(run, 12);
  // A fresh loader resumed from a checkpointed position gives the remaining batches.
  BatchLoader first(source.get(), 4, 32, 9);
  Draw(first, 5);
  const int64_t saved = first.position();
  EXPECT_EQ(saved, 20);
  BatchLoader resumed(source.get(), 4, 32, 9);
  resumed.Seek(saved);
  const auto rest = Draw(resumed, 7);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(rest[i], all[5 + i]) << "batch " << 5 + i;
  // Seeking back replays.
  run.Seek(0);
  EXPECT_EQ(Draw(run, 1)[0], all[0]);
}

TEST(BatchLoaderTest, PositionCountsWindowsSoBatchSizeCanChange) {
  auto source = Ramp(100000);
  BatchLoader big(source.get(), 4, 16, 2), small(source.get(), 2, 16, 2);
  const Batch b4 = Draw(big, 1)[0];
  const auto b2 = Draw(small, 2);
  std::vector<int32_t> joined = b2[0].inputs;
  joined.insert(joined.end(), b2[1].inputs.begin(), b2[1].inputs.end());
  EXPECT_EQ(joined, b4.inputs);
}

TEST(BatchLoaderTest, RanksSplitTheSingleRankSequence) {
  auto source = Ramp(100000);
  BatchLoader single(source.get(), 1, 16, 8);
  BatchLoader rank0(source.get(), 1, 16, 8, Sampling::kRandom, 0, 2);
  BatchLoader rank1(source.get(), 1, 16, 8, Sampling::kRandom, 1, 2);
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_EQ(rank0.WindowStart(i), single.WindowStart(2 * i));
    EXPECT_EQ(rank1.WindowStart(i), single.WindowStart(2 * i + 1));
  }
}

TEST(BatchLoaderTest, SequentialCoversEveryTargetOncePerPass) {
  auto source = Ramp(103);  // floor(102 / 10) = 10 windows, starts 0, 10, ..., 90
  BatchLoader loader(source.get(), 5, 10, 0, Sampling::kSequential);
  std::vector<int> target_count(103, 0);
  for (const Batch& batch : Draw(loader, 2)) {
    for (int32_t t : batch.targets) ++target_count[t];
  }
  for (int t = 1; t <= 100; ++t) EXPECT_EQ(target_count[t], 1) << t;
  EXPECT_EQ(target_count[0], 0);
  EXPECT_EQ(target_count[101] + target_count[102], 0);
  EXPECT_EQ(loader.WindowStart(10), 0);  // wraps
  EXPECT_EQ(loader.WindowStart(13), 30);
}

TEST(BatchLoaderTest, CreateValidates) {
  auto source = Ramp(10);
  MOE_EXPECT_OK(BatchLoader::Create(source.get(), 1, 9, 0).status());
  EXPECT_THAT(BatchLoader::Create(source.get(), 1, 10, 0),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("ramp"), HasSubstr("shorter than one window: 10 tokens"),
                             HasSubstr("11"))));
  EXPECT_THAT(BatchLoader::Create(source.get(), 0, 4, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ramp: batch: got 0")));
  EXPECT_THAT(BatchLoader::Create(source.get(), 2, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ramp: seq_len: got 0")));
  EXPECT_THAT(BatchLoader::Create(source.get(), 2, 4, 0, Sampling::kRandom, 2, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank/world: got 2/2")));
  EXPECT_THAT(BatchLoader::Create(nullptr, 2, 4, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("source")));
}

TEST(BatchLoaderTest, SyntheticCorpusBatchesAreBytes) {
  MOE_ASSERT_OK_AND_ASSIGN(auto source, SyntheticSource(1, 0, 1 << 16));
  MOE_ASSERT_OK_AND_ASSIGN(BatchLoader loader, BatchLoader::Create(source.get(), 16, 256, 1));
  std::vector<int32_t> inputs, targets;
  loader.Next(&inputs, &targets);
  for (int32_t t : inputs) ASSERT_TRUE(t >= 0 && t < 256);
  for (int b = 0; b < 16; ++b) {
    for (int s = 0; s + 1 < 256; ++s) ASSERT_EQ(targets[b * 256 + s], inputs[b * 256 + s + 1]);
  }
}

}  // namespace
}  // namespace smoe
