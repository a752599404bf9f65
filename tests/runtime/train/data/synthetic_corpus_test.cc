#include "runtime/train/data/synthetic_corpus.h"

#include <cctype>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/train/data/context_model.h"

namespace smoe {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

bool HasClock(const std::string& line) {
  auto digit = [&](size_t i) { return std::isdigit(static_cast<unsigned char>(line[i])) != 0; };
  for (size_t i = 0; i + 8 <= line.size(); ++i) {
    if (digit(i) && digit(i + 1) && line[i + 2] == ':' && digit(i + 3) && digit(i + 4) &&
        line[i + 5] == ':' && digit(i + 6) && digit(i + 7)) {
      return true;
    }
  }
  return false;
}

TEST(SyntheticCorpusTest, SameArgumentsSameBytes) {
  const std::string a = GenerateSyntheticText(7, kTrainSplit, 50000);
  const std::string b = GenerateSyntheticText(7, kTrainSplit, 50000);
  ASSERT_EQ(a.size(), 50000u);
  EXPECT_EQ(a, b);
}

TEST(SyntheticCorpusTest, ShorterRequestIsPrefix) {
  const std::string long_text = GenerateSyntheticText(3, kTrainSplit, 40000);
  for (int64_t n : {0, 1, 17, 1000, 39999}) {
    EXPECT_EQ(GenerateSyntheticText(3, kTrainSplit, n), long_text.substr(0, n)) << n;
  }
}

TEST(SyntheticCorpusTest, StreamIsConcatenationOfDocuments) {
  std::string docs;
  for (int d = 0; d < 5; ++d) {
    const std::string doc = SyntheticDocument(11, kHeldoutSplit, d);
    ASSERT_GE(doc.size(), 2u);
    EXPECT_EQ(doc.substr(doc.size() - 2), "\n\n") << "document " << d << " ends with a blank line";
    docs += doc;
  }
  EXPECT_EQ(GenerateSyntheticText(11, kHeldoutSplit, static_cast<int64_t>(docs.size())), docs);
}

TEST(SyntheticCorpusTest, SeedsAndSplitsDiffer) {
  const std::string train = GenerateSyntheticText(1, kTrainSplit, 4096);
  EXPECT_NE(train, GenerateSyntheticText(2, kTrainSplit, 4096));
  EXPECT_NE(train, GenerateSyntheticText(1, kHeldoutSplit, 4096));
  EXPECT_NE(GenerateSyntheticText(1, kHeldoutSplit, 4096), GenerateSyntheticText(1, 2, 4096));
}

TEST(SyntheticCorpusTest, PrintableAscii) {
  const std::string text = GenerateSyntheticText(5, kTrainSplit, 200000);
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    ASSERT_TRUE((c >= 32 && c < 127) || c == '\n' || c == '\t') << "byte " << i << " = " << int{c};
  }
}

// Held-out documents are not train documents, and no held-out line that carries a clock (every
// log line and shell prompt) appears anywhere in the train text.
TEST(SyntheticCorpusTest, HeldoutNeverInTrain) {
  const std::string train = GenerateSyntheticText(1, kTrainSplit, 1 << 20);
  std::unordered_set<std::string> train_docs, train_lines;
  {
    int64_t bytes = 0;
    for (int d = 0; bytes < static_cast<int64_t>(train.size()); ++d) {
      std::string doc = SyntheticDocument(1, kTrainSplit, d);
      bytes += static_cast<int64_t>(doc.size());
      train_docs.insert(std::move(doc));
    }
  }
  for (std::string& line : Lines(train)) train_lines.insert(std::move(line));

  int64_t heldout_bytes = 0, clock_lines = 0;
  for (int d = 0; heldout_bytes < (128 << 10); ++d) {
    const std::string doc = SyntheticDocument(1, kHeldoutSplit, d);
    heldout_bytes += static_cast<int64_t>(doc.size());
    ASSERT_EQ(train_docs.count(doc), 0u) << "held-out document " << d << " is a train document";
    for (const std::string& line : Lines(doc)) {
      if (!HasClock(line)) continue;
      ++clock_lines;
      ASSERT_EQ(train_lines.count(line), 0u) << "held-out line in train text: " << line;
    }
  }
  EXPECT_GT(clock_lines, 500);
}

// Calibration (a): the byte-unigram entropy of 1 MB of train text is at least 3.0 nats/byte.
// Calibration (b): an order-6 Witten-Bell context model trained on 2 MB of train text predicts
// held-out text at well under 0.4 x the unigram entropy, so the text is learnable from local
// context and the trainer's target (held-out loss < unigram / 2) is reachable.
TEST(SyntheticCorpusTest, Calibration) {
  const std::string train = GenerateSyntheticText(1, kTrainSplit, 2 << 20);
  const std::string heldout = GenerateSyntheticText(1, kHeldoutSplit, 128 << 10);
  const double unigram = testing::UnigramEntropy(train.substr(0, 1 << 20));

  constexpr int kOrder = 6;
  testing::ContextModel model(kOrder, 21);
  model.Train(train);
  const std::vector<double> cross_entropy = model.CrossEntropy(heldout);
  const double best = cross_entropy[kOrder];

  std::cout << "synthetic corpus: unigram entropy " << unigram << " nats/byte; held-out "
            << "cross-entropy by context order:";
  for (int k = 0; k <= kOrder; ++k) std::cout << " " << k << ":" << cross_entropy[k];
  std::cout << " (order-" << kOrder << " / unigram = " << best / unigram << "); "
            << model.num_contexts() << " contexts, " << model.num_pairs() << " pairs\n";
  ::testing::Test::RecordProperty("unigram_entropy_nats", std::to_string(unigram));
  ::testing::Test::RecordProperty("order6_heldout_nats", std::to_string(best));

  EXPECT_GE(unigram, 3.0);
  // The order-0 model of held-out text must agree with the train unigram entropy (same grammar).
  EXPECT_NEAR(cross_entropy[0], unigram, 0.05);
  // Longer contexts must help: the corpus is learnable from context, not just from frequencies.
  EXPECT_LT(cross_entropy[2], 0.6 * cross_entropy[0]);
  EXPECT_LT(best, cross_entropy[3]);
  EXPECT_LT(best, 0.3 * unigram);
}

// The context model itself: on a deterministic periodic text, long contexts predict perfectly.
TEST(ContextModelTest, PeriodicTextIsPredictable) {
  std::string text;
  while (text.size() < 20000) text += "abcdefgh-";
  testing::ContextModel model(3, 10);
  model.Train(text);
  const std::vector<double> ce = model.CrossEntropy(text.substr(0, 2000));
  EXPECT_NEAR(ce[0], std::log(9.0), 0.01);  // nine equally frequent bytes
  EXPECT_LT(ce[1], 0.01);                   // each byte determines the next
  EXPECT_NEAR(testing::UnigramEntropy(text), std::log(9.0), 0.01);
}

}  // namespace
}  // namespace smoe
