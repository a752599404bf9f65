#include "moe/adapt/controller.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "runtime/core/logging.h"
#include "runtime/tensor/tensor.h"

namespace smoe {
namespace {

constexpr absl::string_view kTableHeader = "sigma-moe adapt table v1";

double Median(std::vector<double> values) {
  MOE_CHECK(!values.empty());
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::string KeyName(const AdaptKey& key) {
  return absl::StrCat("layer ", key.layer, " bucket ", key.capacity_bucket, " k ", key.top_k);
}

Status CheckKey(const AdaptKey& key) {
  if (key.layer < 0) return BadArgument("key.layer", absl::StrCat(key.layer), ">= 0");
  if (key.capacity_bucket < 0) {
    return BadArgument("key.capacity_bucket", absl::StrCat(key.capacity_bucket), ">= 0");
  }
  if (key.top_k < 1) return BadArgument("key.top_k", absl::StrCat(key.top_k), ">= 1");
  return absl::OkStatus();
}

std::string Errno(absl::string_view what, absl::string_view path) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno));
}

Status WriteAll(int fd, absl::string_view data, absl::string_view path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(Errno("write", path));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Writes `contents` to `path` atomically: a temp file, fsynced, renamed over `path`, then the
// directory fsynced so the rename itself survives a crash.
Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(Errno("open", tmp));
  Status status = WriteAll(fd, contents, tmp);
  if (status.ok() && ::fsync(fd) != 0) status = absl::InternalError(Errno("fsync", tmp));
  if (::close(fd) != 0 && status.ok()) status = absl::InternalError(Errno("close", tmp));
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(Errno("rename to", path));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    // Best effort: some file systems refuse fsync on directories, and the data is already safe.
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

}  // namespace

int64_t CapacityBucket(int64_t max_rows_per_expert) {
  MOE_CHECK_GE(max_rows_per_expert, 0);
  return std::bit_width(static_cast<uint64_t>(max_rows_per_expert));
}

StatusOr<int64_t> AgreedCapacityBucket(Communicator* comm, int64_t local_max_rows_per_expert) {
  MOE_ASSIGN_OR_RETURN(
      const std::vector<int64_t> buckets,
      AgreedCapacityBuckets(comm, std::span<const int64_t>(&local_max_rows_per_expert, 1)));
  return buckets[0];
}

StatusOr<std::vector<int64_t>> AgreedCapacityBuckets(
    Communicator* comm, std::span<const int64_t> local_max_rows_per_expert) {
  if (comm == nullptr) return BadArgument("comm", "null", "a communicator");
  const int64_t n = static_cast<int64_t>(local_max_rows_per_expert.size());
  for (int64_t i = 0; i < n; ++i) {
    if (local_max_rows_per_expert[i] < 0) {
      return BadArgument(n == 1 ? std::string("local_max_rows_per_expert")
                                : absl::StrCat("local_max_rows_per_expert[", i, "]"),
                         absl::StrCat(local_max_rows_per_expert[i]), ">= 0");
    }
  }
  std::vector<int64_t> buckets(n, 0);
  if (n == 0) return buckets;
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty({n}, DType::kI64, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({comm->size() * n}, DType::kI64, Device::Cpu()));
  std::copy(local_max_rows_per_expert.begin(), local_max_rows_per_expert.end(),
            mine.data<int64_t>());
  MOE_RETURN_IF_ERROR(comm->AllGather(ctx, mine, all));
  for (int64_t i = 0; i < n; ++i) {
    int64_t global_max = 0;
    for (int r = 0; r < comm->size(); ++r) {
      global_max = std::max(global_max, all.data<int64_t>()[r * n + i]);
    }
    buckets[i] = CapacityBucket(global_max);
  }
  return buckets;
}

StatusOr<std::unique_ptr<AdaptiveController>> AdaptiveController::Create(
    const AdaptConfig& config, std::vector<ParallelMode> candidates, Communicator* comm) {
  if (comm == nullptr) return BadArgument("comm", "null", "a communicator");
  if (candidates.empty()) return BadArgument("candidates", "[]", "at least one parallel mode");
  for (size_t i = 0; i < candidates.size(); ++i) {
    const ParallelMode& c = candidates[i];
    if (c.r < 0 || c.d < 1) {
      return BadArgument(absl::StrCat("candidates[", i, "]"), ParallelModeName(c),
                         "r >= 0 and d >= 1");
    }
    for (size_t j = 0; j < i; ++j) {
      if (candidates[j] == c) {
        return BadArgument(absl::StrCat("candidates[", i, "]"), ParallelModeName(c),
                           absl::StrCat("distinct candidates (equals candidates[", j, "])"));
      }
    }
  }
  if (config.trials < 1) return BadArgument("adapt.trials", absl::StrCat(config.trials), ">= 1");
  if (config.warmup < 0) return BadArgument("adapt.warmup", absl::StrCat(config.warmup), ">= 0");
  if (config.explore_at_most < 0) {
    return BadArgument("adapt.explore_at_most", absl::StrCat(config.explore_at_most),
                       ">= 0 (0 = every candidate)");
  }
  if (!(config.explore_within == 0.0 || config.explore_within >= 1.0)) {
    return BadArgument("adapt.explore_within", absl::StrCat(config.explore_within),
                       "0 (no limit) or >= 1");
  }
  if (config.reexplore_period < 0) {
    return BadArgument("adapt.reexplore_period", absl::StrCat(config.reexplore_period),
                       ">= 0 (0 = never)");
  }
  bool forced = false;
  ParallelMode forced_mode;
  if (config.mode != "auto") {
    StatusOr<ParallelMode> parsed = ParseParallelMode(config.mode);
    if (!parsed.ok()) {
      return BadArgument(
          "adapt.mode", config.mode,
          absl::StrCat("\"auto\" or a parallel mode (", parsed.status().message(), ")"));
    }
    if (std::find(candidates.begin(), candidates.end(), *parsed) == candidates.end()) {
      std::vector<std::string> names;
      for (const ParallelMode& c : candidates) names.push_back(ParallelModeName(c));
      return BadArgument(
          "adapt.mode", config.mode,
          absl::StrCat("\"auto\" or one of the candidates: ", absl::StrJoin(names, ", ")));
    }
    forced = true;
    forced_mode = *parsed;
  }
  return std::unique_ptr<AdaptiveController>(
      new AdaptiveController(config, std::move(candidates), comm, forced, forced_mode));
}

AdaptiveController::Entry AdaptiveController::NewEntry(const AdaptKey& key) const {
  Entry entry;
  const size_t n = candidates_.size();
  entry.stats.resize(n);
  entry.explored = static_cast<int>(n);
  if (!prior_ || (config_.explore_at_most == 0 && config_.explore_within == 0.0)) return entry;
  const std::vector<double> predicted = prior_(key);
  const bool usable =
      predicted.size() == n &&
      std::all_of(predicted.begin(), predicted.end(), [](double ms) { return std::isfinite(ms); });
  if (!usable) {
    MOE_LOG(WARNING) << "adapt: " << KeyName(key) << ": the prior gave " << predicted.size()
                     << " predictions (expected " << n << ", all finite); exploring every "
                     << "candidate";
    return entry;
  }
  // Fastest first; ties keep the candidates' order.
  std::vector<int> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return predicted[a] < predicted[b]; });
  const double fastest = predicted[order[0]];
  int kept = 0;
  for (int i : order) {
    const bool within = config_.explore_within == 0.0 || kept == 0 ||
                        predicted[i] <= config_.explore_within * fastest;
    const bool room = config_.explore_at_most == 0 || kept < config_.explore_at_most;
    if (within && room) {
      ++kept;
    } else {
      entry.stats[i].pruned = true;
    }
  }
  entry.explored = kept;
  return entry;
}

int AdaptiveController::CandidateIndex(const ParallelMode& mode) const {
  for (size_t i = 0; i < candidates_.size(); ++i) {
    if (candidates_[i] == mode) return static_cast<int>(i);
  }
  return -1;
}

// Round-robin: the unfinished candidate with the fewest reports, the earliest on ties.
int AdaptiveController::NextCandidate(const Entry& entry) const {
  const int64_t needed = config_.warmup + config_.trials;
  int next = -1;
  for (size_t i = 0; i < entry.stats.size(); ++i) {
    const CandidateStats& s = entry.stats[i];
    if (s.pruned) continue;
    if (s.reports >= needed || static_cast<int64_t>(s.kept.size()) >= config_.trials) continue;
    if (next < 0 || s.reports < entry.stats[next].reports) next = static_cast<int>(i);
  }
  return next;
}

bool AdaptiveController::ExplorationDone(const Entry& entry) const {
  return NextCandidate(entry) < 0;
}

void AdaptiveController::Decide(const AdaptKey& key, Entry& entry) {
  int best = -1;
  double best_ms = 0.0;
  for (size_t i = 0; i < entry.stats.size(); ++i) {
    if (entry.stats[i].kept.empty()) continue;  // pruned
    const double ms = Median(entry.stats[i].kept);
    if (best < 0 || ms < best_ms) {
      best = static_cast<int>(i);
      best_ms = ms;
    }
  }
  const int previous = entry.best;
  entry.exploring = false;
  entry.stats.clear();
  entry.pending = -1;
  entry.best = best;
  entry.best_ms = best_ms;
  entry.exploit_steps = 0;
  if (comm_->rank() != 0) return;
  const std::string mode = ParallelModeName(candidates_[best]);
  if (previous < 0) {
    MOE_LOG(INFO) << "adapt: " << KeyName(key) << ": explored " << entry.explored << " of "
                  << candidates_.size() << " candidates, chose " << mode << " (median " << best_ms
                  << " ms)";
  } else if (previous != best) {
    MOE_LOG(INFO) << "adapt: " << KeyName(key) << ": re-explored, new best " << mode << " (median "
                  << best_ms << " ms), was " << ParallelModeName(candidates_[previous]);
  } else {
    MOE_LOG(DEBUG) << "adapt: " << KeyName(key) << ": re-explored, kept " << mode << " (median "
                   << best_ms << " ms)";
  }
}

StatusOr<ParallelMode> AdaptiveController::Choose(const AdaptKey& key) {
  MOE_RETURN_IF_ERROR(CheckKey(key));
  if (forced_) return forced_mode_;
  auto [it, inserted] = table_.try_emplace(key);
  Entry& entry = it->second;
  if (inserted) entry = NewEntry(key);
  if (!entry.exploring && config_.reexplore_period > 0 &&
      ++entry.exploit_steps > config_.reexplore_period) {
    const int previous = entry.best;
    entry = NewEntry(key);
    entry.best = previous;
  }
  if (!entry.exploring) return candidates_[entry.best];
  entry.pending = NextCandidate(entry);
  MOE_CHECK_GE(entry.pending, 0) << "an exploring key always has a candidate left";
  return candidates_[entry.pending];
}

bool AdaptiveController::Measuring(const AdaptKey& key) const {
  if (forced_) return false;
  const auto it = table_.find(key);
  return it != table_.end() && it->second.exploring;
}

Status AdaptiveController::Report(const AdaptKey& key, const ParallelMode& mode, double ms) {
  if (!Measuring(key)) return absl::OkStatus();
  Entry& entry = table_.at(key);
  if (entry.pending < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("adapt: Report for ", KeyName(key), " without a Choose since the last one"));
  }
  // Every rank reaches this collective in the same state; the arguments are checked after it.
  // The slowest rank's time: what a step costs when every rank waits for the collectives.
  // Every rank gathers the same vector, so every rank records the same number.
  MOE_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty({1}, DType::kF32, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({comm_->size()}, DType::kF32, Device::Cpu()));
  mine.data<float>()[0] = static_cast<float>(ms);
  MOE_RETURN_IF_ERROR(comm_->AllGather(ExecContext::Cpu(), mine, all));
  // The largest, or the first value that is not finite and >= 0 (rejected below).
  double total_ms = 0.0;
  for (int r = 0; r < comm_->size(); ++r) {
    const double rank_ms = all.data<float>()[r];
    if (!std::isfinite(rank_ms) || rank_ms < 0.0) {
      total_ms = rank_ms;
      break;
    }
    total_ms = std::max(total_ms, rank_ms);
  }
  const int chosen = entry.pending;
  entry.pending = -1;
  if (!(mode == candidates_[chosen])) {
    return BadArgument("mode", ParallelModeName(mode),
                       absl::StrCat(ParallelModeName(candidates_[chosen]), " (the mode Choose ",
                                    "returned for ", KeyName(key), ")"));
  }
  if (!std::isfinite(total_ms) || total_ms < 0.0) {
    return BadArgument("ms (slowest rank)", absl::StrCat(total_ms), "finite and >= 0");
  }
  CandidateStats& stats = entry.stats[chosen];
  if (++stats.reports > config_.warmup) stats.kept.push_back(total_ms);
  ++total_reports_;
  if (!ExplorationDone(entry)) return absl::OkStatus();
  Decide(key, entry);
  if (config_.save_on_decision) return Save();
  return absl::OkStatus();
}

void AdaptiveController::ResetKey(const AdaptKey& key) { table_.erase(key); }

std::vector<AdaptDecision> AdaptiveController::Decisions() const {
  std::vector<AdaptDecision> out;
  out.reserve(table_.size());
  for (const auto& [key, entry] : table_) {
    AdaptDecision d;
    d.key = key;
    d.exploring = entry.exploring;
    d.explored = entry.explored;
    if (!entry.exploring) {
      d.mode = candidates_[entry.best];
      d.median_ms = entry.best_ms;
    } else {
      for (size_t i = 0; i < entry.stats.size(); ++i) {
        const CandidateStats& s = entry.stats[i];
        d.reports += s.reports;
        if (static_cast<int64_t>(s.kept.size()) < config_.trials) continue;
        const double ms = Median(s.kept);
        if (d.median_ms < 0.0 || ms < d.median_ms) {
          d.mode = candidates_[i];
          d.median_ms = ms;
        }
      }
      if (d.median_ms < 0.0) d.mode = candidates_[0];
    }
    out.push_back(d);
  }
  return out;
}

std::string AdaptiveController::Summary() const {
  std::string out;
  for (const AdaptDecision& d : Decisions()) {
    absl::StrAppend(&out, KeyName(d.key), ": ", ParallelModeName(d.mode), " ",
                    absl::StrFormat("%.4g", d.median_ms), " ms",
                    d.exploring ? absl::StrCat(" [exploring, ", d.reports, " reports]") : "", "\n");
  }
  return out;
}

std::string AdaptiveController::Serialize() const {
  std::string out = absl::StrCat(kTableHeader, "\n");
  for (const auto& [key, entry] : table_) {
    const std::string prefix =
        absl::StrCat(key.layer, " ", key.capacity_bucket, " ", key.top_k, " ");
    if (!entry.exploring) {
      absl::StrAppend(&out, "best ", prefix, ParallelModeName(candidates_[entry.best]), " ",
                      absl::StrFormat("%.17g", entry.best_ms), "\n");
      continue;
    }
    for (size_t i = 0; i < entry.stats.size(); ++i) {
      const CandidateStats& s = entry.stats[i];
      if (s.reports == 0) continue;
      absl::StrAppend(&out, "explore ", prefix, ParallelModeName(candidates_[i]), " ", s.reports);
      for (double ms : s.kept) absl::StrAppend(&out, " ", absl::StrFormat("%.17g", ms));
      absl::StrAppend(&out, "\n");
    }
  }
  return out;
}

StatusOr<AdaptiveController::Table> AdaptiveController::Parse(absl::string_view text,
                                                              absl::string_view path) const {
  Table table;
  const std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  auto error = [&](size_t line, absl::string_view what) {
    return absl::DataLossError(absl::StrCat(path, ":", line + 1, ": ", what));
  };
  if (lines.empty() || absl::StripTrailingAsciiWhitespace(lines[0]) != kTableHeader) {
    return error(0, absl::StrCat("expected the header \"", kTableHeader, "\""));
  }
  auto parse_ms = [](absl::string_view token, double* ms) {
    return absl::SimpleAtod(token, ms) && std::isfinite(*ms) && *ms >= 0.0;
  };
  for (size_t n = 1; n < lines.size(); ++n) {
    const absl::string_view line = absl::StripAsciiWhitespace(lines[n]);
    if (line.empty() || line[0] == '#') continue;
    const std::vector<absl::string_view> tokens =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const bool best = tokens[0] == "best";
    if (!best && tokens[0] != "explore") {
      return error(n, absl::StrCat("unknown entry \"", tokens[0], "\", expected best or explore"));
    }
    if ((best && tokens.size() != 6) || (!best && tokens.size() < 6)) {
      return error(n, best ? "expected: best <layer> <bucket> <top_k> <mode> <median_ms>"
                           : "expected: explore <layer> <bucket> <top_k> <mode> <reports> "
                             "[<kept_ms> ...]");
    }
    AdaptKey key;
    if (!absl::SimpleAtoi(tokens[1], &key.layer) ||
        !absl::SimpleAtoi(tokens[2], &key.capacity_bucket) ||
        !absl::SimpleAtoi(tokens[3], &key.top_k) || !CheckKey(key).ok()) {
      return error(n, "bad key: expected <layer >= 0> <bucket >= 0> <top_k >= 1>");
    }
    StatusOr<ParallelMode> mode = ParseParallelMode(tokens[4]);
    if (!mode.ok()) return error(n, mode.status().message());
    const int candidate = CandidateIndex(*mode);
    auto it = table.find(key);
    if (best) {
      double ms = 0.0;
      if (!parse_ms(tokens[5], &ms)) return error(n, "bad median_ms: expected a number >= 0");
      if (it != table.end()) return error(n, absl::StrCat("second entry for ", KeyName(key)));
      Entry entry;
      entry.exploring = false;
      entry.best = candidate;
      entry.best_ms = ms;
      table.emplace(key, entry);  // dropped below when `candidate` < 0
      continue;
    }
    if (it != table.end() && !it->second.exploring) {
      return error(n, absl::StrCat("explore entry for the decided ", KeyName(key)));
    }
    if (it == table.end()) it = table.emplace(key, NewEntry(key)).first;
    CandidateStats stats;
    if (!absl::SimpleAtoi(tokens[5], &stats.reports) || stats.reports < 0) {
      return error(n, "bad reports: expected an integer >= 0");
    }
    for (size_t t = 6; t < tokens.size(); ++t) {
      double ms = 0.0;
      if (!parse_ms(tokens[t], &ms)) return error(n, "bad kept_ms: expected a number >= 0");
      stats.kept.push_back(ms);
    }
    if (static_cast<int64_t>(stats.kept.size()) > stats.reports) {
      return error(n, "more kept measurements than reports");
    }
    if (candidate < 0) continue;
    // Entries written under other trials/warmup settings are kept as far as they go.
    if (static_cast<int64_t>(stats.kept.size()) > config_.trials) stats.kept.resize(config_.trials);
    CandidateStats& slot = it->second.stats[candidate];
    if (slot.reports != 0) {
      return error(n, absl::StrCat("second explore entry for ", tokens[4], " in ", KeyName(key)));
    }
    slot = std::move(stats);
  }
  // A decision for a mode that is no longer a candidate is forgotten: the key explores again.
  for (auto it = table.begin(); it != table.end();) {
    it = !it->second.exploring && it->second.best < 0 ? table.erase(it) : std::next(it);
  }
  return table;
}

Status AdaptiveController::Load() {
  if (forced_ || config_.table_path.empty()) return absl::OkStatus();
  ExecContext& ctx = ExecContext::Cpu();
  // Rank 0's file is broadcast as a sum to which the other ranks add zeros. Length codes:
  // -1 no file, -2 unreadable.
  constexpr int64_t kNoFile = -1, kUnreadable = -2;
  std::string contents;
  MOE_ASSIGN_OR_RETURN(Tensor length, Tensor::Empty({1}, DType::kI64, Device::Cpu()));
  length.data<int64_t>()[0] = 0;
  std::string read_error;
  if (comm_->rank() == 0) {
    std::ifstream in(config_.table_path, std::ios::binary);
    if (!in) {
      length.data<int64_t>()[0] = errno == ENOENT ? kNoFile : kUnreadable;
      read_error = Errno("open", config_.table_path);
    } else {
      std::ostringstream buffer;
      buffer << in.rdbuf();
      contents = buffer.str();
      if (in.bad()) {
        length.data<int64_t>()[0] = kUnreadable;
        read_error = absl::StrCat("read ", config_.table_path, " failed");
      } else {
        length.data<int64_t>()[0] = static_cast<int64_t>(contents.size());
      }
    }
  }
  MOE_RETURN_IF_ERROR(comm_->AllReduceSum(ctx, length));
  const int64_t n = length.data<int64_t>()[0];
  if (n == kNoFile) return absl::OkStatus();
  if (n == kUnreadable) {
    return absl::DataLossError(comm_->rank() == 0
                                   ? read_error
                                   : absl::StrCat("rank 0 could not read ", config_.table_path));
  }
  if (n < 0) return absl::InternalError(absl::StrCat("adapt table length ", n));
  MOE_ASSIGN_OR_RETURN(Tensor bytes, Tensor::Empty({n}, DType::kI32, Device::Cpu()));
  int32_t* b = bytes.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    b[i] = comm_->rank() == 0 ? static_cast<unsigned char>(contents[i]) : 0;
  }
  MOE_RETURN_IF_ERROR(comm_->AllReduceSum(ctx, bytes));
  contents.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) contents[i] = static_cast<char>(b[i]);
  MOE_ASSIGN_OR_RETURN(Table table, Parse(contents, config_.table_path));
  table_ = std::move(table);
  // A table written under a smaller trials setting may hold finished explorations.
  for (auto& [key, entry] : table_) {
    if (entry.exploring && ExplorationDone(entry)) Decide(key, entry);
  }
  if (comm_->rank() == 0) {
    MOE_LOG(INFO) << "adapt: loaded " << table_.size() << " keys from " << config_.table_path;
  }
  return absl::OkStatus();
}

Status AdaptiveController::Save() const {
  if (forced_ || config_.table_path.empty() || comm_->rank() != 0) return absl::OkStatus();
  return WriteFileAtomically(config_.table_path, Serialize());
}

}  // namespace smoe
