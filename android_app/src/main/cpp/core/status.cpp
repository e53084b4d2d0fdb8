// Names for status codes and the errno helper.
#include "core/status.h"

#include <cerrno>
#include <cstring>

namespace npas {

const char* code_name(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kCancelled: return "CANCELLED";
    case Code::kUnknown: return "UNKNOWN";
    case Code::kInvalidArgument: return "INVALID_ARGUMENT";
    case Code::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case Code::kNotFound: return "NOT_FOUND";
    case Code::kAlreadyExists: return "ALREADY_EXISTS";
    case Code::kPermissionDenied: return "PERMISSION_DENIED";
    case Code::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case Code::kFailedPrecondition: return "FAILED_PRECONDITION";
    case Code::kAborted: return "ABORTED";
    case Code::kOutOfRange: return "OUT_OF_RANGE";
    case Code::kUnimplemented: return "UNIMPLEMENTED";
    case Code::kInternal: return "INTERNAL";
    case Code::kUnavailable: return "UNAVAILABLE";
    case Code::kDataLoss: return "DATA_LOSS";
    case Code::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string clip(const std::string& value, size_t max_chars) {
  if (value.size() <= max_chars) return value;
  size_t n = max_chars;
  while (n > 0 && (static_cast<unsigned char>(value[n]) & 0xC0) == 0x80) --n;  // continuation
  return value.substr(0, n) + "\u2026 (" + std::to_string(value.size()) + " chars)";
}

std::string Status::to_string() const {
  if (ok()) return "OK";
  return std::string(code_name(code_)) + ": " + message_;
}

Status ErrnoError(const std::string& what, int errno_value) {
  Code code = Code::kInternal;
  if (errno_value == ENOENT) code = Code::kNotFound;
  if (errno_value == ENOSPC || errno_value == EDQUOT || errno_value == ENOMEM) {
    code = Code::kResourceExhausted;
  }
  if (errno_value == EACCES || errno_value == EPERM) code = Code::kPermissionDenied;
  return Status(code, what + ": " + std::strerror(errno_value));
}

}  // namespace npas
