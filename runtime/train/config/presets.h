// The presets of configs/*.textproto, compiled into the binary (see embed_presets.cmake).
#pragma once

namespace smoe::internal {

struct EmbeddedPreset {
  const char* name;  // file name without .textproto: "tiny", "sigma-moe-tiny"
  const char* text;  // the file's contents
};

extern const EmbeddedPreset kEmbeddedPresets[];
extern const int kNumEmbeddedPresets;

}  // namespace smoe::internal
