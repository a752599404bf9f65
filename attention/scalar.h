// Element access for the templated CPU references: storage types float, BF16 and double (tests run
// the references in double for finite-difference gradient checks). Arithmetic is done in double.
#pragma once

#include "runtime/core/bf16.h"

namespace smoe::attention_internal {

inline double Load(float value) { return value; }
inline double Load(double value) { return value; }
inline double Load(BF16 value) { return BF16ToFloat(value); }

template <typename T>
T Store(double value);
template <>
inline float Store<float>(double value) {
  return static_cast<float>(value);
}
template <>
inline double Store<double>(double value) {
  return value;
}
template <>
inline BF16 Store<BF16>(double value) {
  return FloatToBF16(static_cast<float>(value));
}

}  // namespace smoe::attention_internal
