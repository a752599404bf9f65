#include "runtime/train/checkpoint/checkpoint.h"

#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;
using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;

// A fresh, empty checkpoint root per test.
std::string FreshRoot() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path root =
      fs::path(::testing::TempDir()) / "checkpoint_test" / info->test_suite_name() / info->name();
  fs::remove_all(root);
  return root.string();
}

Tensor Random(Shape shape, DType dtype, uint64_t seed) {
  StatusOr<Tensor> tensor = Tensor::Empty(shape, dtype, Device::Cpu());
  MOE_CHECK(tensor.ok());
  if (IsFloating(dtype)) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), *tensor, seed, 0, 0.0f, 1.0f));
  } else {
    // Raw Philox words, so the integers use all their bits (signs included).
    auto* words = static_cast<uint32_t*>(tensor->data());
    for (size_t i = 0; i < tensor->nbytes() / 4; ++i) words[i] = PhiloxBits(seed, i);
  }
  return *std::move(tensor);
}

bool BitEqual(const TensorView& a, const TensorView& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

CheckpointMeta Meta(int64_t step) {
  CheckpointMeta meta;
  meta.config_text = "model {\n  num_layers: 4\n}\n# \"quoted\" and \\ backslash\n";
  meta.step = step;
  meta.data_position = 1000 + step;
  meta.rng_seed = 0xFEDCBA9876543210ull;
  meta.skipped_steps = 3;
  meta.lr_scale = 0.25;
  return meta;
}

// A set of tensors whose values depend on `seed`.
struct State {
  Tensor w, b, counts, empty;
  explicit State(uint64_t seed)
      : w(Random({7, 5}, DType::kF32, seed)),
        b(Random({13}, DType::kBF16, seed + 1)),
        counts(Random({3, 2}, DType::kI64, seed + 2)),
        empty(Random({0, 4}, DType::kF32, seed + 3)) {}
  std::vector<NamedTensor> Named() const {
    return {{"layer0.w", w}, {"layer0.b", b}, {"router.counts", counts}, {"empty", empty}};
  }
};

State Zeroed() {
  State state(0);
  for (const Tensor* t : {&state.w, &state.b, &state.counts}) {
    std::memset(t->data(), 0, t->nbytes());
  }
  return state;
}

std::vector<std::string> Entries(const std::string& root) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(root)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void FlipByte(const fs::path& path, uint64_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(static_cast<std::streamoff>(offset));
  char byte = 0;
  file.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x10);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(&byte, 1);
}

TEST(CheckpointTest, DirName) {
  EXPECT_EQ(CheckpointDirName(0), "step_00000000");
  EXPECT_EQ(CheckpointDirName(1234), "step_00001234");
  EXPECT_EQ(CheckpointDirName(123456789), "step_123456789");
}

TEST(CheckpointTest, RoundTripIsBitExact) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  const State saved(42);
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(100), saved.Named(), /*keep_last=*/3));
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000100"));

  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.dir, (fs::path(root) / "step_00000100").string());
  const CheckpointMeta expected = Meta(100);
  EXPECT_EQ(loaded.meta.config_text, expected.config_text);
  EXPECT_EQ(loaded.meta.step, 100);
  EXPECT_EQ(loaded.meta.data_position, expected.data_position);
  EXPECT_EQ(loaded.meta.rng_seed, expected.rng_seed);
  EXPECT_EQ(loaded.meta.skipped_steps, expected.skipped_steps);
  EXPECT_EQ(loaded.meta.lr_scale, expected.lr_scale);
  ASSERT_EQ(loaded.manifest.tensors_size(), 4);
  EXPECT_EQ(loaded.manifest.tensors(1).name(), "layer0.b");
  EXPECT_EQ(loaded.manifest.tensors(1).dtype(), "bf16");
  EXPECT_THAT(loaded.manifest.tensors(2).shape(), ::testing::ElementsAre(3, 2));
  for (const auto& entry : loaded.manifest.tensors()) EXPECT_EQ(entry.offset() % 64, 0u);

  State restored = Zeroed();
  MOE_ASSERT_OK(RestoreTensors(ctx, loaded, restored.Named()));
  EXPECT_TRUE(BitEqual(restored.w, saved.w));
  EXPECT_TRUE(BitEqual(restored.b, saved.b));
  EXPECT_TRUE(BitEqual(restored.counts, saved.counts));
  // A subset in another order is fine too.
  State subset = Zeroed();
  MOE_ASSERT_OK(RestoreTensors(ctx, loaded, {{"router.counts", subset.counts}}));
  EXPECT_TRUE(BitEqual(subset.counts, saved.counts));
}

TEST(CheckpointTest, NewestWinsAndKeepLastPrunes) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  for (int64_t step : {10, 20, 30, 40}) {
    const State state(static_cast<uint64_t>(step));
    MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(step), state.Named(), /*keep_last=*/2));
  }
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000030", "step_00000040"));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.meta.step, 40);
  State restored = Zeroed();
  MOE_ASSERT_OK(RestoreTensors(ctx, loaded, restored.Named()));
  EXPECT_TRUE(BitEqual(restored.w, State(40).w));

  // keep_last = 0 keeps everything.
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(50), State(50).Named(), /*keep_last=*/0));
  EXPECT_EQ(Entries(root).size(), 3u);
}

TEST(CheckpointTest, ResavingAStepReplacesIt) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(5), State(1).Named(), 3));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(5), State(2).Named(), 3));
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000005"));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  State restored = Zeroed();
  MOE_ASSERT_OK(RestoreTensors(ctx, loaded, restored.Named()));
  EXPECT_TRUE(BitEqual(restored.w, State(2).w));
}

TEST(CheckpointTest, CorruptedTensorBlobFallsBackToThePreviousCheckpoint) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(1), State(1).Named(), 3));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(2), State(2).Named(), 3));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint newest, LoadLatestCheckpoint(root));
  // Flip one byte inside the bf16 tensor of the newest checkpoint.
  const auto& entry = newest.manifest.tensors(1);
  FlipByte(fs::path(newest.dir) / "tensors.bin", entry.offset() + 3);

  EXPECT_THAT(
      LoadCheckpoint(newest.dir),
      StatusIs(absl::StatusCode::kDataLoss, AllOf(HasSubstr("layer0.b"), HasSubstr("CRC-32C"))));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.meta.step, 1);
  State restored = Zeroed();
  MOE_ASSERT_OK(RestoreTensors(ctx, loaded, restored.Named()));
  EXPECT_TRUE(BitEqual(restored.b, State(1).b));

  // Restoring from the corrupted one anyway fails on that tensor.
  EXPECT_THAT(RestoreTensors(ctx, newest, restored.Named()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("layer0.b")));
}

TEST(CheckpointTest, TruncatedManifestOrBlobFallsBack) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(1), State(1).Named(), 5));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(2), State(2).Named(), 5));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(3), State(3).Named(), 5));

  const fs::path manifest = fs::path(root) / "step_00000003" / "manifest.textproto";
  fs::resize_file(manifest, fs::file_size(manifest) / 2);
  EXPECT_THAT(LoadCheckpoint((fs::path(root) / "step_00000003").string()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("manifest.textproto")));
  const fs::path blob = fs::path(root) / "step_00000002" / "tensors.bin";
  fs::resize_file(blob, fs::file_size(blob) - 1);
  EXPECT_THAT(LoadCheckpoint((fs::path(root) / "step_00000002").string()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("tensors.bin")));

  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.meta.step, 1);

  // Cut between two complete tensor entries: still parses, but the count no longer matches.
  const fs::path manifest1 = fs::path(root) / "step_00000001" / "manifest.textproto";
  std::string text;
  {
    std::ifstream in(manifest1);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t second_entry = text.find("tensors {", text.find("tensors {") + 1);
  ASSERT_NE(second_entry, std::string::npos);
  { std::ofstream(manifest1, std::ios::trunc) << text.substr(0, second_entry); }
  EXPECT_THAT(LoadCheckpoint(manifest1.parent_path().string()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("tensor_count")));
  { std::ofstream(manifest1, std::ios::trunc) << text; }
  MOE_ASSERT_OK(LoadCheckpoint(manifest1.parent_path().string()).status());

  fs::remove(fs::path(root) / "step_00000001" / "tensors.bin");
  EXPECT_THAT(LoadLatestCheckpoint(root),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no valid checkpoint")));
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Found by fuzz/checkpoint_manifest_fuzzer (regressions/checkpoint_manifest/lr_scale_zero): a
// manifest with a scalar no run writes (its tensors intact) passed as valid, and the resume then
// aborted (negative data_position: BatchLoader::Seek's check) or trained with lr * 0.
TEST(CheckpointTest, ManifestScalarsOutOfRangeAreInvalid) {
  const std::string root = FreshRoot();
  MOE_ASSERT_OK(SaveCheckpoint(ExecContext::Cpu(), root, Meta(4), State(4).Named(), 0));
  const fs::path dir = fs::path(root) / "step_00000004";
  const fs::path manifest = dir / "manifest.textproto";
  const std::string text = ReadFile(manifest);
  struct Case {
    std::string from, to, field;
  };
  const Case cases[] = {
      {"data_position: 1004", "data_position: -1", "data_position -1, expected >= 0"},
      {"skipped_steps: 3", "skipped_steps: -3", "skipped_steps -3, expected >= 0"},
      {"lr_scale: 0.25", "lr_scale: 0", "lr_scale 0, expected finite and > 0"},
      {"lr_scale: 0.25", "lr_scale: -0.5", "lr_scale -0.5"},
      {"lr_scale: 0.25", "lr_scale: nan", "lr_scale nan"},
      {"lr_scale: 0.25", "lr_scale: inf", "lr_scale inf"},
      {"lr_scale: 0.25", "", "lr_scale 0"},  // absent: proto3 reads 0
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.to);
    std::string edited = text;
    const size_t at = edited.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    edited.replace(at, c.from.size(), c.to);
    std::ofstream(manifest, std::ios::trunc) << edited;
    EXPECT_THAT(LoadCheckpoint(dir.string()),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr("manifest.textproto"), HasSubstr(c.field))));
  }
  std::ofstream(manifest, std::ios::trunc) << text;
  MOE_EXPECT_OK(LoadCheckpoint(dir.string()).status());
}

// regressions/checkpoint_manifest/extents_overflow_to_size_0: extents whose product wraps around
// in 64 bits to match the entry's size passed the size check.
TEST(CheckpointTest, TensorExtentsThatOverflowAreInvalid) {
  const fs::path dir = fs::path(FreshRoot()) / "step_00000001";
  fs::create_directories(dir);
  std::ofstream(dir / "tensors.bin", std::ios::trunc);
  auto manifest = [&](const std::string& shape, uint64_t size) {
    std::ofstream(dir / "manifest.textproto", std::ios::trunc)
        << "format_version: 1 step: 1 lr_scale: 1 tensors_file: \"tensors.bin\" "
        << "tensors_file_size: 0 tensors { name: \"w\" dtype: \"f32\" " << shape
        << " offset: 0 size: " << size << " crc32c: 0 } tensor_count: 1\n";
  };
  manifest("shape: 4611686018427387904 shape: 4", 0);  // 2^62 * 4 elements: 2^64 wraps to 0
  EXPECT_THAT(
      LoadCheckpoint(dir.string()),
      StatusIs(absl::StatusCode::kDataLoss, AllOf(HasSubstr("tensor w"), HasSubstr("overflows"))));
  manifest("shape: 4611686018427387904", 0);  // 2^62 elements of 4 bytes: 2^64 bytes wrap to 0
  EXPECT_THAT(LoadCheckpoint(dir.string()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("does not match")));
  manifest("shape: 0 shape: 4611686018427387904", 0);  // empty: fine
  MOE_EXPECT_OK(LoadCheckpoint(dir.string()).status());
}

TEST(CheckpointTest, LeftoverTempDirIsIgnoredAndCleaned) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(7), State(7).Named(), 3));
  // A crash mid-write of step 9: a complete-looking but unrenamed temp dir, and a partial one.
  fs::copy(fs::path(root) / "step_00000007", fs::path(root) / "tmp.step_00000009.123");
  fs::create_directory(fs::path(root) / "tmp.step_00000010.456");
  std::ofstream(fs::path(root) / "tmp.step_00000010.456" / "tensors.bin") << "partial";
  // Unrelated names are not checkpoints either.
  fs::create_directory(fs::path(root) / "step_abc");

  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.meta.step, 7);
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000007", "step_abc"));
}

TEST(CheckpointTest, EmptyOrMissingRootIsNotFound) {
  const std::string root = FreshRoot();
  EXPECT_THAT(LoadLatestCheckpoint(root), StatusIs(absl::StatusCode::kNotFound, HasSubstr(root)));
  fs::create_directories(root);
  EXPECT_THAT(LoadLatestCheckpoint(root), StatusIs(absl::StatusCode::kNotFound, HasSubstr(root)));
}

TEST(CheckpointTest, RestoreErrorsNameTheTensor) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(1), State(1).Named(), 3));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));

  Tensor missing = Random({2}, DType::kF32, 9);
  EXPECT_THAT(RestoreTensors(ctx, loaded, {{"layer1.w", missing}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensor layer1.w")));
  Tensor wrong_dtype = Random({7, 5}, DType::kBF16, 9);
  EXPECT_THAT(
      RestoreTensors(ctx, loaded, {{"layer0.w", wrong_dtype}}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("tensor layer0.w dtype"), HasSubstr("bf16"), HasSubstr("f32"))));
  Tensor wrong_shape = Random({5, 7}, DType::kF32, 9);
  EXPECT_THAT(RestoreTensors(ctx, loaded, {{"layer0.w", wrong_shape}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("tensor layer0.w shape"), HasSubstr("[5, 7]"),
                             HasSubstr("[7, 5]"))));
}

TEST(CheckpointTest, SaveValidatesItsArguments) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  const State state(1);
  EXPECT_THAT(SaveCheckpoint(ctx, root, Meta(1), {{"a", state.w}, {"a", state.b}}, 3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensor a")));
  EXPECT_THAT(SaveCheckpoint(ctx, root, Meta(1), {{"", state.w}}, 3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensors[0].name")));
  const TensorView strided(state.w.data(), DType::kF32, Shape{5, 3}, Strides{5, 2}, Device::Cpu());
  EXPECT_THAT(SaveCheckpoint(ctx, root, Meta(1), {{"strided", strided}}, 3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensor strided")));
  EXPECT_THAT(SaveCheckpoint(ctx, root, Meta(-1), state.Named(), 3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("meta.step")));
  for (auto [field, edit] : std::vector<std::pair<std::string, void (*)(CheckpointMeta&)>>{
           {"meta.data_position", [](CheckpointMeta& m) { m.data_position = -1; }},
           {"meta.skipped_steps", [](CheckpointMeta& m) { m.skipped_steps = -1; }},
           {"meta.lr_scale", [](CheckpointMeta& m) { m.lr_scale = 0; }},
           {"meta.lr_scale", [](CheckpointMeta& m) { m.lr_scale = std::nan(""); }}}) {
    CheckpointMeta meta = Meta(1);
    edit(meta);
    EXPECT_THAT(SaveCheckpoint(ctx, root, meta, state.Named(), 3),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
  }
  EXPECT_THAT(SaveCheckpoint(ctx, root, Meta(1), state.Named(), -1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keep_last")));
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000001"));
}

// The two corruptions of issue 15's report.
void EmptyManifest(const fs::path& dir) {
  std::ofstream(dir / "manifest.textproto", std::ios::trunc);
}
void TruncateBlob(const fs::path& dir) {
  const fs::path blob = dir / "tensors.bin";
  fs::resize_file(blob, fs::file_size(blob) / 2);
}

// Rule: retention counts only valid checkpoints. With the newest one invalid, saving keeps the
// previous valid one instead of deleting it (before issue 15 it kept the invalid one).
TEST(CheckpointRetentionTest, NeverDeletesAValidCheckpointToKeepAnInvalidOne) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(1), State(1).Named(), /*keep_last=*/2));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(2), State(2).Named(), /*keep_last=*/2));
  TruncateBlob(fs::path(root) / "step_00000002");
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(3), State(3).Named(), /*keep_last=*/2));
  EXPECT_THAT(Entries(root),
              ::testing::ElementsAre("step_00000001", "step_00000002.invalid", "step_00000003"));
  MOE_EXPECT_OK(LoadCheckpoint((fs::path(root) / "step_00000001").string()).status());
  MOE_EXPECT_OK(LoadCheckpoint((fs::path(root) / "step_00000003").string()).status());
}

// Rule: the scenario for retention. All checkpoints are invalid and have higher steps than
// a new run's: each new valid checkpoint must survive, and keep_last of them remain.
TEST(CheckpointRetentionTest, KeepsTheNewValidCheckpointsWhenTheNewerOnesAreInvalid) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(10), State(10).Named(), /*keep_last=*/2));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(12), State(12).Named(), /*keep_last=*/2));
  EmptyManifest(fs::path(root) / "step_00000010");
  TruncateBlob(fs::path(root) / "step_00000012");
  for (int64_t step : {5, 8, 9}) {
    MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(step), State(step).Named(), /*keep_last=*/2));
  }
  EXPECT_THAT(Entries(root),
              ::testing::ElementsAre("step_00000008", "step_00000009", "step_00000010.invalid",
                                     "step_00000012.invalid"));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint loaded, LoadLatestCheckpoint(root));
  EXPECT_EQ(loaded.meta.step, 9);
}

// Rule: invalid checkpoints are moved aside under a name that says so, never deleted; a taken
// name gets a numeric suffix; the warning gives the reason.
TEST(CheckpointRetentionTest, InvalidCheckpointsAreMovedAsideWithTheirContents) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(4), State(4).Named(), /*keep_last=*/1));
  const fs::path step4 = fs::path(root) / "step_00000004";
  EmptyManifest(step4);
  const std::string blob = ReadFile(step4 / "tensors.bin");
  fs::create_directory(fs::path(root) / "step_00000004.invalid");  // taken: an earlier one

  ::testing::internal::CaptureStderr();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(5), State(5).Named(), /*keep_last=*/1));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000004.invalid",
                                                    "step_00000004.invalid.1", "step_00000005"));
  const fs::path moved = fs::path(root) / "step_00000004.invalid.1";
  EXPECT_EQ(ReadFile(moved / "tensors.bin"), blob);
  EXPECT_EQ(ReadFile(moved / "manifest.textproto"), "");
  EXPECT_THAT(log, AllOf(ContainsRegex("W [0-9:]+ checkpoint.cc:[0-9]+] invalid checkpoint "),
                         HasSubstr(step4.string()), HasSubstr("manifest.textproto: empty file"),
                         HasSubstr(moved.string())));

  MOE_ASSERT_OK_AND_ASSIGN(
      std::string again,
      MoveAsideInvalidCheckpoint((fs::path(root) / "step_00000005").string(), "a test"));
  EXPECT_EQ(again, (fs::path(root) / "step_00000005.invalid").string());
}

// Rule: a root that holds checkpoints, none valid, is refused (resume) with every checkpoint and
// its fault named and the two ways on; nothing is changed.
TEST(PrepareCheckpointDirTest, RefusesWhenNoCheckpointIsValid) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(5), State(5).Named(), /*keep_last=*/2));
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(10), State(10).Named(), /*keep_last=*/2));
  EmptyManifest(fs::path(root) / "step_00000005");
  TruncateBlob(fs::path(root) / "step_00000010");
  const std::vector<std::string> before = Entries(root);

  EXPECT_THAT(
      PrepareCheckpointDir(root, /*resume=*/true),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               AllOf(HasSubstr((fs::path(root) / "step_00000005").string() + ": " +
                               (fs::path(root) / "step_00000005").string() +
                               "/manifest.textproto: empty file"),
                     HasSubstr((fs::path(root) / "step_00000010").string() + ": " +
                               (fs::path(root) / "step_00000010").string() + "/tensors.bin"),
                     HasSubstr("manifest says"), HasSubstr("none is valid"),
                     HasSubstr("move them out of " + root),
                     HasSubstr("--set checkpoint.resume=false"))));
  EXPECT_EQ(Entries(root), before);
  // A root without checkpoints (only other files), or none at all, is a fresh start: NotFound.
  const fs::path empty = fs::path(root + "_empty");
  fs::remove_all(empty);
  fs::create_directories(empty);
  std::ofstream(empty / "metrics.jsonl") << "{}\n";
  EXPECT_THAT(PrepareCheckpointDir(empty.string(), true),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no checkpoint under")));
  EXPECT_THAT(PrepareCheckpointDir(root + "_absent", true),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no checkpoint directory")));
}

// Rule: without resume, invalid checkpoints are moved aside (not deleted), valid ones left, and
// nothing is resumed.
TEST(PrepareCheckpointDirTest, WithoutResumeMovesInvalidOnesAside) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  for (int64_t step : {3, 5, 10}) {
    MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(step), State(step).Named(), /*keep_last=*/0));
  }
  EmptyManifest(fs::path(root) / "step_00000005");
  TruncateBlob(fs::path(root) / "step_00000010");
  EXPECT_THAT(PrepareCheckpointDir(root, /*resume=*/false),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("not resuming")));
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000003", "step_00000005.invalid",
                                                    "step_00000010.invalid"));
}

// Rule: with resume, the newest valid checkpoint is chosen and the invalid ones above it are
// moved aside, so that retention cannot later count them.
TEST(PrepareCheckpointDirTest, ResumesFromTheNewestValidAndMovesNewerInvalidOnesAside) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  for (int64_t step : {3, 5, 10}) {
    MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(step), State(step).Named(), /*keep_last=*/0));
  }
  fs::create_directory(fs::path(root) / "tmp.step_00000011.77");
  TruncateBlob(fs::path(root) / "step_00000010");
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint chosen, PrepareCheckpointDir(root, /*resume=*/true));
  EXPECT_EQ(chosen.meta.step, 5);
  EXPECT_EQ(chosen.dir, (fs::path(root) / "step_00000005").string());
  EXPECT_THAT(Entries(root),
              ::testing::ElementsAre("step_00000003", "step_00000005", "step_00000010.invalid"));
}

// A write that fails part-way (here RLIMIT_FSIZE, as a full disk) is a clear error naming the
// file, and leaves the earlier checkpoints as they were and no temporary directory.
TEST(CheckpointTest, FailedWriteLeavesThePreviousCheckpoints) {
  const std::string root = FreshRoot();
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK(SaveCheckpoint(ctx, root, Meta(1), State(1).Named(), /*keep_last=*/2));
  const std::string blob = ReadFile(fs::path(root) / "step_00000001" / "tensors.bin");

  rlimit saved_limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved_limit), 0);
  struct sigaction ignore {
  }, saved_action{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &saved_action), 0);
  rlimit small = saved_limit;
  small.rlim_cur = 100;  // bytes: the blob needs more
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const Status status = SaveCheckpoint(ctx, root, Meta(2), State(2).Named(), 2);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved_limit), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &saved_action, nullptr), 0);

  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInternal,
                               AllOf(HasSubstr("checkpoint step_00000002 not written"),
                                     HasSubstr("tensors.bin"), HasSubstr("File too large"))));
  EXPECT_THAT(Entries(root), ::testing::ElementsAre("step_00000001"));
  EXPECT_EQ(ReadFile(fs::path(root) / "step_00000001" / "tensors.bin"), blob);
  MOE_EXPECT_OK(LoadCheckpoint((fs::path(root) / "step_00000001").string()).status());
}

}  // namespace
}  // namespace smoe
