// sigma-moe-train: trains a Sigma-MoE-Tiny-style model (run with --help for the flags).
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/core/logging.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"

namespace smoe {
namespace {

constexpr char kUsage[] = R"(usage: sigma-moe-train [train] [flags]
       sigma-moe-train sample [flags] [--prompt=TEXT] [--tokens=N] [--temperature=T]

Trains a Sigma-MoE-Tiny-style model: DiffQKV attention and MoE layers of fine-grained SwiGLU
experts. With no arguments it trains the `tiny` preset on the built-in synthetic corpus, on the
GPU when one is visible, otherwise on the CPU, checkpointing under checkpoints/tiny and resuming
from there when run again.

flags:
  --preset=NAME         a built-in config: %s (default tiny)
  --config=FILE         a textproto RunConfig file instead of a preset
  --set PATH=VALUE      override one field, e.g. --set moe.lbl_coef=0.01 --set train.steps=500
                        (repeatable; paths: model./train./data./checkpoint., moe., attention.)
  --device=D            shortcut for --set train.device=D (auto, cpu, cuda, cuda:N)
  --steps=N             shortcut for --set train.steps=N
  --threads=N           shortcut for --set train.threads=N (CPU threads; 0 = all cores)
  --print_config        print the effective config and exit
  --dry_run             print parameter counts, FLOPs per token and the memory plan, then exit
  --metrics=FILE        metrics.jsonl path (default: <checkpoint.dir>/metrics.jsonl)
  --no_progress         plain log lines even on a terminal
  --help                this text
sample flags:
  --prompt=TEXT  --tokens=N (default 200)  --temperature=T (default 0.8; 0 = greedy)  --seed=N

SIGINT/SIGTERM save a checkpoint and stop; run the same command again to resume.

multi-rank (CPU ranks, MPI builds): mpirun -np W sigma-moe-train [flags]
  The W ranks split each global batch of train.batch_size sequences and the E experts of every
  MoE layer (both multiples of W) and train the single-rank model; checkpoints keep the single-rank
  layout and resume on any W. Each MoE layer's parallel mode is chosen per step:
  --set parallel.mode=auto (measured, the default) or a fixed mode such as r0.d1.flat, r1.d2.flat,
  r1.d1.2dh (with --set parallel.node_size=N ranks per node, 1 < N < W).
)";

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

int Fail(const Status& status) {
  std::fprintf(stderr, "sigma-moe-train: %s\n", std::string(status.message()).c_str());
  return absl::IsInvalidArgument(status) || absl::IsNotFound(status) ? 2 : 1;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool sample = false;
  if (!args.empty() && (args[0] == "sample" || args[0] == "train")) {
    sample = args[0] == "sample";
    args.erase(args.begin());
  }
  std::string preset = kDefaultPreset, config_file, metrics, prompt = "\n";
  std::vector<std::string> overrides;
  bool print_config = false, dry_run = false, progress = true;
  int tokens = 200;
  double temperature = 0.8;
  uint64_t seed = 1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](absl::string_view flag) -> std::string {
      return a.substr(flag.size() + 1);  // "--flag=" prefix
    };
    if (a == "--help" || a == "-h") {
      std::printf(kUsage, absl::StrJoin(PresetNames(), ", ").c_str());
      return 0;
    } else if (absl::StartsWith(a, "--preset=")) {
      preset = value("--preset");
    } else if (absl::StartsWith(a, "--config=")) {
      config_file = value("--config");
    } else if (a == "--set" && i + 1 < args.size()) {
      overrides.push_back(args[++i]);
    } else if (absl::StartsWith(a, "--set=")) {
      overrides.push_back(value("--set"));
    } else if (absl::StartsWith(a, "--device=")) {
      overrides.push_back("train.device=" + value("--device"));
    } else if (absl::StartsWith(a, "--steps=")) {
      overrides.push_back("train.steps=" + value("--steps"));
    } else if (absl::StartsWith(a, "--threads=")) {
      overrides.push_back("train.threads=" + value("--threads"));
    } else if (a == "--print_config") {
      print_config = true;
    } else if (a == "--dry_run") {
      dry_run = true;
    } else if (absl::StartsWith(a, "--metrics=")) {
      metrics = value("--metrics");
    } else if (a == "--no_progress") {
      progress = false;
    } else if (sample && absl::StartsWith(a, "--prompt=")) {
      prompt = value("--prompt");
    } else if (sample && absl::StartsWith(a, "--tokens=") &&
               absl::SimpleAtoi(value("--tokens"), &tokens)) {
    } else if (sample && absl::StartsWith(a, "--temperature=") &&
               absl::SimpleAtod(value("--temperature"), &temperature)) {
    } else if (sample && absl::StartsWith(a, "--seed=") &&
               absl::SimpleAtoi(value("--seed"), &seed)) {
    } else {
      std::fprintf(stderr, "sigma-moe-train: unknown or malformed argument '%s' (see --help)\n",
                   a.c_str());
      return 2;
    }
  }
  StatusOr<proto::RunConfig> config =
      config_file.empty() ? LoadPreset(preset) : LoadConfigFile(config_file);
  if (!config.ok()) return Fail(config.status());
  if (Status s = ApplyOverrides(&*config, overrides); !s.ok()) return Fail(s);
  if (Status s = ValidateConfig(*config); !s.ok()) return Fail(s);
  if (print_config) {
    std::fputs(ConfigToText(*config).c_str(), stdout);
    return 0;
  }
  if (dry_run) {
    const Status s = DryRun(*config);
    return s.ok() ? 0 : Fail(s);
  }
  if (sample) {
    StatusOr<std::string> text = Sample(*config, prompt, tokens, temperature, seed);
    if (!text.ok()) return Fail(text.status());
    std::printf("%s%s\n", prompt.c_str(), text->c_str());
    return 0;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  // A write past RLIMIT_FSIZE then fails with EFBIG, reported like a full disk, instead of
  // killing the process half-way through a checkpoint.
  std::signal(SIGXFSZ, SIG_IGN);
  TrainerOptions options;
  options.metrics_path = metrics;
  options.progress_bar = progress;
  options.stop_requested = &g_stop;
  StatusOr<TrainSummary> summary = Train(*config, options);
  if (!summary.ok()) return Fail(summary.status());
  if (!summary->leader) return 0;
  std::printf(
      "sigma-moe-train: %s at step %lld: train loss %.4f, held-out loss %s, %lld skipped "
      "steps, %lld rollbacks\n",
      summary->stopped_early ? "stopped" : "done", static_cast<long long>(summary->steps_done),
      summary->final_loss,
      summary->final_eval_loss >= 0 ? absl::StrFormat("%.4f", summary->final_eval_loss).c_str()
                                    : "n/a",
      static_cast<long long>(summary->skipped_steps), static_cast<long long>(summary->rollbacks));
  return 0;
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) { return smoe::Main(argc, argv); }
