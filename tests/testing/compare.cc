#include "tests/testing/compare.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe::testing {

Tolerance ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return {1e-5, 1e-5};
    case DType::kBF16:
      return {1e-2, 1e-2};
    default:
      return {0.0, 0.0};
  }
}

namespace {

Tensor OnHost(const TensorView& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    // Wrap without copying: a Tensor is needed only to own copies.
    StatusOr<Tensor> copy = CopyTo(ExecContext::Cpu(), t, Device::Cpu());
    MOE_CHECK_OK(copy.status());
    return *std::move(copy);
  }
  StatusOr<std::unique_ptr<ExecContext>> ctx = ExecContext::Create(t.device());
  MOE_CHECK_OK(ctx.status());
  StatusOr<Tensor> copy = CopyTo(**ctx, t, Device::Cpu());
  MOE_CHECK_OK(copy.status());
  return *std::move(copy);
}

}  // namespace

std::vector<double> ToDoubles(const TensorView& t) {
  const Tensor host = OnHost(t);
  std::vector<double> out(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) {
    switch (host.dtype()) {
      case DType::kF32:
        out[i] = host.data<float>()[i];
        break;
      case DType::kBF16:
        out[i] = BF16ToFloat(host.data<BF16>()[i]);
        break;
      case DType::kI32:
        out[i] = host.data<int32_t>()[i];
        break;
      case DType::kI64:
        out[i] = static_cast<double>(host.data<int64_t>()[i]);
        break;
    }
  }
  return out;
}

::testing::AssertionResult AllClose(const std::vector<double>& actual,
                                    const std::vector<double>& expected, Tolerance tolerance) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " vs. expected " << expected.size();
  }
  struct Bad {
    size_t index;
    double excess;
  };
  std::vector<Bad> bad;
  double max_abs = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    const double diff = std::abs(a - e);
    const double allowed = tolerance.atol + tolerance.rtol * std::abs(e);
    if (std::isfinite(diff)) max_abs = std::max(max_abs, diff);
    if (!(diff <= allowed) && !(std::isinf(a) && a == e)) {
      bad.push_back({i, std::isnan(diff) ? INFINITY : diff - allowed});
    }
  }
  if (bad.empty()) return ::testing::AssertionSuccess() << "max |diff| " << max_abs;
  std::sort(bad.begin(), bad.end(), [](const Bad& x, const Bad& y) { return x.excess > y.excess; });
  std::ostringstream out;
  out << bad.size() << " of " << actual.size() << " elements differ (atol " << tolerance.atol
      << ", rtol " << tolerance.rtol << "); worst:";
  for (size_t j = 0; j < std::min<size_t>(bad.size(), 8); ++j) {
    const size_t i = bad[j].index;
    out << "\n  [" << i << "] actual " << actual[i] << " expected " << expected[i];
  }
  return ::testing::AssertionFailure() << out.str();
}

::testing::AssertionResult AllClose(const TensorView& actual, const TensorView& expected,
                                    Tolerance tolerance) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << actual.shape().ToString()
                                         << " vs. expected " << expected.shape().ToString();
  }
  return AllClose(ToDoubles(actual), ToDoubles(expected), tolerance);
}

::testing::AssertionResult AllEqual(const TensorView& actual, const TensorView& expected) {
  if (actual.shape() != expected.shape() || actual.dtype() != expected.dtype()) {
    return ::testing::AssertionFailure()
           << actual.ToString() << " vs. expected " << expected.ToString();
  }
  const Tensor a = OnHost(actual), e = OnHost(expected);
  const size_t width = DTypeSize(a.dtype());
  const char* pa = static_cast<const char*>(a.data());
  const char* pe = static_cast<const char*>(e.data());
  const std::vector<double> da = ToDoubles(a), de = ToDoubles(e);
  int64_t mismatches = 0;
  std::ostringstream out;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (std::memcmp(pa + i * width, pe + i * width, width) != 0) {
      if (mismatches < 8) out << "\n  [" << i << "] actual " << da[i] << " expected " << de[i];
      ++mismatches;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << mismatches << " of " << a.numel() << " elements differ:" << out.str();
}

double Nmse(const std::vector<double>& actual, const std::vector<double>& expected) {
  MOE_CHECK_EQ(actual.size(), expected.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    num += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    den += expected[i] * expected[i];
  }
  return den == 0.0 ? num : num / den;
}

::testing::AssertionResult NmseWithin(const TensorView& actual, const TensorView& expected,
                                      double max) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << actual.shape().ToString()
                                         << " vs. expected " << expected.shape().ToString();
  }
  const std::vector<double> a = ToDoubles(actual), e = ToDoubles(expected);
  const double nmse = Nmse(a, e);
  if (nmse <= max) return ::testing::AssertionSuccess() << "NMSE " << nmse;
  auto difference = [&](size_t i) {
    const double d = std::abs(a[i] - e[i]);
    return std::isnan(d) ? INFINITY : d;
  };
  size_t worst = 0;
  for (size_t i = 1; i < a.size(); ++i) {
    if (difference(i) > difference(worst)) worst = i;
  }
  return ::testing::AssertionFailure()
         << absl::StrCat("NMSE ", nmse, " exceeds ", max, " (sum (a - e)^2 / sum e^2 over ",
                         a.size(), " elements); largest difference at [", worst, "]: actual ",
                         a[worst], " expected ", e[worst]);
}

}  // namespace smoe::testing
