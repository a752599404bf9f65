// Fuzz target: an llm.c token file (header and body), read by TokenFileSource.
//
// Checks: with vocab 65536 it loads or fails with InvalidArgument; a file that loads has the
// header's token count, loads again with vocab = its largest token + 1 and fails with
// InvalidArgument with vocab = its largest token; WriteTokenFile of its tokens reads back the same,
// and gives back the input byte for byte when the header's reserved words are zero; then
// BatchLoader windows over it (data_fuzz_common.h).
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "fuzz/data_fuzz_common.h"

namespace {

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace smoe;
  static const std::string path = fuzz::ScratchDir() + "/tokens.bin";
  static const std::string rewritten = fuzz::ScratchDir() + "/rewritten.bin";
  const absl::string_view bytes = fuzz::AsText(data, size);
  fuzz::WriteFileOrDie(path, bytes);
  const StatusOr<std::unique_ptr<TokenSource>> source = TokenFileSource(path, 65536);
  if (!source.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(source.status())) << source.status();
    return 0;
  }
  FUZZ_CHECK(size >= kTokenFileHeaderBytes);
  int32_t count = 0;
  std::memcpy(&count, data + 8, 4);  // little-endian hosts only, as the format
  FUZZ_CHECK((*source)->size() == count) << (*source)->size() << " vs header " << count;
  const std::vector<int32_t> tokens = fuzz::ReadAll(**source);
  const int32_t largest = *std::max_element(tokens.begin(), tokens.end());

  const StatusOr<std::unique_ptr<TokenSource>> fits = TokenFileSource(path, largest + 1);
  FUZZ_CHECK(fits.ok()) << fits.status();
  FUZZ_CHECK(fuzz::ReadAll(**fits) == tokens);
  if (largest >= 1) {
    const StatusOr<std::unique_ptr<TokenSource>> too_small = TokenFileSource(path, largest);
    FUZZ_CHECK(absl::IsInvalidArgument(too_small.status())) << too_small.status();
  }

  const std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
  const Status written = WriteTokenFile(rewritten, narrow);
  FUZZ_CHECK(written.ok()) << written;
  const StatusOr<std::unique_ptr<TokenSource>> reread = TokenFileSource(rewritten, 65536);
  FUZZ_CHECK(reread.ok()) << reread.status();
  FUZZ_CHECK(fuzz::ReadAll(**reread) == tokens);
  const bool reserved_zero =
      std::all_of(data + 12, data + kTokenFileHeaderBytes, [](uint8_t b) { return b == 0; });
  if (reserved_zero) {
    FUZZ_CHECK(ReadBytes(rewritten) == bytes) << "WriteTokenFile differs";
  }

  fuzz::CheckBatches(**source, tokens, fuzz::Hash(bytes));
  return 0;
}
