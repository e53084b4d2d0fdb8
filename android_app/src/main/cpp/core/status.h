// The core's error type: a gRPC-like status without any gRPC types, so service/ maps codes 1:1
// and a JNI shell can report the same messages.
#ifndef NPAS_CORE_STATUS_H
#define NPAS_CORE_STATUS_H

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace npas {

// Same numbers as grpc::StatusCode (and google.rpc.Code).
enum class Code : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

const char* code_name(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: tensor x: ..." for logs.
  std::string to_string() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// A number in an error message.
inline std::string u(uint64_t v) { return std::to_string(v); }

// A client-supplied value (name, symbol, path, sha) as echoed in an error message: at most
// kMaxEchoedChars bytes (cut at a UTF-8 boundary), then "... (N chars)", so a huge name cannot
// push a status past gRPC's metadata limit. Every echo of a client's string goes through it.
constexpr size_t kMaxEchoedChars = 120;
std::string clip(const std::string& value, size_t max_chars = kMaxEchoedChars);

inline Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
inline Status FailedPrecondition(std::string m) {
  return Status(Code::kFailedPrecondition, std::move(m));
}
inline Status ResourceExhausted(std::string m) {
  return Status(Code::kResourceExhausted, std::move(m));
}
inline Status DataLoss(std::string m) { return Status(Code::kDataLoss, std::move(m)); }
inline Status Unauthenticated(std::string m) {
  return Status(Code::kUnauthenticated, std::move(m));
}
inline Status Unimplemented(std::string m) { return Status(Code::kUnimplemented, std::move(m)); }
inline Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }
// An OS call failed: the message names the call, the path and strerror(errno_value).
Status ErrnoError(const std::string& what, int errno_value);

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Internal("StatusOr built from an OK status without a value");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace npas

#define NPAS_RETURN_IF_ERROR(expr)        \
  do {                                    \
    ::npas::Status npas_status_ = (expr); \
    if (!npas_status_.ok()) return npas_status_; \
  } while (0)

#endif  // NPAS_CORE_STATUS_H
