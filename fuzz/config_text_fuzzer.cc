// Fuzz target: a config file's text (ParseConfigText), then what is done with a parsed config
// (ValidateConfig, ValidateWorld, ConfigToText round trip, TopKForLayer).
#include "fuzz/config_fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace smoe;
  const smoe::StatusOr<proto::RunConfig> config =
      ParseConfigText(fuzz::AsText(data, size), "fuzz.textproto");
  if (!config.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(config.status())) << config.status();
    FUZZ_CHECK(!config.status().message().empty());
    return 0;
  }
  fuzz::CheckParsedConfig(*config);
  return 0;
}
