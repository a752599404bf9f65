// Error handling for sigma-moe: absl::Status at every boundary, MOE_CHECK for internal invariants.
//
// Debian's abseil (20220623) has neither absl/log nor RETURN_IF_ERROR, so the macros live here.
//   MOE_RETURN_IF_ERROR(expr)        returns the Status of `expr` when it is not OK.
//   MOE_ASSIGN_OR_RETURN(lhs, expr)  evaluates a StatusOr; returns its status or assigns the value.
//   MOE_CHECK(cond) << "context"     aborts with file:line and the message when `cond` is false.
//   MOE_CHECK_EQ/NE/LT/LE/GT/GE(a,b) the same, printing both values.
// MOE_CHECK is for bugs in our own code only; bad user input returns InvalidArgument instead.
#pragma once

#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace smoe {

using absl::Status;
using absl::StatusOr;

namespace internal {

// Streams a message, then aborts in its destructor. Used only through MOE_CHECK*.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const std::string& condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Lets `cond ? (void)0 : Voidify() & stream << ...` type-check as a void expression.
struct Voidify {
  void operator&(std::ostream&) {}
};

template <typename A, typename B>
std::string CheckOpMessage(const char* expr, const A& a, const B& b) {
  std::ostringstream out;
  out << expr << " (" << a << " vs. " << b << ")";
  return out.str();
}

}  // namespace internal

// InvalidArgument naming the field, the value seen and the value expected.
[[nodiscard]] inline Status BadArgument(absl::string_view field, absl::string_view seen,
                                        absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": got ", seen, ", expected ", expected));
}

}  // namespace smoe

#define MOE_STATUS_CONCAT_INNER(a, b) a##b
#define MOE_STATUS_CONCAT(a, b) MOE_STATUS_CONCAT_INNER(a, b)

#define MOE_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status moe_status_ = (expr);       \
    if (!moe_status_.ok()) return moe_status_; \
  } while (false)

#define MOE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

#define MOE_ASSIGN_OR_RETURN(lhs, expr) \
  MOE_ASSIGN_OR_RETURN_IMPL(MOE_STATUS_CONCAT(moe_statusor_, __LINE__), lhs, expr)

#define MOE_CHECK(cond)                  \
  (cond) ? (void)0                       \
         : ::smoe::internal::Voidify() & \
               ::smoe::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define MOE_CHECK_OP(op, a, b)                                                                     \
  ((a)op(b))                                                                                       \
      ? (void)0                                                                                    \
      : ::smoe::internal::Voidify() &                                                              \
            ::smoe::internal::CheckFailure(                                                        \
                __FILE__, __LINE__, ::smoe::internal::CheckOpMessage(#a " " #op " " #b, (a), (b))) \
                .stream()

#define MOE_CHECK_EQ(a, b) MOE_CHECK_OP(==, a, b)
#define MOE_CHECK_NE(a, b) MOE_CHECK_OP(!=, a, b)
#define MOE_CHECK_LT(a, b) MOE_CHECK_OP(<, a, b)
#define MOE_CHECK_LE(a, b) MOE_CHECK_OP(<=, a, b)
#define MOE_CHECK_GT(a, b) MOE_CHECK_OP(>, a, b)
#define MOE_CHECK_GE(a, b) MOE_CHECK_OP(>=, a, b)
#define MOE_CHECK_OK(expr)                                             \
  do {                                                                 \
    ::absl::Status moe_check_status_ = (expr);                         \
    MOE_CHECK(moe_check_status_.ok()) << moe_check_status_.ToString(); \
  } while (false)
