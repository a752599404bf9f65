// fp64 finite-difference gradient checks.
//
// CheckGradient compares an analytic gradient of a scalar function f at x with central
// differences (f(x + h e_i) - f(x - h e_i)) / 2h, element by element, within atol + rtol * |g|.
// Write f in double precision (our CPU references are templated on the scalar type for this), so
// that h ~ 1e-6 gives ~1e-9 accuracy and the check can fail for real mistakes only.
#pragma once

#include <functional>
#include <vector>

#include "gtest/gtest.h"

namespace smoe::testing {

struct GradcheckOptions {
  double step = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
};

::testing::AssertionResult CheckGradient(const std::function<double(const std::vector<double>&)>& f,
                                         const std::vector<double>& x,
                                         const std::vector<double>& analytic,
                                         const GradcheckOptions& options = {});

// Random weights in [-1, 1) (from Philox) to project an output to a scalar loss: L = sum w_i y_i.
std::vector<double> RandomWeights(size_t count, uint64_t seed);

}  // namespace smoe::testing
