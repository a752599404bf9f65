// The built-in synthetic corpus: system-domain text (shell sessions, syslog and application logs,
// web access logs, config files) generated from a grammar with random choices.
//
// Calibration (measured by tests/runtime/train/data/synthetic_corpus_test.cc, seed 1):
//   byte-unigram entropy of 1 MB of train text                          3.80 nats/byte (>= 3.0)
//   held-out cross-entropy of a Witten-Bell context model trained on 2 MB of train text:
//     order 2: 1.39, order 3: 0.70, order 6: 0.52 nats/byte (0.14 x unigram)
// The text uses the whole printable range (upper/lower case, digits, punctuation, paths, flags,
// key=value pairs, timestamps) so the unigram entropy is high, while most bytes belong to long
// fixed keywords and templates, chosen among small vocabularies, so a model with a few hundred
// bytes of context predicts most of them. Fields that are incompressible (numbers, ids) are short.
//
// Determinism: the text is a concatenation of documents; document d of (seed, split) is a pure
// function of (seed, split, d) (Philox streams), so the same arguments always give the same bytes,
// and a shorter request is a prefix of a longer one. Different splits use disjoint streams, so
// held-out documents (split 1) are never train documents (split 0). Template lines (a common
// command, a config key) recur across splits as they do in real system text; lines that carry a
// timestamp (every log line) are unique to their document in practice.
#pragma once

#include <cstdint>
#include <string>

namespace smoe {

inline constexpr int kTrainSplit = 0;
inline constexpr int kHeldoutSplit = 1;

// The first `num_bytes` bytes of the corpus stream (seed, split). split >= 0 (0 train, 1 held-out;
// other ids give further disjoint streams); num_bytes >= 0. Bytes are printable ASCII, '\t' or
// '\n'. Checks its arguments with MOE_CHECK (SyntheticSource validates them as a Status).
std::string GenerateSyntheticText(uint64_t seed, int split, int64_t num_bytes);

// Document `index` of the stream (seed, split), ending with a blank line; the stream is
// SyntheticDocument(seed, split, 0) + SyntheticDocument(seed, split, 1) + ... Exposed for tests.
std::string SyntheticDocument(uint64_t seed, int split, int64_t index);

}  // namespace smoe
