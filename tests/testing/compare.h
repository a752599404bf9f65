// Comparison helpers for tests: tensors on any device, any dtype.
//
//   EXPECT_TRUE(AllClose(actual, expected, ToleranceFor(DType::kBF16)));
//   EXPECT_TRUE(AllEqual(actual_ids, expected_ids));           // integers, or floats bitwise
//   EXPECT_LT(Nmse(actual, expected), 1e-6);
//   EXPECT_TRUE(NmseWithin(actual_dw, expected_dw, 1e-6));  // the same, with a message
// |a - e| <= atol + rtol * |e| per element; NaN never passes unless both are NaN and the
// comparison is AllEqual. A failure prints the worst elements with their indices.
#pragma once

#include <vector>

#include "gtest/gtest.h"
#include "runtime/tensor/tensor.h"

namespace smoe::testing {

struct Tolerance {
  double atol;
  double rtol;
};

// f32: 1e-5 / 1e-5. bf16 (8 bits of mantissa): 1e-2 / 1e-2. Integers: exact.
Tolerance ToleranceFor(DType dtype);

// The values of any tensor (CPU or CUDA, any dtype) as doubles, in row-major order.
std::vector<double> ToDoubles(const TensorView& t);

::testing::AssertionResult AllClose(const TensorView& actual, const TensorView& expected,
                                    Tolerance tolerance);
::testing::AssertionResult AllClose(const std::vector<double>& actual,
                                    const std::vector<double>& expected, Tolerance tolerance);
::testing::AssertionResult AllEqual(const TensorView& actual, const TensorView& expected);
// Normalized mean squared error: sum (a - e)^2 / sum e^2 (0 when both are zero).
double Nmse(const std::vector<double>& actual, const std::vector<double>& expected);
// Nmse(actual, expected) <= max, with the shapes equal; NaN fails. The failure gives the NMSE and
// the element with the largest difference.
::testing::AssertionResult NmseWithin(const TensorView& actual, const TensorView& expected,
                                      double max);

}  // namespace smoe::testing
