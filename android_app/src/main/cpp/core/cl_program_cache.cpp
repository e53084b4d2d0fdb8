// The GPU backend's program plumbing: build logs made fit for a Status message, and the
// program-binary cache on disk (<dir>/<key>: "NPASCLB1" + u64 size + sha256 + bytes).
#include "core/cl_program_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <utility>
#include <vector>

#include "core/model.h"
#include "core/os_util.h"
#include "core/sha256.h"

namespace npas {
namespace {

constexpr char kCacheMagic[8] = {'N', 'P', 'A', 'S', 'C', 'L', 'B', '1'};

}  // namespace

using namespace cl;

std::string trim_build_log(const std::string& log) {
  std::string t = trim(log);
  std::string out;
  out.reserve(std::min(t.size(), kMaxBuildLogBytes));
  for (size_t i = 0; i < t.size() && i < kMaxBuildLogBytes; ++i) {
    char c = t[i];
    out += (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? c : '?';
  }
  if (t.size() > kMaxBuildLogBytes) {
    out += "\n... (" + u(t.size() - kMaxBuildLogBytes) + " more bytes of build log)";
  }
  return out;
}

std::string kernels_with_errors(const std::string& log, const std::string& source) {
  std::vector<std::pair<size_t, std::string>> kernels;  // (line, name)
  size_t line = 1;
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      continue;
    }
    bool start = i == 0 || !(std::isalnum(static_cast<unsigned char>(source[i - 1])) ||
                             source[i - 1] == '_');
    size_t kw = source.compare(i, 8, "__kernel") == 0 ? 8
                : source.compare(i, 6, "kernel") == 0 ? 6 : 0;
    if (!start || kw == 0) continue;
    size_t paren = source.find('(', i);
    if (paren == std::string::npos || paren - i > 400) continue;
    size_t end = paren;
    while (end > i && std::isspace(static_cast<unsigned char>(source[end - 1]))) --end;
    size_t begin = end;
    while (begin > i && (std::isalnum(static_cast<unsigned char>(source[begin - 1])) ||
                         source[begin - 1] == '_')) {
      --begin;
    }
    if (begin < end && begin > i + kw) kernels.emplace_back(line, source.substr(begin, end - begin));
    i += kw - 1;
  }
  std::string found;
  std::istringstream in(log);
  for (std::string l; std::getline(in, l);) {
    if (l.find("error") == std::string::npos) continue;
    // The first ":N:M:" in the line.
    for (size_t c = l.find(':'); c != std::string::npos; c = l.find(':', c + 1)) {
      size_t a = c + 1, b = a;
      while (b < l.size() && std::isdigit(static_cast<unsigned char>(l[b]))) ++b;
      if (b == a || b >= l.size() || l[b] != ':') continue;
      size_t d = b + 1, e = d;
      while (e < l.size() && std::isdigit(static_cast<unsigned char>(l[e]))) ++e;
      if (e == d || e - a > 12) continue;
      size_t err_line = std::stoul(l.substr(a, b - a));
      std::string name;
      for (const auto& k : kernels) {
        if (k.first <= err_line) name = k.second;
      }
      std::string item = (name.empty() ? std::string("outside any kernel") : "'" + name + "'") +
                         " (line " + std::to_string(err_line) + ")";
      if (found.find(item) == std::string::npos) found += (found.empty() ? "" : ", ") + item;
      break;
    }
    if (found.size() > 500) break;
  }
  return found;
}

std::string build_log(const Api& a, cl_program p, cl_device_id d) {
  size_t size = 0;
  if (a.GetProgramBuildInfo(p, d, CL_PROGRAM_BUILD_LOG, 0, nullptr, &size) != CL_SUCCESS ||
      size == 0 || size > (16u << 20)) {
    return "";
  }
  std::string s(size, '\0');
  if (a.GetProgramBuildInfo(p, d, CL_PROGRAM_BUILD_LOG, size, s.data(), nullptr) != CL_SUCCESS) {
    return "";
  }
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

std::vector<uint8_t> program_cache_read(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return {};
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 48 ||
      uint64_t(st.st_size) > kMaxCachedBinaryBytes + 48) {
    return {};
  }
  std::vector<uint8_t> file(size_t(st.st_size));
  if (!read_file_into(path, file.data(), file.size(), "cached program binary").ok()) return {};
  uint64_t size = 0;
  std::memcpy(&size, file.data() + 8, 8);
  if (std::memcmp(file.data(), kCacheMagic, 8) != 0 || size != file.size() - 48) return {};
  std::string want(reinterpret_cast<const char*>(file.data() + 16), 32);
  Sha256 h;
  h.update(file.data() + 48, size_t(size));
  auto got = h.finish();
  if (std::memcmp(got.data(), want.data(), 32) != 0) return {};
  return std::vector<uint8_t>(file.begin() + 48, file.end());
}

Status program_cache_write(const std::string& dir, const std::string& key,
                           const std::vector<uint8_t>& binary) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create program cache " + dir, errno);
  }
  // Unique per process and call: two loads of the same bundle may race to write one key.
  static std::atomic<uint64_t> counter{0};
  std::string tmp = dir + "/.tmp-" + key + "-" + std::to_string(::getpid()) + "-" +
                    std::to_string(counter.fetch_add(1));
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoError("cannot create " + tmp, errno);
  std::vector<uint8_t> out(48 + binary.size());
  std::memcpy(out.data(), kCacheMagic, 8);
  uint64_t size = binary.size();
  std::memcpy(out.data() + 8, &size, 8);
  auto digest = [&] {
    Sha256 h;
    h.update(binary.data(), binary.size());
    return h.finish();
  }();
  std::memcpy(out.data() + 16, digest.data(), 32);
  if (!binary.empty()) std::memcpy(out.data() + 48, binary.data(), binary.size());
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::write(fd.get(), out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      return ErrnoError("cannot write " + tmp, e);
    }
    done += size_t(n);
  }
  if (::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), (dir + "/" + key).c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot store program binary " + dir + "/" + key, e);
  }
  return Status::Ok();
}

std::vector<uint8_t> program_binary(const Api& a, cl_program p) {
  size_t size = 0;  // one device
  if (a.GetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, nullptr) != CL_SUCCESS ||
      size == 0 || size > kMaxCachedBinaryBytes) {
    return {};
  }
  std::vector<uint8_t> bin(size);
  unsigned char* ptr = bin.data();
  if (a.GetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof ptr, &ptr, nullptr) != CL_SUCCESS) return {};
  return bin;
}

std::string program_cache_key(const std::string& source_sha, const std::string& platform,
                              const std::string& device, const std::string& device_version,
                              const std::string& driver_version, const std::string& options) {
  Sha256 h;
  const char tag[] = "npas-cl-cache-v1";
  h.update(tag, sizeof tag);
  for (const std::string* part :
       {&source_sha, &platform, &device, &device_version, &driver_version, &options}) {
    uint64_t n = part->size();  // length-prefixed: no two field lists hash the same bytes
    h.update(&n, sizeof n);
    h.update(part->data(), part->size());
  }
  return h.finish_hex();
}

}  // namespace npas
