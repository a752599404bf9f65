// Fuzz target: `--set path=value` overrides. The first byte picks the preset; the rest is split
// at '\n' into assignments, applied in order with ApplyOverride (each must succeed or be
// InvalidArgument, a failed one must leave the config unchanged); then the checks of
// config_fuzz_common.h.
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "fuzz/config_fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace smoe;
  if (size == 0) return 0;
  static const std::vector<proto::RunConfig> presets = [] {
    std::vector<proto::RunConfig> configs;
    for (const std::string& name : PresetNames()) {
      StatusOr<proto::RunConfig> config = LoadPreset(name);
      FUZZ_CHECK(config.ok()) << config.status();
      configs.push_back(*std::move(config));
    }
    return configs;
  }();
  proto::RunConfig config = presets[data[0] % presets.size()];
  const std::vector<absl::string_view> lines =
      absl::StrSplit(fuzz::AsText(data + 1, size - 1), '\n');
  for (absl::string_view line : lines) {
    const proto::RunConfig before = config;
    const Status applied = ApplyOverride(&config, line);
    if (!applied.ok()) {
      FUZZ_CHECK(absl::IsInvalidArgument(applied)) << applied;
      std::string diff;
      FUZZ_CHECK(fuzz::SameConfig(config, before, &diff))
          << "the failed override \"" << line << "\" changed the config: " << diff;
    }
  }
  fuzz::CheckParsedConfig(config);
  return 0;
}
