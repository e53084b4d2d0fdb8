// Small POSIX helpers shared by the core: an owning file descriptor, aligned buffers, reading
// small text files (/proc, /sys), monotonic time.
#ifndef NPAS_CORE_OS_UTIL_H
#define NPAS_CORE_OS_UTIL_H

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

namespace npas {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset();

 private:
  int fd_ = -1;
};

// A zero-initialised, 64-byte-aligned byte buffer (activation arena, weights, scratch).
class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;
  AlignedBuffer() = default;
  // Returns an empty buffer when the allocation fails and size > 0; check data().
  explicit AlignedBuffer(size_t size);

  uint8_t* data() { return ptr_.get(); }
  const uint8_t* data() const { return ptr_.get(); }
  size_t size() const { return size_; }
  bool allocated() const { return size_ == 0 || ptr_ != nullptr; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> ptr_;
  size_t size_ = 0;
};

// The whole content of a small file (at most max_bytes), or nullopt when it cannot be read;
// then *error (when given) holds the errno of the failed open or read.
std::optional<std::string> read_small_file(const std::string& path, size_t max_bytes = 1 << 20,
                                           int* error = nullptr);

// Leading and trailing whitespace removed.
std::string trim(const std::string& s);

// Memory the OS can give this process without swapping: /proc/meminfo's MemAvailable (Linux,
// Android), else the free physical pages; 0 when unknown. Allocations are checked against it
// first, because with overcommit a too-large malloc succeeds and the process dies on first
// touch instead of getting an error.
uint64_t available_memory_bytes();
// /proc/meminfo's MemTotal, else the physical pages; 0 when unknown.
uint64_t total_memory_bytes();

// Whether got[0..got_size) equals want, in time that depends on want's length only (not on
// where they first differ): how the session token is compared.
bool constant_time_equal(const std::string& want, const char* got, size_t got_size);

// CLOCK_MONOTONIC in nanoseconds.
uint64_t monotonic_ns();

// Sleeps for `ns` (restarted after signals).
void sleep_ns(uint64_t ns);

// This process's resident memory from /proc/self/status: VmRSS (now) and VmHWM (its peak
// since the start or the last reset_peak_rss). false, the reason in *why, when unreadable.
struct MemoryUsage {
  uint64_t rss_bytes = 0;
  uint64_t peak_rss_bytes = 0;
};
bool read_memory_usage(MemoryUsage* out, std::string* why);
// Sets the peak to the current RSS (writes "5" to /proc/self/clear_refs, Linux 4.0+); false,
// the reason in *why, when the kernel or a policy (SELinux on Android) refuses.
bool reset_peak_rss(std::string* why);

// Count marks: with them on (npas-runner --count-markers), benchmark() marks each timed run
// (kMarkRunBegin before its input copy, kMarkRunEnd after its last step) and, per layer, each
// step (kMarkStepBase + index) by the syscall lseek(-1, kMarkBase + code, SEEK_SET), which fails
// with EBADF and does nothing else. The qemu plugin host/bench/arm64/npas_count.c watches for
// it and records its instruction counts there. Off by default: then count_mark() is a load
// and a branch.
constexpr uint64_t kMarkBase = 0x4E50415300000000ull;  // "NPAS" in the upper 32 bits
constexpr uint32_t kMarkRunBegin = 1;
constexpr uint32_t kMarkRunEnd = 2;
constexpr uint32_t kMarkStepBase = 0x100;
void set_count_marks(bool on);
void count_mark(uint32_t code);

// Reads exactly `size` bytes at `offset` of `fd` (a file of `file_size` bytes), retrying on
// EINTR; false on a short file or an offset past its end.
bool pread_exact(int fd, void* dst, uint64_t size, uint64_t offset, uint64_t file_size);

}  // namespace npas

#endif  // NPAS_CORE_OS_UTIL_H
