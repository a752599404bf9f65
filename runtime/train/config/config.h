// The run configuration: presets, config files, command-line overrides, validation, printing.
//
// The schema is runtime/proto/config.proto (package sigma_moe.proto, top message RunConfig with
// model, train, data, checkpoint, parallel). The presets of configs/*.textproto are compiled into
// the binary, so LoadPreset needs no files. A run's effective config is: a preset or a config
// file, then each `--set path=value` in order, then ValidateConfig. All errors are InvalidArgument
// (NotFound for a missing preset or file) and name the field path, the value seen and the value
// expected.
//
// Field paths are relative to RunConfig ("train.lr", "model.attention.n_q"), with the shortcuts
// "moe." = "model.moe." and "attention." = "model.attention.". A path segment may index a
// repeated message field ("moe.topk_schedule[0].k"; index == size appends a new element).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/core/status.h"
#include "runtime/proto/config.pb.h"

namespace smoe {

namespace proto = ::sigma_moe::proto;

inline constexpr char kDefaultPreset[] = "tiny";

// Names of the embedded presets, sorted: {"sigma-moe-tiny", "sigma-moe-tiny-4l", "tiny"}.
std::vector<std::string> PresetNames();

// The embedded preset `name` (a file name of configs/ without ".textproto"). NotFound listing the
// known presets otherwise. Not validated (callers apply overrides first).
[[nodiscard]] StatusOr<proto::RunConfig> LoadPreset(absl::string_view name);

// Parses a textproto RunConfig. Errors are InvalidArgument "<source_name>:<line>:<column>: <what>"
// with 1-based line and column. Fields absent from the text are zero (proto3).
[[nodiscard]] StatusOr<proto::RunConfig> ParseConfigText(absl::string_view text,
                                                         absl::string_view source_name);
// Reads and parses the textproto file at `path` (NotFound if it cannot be opened).
[[nodiscard]] StatusOr<proto::RunConfig> LoadConfigFile(const std::string& path);

// Applies one "path=value" assignment. Values use textproto syntax for the field's type: numbers,
// true/false, enum names (case-insensitive: "data.kind=text"), strings (quotes optional),
// lists for repeated fields ("moe.dense_layers=[0,1]", "moe.dense_layers=[]"), and messages in
// braces ("moe.topk_schedule=[{first_layer:0 last_layer:1 k:4 until_step:100}]"). A message or
// repeated field is replaced as a whole. Unknown field: InvalidArgument naming the path and
// listing the valid fields of that message. Unparsable value: InvalidArgument naming the path,
// the value and the expected type. Ranges are checked by ValidateConfig, not here. On an error
// *config is left unchanged.
[[nodiscard]] Status ApplyOverride(proto::RunConfig* config, absl::string_view assignment);
// ApplyOverride for each assignment in order; stops at the first error.
[[nodiscard]] Status ApplyOverrides(proto::RunConfig* config,
                                    const std::vector<std::string>& assignments);

// Checks every field's range and the cross-field constraints (heads divide n_q, 1 <= k <= E,
// schedule and dense layers within [0, L), lr > 0, min_lr <= lr, ...). Reports every violation in
// one InvalidArgument, each as "<path>: got <value>, expected <range>", joined by "; ".
[[nodiscard]] Status ValidateConfig(const proto::RunConfig& config);

// The checks that depend on the world size W of a multi-rank run (none when W <= 1): batch_size
// a multiple of W; moe.num_experts a multiple of W, or (fewer experts than ranks) a divisor of W
// with moe.ffn_dim a multiple of W / num_experts; parallel.node_size a divisor of W. One
// InvalidArgument listing every violation like ValidateConfig.
[[nodiscard]] Status ValidateWorld(const proto::RunConfig& config, int world);

// The config as textproto listing every field, zeros included (for --print_config and the
// checkpoint manifest). ParseConfigText(ConfigToText(c)) == c.
std::string ConfigToText(const proto::RunConfig& config);

// K of `layer` at optimizer step `step`: the k of the first topk_schedule entry with
// first_layer <= layer <= last_layer and step < until_step, otherwise moe.top_k.
int TopKForLayer(const proto::RunConfig& config, int layer, int64_t step);

}  // namespace smoe
