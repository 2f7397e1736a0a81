// Status and Result<T>: the error currency at every library boundary.
// Habit from NCCL (ncclResult_t + NCCLCHECK) and UCX (ucs_status_t): a small enum of
// error codes, a message, and one macro that propagates while logging a trail.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace mycel {

enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,   // caller passed something out of range
  kOutOfRange,        // a length, count or index disagrees with its limit
  kCorrupt,           // malformed payload / frame / file
  kNonFinite,         // NaN or Inf found where a finite value is required
  kNoResource,        // back-pressure: try again later
  kNotFound,          // missing file, data set, peer
  kUnavailable,       // backend (CUDA, UCX) not present or peer unreachable
  kTimeout,
  kIo,                // system call failed
  kInternal,          // a bug or a backend (CUDA/cuBLAS) failure
  kCancelled,
  kUnimplemented,
};

std::string_view code_name(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string msg) : code_(code), msg_(std::move(msg)) {}
  static Status ok() { return {}; }

  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  std::string to_string() const;

 private:
  Code code_ = Code::kOk;
  std::string msg_;
};

inline Status Ok() { return {}; }
Status Error(Code code, std::string msg);  // builds a Status; does not log

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}              // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}       // NOLINT
  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  Status status() const { return is_ok() ? Status{} : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

namespace detail {
void log_trail(const Status& s, const char* expr, const char* file, int line);
}  // namespace detail

}  // namespace mycel

// Propagate a non-ok Status, logging one trail line at debug level (the place where the error
// was first found logs it at its own level, once).
#define MYCEL_CHECK(expr)                                                  \
  do {                                                                     \
    ::mycel::Status _mycel_s = (expr);                                     \
    if (!_mycel_s.is_ok()) {                                               \
      ::mycel::detail::log_trail(_mycel_s, #expr, __FILE__, __LINE__);     \
      return _mycel_s;                                                     \
    }                                                                      \
  } while (0)

#define MYCEL_CONCAT_INNER(a, b) a##b
#define MYCEL_CONCAT(a, b) MYCEL_CONCAT_INNER(a, b)

// MYCEL_ASSIGN_OR_RETURN(auto x, make_x()); declares x from a Result<T> or returns its Status.
// The temporary's name comes from __COUNTER__, expanded once, so an invocation that spans
// several lines still names one variable.
#define MYCEL_ASSIGN_OR_RETURN(decl, expr) MYCEL_AOR_1(__COUNTER__, decl, expr)
#define MYCEL_AOR_1(n, decl, expr) MYCEL_AOR_2(n, decl, expr)
#define MYCEL_AOR_2(n, decl, expr) MYCEL_ASSIGN_OR_RETURN_IMPL(_mycel_r_##n, decl, expr)
#define MYCEL_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr)                              \
  auto tmp = (expr);                                                              \
  if (!tmp.is_ok()) {                                                             \
    ::mycel::detail::log_trail(tmp.status(), #expr, __FILE__, __LINE__);          \
    return tmp.status();                                                          \
  }                                                                               \
  decl = std::move(tmp).value()
