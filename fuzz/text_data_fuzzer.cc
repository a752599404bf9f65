// Fuzz target: the plain-text data reader. The input is the text file: TextFileSource must give
// its bytes as tokens (vocab 256), or InvalidArgument for an empty file; then BatchLoader windows
// over it (data_fuzz_common.h).
#include <string>

#include "fuzz/data_fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace smoe;
  static const std::string path = fuzz::ScratchDir() + "/data.txt";
  const absl::string_view bytes = fuzz::AsText(data, size);
  fuzz::WriteFileOrDie(path, bytes);
  const StatusOr<std::unique_ptr<TokenSource>> source = TextFileSource(path);
  if (size == 0) {
    FUZZ_CHECK(absl::IsInvalidArgument(source.status())) << source.status();
    return 0;
  }
  FUZZ_CHECK(source.ok()) << source.status();
  FUZZ_CHECK((*source)->vocab_size() == 256);
  FUZZ_CHECK((*source)->size() == static_cast<int64_t>(size));
  const std::vector<int32_t> tokens = fuzz::ReadAll(**source);
  for (size_t i = 0; i < size; ++i) FUZZ_CHECK(tokens[i] == data[i]) << "byte " << i;
  fuzz::CheckBatches(**source, tokens, fuzz::Hash(bytes));
  return 0;
}
