// adapt_sim: what the adaptive controller would do on a cluster. It replays a trace of per-layer
// routing (the experts' shares of the routed rows, step by step) on W GPUs in nodes of 8 with
// Sigma-MoE-Tiny's layer shape, and steps the real AdaptiveController against the cost model
// (moe/adapt/cost_model.h): every candidate mode's step time comes from the model, off by a fixed
// per-mode error (the model is not the machine) and measured with noise. The cost model is also
// the controller's prior: on the routing of the step that opens a key (what a trainer knows from
// the previous step; --bucket_prior: on what the key's capacity bucket alone implies) it prunes the
// candidates worth measuring (explore_at_most, explore_within), so exploration stays bounded at
// W = 2048 (41 candidates).
//
// Traces: zipf (layer l routes with a Zipf law of exponent 0.3, 0.7, 1.1, 1.5, ..., per-step
// noise), drift (the exponent falls from 1.6 to 0.2 over the run, as balancing takes hold, and the
// hot experts move every tenth of it), or metrics:PATH (the "tokens_per_expert" of every MoE layer
// in a sigma-moe-train metrics.jsonl; a trace of another expert count is spread over E cyclically).
//
// Output, JSON lines: per (W, capacity bucket, top-k) the best fixed mode for that bucket, the
// mode the controller settled on, its regret against the best fixed mode after exploring, the
// exploration's extra cost; per W the total against the best single static mode (what Tutel's
// figures compare), against the per-step oracle, and the controller's decision time per call.
// --markdown adds the tables. Times are per layer and step (forward + backward), in ms.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "moe/adapt/controller.h"
#include "moe/adapt/cost_model.h"
#include "runtime/comm/communicator.h"

namespace smoe {
namespace {

struct Options {
  std::vector<std::string> traces = {"zipf", "drift"};
  std::vector<int> worlds = {8, 64, 256, 2048};
  int gpus_per_node = 8;
  int steps = 600;
  int layers = 4;
  int64_t tokens = 16384;  // per rank: Sigma-MoE-Tiny's micro-batch, 4 x 4096
  int experts = 0;         // 0: 96 where the layout allows it, else 128
  int64_t model_dim = 1536, ffn_dim = 768;
  int top_k = 1;
  std::vector<int> degrees = {1, 2, 4, 8};
  double noise = 0.05;        // sigma of the log-normal measurement noise
  double jitter = 0.03;       // sigma of the log-normal step-to-step noise of each expert's share
  double model_error = 0.15;  // the truth is the model x a fixed factor in [1 - e, 1 + e] per mode
  int trials = 3, warmup = 1;
  int64_t reexplore_period = 0;
  int explore_at_most = 6;
  double explore_within = 1.5;
  uint32_t seed = 1;
  bool markdown = false;
  bool bucket_prior = false;
  bool per_key = false;  // also a "# key ..." line per (layer, bucket, top_k)  // the prior sees
                         // only the key's bucket, not the opening step's routing
  HardwareModel hw = HardwareModel::H100();
};

// One layer-step of a trace: the shares of the routed rows per expert, and top-k.
struct TraceStep {
  std::vector<double> shares;
  int top_k = 1;
};
// trace[step][layer]
using Trace = std::vector<std::vector<TraceStep>>;

std::vector<double> Zipf(int n, double exponent, const std::vector<int>& order) {
  std::vector<double> shares(n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += shares[order[i]] = std::pow(i + 1.0, -exponent);
  for (double& v : shares) v /= sum;
  return shares;
}

// Multiplies each share by a log-normal factor and renormalizes.
void Jitter(std::vector<double>& shares, double sigma, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, sigma);
  double sum = 0;
  for (double& v : shares) sum += v *= std::exp(normal(rng));
  for (double& v : shares) v /= sum;
}

std::vector<int> Shuffled(int n, std::mt19937& rng) {
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

Trace SyntheticTrace(const std::string& kind, const Options& o, int experts) {
  std::mt19937 rng(o.seed);
  Trace trace(o.steps, std::vector<TraceStep>(o.layers));
  std::vector<std::vector<int>> order(o.layers);
  for (int l = 0; l < o.layers; ++l) order[l] = Shuffled(experts, rng);
  for (int t = 0; t < o.steps; ++t) {
    for (int l = 0; l < o.layers; ++l) {
      double exponent;
      if (kind == "zipf") {
        exponent = 0.3 + 0.4 * (l % 4);
      } else {
        if (t > 0 && t % std::max(1, o.steps / 10) == 0) order[l] = Shuffled(experts, rng);
        exponent = 1.6 - 1.4 * t / std::max(1, o.steps - 1) + 0.1 * l;
      }
      TraceStep& s = trace[t][l];
      s.shares = Zipf(experts, exponent, order[l]);
      Jitter(s.shares, o.jitter, rng);
      s.top_k = o.top_k;
    }
  }
  return trace;
}

// The integers of the first "[...]" after `key` in `line` from `from` on; false when absent.
bool ReadIntArray(const std::string& line, const std::string& key, size_t* from,
                  std::vector<int64_t>* out) {
  const size_t at = line.find(key, *from);
  if (at == std::string::npos) return false;
  const size_t open = line.find('[', at), close = line.find(']', at);
  if (open == std::string::npos || close == std::string::npos) return false;
  out->clear();
  for (absl::string_view v :
       absl::StrSplit(line.substr(open + 1, close - open - 1), ',', absl::SkipWhitespace())) {
    int64_t x = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &x)) return false;
    out->push_back(x);
  }
  *from = close;
  return true;
}

bool ReadInt(const std::string& line, const std::string& key, size_t from, int* out) {
  const size_t at = line.find(key, from);
  if (at == std::string::npos) return false;
  size_t end = at + key.size();
  while (end < line.size() && (line[end] == ' ' || line[end] == ':')) ++end;
  size_t stop = end;
  while (stop < line.size() && std::isdigit(static_cast<unsigned char>(line[stop]))) ++stop;
  return absl::SimpleAtoi(line.substr(end, stop - end), out);
}

// Every metrics line's MoE layers: their top_k and tokens_per_expert (sigma-moe-train writes them
// in that order within each layer's object).
StatusOr<Trace> MetricsTrace(const std::string& path, const Options& o, int experts) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  Trace trace;
  std::string line;
  int lines = 0;
  while (std::getline(in, line) && static_cast<int>(trace.size()) < o.steps) {
    ++lines;
    std::vector<TraceStep> step;
    size_t from = line.find("\"moe\"");
    if (from == std::string::npos) continue;
    std::vector<int64_t> counts;
    while (true) {
      const size_t layer_at = line.find("\"top_k\"", from);
      if (layer_at == std::string::npos) break;
      TraceStep s;
      if (!ReadInt(line, "\"top_k\"", layer_at, &s.top_k)) break;
      size_t at = layer_at;
      if (!ReadIntArray(line, "\"tokens_per_expert\"", &at, &counts)) break;
      from = at;
      // Spread a trace of another expert count over `experts` cyclically.
      std::vector<int64_t> spread(experts, 0);
      for (int e = 0; e < experts; ++e) spread[e] = counts[e % counts.size()];
      StatusOr<std::vector<double>> shares = SharesFromCounts(spread);
      if (!shares.ok()) continue;  // a layer that routed nothing
      s.shares = *std::move(shares);
      s.top_k = std::min(s.top_k, experts);
      step.push_back(std::move(s));
    }
    if (!step.empty()) trace.push_back(std::move(step));
  }
  if (trace.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no line with \"tokens_per_expert\" in its \"moe\" entries (", lines,
                     " lines read); write it with a sigma-moe-train that logs them"));
  }
  return trace;
}

int ExpertsFor(int world, const Options& o) {
  if (o.experts > 0) return o.experts;
  const int sigma = 96;
  return (sigma >= world ? sigma % world == 0 : world % sigma == 0) ? sigma : 128;
}

// One layer-step as the simulation saw it.
struct Record {
  int64_t bucket;
  int top_k;
  int layer;
  int chosen;
  bool measured;
  std::vector<double> truth;  // every candidate's true ms
};

// The --markdown tables' rows.
struct Markdown {
  std::vector<std::string> buckets, summaries;
};

struct Group {  // the records of one (bucket, top_k)
  std::vector<const Record*> records;
};

std::string ModeName(const std::vector<ParallelMode>& modes, int i) {
  return ParallelModeName(modes[i]);
}

Status SimulateWorld(const std::string& trace_name, const Trace& trace, int world, int experts,
                     const Options& o, Markdown* markdown) {
  const int shards = experts < world ? world / experts : 1;
  const std::vector<ParallelMode> modes = CandidateModes(world, o.gpus_per_node, shards, o.degrees);
  const int n = static_cast<int>(modes.size());
  MoEWorkload base;
  base.world = world;
  base.gpus_per_node = o.gpus_per_node;
  base.num_experts = experts;
  base.model_dim = o.model_dim;
  base.ffn_dim = o.ffn_dim;
  base.tokens_per_rank = o.tokens;
  base.dtype = DType::kBF16;

  // The machine: the model off by a fixed factor per mode.
  std::mt19937 rng(o.seed * 7919u + static_cast<uint32_t>(world));
  std::uniform_real_distribution<double> error(1.0 - o.model_error, 1.0 + o.model_error);
  std::vector<double> factor(n);
  for (double& f : factor) f = error(rng);
  std::lognormal_distribution<double> noise(0.0, o.noise);

  AdaptConfig config;
  config.trials = o.trials;
  config.warmup = o.warmup;
  config.save_on_decision = false;
  config.reexplore_period = o.reexplore_period;
  config.explore_at_most = o.explore_at_most;
  config.explore_within = o.explore_within;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<AdaptiveController> controller,
                       AdaptiveController::Create(config, modes, SingleRankCommunicator()));
  // The prior: the cost model on the routing of the step that opened the key (what a trainer knows
  // from the previous step's counts, which also gave the key its bucket), or with --bucket_prior
  // on the shares the bucket alone implies.
  Status prior_status;
  const std::vector<double>* opening_shares = nullptr;
  controller->SetPrior([&](const AdaptKey& key) {
    std::vector<double> ms(n, 0.0);
    MoEWorkload w = base;
    w.top_k = key.top_k;
    if (o.bucket_prior || opening_shares == nullptr) {
      StatusOr<std::vector<double>> shares =
          SharesFromCapacityBucket(key.capacity_bucket, experts, o.tokens * key.top_k);
      if (!shares.ok()) {
        prior_status = shares.status();
        return ms;
      }
      w.expert_share = *std::move(shares);
    } else {
      w.expert_share = *opening_shares;
    }
    StatusOr<std::vector<ModeCost>> costs = PredictModeCosts(o.hw, w, modes);
    if (!costs.ok()) {
      prior_status = costs.status();
      return ms;
    }
    for (int i = 0; i < n; ++i) ms[i] = (*costs)[i].total_ms();
    return ms;
  });

  std::vector<Record> records;
  records.reserve(trace.size() * o.layers);
  double decide_s = 0;
  int64_t decisions = 0;
  for (const std::vector<TraceStep>& step : trace) {
    for (int l = 0; l < static_cast<int>(step.size()); ++l) {
      const TraceStep& ts = step[l];
      MoEWorkload w = base;
      w.top_k = ts.top_k;
      w.expert_share = ts.shares;
      MOE_ASSIGN_OR_RETURN(const std::vector<ModeCost> costs, PredictModeCosts(o.hw, w, modes));
      Record r;
      r.layer = l;
      r.top_k = ts.top_k;
      const double hottest = *std::max_element(ts.shares.begin(), ts.shares.end());
      r.bucket = CapacityBucket(static_cast<int64_t>(std::ceil(hottest * o.tokens * ts.top_k)));
      r.truth.resize(n);
      for (int i = 0; i < n; ++i) r.truth[i] = costs[i].total_ms() * factor[i];
      const AdaptKey key{l, r.bucket, ts.top_k};
      opening_shares = &ts.shares;
      const auto t0 = std::chrono::steady_clock::now();
      MOE_ASSIGN_OR_RETURN(const ParallelMode mode, controller->Choose(key));
      r.measured = controller->Measuring(key);
      const auto t1 = std::chrono::steady_clock::now();
      if (!r.measured) {
        decide_s += std::chrono::duration<double>(t1 - t0).count();
        ++decisions;
      }
      r.chosen = static_cast<int>(std::find(modes.begin(), modes.end(), mode) - modes.begin());
      if (r.measured) {
        MOE_RETURN_IF_ERROR(controller->Report(key, mode, r.truth[r.chosen] * noise(rng)));
      }
      records.push_back(std::move(r));
    }
  }
  MOE_RETURN_IF_ERROR(prior_status);

  if (o.per_key) {
    // Per (layer, bucket, top_k): what was measured, what was decided, what was best.
    std::map<std::tuple<int, int64_t, int>, std::vector<const Record*>> keys;
    for (const Record& r : records) keys[{r.layer, r.bucket, r.top_k}].push_back(&r);
    for (const auto& [key, rs] : keys) {
      std::vector<double> total(n, 0.0);
      std::map<int, int> measured, exploited;
      for (const Record* r : rs) {
        for (int i = 0; i < n; ++i) total[i] += r->truth[i];
        ++(r->measured ? measured : exploited)[r->chosen];
      }
      const int best =
          static_cast<int>(std::min_element(total.begin(), total.end()) - total.begin());
      std::string m, e;
      for (const auto& [i, c] : measured)
        absl::StrAppend(&m, m.empty() ? "" : " ", ModeName(modes, i), "x", c, "(",
                        absl::StrFormat("%.3f", total[i] / rs.size()), ")");
      for (const auto& [i, c] : exploited)
        absl::StrAppend(&e, e.empty() ? "" : " ", ModeName(modes, i), "x", c);
      std::printf(
          "# key layer %d bucket %lld k %d: %zu steps, best %s %.3f ms; measured %s; then %s\n",
          std::get<0>(key), static_cast<long long>(std::get<1>(key)), std::get<2>(key), rs.size(),
          ModeName(modes, best).c_str(), total[best] / rs.size(), m.c_str(), e.c_str());
    }
  }

  // Per (bucket, top_k).
  std::map<std::pair<int64_t, int>, Group> groups;
  for (const Record& r : records) groups[{r.bucket, r.top_k}].records.push_back(&r);
  std::map<std::pair<int, int64_t>, int> explored;  // (layer, bucket) -> candidates measured
  for (const AdaptDecision& d : controller->Decisions()) {
    explored[{d.key.layer, d.key.capacity_bucket}] = d.explored;
  }
  // Over every bucket, against that bucket's best fixed mode: exploration's extra time, and the
  // time after exploring of the controller and of the best fixed modes.
  double explore_extra_all = 0, exploit_all = 0, exploit_best_all = 0;
  for (const auto& [key, g] : groups) {
    std::vector<double> total(n, 0.0);
    for (const Record* r : g.records) {
      for (int i = 0; i < n; ++i) total[i] += r->truth[i];
    }
    const int best = static_cast<int>(std::min_element(total.begin(), total.end()) - total.begin());
    double exploit = 0, exploit_best = 0, explore_extra = 0, all = 0;
    int explore_steps = 0;
    std::map<int, int> chosen;  // after exploring
    std::map<int, bool> layers;
    for (const Record* r : g.records) {
      all += r->truth[r->chosen];
      layers[r->layer] = true;
      if (r->measured) {
        ++explore_steps;
        explore_extra += r->truth[r->chosen] - r->truth[best];
      } else {
        exploit += r->truth[r->chosen];
        exploit_best += r->truth[best];
        ++chosen[r->chosen];
      }
    }
    int settled = best;
    int most = -1;
    for (const auto& [i, count] : chosen) {
      if (count > most) settled = i, most = count;
    }
    int measured = 0;
    for (const auto& [layer, unused] : layers)
      measured = std::max(measured, explored[{layer, key.first}]);
    const double steps = static_cast<double>(g.records.size());
    const double regret = exploit_best > 0 ? 100.0 * (exploit / exploit_best - 1.0) : 0.0;
    const double explore_pct = 100.0 * explore_extra / total[best];
    explore_extra_all += explore_extra;
    exploit_all += exploit;
    exploit_best_all += exploit_best;
    std::printf(
        "{\"bench\": \"adapt_sim\", \"trace\": \"%s\", \"world\": %d, \"experts\": %d, "
        "\"bucket\": %lld, \"top_k\": %d, \"layer_steps\": %d, \"candidates\": %d, "
        "\"explored\": %d, \"best_fixed\": \"%s\", \"best_fixed_ms\": %.4f, \"controller\": "
        "\"%s\", "
        "\"controller_ms\": %.4f, \"regret_pct\": %.2f, \"explore_steps\": %d, "
        "\"explore_cost_pct\": %.2f}\n",
        trace_name.c_str(), world, experts, static_cast<long long>(key.first), key.second,
        static_cast<int>(steps), n, measured, ModeName(modes, best).c_str(), total[best] / steps,
        ModeName(modes, settled).c_str(), all / steps, regret, explore_steps, explore_pct);
    if (markdown != nullptr) {
      markdown->buckets.push_back(absl::StrFormat(
          "| %s | %d | %d | %d | %lld | %s | %.3f | %s | %.2f%% | %d of %d, %.2f%% |", trace_name,
          world, experts, key.second, static_cast<long long>(key.first), ModeName(modes, best),
          total[best] / steps, ModeName(modes, settled), regret, measured, n, explore_pct));
    }
  }

  // The whole run against the best single static mode and the per-step oracle.
  std::vector<double> total(n, 0.0);
  double controller_ms = 0, oracle_ms = 0, exploit = 0, exploit_static = 0;
  for (const Record& r : records) {
    for (int i = 0; i < n; ++i) total[i] += r.truth[i];
    controller_ms += r.truth[r.chosen];
    oracle_ms += *std::min_element(r.truth.begin(), r.truth.end());
  }
  const int best_static =
      static_cast<int>(std::min_element(total.begin(), total.end()) - total.begin());
  const int worst_static =
      static_cast<int>(std::max_element(total.begin(), total.end()) - total.begin());
  for (const Record& r : records) {
    if (r.measured) continue;
    exploit += r.truth[r.chosen];
    exploit_static += r.truth[best_static];
  }
  const double steps = static_cast<double>(records.size());
  std::printf(
      "{\"bench\": \"adapt_sim\", \"trace\": \"%s\", \"world\": %d, \"experts\": %d, "
      "\"summary\": true, \"layer_steps\": %d, \"candidates\": %d, \"best_static\": \"%s\", "
      "\"static_ms\": %.4f, \"worst_static\": \"%s\", \"worst_static_ms\": %.4f, "
      "\"controller_ms\": %.4f, \"oracle_ms\": %.4f, \"speedup_vs_static\": %.3f, "
      "\"speedup_after_exploring\": %s, \"regret_pct\": %.2f, \"explore_cost_pct\": %.2f, "
      "\"decision_us\": %.3f}\n",
      trace_name.c_str(), world, experts, static_cast<int>(steps), n,
      ModeName(modes, best_static).c_str(), total[best_static] / steps,
      ModeName(modes, worst_static).c_str(), total[worst_static] / steps, controller_ms / steps,
      oracle_ms / steps, total[best_static] / controller_ms,
      exploit > 0 ? absl::StrFormat("%.3f", exploit_static / exploit).c_str() : "null",
      exploit_best_all > 0 ? 100.0 * (exploit_all / exploit_best_all - 1.0) : 0.0,
      100.0 * explore_extra_all / controller_ms, decisions > 0 ? 1e6 * decide_s / decisions : 0.0);
  if (markdown != nullptr) {
    markdown->summaries.push_back(absl::StrFormat(
        "| %s | %d | %d | %d | %s | %.2f | %.2f | %.2fx | %.2fx | %.2f%% | %.2f%% | %.2f | %.2f |",
        trace_name, world, experts, n, ModeName(modes, best_static), total[best_static] / steps,
        controller_ms / steps, total[best_static] / controller_ms,
        exploit > 0 ? exploit_static / exploit : 0.0,
        exploit_best_all > 0 ? 100.0 * (exploit_all / exploit_best_all - 1.0) : 0.0,
        100.0 * explore_extra_all / controller_ms, oracle_ms / steps,
        decisions > 0 ? 1e6 * decide_s / decisions : 0.0));
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

template <typename T>
Status ParseList(absl::string_view text, absl::string_view flag, std::vector<T>* out) {
  out->clear();
  for (absl::string_view v : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    T x{};
    bool ok;
    if constexpr (std::is_same_v<T, std::string>) {
      x = std::string(v);
      ok = true;
    } else {
      ok = absl::SimpleAtoi(v, &x);
    }
    if (!ok) return BadArgument(flag, text, "a comma-separated list");
    out->push_back(x);
  }
  if (out->empty()) return BadArgument(flag, text, "a non-empty list");
  return absl::OkStatus();
}

// "rows:tflops,rows:tflops,...", rows ascending.
Status ParseGemmTable(absl::string_view text, std::vector<GemmPoint>* out) {
  out->clear();
  for (absl::string_view pair : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::vector<absl::string_view> parts = absl::StrSplit(pair, ':');
    GemmPoint p;
    if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &p.rows) ||
        !absl::SimpleAtod(parts[1], &p.tflops)) {
      return BadArgument("--gemm_table", text, "rows:tflops pairs, e.g. 128:85,1024:380");
    }
    out->push_back(p);
  }
  return absl::OkStatus();
}

constexpr char kUsage[] =
    "usage: adapt_sim [--trace=zipf,drift,metrics:PATH] [--worlds=8,64,256,2048] "
    "[--gpus_per_node=8] [--steps=600] [--layers=4] [--tokens=16384] [--experts=N] [--top_k=1] "
    "[--degrees=1,2,4,8] [--noise=0.05] [--jitter=0.03] [--model_error=0.15] [--trials=3] "
    "[--warmup=1] [--reexplore_period=0] "
    "[--explore_at_most=6] [--explore_within=1.5] [--seed=1] [--gemm_table=rows:tflops,...] "
    "[--intra_gbps=380] [--inter_gbps=50] [--latency_us=3] [--bucket_prior] [--markdown]";

Status ParseOptions(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq),
                      value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    auto num = [&](auto* out) -> Status {
      bool ok;
      if constexpr (std::is_floating_point_v<std::remove_pointer_t<decltype(out)>>) {
        ok = absl::SimpleAtod(value, out);
      } else {
        ok = absl::SimpleAtoi(value, out);
      }
      return ok ? absl::OkStatus() : BadArgument(name, value, "a number");
    };
    if (name == "--trace") {
      MOE_RETURN_IF_ERROR(ParseList(value, name, &o->traces));
    } else if (name == "--worlds") {
      MOE_RETURN_IF_ERROR(ParseList(value, name, &o->worlds));
    } else if (name == "--degrees") {
      MOE_RETURN_IF_ERROR(ParseList(value, name, &o->degrees));
    } else if (name == "--gpus_per_node") {
      MOE_RETURN_IF_ERROR(num(&o->gpus_per_node));
    } else if (name == "--steps") {
      MOE_RETURN_IF_ERROR(num(&o->steps));
    } else if (name == "--layers") {
      MOE_RETURN_IF_ERROR(num(&o->layers));
    } else if (name == "--tokens") {
      MOE_RETURN_IF_ERROR(num(&o->tokens));
    } else if (name == "--experts") {
      MOE_RETURN_IF_ERROR(num(&o->experts));
    } else if (name == "--top_k") {
      MOE_RETURN_IF_ERROR(num(&o->top_k));
    } else if (name == "--noise") {
      MOE_RETURN_IF_ERROR(num(&o->noise));
    } else if (name == "--jitter") {
      MOE_RETURN_IF_ERROR(num(&o->jitter));
    } else if (name == "--model_error") {
      MOE_RETURN_IF_ERROR(num(&o->model_error));
    } else if (name == "--trials") {
      MOE_RETURN_IF_ERROR(num(&o->trials));
    } else if (name == "--warmup") {
      MOE_RETURN_IF_ERROR(num(&o->warmup));
    } else if (name == "--reexplore_period") {
      MOE_RETURN_IF_ERROR(num(&o->reexplore_period));
    } else if (name == "--explore_at_most") {
      MOE_RETURN_IF_ERROR(num(&o->explore_at_most));
    } else if (name == "--explore_within") {
      MOE_RETURN_IF_ERROR(num(&o->explore_within));
    } else if (name == "--seed") {
      MOE_RETURN_IF_ERROR(num(&o->seed));
    } else if (name == "--gemm_table") {
      MOE_RETURN_IF_ERROR(ParseGemmTable(value, &o->hw.gemm));
    } else if (name == "--intra_gbps") {
      MOE_RETURN_IF_ERROR(num(&o->hw.intra_node_gbps));
    } else if (name == "--inter_gbps") {
      MOE_RETURN_IF_ERROR(num(&o->hw.inter_node_gbps));
    } else if (name == "--latency_us") {
      MOE_RETURN_IF_ERROR(num(&o->hw.latency_us));
    } else if (name == "--markdown") {
      o->markdown = true;
    } else if (name == "--per_key") {
      o->per_key = true;
    } else if (name == "--bucket_prior") {
      o->bucket_prior = true;
    } else {
      return BadArgument("argument", arg, kUsage);
    }
  }
  if (o->steps < 1 || o->layers < 1 || o->tokens < 1 || o->top_k < 1 || o->noise < 0 ||
      o->model_error < 0 || o->model_error >= 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps, layers, tokens and top_k must be >= 1, noise >= 0, model_error in [0, 1); ",
        kUsage));
  }
  return ValidateHardwareModel(o->hw);
}

Status Main(int argc, char** argv) {
  Options o;
  MOE_RETURN_IF_ERROR(ParseOptions(argc, argv, &o));
  Markdown markdown;
  for (const std::string& name : o.traces) {
    for (int world : o.worlds) {
      const int experts = ExpertsFor(world, o);
      Trace trace;
      if (name.rfind("metrics:", 0) == 0) {
        MOE_ASSIGN_OR_RETURN(trace, MetricsTrace(name.substr(8), o, experts));
      } else if (name == "zipf" || name == "drift") {
        trace = SyntheticTrace(name, o, experts);
      } else {
        return BadArgument("--trace", name, "zipf, drift or metrics:PATH");
      }
      MOE_RETURN_IF_ERROR(SimulateWorld(name.rfind("metrics:", 0) == 0 ? "metrics" : name, trace,
                                        world, experts, o, o.markdown ? &markdown : nullptr));
    }
  }
  if (o.markdown) {
    std::printf(
        "\n| trace | W | E | K | bucket | best fixed mode | its ms | controller's mode | regret | "
        "explored, exploration cost |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const std::string& row : markdown.buckets) std::printf("%s\n", row.c_str());
    std::printf(
        "\n| trace | W | E | candidates | best static mode | its ms | controller ms | vs static | "
        "after exploring | regret | exploration cost | oracle ms | decision us |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const std::string& row : markdown.summaries) std::printf("%s\n", row.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) {
  const smoe::Status status = smoe::Main(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "adapt_sim: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
