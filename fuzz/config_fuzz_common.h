// Checks shared by the config fuzz targets: what must hold of any RunConfig that parsed.
#pragma once

#include <algorithm>
#include <string>

#include "fuzz/fuzz_util.h"
#include "google/protobuf/util/field_comparator.h"
#include "google/protobuf/util/message_differencer.h"
#include "runtime/train/config/config.h"

namespace smoe::fuzz {

// a == b field by field, NaNs equal, an absent message equal to an empty one; `diff` says how
// they differ.
inline bool SameConfig(const proto::RunConfig& a, const proto::RunConfig& b, std::string* diff) {
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  // ConfigToText prints every field, so absent messages come back present but empty.
  differencer.set_message_field_comparison(google::protobuf::util::MessageDifferencer::EQUIVALENT);
  differencer.ReportDifferencesToString(diff);
  return differencer.Compare(a, b);
}

// ValidateConfig and ValidateWorld answer OK or InvalidArgument; ConfigToText round-trips
// (ParseConfigText(ConfigToText(c)) is the same config, see SameConfig); a valid config's
// TopKForLayer is in [1, num_experts].
inline void CheckParsedConfig(const proto::RunConfig& config) {
  const Status valid = ValidateConfig(config);
  FUZZ_CHECK(valid.ok() || absl::IsInvalidArgument(valid)) << valid;
  for (int world : {2, 3, 4, 6, 8}) {
    const Status fits = ValidateWorld(config, world);
    FUZZ_CHECK(fits.ok() || absl::IsInvalidArgument(fits)) << fits;
  }
  const std::string text = ConfigToText(config);
  const StatusOr<proto::RunConfig> reparsed = ParseConfigText(text, "ConfigToText");
  FUZZ_CHECK(reparsed.ok()) << reparsed.status() << "\n" << text;
  std::string diff;
  FUZZ_CHECK(SameConfig(config, *reparsed, &diff)) << diff << "\n" << text;
  if (valid.ok()) {
    const int layers = std::min(config.model().num_layers(), 64);
    for (int layer = 0; layer < layers; ++layer) {
      for (int64_t step : {int64_t{0}, int64_t{1000}, int64_t{1} << 40}) {
        const int k = TopKForLayer(config, layer, step);
        FUZZ_CHECK(k >= 1 && k <= config.model().moe().num_experts())
            << "layer " << layer << " step " << step << ": k " << k;
      }
    }
  }
}

}  // namespace smoe::fuzz
