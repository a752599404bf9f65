// Element access for the templated CPU references, whose storage type is float, BF16 or double
// (tests run the references in double for finite-difference gradient checks): arithmetic is done
// in double, and a value is rounded once, when it is stored. Host only.
#pragma once

#include "runtime/core/bf16.h"

namespace smoe {

inline double Widen(float v) { return v; }
inline double Widen(double v) { return v; }
inline double Widen(BF16 v) { return BF16ToFloat(v); }

template <typename T>
T Narrow(double v);
template <>
inline float Narrow<float>(double v) {
  return static_cast<float>(v);
}
template <>
inline double Narrow<double>(double v) {
  return v;
}
template <>
inline BF16 Narrow<BF16>(double v) {
  return FloatToBF16(static_cast<float>(v));
}

template <typename T>
void Store(T* p, double v) {
  *p = Narrow<T>(v);
}

}  // namespace smoe
