#include "runtime/train/config/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "moe/adapt/parallel_mode.h"
#include "runtime/train/config/presets.h"

namespace smoe {
namespace {

namespace pb = ::google::protobuf;

// Collects TextFormat errors as "<source>:<line>:<column>: <message>" (protobuf counts from 0).
class TextErrors : public pb::io::ErrorCollector {
 public:
  explicit TextErrors(absl::string_view source) : source_(source) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    errors_.push_back(absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message));
  }
  void AddWarning(int line, pb::io::ColumnNumber column, const std::string& message) override {
    AddError(line, column, message);
  }
  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

std::string FieldNames(const pb::Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->field_count(); ++i) names.push_back(descriptor->field(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string EnumNames(const pb::EnumDescriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    names.push_back(descriptor->value(i)->name());
  }
  return absl::StrJoin(names, ", ");
}

// What a value of `field` looks like, for error messages.
std::string ExpectedValue(const pb::FieldDescriptor* field) {
  std::string one;
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      one = "an int32";
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      one = "an int64";
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      one = "a uint32";
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      one = "a uint64";
      break;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      one = "a number";
      break;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      one = "true or false";
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING:
      one = "a string";
      break;
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      one = absl::StrCat("one of ", EnumNames(field->enum_type()));
      break;
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      one = absl::StrCat("a ", field->message_type()->name(), " in braces {",
                         FieldNames(field->message_type()), "}");
      break;
  }
  if (field->is_repeated()) return absl::StrCat("a list [...] of ", one);
  return one;
}

// The textproto spelling of `value` for `field`: strings get quotes when they have none, enum
// names are upper-cased.
std::string TextValue(const pb::FieldDescriptor* field, absl::string_view value) {
  if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING && !field->is_repeated()) {
    bool quoted = value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
                  value.back() == value.front();
    if (!quoted) return absl::StrCat("\"", absl::CEscape(value), "\"");
  }
  if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
    return absl::AsciiStrToUpper(value);
  }
  return std::string(value);
}

// One path segment: "name" or "name[index]".
struct Segment {
  std::string name;
  int64_t index = -1;
};

StatusOr<Segment> ParseSegment(absl::string_view path, absl::string_view text) {
  Segment segment;
  size_t open = text.find('[');
  if (open == absl::string_view::npos) {
    segment.name = std::string(text);
  } else {
    segment.name = std::string(text.substr(0, open));
    absl::string_view index_text = text.substr(open + 1);
    if (!absl::ConsumeSuffix(&index_text, "]") || !absl::SimpleAtoi(index_text, &segment.index) ||
        segment.index < 0) {
      return BadArgument(path, absl::StrCat("segment '", text, "'"), "name or name[index >= 0]");
    }
  }
  if (segment.name.empty()) {
    return BadArgument(path, "an empty path segment", "names separated by '.'");
  }
  return segment;
}

absl::Status UnknownField(absl::string_view path, const pb::Descriptor* descriptor, bool top) {
  std::string valid = FieldNames(descriptor);
  if (top) absl::StrAppend(&valid, " (shortcuts: moe., attention.)");
  return absl::InvalidArgumentError(absl::StrCat(path, ": unknown field; valid fields of ",
                                                 descriptor->full_name(), ": ", valid));
}

// Checks collected by ValidateConfig.
class Checker {
 public:
  void Require(bool ok, absl::string_view field, absl::string_view seen,
               absl::string_view expected) {
    if (!ok) errors_.push_back(absl::StrCat(field, ": got ", seen, ", expected ", expected));
  }
  template <typename T>
  void AtLeast(absl::string_view field, T value, T min) {
    Require(value >= min, field, absl::StrCat(value), absl::StrCat(">= ", min));
  }
  template <typename T>
  void Positive(absl::string_view field, T value) {
    Require(value > 0, field, absl::StrCat(value), "> 0");
  }
  absl::Status Result() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "; "));
  }

 private:
  std::vector<std::string> errors_;
};

bool ValidDevice(absl::string_view device) {
  if (device == "auto" || device == "cpu" || device == "cuda") return true;
  int index = 0;
  return absl::ConsumePrefix(&device, "cuda:") && absl::SimpleAtoi(device, &index) && index >= 0;
}

void ValidateModel(const proto::ModelConfig& model, Checker& check) {
  check.Positive("model.vocab_size", model.vocab_size());
  check.Positive("model.num_layers", model.num_layers());
  check.Positive("model.model_dim", model.model_dim());
  check.Positive("model.norm_eps", model.norm_eps());
  check.Positive("model.init_std", model.init_std());

  const proto::AttentionConfig& attention = model.attention();
  check.Positive("model.attention.n_q", attention.n_q());
  check.Require(attention.n_k() >= 1 && attention.n_q() % attention.n_k() == 0,
                "model.attention.n_k", absl::StrCat(attention.n_k()),
                absl::StrCat(">= 1 and dividing n_q = ", attention.n_q()));
  check.Require(attention.n_v() >= 1 && attention.n_q() % attention.n_v() == 0,
                "model.attention.n_v", absl::StrCat(attention.n_v()),
                absl::StrCat(">= 1 and dividing n_q = ", attention.n_q()));
  check.Require(attention.head_dim() >= 2 && attention.head_dim() % 2 == 0,
                "model.attention.head_dim", absl::StrCat(attention.head_dim()),
                "an even number >= 2 (RoPE rotates pairs)");
  check.AtLeast("model.attention.d_aug", attention.d_aug(), 0);
  check.Positive("model.attention.rope_theta", attention.rope_theta());

  const proto::MoeConfig& moe = model.moe();
  const int num_layers = model.num_layers();
  const int num_experts = moe.num_experts();
  check.Positive("model.moe.num_experts", num_experts);
  check.Positive("model.moe.ffn_dim", moe.ffn_dim());
  check.Require(moe.top_k() >= 1 && moe.top_k() <= num_experts, "model.moe.top_k",
                absl::StrCat(moe.top_k()), absl::StrCat("in [1, num_experts = ", num_experts, "]"));
  check.AtLeast("model.moe.capacity_factor", moe.capacity_factor(), 0.0);
  check.AtLeast("model.moe.lbl_coef", moe.lbl_coef(), 0.0);
  check.AtLeast("model.moe.z_coef", moe.z_coef(), 0.0);
  check.AtLeast("model.moe.top1_lbl_coef", moe.top1_lbl_coef(), 0.0);
  check.AtLeast("model.moe.bias_update_rate", moe.bias_update_rate(), 0.0);
  if (moe.bias_update_rate() > 0) {
    check.Require(moe.bias_bound() > 0 && std::isfinite(moe.bias_bound()), "model.moe.bias_bound",
                  absl::StrCat(moe.bias_bound()), "> 0 when model.moe.bias_update_rate > 0");
  }
  std::set<int> dense;
  for (int i = 0; i < moe.dense_layers_size(); ++i) {
    const int layer = moe.dense_layers(i);
    const std::string field = absl::StrCat("model.moe.dense_layers[", i, "]");
    check.Require(layer >= 0 && layer < num_layers, field, absl::StrCat(layer),
                  absl::StrCat("a layer in [0, num_layers = ", num_layers, ")"));
    check.Require(dense.insert(layer).second, field, absl::StrCat(layer), "each layer listed once");
  }
  if (!dense.empty()) check.Positive("model.moe.dense_ffn_dim", moe.dense_ffn_dim());
  for (int i = 0; i < moe.topk_schedule_size(); ++i) {
    const proto::TopKScheduleEntry& entry = moe.topk_schedule(i);
    const std::string prefix = absl::StrCat("model.moe.topk_schedule[", i, "].");
    check.Require(entry.first_layer() >= 0 && entry.first_layer() < num_layers,
                  absl::StrCat(prefix, "first_layer"), absl::StrCat(entry.first_layer()),
                  absl::StrCat("a layer in [0, num_layers = ", num_layers, ")"));
    check.Require(entry.last_layer() >= entry.first_layer() && entry.last_layer() < num_layers,
                  absl::StrCat(prefix, "last_layer"), absl::StrCat(entry.last_layer()),
                  absl::StrCat("in [first_layer = ", entry.first_layer(),
                               ", num_layers = ", num_layers, ")"));
    check.Require(entry.k() >= 1 && entry.k() <= num_experts, absl::StrCat(prefix, "k"),
                  absl::StrCat(entry.k()), absl::StrCat("in [1, num_experts = ", num_experts, "]"));
    check.Positive(absl::StrCat(prefix, "until_step"), entry.until_step());
  }
}

void ValidateTrain(const proto::TrainConfig& train, Checker& check) {
  check.Positive("train.steps", train.steps());
  check.Positive("train.batch_size", train.batch_size());
  check.Positive("train.seq_len", train.seq_len());
  check.Require(ValidDevice(train.device()), "train.device",
                absl::StrCat("\"", train.device(), "\""),
                "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\"");
  check.Require(train.dtype() == "auto" || train.dtype() == "f32" || train.dtype() == "bf16",
                "train.dtype", absl::StrCat("\"", train.dtype(), "\""),
                "\"auto\", \"f32\" or \"bf16\"");
  check.Positive("train.lr", train.lr());
  check.Require(train.beta1() >= 0 && train.beta1() < 1, "train.beta1", absl::StrCat(train.beta1()),
                "in [0, 1)");
  check.Require(train.beta2() >= 0 && train.beta2() < 1, "train.beta2", absl::StrCat(train.beta2()),
                "in [0, 1)");
  check.Positive("train.eps", train.eps());
  check.AtLeast("train.weight_decay", train.weight_decay(), 0.0);
  check.AtLeast("train.warmup_steps", train.warmup_steps(), int64_t{0});
  check.Require(train.min_lr() >= 0 && train.min_lr() <= train.lr(), "train.min_lr",
                absl::StrCat(train.min_lr()), absl::StrCat("in [0, lr = ", train.lr(), "]"));
  check.AtLeast("train.grad_clip", train.grad_clip(), 0.0);
  check.Positive("train.grad_accum", train.grad_accum());
  check.AtLeast("train.eval_interval", train.eval_interval(), int64_t{0});
  if (train.eval_interval() > 0) check.Positive("train.eval_batches", train.eval_batches());
  check.AtLeast("train.eval_batches", train.eval_batches(), 0);
  check.Positive("train.log_interval", train.log_interval());
  check.Require(proto::TrainConfig::NanPolicy_IsValid(train.nan_policy()), "train.nan_policy",
                absl::StrCat(train.nan_policy()), "SKIP_STEP, ABORT or ROLLBACK");
  check.AtLeast("train.max_skipped_steps", train.max_skipped_steps(), 0);
  check.Require(train.spike_threshold() == 0 || train.spike_threshold() > 1,
                "train.spike_threshold", absl::StrCat(train.spike_threshold()),
                "0 (off) or > 1 (a factor over the running mean loss)");
  check.Require(train.spike_lr_factor() > 0 && train.spike_lr_factor() <= 1,
                "train.spike_lr_factor", absl::StrCat(train.spike_lr_factor()), "in (0, 1]");
  check.AtLeast("train.debug_nan_step", train.debug_nan_step(), int64_t{0});
  check.AtLeast("train.threads", train.threads(), 0);
}

void ValidateData(const proto::RunConfig& config, Checker& check) {
  const proto::DataConfig& data = config.data();
  const int vocab = config.model().vocab_size();
  switch (data.kind()) {
    case proto::DataConfig::SYNTHETIC: {
      const int64_t needed = int64_t{config.train().seq_len()} + 1;
      check.Require(data.synthetic_size() >= needed, "data.synthetic_size",
                    absl::StrCat(data.synthetic_size()),
                    absl::StrCat(">= train.seq_len + 1 = ", needed));
      break;
    }
    case proto::DataConfig::TEXT:
      check.Require(!data.path().empty(), "data.path", "\"\"", "a text file for kind TEXT");
      check.Require(vocab >= 256, "model.vocab_size", absl::StrCat(vocab),
                    ">= 256 for data.kind TEXT (bytes)");
      break;
    case proto::DataConfig::TOKENS:
      check.Require(!data.path().empty(), "data.path", "\"\"", "a token file for kind TOKENS");
      check.Require(vocab <= 65536, "model.vocab_size", absl::StrCat(vocab),
                    "<= 65536 for data.kind TOKENS (uint16 tokens)");
      break;
    default:
      check.Require(false, "data.kind", absl::StrCat(data.kind()), "SYNTHETIC, TEXT or TOKENS");
  }
}

void ValidateCheckpoint(const proto::CheckpointConfig& checkpoint, Checker& check) {
  check.AtLeast("checkpoint.interval", checkpoint.interval(), int64_t{0});
  check.AtLeast("checkpoint.keep_last", checkpoint.keep_last(), 0);
  if (checkpoint.interval() > 0 || checkpoint.resume()) {
    check.Require(!checkpoint.dir().empty(), "checkpoint.dir", "\"\"",
                  "a directory when interval > 0 or resume is set");
  }
}

void ValidateParallel(const proto::ParallelConfig& parallel, Checker& check) {
  const std::string& mode = parallel.mode();
  if (!mode.empty() && mode != "auto") {
    const StatusOr<ParallelMode> parsed = ParseParallelMode(mode);
    check.Require(parsed.ok(), "parallel.mode", absl::StrCat("\"", mode, "\""),
                  "\"auto\" or a mode name like \"r1.d2.flat\"");
  }
  check.AtLeast("parallel.node_size", parallel.node_size(), 0);
  check.AtLeast("parallel.trials", parallel.trials(), 0);
  check.AtLeast("parallel.warmup", parallel.warmup(), 0);
  const std::string& comm = parallel.comm();
  check.Require(comm.empty() || comm == "auto" || comm == "nccl" || comm == "staged",
                "parallel.comm", absl::StrCat("\"", comm, "\""),
                "\"auto\", \"nccl\" or \"staged\"");
  check.Require(std::isfinite(parallel.collective_timeout_s()), "parallel.collective_timeout_s",
                absl::StrCat(parallel.collective_timeout_s()),
                "seconds (0 = the default 60, < 0 = none)");
}

}  // namespace

Status ValidateWorld(const proto::RunConfig& config, int world) {
  if (world <= 1) return absl::OkStatus();
  Checker check;
  const int batch = config.train().batch_size();
  check.Require(batch % world == 0, "train.batch_size", absl::StrCat(batch),
                absl::StrCat("a multiple of the world size ", world));
  const int experts = config.model().moe().num_experts();
  if (experts >= world || experts < 1) {
    check.Require(experts >= 1 && experts % world == 0, "model.moe.num_experts",
                  absl::StrCat(experts),
                  absl::StrCat("a multiple of the world size ", world,
                               " (experts are sharded over the ranks)"));
  } else {
    // Fewer experts than ranks: each expert is split along H over s = W / E ranks.
    check.Require(world % experts == 0, "model.moe.num_experts", absl::StrCat(experts),
                  absl::StrCat("a multiple or a divisor of the world size ", world));
    const int64_t ffn_dim = config.model().moe().ffn_dim();
    if (world % experts == 0) {
      const int shards = world / experts;
      check.Require(ffn_dim % shards == 0, "model.moe.ffn_dim", absl::StrCat(ffn_dim),
                    absl::StrCat("a multiple of world size / num_experts = ", shards,
                                 " (each expert is split over ", shards, " ranks)"));
    }
  }
  const int node_size = std::max(1, config.parallel().node_size());
  check.Require(world % node_size == 0, "parallel.node_size", absl::StrCat(node_size),
                absl::StrCat("a divisor of the world size ", world));
  return check.Result();
}

namespace {

void PrintMessage(const pb::Message& message, int indent, std::string* out) {
  const pb::Descriptor* descriptor = message.GetDescriptor();
  const pb::Reflection* reflection = message.GetReflection();
  const std::string pad(indent, ' ');
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    const bool is_message = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (field->is_repeated()) {
      const int size = reflection->FieldSize(message, field);
      if (is_message) {
        for (int j = 0; j < size; ++j) {
          absl::StrAppend(out, pad, field->name(), " {\n");
          PrintMessage(reflection->GetRepeatedMessage(message, field, j), indent + 2, out);
          absl::StrAppend(out, pad, "}\n");
        }
      } else {
        std::vector<std::string> values(size);
        for (int j = 0; j < size; ++j) {
          pb::TextFormat::PrintFieldValueToString(message, field, j, &values[j]);
        }
        absl::StrAppend(out, pad, field->name(), ": [", absl::StrJoin(values, ", "), "]\n");
      }
    } else if (is_message) {
      absl::StrAppend(out, pad, field->name(), " {\n");
      PrintMessage(reflection->GetMessage(message, field), indent + 2, out);
      absl::StrAppend(out, pad, "}\n");
    } else {
      std::string value;
      pb::TextFormat::PrintFieldValueToString(message, field, -1, &value);
      absl::StrAppend(out, pad, field->name(), ": ", value, "\n");
    }
  }
}

}  // namespace

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (int i = 0; i < internal::kNumEmbeddedPresets; ++i) {
    names.push_back(internal::kEmbeddedPresets[i].name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

StatusOr<proto::RunConfig> LoadPreset(absl::string_view name) {
  for (int i = 0; i < internal::kNumEmbeddedPresets; ++i) {
    const internal::EmbeddedPreset& preset = internal::kEmbeddedPresets[i];
    if (name == preset.name) {
      return ParseConfigText(preset.text, absl::StrCat("configs/", name, ".textproto"));
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "preset \"", name, "\" not found; known presets: ", absl::StrJoin(PresetNames(), ", ")));
}

StatusOr<proto::RunConfig> ParseConfigText(absl::string_view text, absl::string_view source_name) {
  proto::RunConfig config;
  TextErrors errors(source_name);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(errors.Joined());
  }
  return config;
}

StatusOr<proto::RunConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("config file ", path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("config file ", path, ": read failed"));
  return ParseConfigText(text.str(), path);
}

namespace {

// ApplyOverride on `config` itself: may leave it changed when it fails (an appended list element).
Status ApplyOverrideInPlace(proto::RunConfig* config, absl::string_view assignment) {
  const size_t equals = assignment.find('=');
  if (equals == absl::string_view::npos) {
    return BadArgument("--set", absl::StrCat("\"", assignment, "\""), "<field.path>=<value>");
  }
  const std::string path(absl::StripAsciiWhitespace(assignment.substr(0, equals)));
  const absl::string_view value = absl::StripAsciiWhitespace(assignment.substr(equals + 1));
  std::string full_path = path;
  if (absl::StartsWith(path, "moe.") || absl::StartsWith(path, "attention.")) {
    full_path = absl::StrCat("model.", path);
  }
  if (path.empty()) {
    return BadArgument("--set", absl::StrCat("\"", assignment, "\""), "<field.path>=<value>");
  }

  const std::vector<absl::string_view> parts = absl::StrSplit(full_path, '.');
  pb::Message* message = config;
  std::string walked;
  for (size_t i = 0; i < parts.size(); ++i) {
    MOE_ASSIGN_OR_RETURN(Segment segment, ParseSegment(path, parts[i]));
    absl::StrAppend(&walked, walked.empty() ? "" : ".", segment.name);
    const pb::Descriptor* descriptor = message->GetDescriptor();
    const pb::Reflection* reflection = message->GetReflection();
    const pb::FieldDescriptor* field = descriptor->FindFieldByName(segment.name);
    if (field == nullptr) return UnknownField(walked, descriptor, i == 0);
    const bool last = i + 1 == parts.size();

    if (!last) {
      if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", walked, " is a ", field->cpp_type_name(), ", not a message"));
      }
      if (field->is_repeated()) {
        const int size = reflection->FieldSize(*message, field);
        if (segment.index < 0 || segment.index > size) {
          return BadArgument(walked,
                             segment.index < 0 ? "no index" : absl::StrCat("index ", segment.index),
                             absl::StrCat("an index in [0, ", size, "] (", size, " appends)"));
        }
        message = segment.index == size ? reflection->AddMessage(message, field)
                                        : reflection->MutableRepeatedMessage(
                                              message, field, static_cast<int>(segment.index));
      } else {
        if (segment.index >= 0) {
          return BadArgument(walked, absl::StrCat("index ", segment.index),
                             "no index (not a list)");
        }
        message = reflection->MutableMessage(message, field);
      }
      continue;
    }

    if (segment.index >= 0) {
      return BadArgument(walked, absl::StrCat("index ", segment.index),
                         absl::StrCat("no index on the assigned field; assign the whole list: ",
                                      segment.name, "=[...]"));
    }
    // Parse "name: value" into a fresh message of the same type, then swap that one field in, so
    // the rest of the config is untouched and textproto decides what a valid value is.
    std::unique_ptr<pb::Message> parsed(message->New());
    TextErrors errors("value");
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    const std::string text = absl::StrCat(field->name(), ": ", TextValue(field, value));
    // Every field the text names, set or not: proto3 does not record a zero value as set, so
    // ListFields would miss "train.steps=5 batch_size: 0".
    pb::TextFormat::ParseInfoTree named;
    parser.WriteLocationsTo(&named);
    bool ok = parser.ParseFromString(text, parsed.get());
    if (ok) {
      for (int i = 0; ok && i < descriptor->field_count(); ++i) {
        const pb::FieldDescriptor* other = descriptor->field(i);
        ok = other == field || named.GetLocation(other, other->is_repeated() ? 0 : -1).line < 0;
      }
      if (!ok) errors.AddError(0, 0, "the value sets other fields");
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(walked, ": got \"", value, "\", expected ",
                                                     ExpectedValue(field), " (", errors.Joined(),
                                                     ")"));
    }
    reflection->SwapFields(message, parsed.get(), {field});
    return absl::OkStatus();
  }
  return absl::InternalError("unreachable");
}

}  // namespace

Status ApplyOverride(proto::RunConfig* config, absl::string_view assignment) {
  // On a copy, so that a failed assignment leaves *config as it was (found by
  // fuzz/config_overrides_fuzzer: "moe.topk_schedule[1].bad=5" appended an empty entry, then
  // failed on the unknown field).
  proto::RunConfig updated = *config;
  MOE_RETURN_IF_ERROR(ApplyOverrideInPlace(&updated, assignment));
  config->Swap(&updated);
  return absl::OkStatus();
}

Status ApplyOverrides(proto::RunConfig* config, const std::vector<std::string>& assignments) {
  for (const std::string& assignment : assignments) {
    MOE_RETURN_IF_ERROR(ApplyOverride(config, assignment));
  }
  return absl::OkStatus();
}

Status ValidateConfig(const proto::RunConfig& config) {
  Checker check;
  ValidateModel(config.model(), check);
  ValidateTrain(config.train(), check);
  ValidateData(config, check);
  ValidateCheckpoint(config.checkpoint(), check);
  ValidateParallel(config.parallel(), check);
  return check.Result();
}

std::string ConfigToText(const proto::RunConfig& config) {
  std::string out;
  PrintMessage(config, 0, &out);
  return out;
}

int TopKForLayer(const proto::RunConfig& config, int layer, int64_t step) {
  for (const proto::TopKScheduleEntry& entry : config.model().moe().topk_schedule()) {
    if (layer >= entry.first_layer() && layer <= entry.last_layer() && step < entry.until_step()) {
      return entry.k();
    }
  }
  return config.model().moe().top_k();
}

}  // namespace smoe
