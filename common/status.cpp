#include "common/status.h"

#include "common/log.h"

namespace mycel {

std::string_view code_name(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kOutOfRange: return "out of range";
    case Code::kCorrupt: return "corrupt";
    case Code::kNonFinite: return "non-finite";
    case Code::kNoResource: return "no resource";
    case Code::kNotFound: return "not found";
    case Code::kUnavailable: return "unavailable";
    case Code::kTimeout: return "timeout";
    case Code::kIo: return "i/o error";
    case Code::kInternal: return "internal";
    case Code::kCancelled: return "cancelled";
    case Code::kUnimplemented: return "unimplemented";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  std::string s(code_name(code_));
  s += ": ";
  s += msg_;
  return s;
}

Status Error(Code code, std::string msg) { return Status(code, std::move(msg)); }

namespace detail {
void log_trail(const Status& s, const char* expr, const char* file, int line) {
  MYCEL_LOG_DEBUG("core", "{}:{} {} -> {}", file, line, expr, s.to_string());
}
}  // namespace detail

}  // namespace mycel
