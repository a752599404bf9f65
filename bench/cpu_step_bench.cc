// cpu_step_bench: sigma-moe's CPU training step against a PyTorch eager peer of the same model, in
// one run (issue 14).
//
// Ours: the real trainer (Train, runtime/train/trainer) on the chosen preset, f32 on the CPU,
// --warmup untimed steps then --steps timed ones (TrainerOptions::on_step: batch, forward,
// backward, gradient reduction, optimizer), with a per-op breakdown of the timed steps
// (runtime/core/op_profile.h). The peer: bench/cpu_step_peer.py (nn.Linear, SDPA, a loop over
// experts, torch.optim.AdamW), given the same shapes, batch, optimizer settings, top-k per layer,
// thread count, warm-up and step count. Both report tokens/s as the median over timed steps, and
// their spread.
//
// Output: JSON lines on stdout: ours ("impl": "sigma_moe", with "breakdown_ms" per step), the
// peer's line as it printed it, then {"bench": "cpu_step_ratio", "ratio": ours / peer tokens/s}.
// Logs go to stderr.
//
//   cpu_step_bench [--preset=tiny] [--config=FILE] [--set PATH=VALUE]... [--threads=N]
//                  [--warmup=3] [--steps=10] [--peer=bench/cpu_step_peer.py] [--python=python3]
//                  [--no_peer]
#include <unistd.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/core/op_profile.h"
#include "runtime/core/thread_pool.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"

namespace smoe {
namespace {

constexpr char kUsage[] =
    R"(cpu_step_bench: sigma-moe's CPU training step against a PyTorch eager peer

  --preset=NAME       a built-in config (default tiny)
  --config=FILE       a textproto RunConfig file instead
  --set PATH=VALUE    override one field (as sigma-moe-train)
  --threads=N         CPU threads for both (default: all cores)
  --warmup=N          untimed steps first (default 3)
  --steps=N           timed steps (default 10)
  --peer=FILE         the PyTorch peer (default: bench/cpu_step_peer.py of this source tree)
  --python=EXE        the Python that runs it (default python3)
  --no_peer           time ours only
Output: JSON lines (ours, the peer's, the ratio of tokens/s) on stdout.
)";

struct Spread {
  double median = 0, min = 0, max = 0, p10 = 0, p90 = 0;
};

// Linear interpolation between order statistics, as the peer computes them.
double Quantile(const std::vector<double>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

Spread SpreadOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {Quantile(v, 0.5), v.front(), v.back(), Quantile(v, 0.1), Quantile(v, 0.9)};
}

// The peer's spec (bench/cpu_step_peer.py --spec) of a config: its shapes and step settings, and
// the top-k each layer has at step 0 (the schedule's first entries).
std::string PeerSpec(const proto::RunConfig& c) {
  const proto::ModelConfig& m = c.model();
  const proto::AttentionConfig& a = m.attention();
  const proto::MoeConfig& e = m.moe();
  const proto::TrainConfig& t = c.train();
  std::vector<std::string> layer_k;
  for (int l = 0; l < m.num_layers(); ++l) {
    for (const proto::TopKScheduleEntry& s : e.topk_schedule()) {
      if (l >= s.first_layer() && l <= s.last_layer() && s.until_step() > 0) {
        layer_k.push_back(absl::StrFormat("\"%d\": %d", l, s.k()));
        break;
      }
    }
  }
  std::vector<std::string> dense;
  for (int l : e.dense_layers()) dense.push_back(absl::StrCat(l));
  auto b = [](bool v) { return v ? "true" : "false"; };
  return absl::StrFormat(
      "{\"vocab_size\": %d, \"num_layers\": %d, \"model_dim\": %d, \"n_q\": %d, \"n_k\": %d, "
      "\"n_v\": %d, \"head_dim\": %d, \"d_aug\": %d, \"qk_norm\": %s, \"rope_theta\": %.17g, "
      "\"num_experts\": %d, \"ffn_dim\": %d, \"top_k\": %d, \"layer_top_k\": {%s}, "
      "\"lbl_coef\": %.17g, \"z_coef\": %.17g, \"renormalize\": %s, \"batch_size\": %d, "
      "\"seq_len\": %d, \"lr\": %.17g, \"weight_decay\": %.17g, \"grad_clip\": %.17g, "
      "\"norm_eps\": %.17g, \"tie_embeddings\": %s, \"dense_layers\": [%s], "
      "\"dense_ffn_dim\": %d, \"init_std\": %.17g, \"beta1\": %.17g, \"beta2\": %.17g, "
      "\"eps\": %.17g, \"warmup_steps\": %d, \"min_lr\": %.17g, \"total_steps\": %d}",
      m.vocab_size(), m.num_layers(), m.model_dim(), a.n_q(), a.n_k(), a.n_v(), a.head_dim(),
      a.d_aug(), b(a.qk_norm()), a.rope_theta(), e.num_experts(), e.ffn_dim(), e.top_k(),
      absl::StrJoin(layer_k, ", "), e.lbl_coef(), e.z_coef(), b(e.renormalize()), t.batch_size(),
      t.seq_len(), t.lr(), t.weight_decay(), t.grad_clip(), m.norm_eps(), b(m.tie_embeddings()),
      absl::StrJoin(dense, ", "), e.dense_ffn_dim(), m.init_std(), t.beta1(), t.beta2(), t.eps(),
      t.warmup_steps(), t.min_lr(), t.steps());
}

// Single quotes for a shell word.
std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

// Runs the peer; returns its last stdout line (the JSON object), or "" on failure.
std::string RunPeer(const std::string& python, const std::string& peer, const std::string& spec,
                    int threads, int warmup, int steps) {
  const std::string command =
      absl::StrCat(ShellQuote(python), " ", ShellQuote(peer), " --spec ", ShellQuote(spec),
                   " --threads ", threads, " --warmup ", warmup, " --steps ", steps);
  std::fprintf(stderr, "cpu_step_bench: running the peer: %s\n", command.c_str());
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string last, line;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) {
    line += buffer;
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      if (!line.empty()) last = line;
      line.clear();
    }
  }
  if (!line.empty()) last = line;
  const int status = pclose(pipe);
  return status == 0 ? last : "";
}

// The number after "key": in a flat JSON line (the peer's), or -1.
double JsonNumber(const std::string& json, const std::string& key) {
  const std::string needle = absl::StrCat("\"", key, "\":");
  size_t at = json.find(needle);
  if (at == std::string::npos) return -1;
  at += needle.size();
  while (at < json.size() && json[at] == ' ') ++at;
  size_t end = at;
  while (end < json.size() && std::string("0123456789.eE+-").find(json[end]) != std::string::npos) {
    ++end;
  }
  double v = -1;
  return absl::SimpleAtod(json.substr(at, end - at), &v) ? v : -1;
}

int Main(int argc, char** argv) {
  std::string preset = "tiny", config_file, python = "python3";
  std::string peer = std::string(MOE_BENCH_DIR) + "/cpu_step_peer.py";
  std::vector<std::string> overrides;
  int threads = 0, warmup = 3, steps = 10;
  bool run_peer = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](absl::string_view flag) { return a.substr(flag.size() + 1); };
    auto number = [&](absl::string_view flag, int* out) {
      return absl::StartsWith(a, absl::StrCat(flag, "=")) && absl::SimpleAtoi(value(flag), out);
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (absl::StartsWith(a, "--preset=")) {
      preset = value("--preset");
    } else if (absl::StartsWith(a, "--config=")) {
      config_file = value("--config");
    } else if (a == "--set" && i + 1 < argc) {
      overrides.push_back(argv[++i]);
    } else if (absl::StartsWith(a, "--set=")) {
      overrides.push_back(value("--set"));
    } else if (number("--threads", &threads) || number("--warmup", &warmup) ||
               number("--steps", &steps)) {
    } else if (absl::StartsWith(a, "--peer=")) {
      peer = value("--peer");
    } else if (absl::StartsWith(a, "--python=")) {
      python = value("--python");
    } else if (a == "--no_peer") {
      run_peer = false;
    } else {
      std::fprintf(stderr, "cpu_step_bench: unknown or malformed argument '%s' (see --help)\n",
                   a.c_str());
      return 2;
    }
  }
  if (threads < 0 || warmup < 0 || steps < 1) {
    std::fprintf(stderr, "cpu_step_bench: --threads >= 0, --warmup >= 0, --steps >= 1\n");
    return 2;
  }
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  StatusOr<proto::RunConfig> config =
      config_file.empty() ? LoadPreset(preset) : LoadConfigFile(config_file);
  if (!config.ok()) {
    std::fprintf(stderr, "cpu_step_bench: %s\n", config.status().ToString().c_str());
    return 2;
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / absl::StrCat("cpu_step_bench_", getpid());
  overrides.insert(overrides.begin(),
                   {"train.device=cpu", "train.dtype=f32", absl::StrCat("train.threads=", threads),
                    absl::StrCat("train.steps=", warmup + steps), "train.eval_interval=0",
                    "checkpoint.interval=0", "checkpoint.resume=false",
                    absl::StrCat("checkpoint.dir=", (dir / "checkpoints").string())});
  if (Status s = ApplyOverrides(&*config, overrides); !s.ok()) {
    std::fprintf(stderr, "cpu_step_bench: %s\n", s.ToString().c_str());
    return 2;
  }
  if (Status s = ValidateConfig(*config); !s.ok()) {
    std::fprintf(stderr, "cpu_step_bench: %s\n", s.ToString().c_str());
    return 2;
  }

  // Ours.
  std::vector<double> seconds;
  OpProfile profile;
  TrainerOptions options;
  options.metrics_path = (dir / "metrics.jsonl").string();
  options.progress_bar = false;
  options.on_step = [&](int64_t step, double s) {
    if (step > warmup) seconds.push_back(s);
    if (step == warmup) SetActiveOpProfile(&profile);  // the timed steps' ops from here on
    if (step == warmup + steps) SetActiveOpProfile(nullptr);  // not the final evaluation
  };
  if (warmup == 0) SetActiveOpProfile(&profile);
  StatusOr<TrainSummary> summary = Train(*config, options);
  SetActiveOpProfile(nullptr);
  std::filesystem::remove_all(dir);
  if (!summary.ok()) {
    std::fprintf(stderr, "cpu_step_bench: %s\n", summary.status().ToString().c_str());
    return 1;
  }
  const int64_t tokens =
      static_cast<int64_t>(config->train().batch_size()) * config->train().seq_len();
  const Spread ours = SpreadOf(seconds);
  double total_ms = 0, sum_ms = 0;
  for (double s : seconds) total_ms += 1e3 * s;
  std::vector<std::string> parts;
  for (int k = 0; k < static_cast<int>(OpKind::kCount); ++k) {
    const double ms = 1e3 * profile.seconds[k] / static_cast<double>(seconds.size());
    sum_ms += ms;
    parts.push_back(absl::StrFormat("\"%s\": %.2f", OpKindName(static_cast<OpKind>(k)), ms));
  }
  const double mean_ms = total_ms / static_cast<double>(seconds.size());
  parts.push_back(absl::StrFormat("\"other\": %.2f", std::max(0.0, mean_ms - sum_ms)));
  const double ours_tps = static_cast<double>(tokens) / ours.median;
  std::printf(
      "{\"bench\": \"cpu_step\", \"impl\": \"sigma_moe\", \"config\": \"%s\", \"threads\": %d, "
      "\"tokens_per_step\": %lld, \"steps\": %zu, \"step_ms_median\": %.2f, \"step_ms_min\": "
      "%.2f, \"step_ms_max\": %.2f, \"step_ms_p10\": %.2f, \"step_ms_p90\": %.2f, "
      "\"tokens_per_s_median\": %.1f, \"loss_last\": %.4f, \"breakdown_ms\": {%s}}\n",
      (config_file.empty() ? preset : config_file).c_str(), threads, static_cast<long long>(tokens),
      seconds.size(), 1e3 * ours.median, 1e3 * ours.min, 1e3 * ours.max, 1e3 * ours.p10,
      1e3 * ours.p90, ours_tps, summary->final_loss, absl::StrJoin(parts, ", ").c_str());
  std::fflush(stdout);
  if (!run_peer) return 0;

  // The peer, on the same shapes and threads.
  const std::string line = RunPeer(python, peer, PeerSpec(*config), threads, warmup, steps);
  const double peer_tps = JsonNumber(line, "tokens_per_s_median");
  if (line.empty() || peer_tps <= 0) {
    std::fprintf(stderr, "cpu_step_bench: the peer failed (is PyTorch installed for %s?)\n",
                 python.c_str());
    return 1;
  }
  std::printf("%s\n", line.c_str());
  std::printf(
      "{\"bench\": \"cpu_step_ratio\", \"threads\": %d, \"sigma_moe_tokens_per_s\": %.1f, "
      "\"pytorch_tokens_per_s\": %.1f, \"ratio\": %.3f}\n",
      threads, ours_tps, peer_tps, ours_tps / peer_tps);
  return 0;
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) { return smoe::Main(argc, argv); }
