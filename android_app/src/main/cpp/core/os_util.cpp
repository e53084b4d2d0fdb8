// POSIX helpers for the core.
#include "core/os_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace npas {

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

AlignedBuffer::AlignedBuffer(size_t size) {
  if (size == 0) return;
  // aligned_alloc wants a multiple of the alignment.
  size_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < size) return;
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, rounded) != 0) return;
  std::memset(p, 0, rounded);
  ptr_.reset(static_cast<uint8_t*>(p));
  size_ = size;
}

std::optional<std::string> read_small_file(const std::string& path, size_t max_bytes,
                                           int* error) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (error) *error = errno;
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  while (out.size() < max_bytes) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (error) *error = errno;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\v\f";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

uint64_t available_memory_bytes() {
  if (auto info = read_small_file("/proc/meminfo", 1 << 16)) {
    size_t at = info->find("MemAvailable:");
    if (at != std::string::npos) {
      unsigned long long kb = 0;
      if (std::sscanf(info->c_str() + at, "MemAvailable: %llu kB", &kb) == 1) return kb * 1024;
    }
  }
  long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return uint64_t(pages) * uint64_t(page);
  return 0;
}

bool constant_time_equal(const std::string& want, const char* got, size_t got_size) {
  volatile unsigned char diff = got_size == want.size() ? 0 : 1;
  for (size_t i = 0; i < want.size(); ++i) {
    unsigned char g = i < got_size ? static_cast<unsigned char>(got[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(want[i]));
  }
  return diff == 0;
}

uint64_t total_memory_bytes() {
  if (auto info = read_small_file("/proc/meminfo", 1 << 16)) {
    size_t at = info->find("MemTotal:");
    if (at != std::string::npos) {
      unsigned long long kb = 0;
      if (std::sscanf(info->c_str() + at, "MemTotal: %llu kB", &kb) == 1) return kb * 1024;
    }
  }
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return uint64_t(pages) * uint64_t(page);
  return 0;
}

namespace {
std::atomic<bool> g_count_marks{false};
}  // namespace

void set_count_marks(bool on) { g_count_marks.store(on, std::memory_order_relaxed); }

void count_mark(uint32_t code) {
  if (!g_count_marks.load(std::memory_order_relaxed)) return;
  int saved = errno;
  (void)::lseek(-1, off_t(kMarkBase + code), SEEK_SET);  // EBADF: a mark, nothing more
  errno = saved;
}

void sleep_ns(uint64_t ns) {
  timespec left{time_t(ns / 1000000000ull), long(ns % 1000000000ull)};
  while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

namespace {
// The "NAME: N kB" value of /proc/self/status, or false.
bool status_kb(const std::string& status, const char* name, uint64_t* bytes) {
  size_t at = status.find(std::string("\n") + name + ":");
  if (at == std::string::npos) return false;
  unsigned long long kb = 0;
  if (std::sscanf(status.c_str() + at + 1 + std::strlen(name) + 1, " %llu kB", &kb) != 1) {
    return false;
  }
  *bytes = uint64_t(kb) * 1024;
  return true;
}
}  // namespace

bool read_memory_usage(MemoryUsage* out, std::string* why) {
  int err = 0;
  auto status = read_small_file("/proc/self/status", 1 << 16, &err);
  if (!status) {
    *why = std::string("/proc/self/status: ") + std::strerror(err);
    return false;
  }
  std::string s = "\n" + *status;
  if (!status_kb(s, "VmRSS", &out->rss_bytes) || !status_kb(s, "VmHWM", &out->peak_rss_bytes)) {
    *why = "/proc/self/status has no VmRSS/VmHWM lines";
    return false;
  }
  return true;
}

bool reset_peak_rss(std::string* why) {
  UniqueFd fd(::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC));
  if (!fd.valid() || ::write(fd.get(), "5", 1) != 1) {
    *why = std::string("/proc/self/clear_refs: ") + std::strerror(errno);
    return false;
  }
  return true;
}

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

bool pread_exact(int fd, void* dst, uint64_t size, uint64_t offset, uint64_t file_size) {
  if (offset > file_size || size > file_size - offset) return false;
  auto* p = static_cast<uint8_t*>(dst);
  while (size > 0) {
    ssize_t n = ::pread(fd, p, size_t(size), off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= uint64_t(n);
    offset += uint64_t(n);
  }
  return true;
}

}  // namespace npas
