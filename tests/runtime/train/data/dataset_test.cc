#include "runtime/train/data/dataset.h"

#include <cstdio>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/train/data/synthetic_corpus.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/data_test_" + name;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), file), bytes.size());
  ASSERT_EQ(std::fclose(file), 0);
}

std::string ReadBytes(const std::string& path) {
  std::string bytes;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return bytes;
  char buffer[4096];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), file)) > 0) bytes.append(buffer, got);
  std::fclose(file);
  return bytes;
}

std::vector<int32_t> ReadAll(const TokenSource& source) {
  std::vector<int32_t> out(source.size());
  source.Read(0, source.size(), out.data());
  return out;
}

std::vector<uint16_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::vector<uint16_t> tokens(n);
  for (int i = 0; i < n; ++i) tokens[i] = static_cast<uint16_t>(PhiloxBits(seed, i) % vocab);
  return tokens;
}

// A header as llm.c writes it, with the given fields.
std::string Header(int32_t magic, int32_t version, int32_t num_tokens) {
  std::string bytes(kTokenFileHeaderBytes, '\0');
  const int32_t fields[3] = {magic, version, num_tokens};
  for (int f = 0; f < 3; ++f) {
    for (int b = 0; b < 4; ++b) {
      bytes[4 * f + b] = static_cast<char>(static_cast<uint32_t>(fields[f]) >> (8 * b));
    }
  }
  return bytes;
}

// ---- synthetic --------------------------------------------------------------------------------

TEST(SyntheticSourceTest, BytesOfTheCorpus) {
  MOE_ASSERT_OK_AND_ASSIGN(auto source, SyntheticSource(9, kTrainSplit, 5000));
  EXPECT_EQ(source->size(), 5000);
  EXPECT_EQ(source->vocab_size(), 256);
  EXPECT_EQ(source->name(), "synthetic:train");
  const std::string text = GenerateSyntheticText(9, kTrainSplit, 5000);
  const std::vector<int32_t> tokens = ReadAll(*source);
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(tokens[i], static_cast<uint8_t>(text[i])) << i;
  // A read in the middle equals the same slice of a full read.
  std::vector<int32_t> part(100);
  source->Read(1234, 100, part.data());
  EXPECT_EQ(part, std::vector<int32_t>(tokens.begin() + 1234, tokens.begin() + 1334));

  MOE_ASSERT_OK_AND_ASSIGN(auto heldout, SyntheticSource(9, kHeldoutSplit, 10));
  EXPECT_EQ(heldout->name(), "synthetic:heldout");
}

TEST(SyntheticSourceTest, BadArguments) {
  EXPECT_THAT(SyntheticSource(1, -1, 100),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("split: got -1")));
  EXPECT_THAT(SyntheticSource(1, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_bytes: got 0")));
}

// ---- text files -------------------------------------------------------------------------------

TEST(TextFileSourceTest, ReadsBytesIncludingHighBytes) {
  const std::string path = TempPath("text.txt");
  std::string bytes = "hello\n";
  bytes.push_back('\0');
  bytes.push_back(static_cast<char>(0xff));
  bytes.push_back(static_cast<char>(0x80));
  WriteBytes(path, bytes);
  MOE_ASSERT_OK_AND_ASSIGN(auto source, TextFileSource(path));
  EXPECT_EQ(source->name(), path);
  EXPECT_EQ(source->vocab_size(), 256);
  EXPECT_EQ(ReadAll(*source), (std::vector<int32_t>{'h', 'e', 'l', 'l', 'o', '\n', 0, 255, 128}));
}

TEST(TextFileSourceTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = TempPath("does_not_exist.txt");
  EXPECT_THAT(TextFileSource(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(TextFileSourceTest, EmptyFile) {
  const std::string path = TempPath("empty.txt");
  WriteBytes(path, "");
  EXPECT_THAT(TextFileSource(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                             AllOf(HasSubstr(path), HasSubstr("empty"))));
}

// ---- llm.c token files ------------------------------------------------------------------------

TEST(TokenFileTest, RoundTrip) {
  const std::string path = TempPath("tokens.bin");
  const std::vector<uint16_t> tokens = RandomTokens(3001, 50257, 4);
  MOE_ASSERT_OK(WriteTokenFile(path, tokens));
  MOE_ASSERT_OK_AND_ASSIGN(auto source, TokenFileSource(path, 50257));
  EXPECT_EQ(source->size(), 3001);
  EXPECT_EQ(source->vocab_size(), 50257);
  EXPECT_EQ(source->name(), path);
  const std::vector<int32_t> read = ReadAll(*source);
  for (int i = 0; i < 3001; ++i) ASSERT_EQ(read[i], tokens[i]) << i;
  // The full uint16 range survives (no sign extension).
  MOE_ASSERT_OK(WriteTokenFile(path, {0, 65535, 32768, 1}));
  MOE_ASSERT_OK_AND_ASSIGN(auto wide, TokenFileSource(path, 65536));
  EXPECT_EQ(ReadAll(*wide), (std::vector<int32_t>{0, 65535, 32768, 1}));
}

// The exact byte layout llm.c reads: 256 int32 little-endian header, then uint16 little-endian.
TEST(TokenFileTest, ByteLayoutMatchesLlmC) {
  const std::string path = TempPath("layout.bin");
  MOE_ASSERT_OK(WriteTokenFile(path, {0x0102, 0xA0B0}));
  const std::string bytes = ReadBytes(path);
  ASSERT_EQ(bytes.size(), 1024u + 4u);
  EXPECT_EQ(bytes.substr(0, 1024), Header(20240520, 1, 2));
  EXPECT_EQ(bytes.substr(1024), std::string("\x02\x01\xB0\xA0", 4));
  // A hand-built file in that layout reads back.
  WriteBytes(path, Header(20240520, 1, 3) + std::string("\x05\x00\x00\x01\xff\x00", 6));
  MOE_ASSERT_OK_AND_ASSIGN(auto source, TokenFileSource(path, 300));
  EXPECT_EQ(ReadAll(*source), (std::vector<int32_t>{5, 256, 255}));
}

TEST(TokenFileTest, MissingFile) {
  const std::string path = TempPath("missing.bin");
  EXPECT_THAT(TokenFileSource(path, 256), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(TokenFileTest, EmptyFile) {
  const std::string path = TempPath("empty.bin");
  WriteBytes(path, "");
  EXPECT_THAT(TokenFileSource(path, 256), StatusIs(absl::StatusCode::kInvalidArgument,
                                                   AllOf(HasSubstr(path), HasSubstr("empty"))));
}

TEST(TokenFileTest, TruncatedHeader) {
  const std::string path = TempPath("short_header.bin");
  WriteBytes(path, Header(20240520, 1, 4).substr(0, 100));
  EXPECT_THAT(TokenFileSource(path, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("truncated header: 100 bytes"))));
}

TEST(TokenFileTest, BadMagic) {
  const std::string path = TempPath("bad_magic.bin");
  WriteBytes(path, Header(12345, 1, 1) + std::string(2, '\0'));
  EXPECT_THAT(TokenFileSource(path, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("bad magic at byte 0: got 12345"))));
}

TEST(TokenFileTest, BadVersion) {
  const std::string path = TempPath("bad_version.bin");
  WriteBytes(path, Header(20240520, 2, 1) + std::string(4, '\0'));
  EXPECT_THAT(TokenFileSource(path, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("version at byte 4: got 2"))));
}

TEST(TokenFileTest, ZeroTokens) {
  const std::string path = TempPath("zero_tokens.bin");
  WriteBytes(path, Header(20240520, 1, 0));
  EXPECT_THAT(TokenFileSource(path, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("num_tokens at byte 8: got 0"))));
  EXPECT_THAT(WriteTokenFile(path, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 tokens")));
}

TEST(TokenFileTest, TruncatedTokenData) {
  const std::string path = TempPath("truncated.bin");
  // Header promises 10 tokens; 7 bytes follow: 3 whole tokens and half of token 3.
  WriteBytes(path, Header(20240520, 1, 10) + std::string(7, '\x01'));
  EXPECT_THAT(TokenFileSource(path, 65536),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("truncated token data"),
                             HasSubstr("byte 1031"), HasSubstr("inside token 3"))));
}

TEST(TokenFileTest, TrailingData) {
  const std::string path = TempPath("trailing.bin");
  WriteBytes(path, Header(20240520, 1, 2) + std::string(6, '\0'));
  EXPECT_THAT(TokenFileSource(path, 256),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("trailing data"), HasSubstr("1030"))));
}

TEST(TokenFileTest, TokenOutOfVocabNamesItsPosition) {
  const std::string path = TempPath("oov.bin");
  std::vector<uint16_t> tokens = RandomTokens(100, 1000, 2);
  tokens[57] = 1000;
  MOE_ASSERT_OK(WriteTokenFile(path, tokens));
  EXPECT_THAT(TokenFileSource(path, 1000),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("token 57 (byte 1138) is 1000"),
                             HasSubstr("vocab_size 1000"))));
  MOE_EXPECT_OK(TokenFileSource(path, 1001).status());
}

TEST(TokenFileTest, BadVocabSize) {
  const std::string path = TempPath("vocab.bin");
  MOE_ASSERT_OK(WriteTokenFile(path, {1, 2}));
  EXPECT_THAT(TokenFileSource(path, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size: got 0")));
  EXPECT_THAT(TokenFileSource(path, 70000),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size: got 70000")));
}

TEST(TokenFileTest, UnwritablePath) {
  const std::string path = TempPath("no_such_dir/tokens.bin");
  EXPECT_THAT(WriteTokenFile(path, {1}),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("no_such_dir/tokens.bin")));
}

// ---- in-memory --------------------------------------------------------------------------------

TEST(InMemorySourceTest, ChecksIds) {
  MOE_ASSERT_OK_AND_ASSIGN(auto source, InMemorySource("mem", {3, 1, 4, 1, 5}, 6));
  EXPECT_EQ(ReadAll(*source), (std::vector<int32_t>{3, 1, 4, 1, 5}));
  EXPECT_THAT(InMemorySource("mem", {3, 1, 6}, 6),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mem: token 2 is 6")));
  EXPECT_THAT(InMemorySource("mem", {-1}, 6),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token 0 is -1")));
  EXPECT_THAT(InMemorySource("mem", {}, 6),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 tokens")));
}

}  // namespace
}  // namespace smoe
