#include "tests/testing/gradcheck.h"

#include <cmath>
#include <sstream>

#include "runtime/core/philox.h"

namespace smoe::testing {

::testing::AssertionResult CheckGradient(const std::function<double(const std::vector<double>&)>& f,
                                         const std::vector<double>& x,
                                         const std::vector<double>& analytic,
                                         const GradcheckOptions& options) {
  if (x.size() != analytic.size()) {
    return ::testing::AssertionFailure()
           << "gradient has " << analytic.size() << " elements, x has " << x.size();
  }
  std::vector<double> probe = x;
  int failures = 0;
  std::ostringstream out;
  for (size_t i = 0; i < x.size(); ++i) {
    probe[i] = x[i] + options.step;
    const double up = f(probe);
    probe[i] = x[i] - options.step;
    const double down = f(probe);
    probe[i] = x[i];
    const double numeric = (up - down) / (2.0 * options.step);
    const double allowed = options.atol + options.rtol * std::abs(numeric);
    if (!(std::abs(numeric - analytic[i]) <= allowed)) {
      if (failures < 8) {
        out << "\n  d/dx[" << i << "]: analytic " << analytic[i] << ", numeric " << numeric;
      }
      ++failures;
    }
  }
  if (failures == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << failures << " of " << x.size() << " gradient elements differ:" << out.str();
}

std::vector<double> RandomWeights(size_t count, uint64_t seed) {
  std::vector<double> w(count);
  for (size_t i = 0; i < count; ++i) w[i] = 2.0 * PhiloxUniform(seed, i) - 1.0;
  return w;
}

}  // namespace smoe::testing
