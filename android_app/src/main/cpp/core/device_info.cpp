// Device probing: /proc/cpuinfo, cpufreq, uname, CPU feature bits.
#include "core/device_info.h"

#include <dirent.h>
#include <elf.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>
#include <thread>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include "core/os_util.h"

namespace npas {
namespace {

// The value of the first "key : value" line in /proc/cpuinfo whose key is `key`.
std::string cpuinfo_field(const std::string& cpuinfo, const std::string& key) {
  std::istringstream in(cpuinfo);
  std::string line;
  while (std::getline(in, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    if (trim(line.substr(0, colon)) == key) return trim(line.substr(colon + 1));
  }
  return "";
}

uint64_t read_u64_file(const std::string& path) {
  auto s = read_small_file(path, 64);
  if (!s) return 0;
  try {
    return std::stoull(trim(*s));
  } catch (...) {
    return 0;
  }
}

std::vector<std::string> cpu_features() {
  std::vector<std::string> out;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) out.push_back("sse4_2");
  if (__builtin_cpu_supports("avx")) out.push_back("avx");
  if (__builtin_cpu_supports("avx2")) out.push_back("avx2");
  if (__builtin_cpu_supports("fma")) out.push_back("fma");
  if (__builtin_cpu_supports("avx512f")) out.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) out.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) out.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512vnni")) out.push_back("avx512vnni");
#elif defined(__aarch64__)
  unsigned long hw = getauxval(AT_HWCAP);
  // Bits from the kernel's arch/arm64/include/uapi/asm/hwcap.h, spelled out so old headers work.
  if (hw & (1ul << 1)) out.push_back("asimd");
  if (hw & (1ul << 9)) out.push_back("fphp");
  if (hw & (1ul << 10)) out.push_back("asimdhp");
  if (hw & (1ul << 20)) out.push_back("asimddp");
#endif
  return out;
}

std::string cpu_model() {
  std::string info = read_small_file("/proc/cpuinfo", 4 << 20).value_or("");
  for (const char* key : {"model name", "Hardware", "Processor"}) {
    std::string v = cpuinfo_field(info, key);
    if (!v.empty()) return v;
  }
  std::string part = cpuinfo_field(info, "CPU part");
  if (!part.empty()) {
    std::string impl = cpuinfo_field(info, "CPU implementer");
    return "CPU implementer " + impl + " part " + part;
  }
  return "unknown";
}

}  // namespace

uint16_t runner_elf_machine() {
#if defined(__x86_64__)
  return EM_X86_64;
#elif defined(__aarch64__)
  return EM_AARCH64;
#else
#error "npas runner: unsupported architecture (x86_64 and aarch64 only)"
#endif
}

std::string elf_machine_name(uint16_t machine) {
  switch (machine) {
    case EM_X86_64: return "x86_64";
    case EM_AARCH64: return "aarch64";
    case EM_386: return "i386";
    case EM_ARM: return "arm";
    case 243: return "riscv";  // EM_RISCV
    default: return "e_machine " + std::to_string(machine);
  }
}

std::vector<CpuCoreInfo> probe_cores() {
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  long conf = sysconf(_SC_NPROCESSORS_CONF);
  if (conf > long(n)) n = unsigned(conf);
  std::vector<CpuCoreInfo> cores(n);
  uint64_t top = 0;
  for (unsigned i = 0; i < n; ++i) {
    cores[i].id = i;
    cores[i].max_freq_khz = read_u64_file("/sys/devices/system/cpu/cpu" + std::to_string(i) +
                                          "/cpufreq/cpuinfo_max_freq");
    top = std::max(top, cores[i].max_freq_khz);
  }
  for (auto& c : cores) c.is_big = top == 0 || c.max_freq_khz == top;
  return cores;
}

std::vector<int> big_core_ids(const DeviceInfo& info) {
  std::vector<int> ids;
  for (const auto& c : info.cores) {
    if (c.is_big) ids.push_back(int(c.id));
  }
  return ids;
}

int default_threads(const DeviceInfo& info) {
  const size_t big = big_core_ids(info).size();
  return std::max(1, int(big == 0 ? info.max_threads : big));
}

DeviceInfo probe_device_info() {
  DeviceInfo d;
#if defined(__aarch64__)
  d.abi = "arm64-v8a";
#else
  d.abi = "x86_64";
#endif
#if defined(__ANDROID__)
  d.os = "android";
#else
  d.os = "linux";
#endif
  utsname u{};
  d.machine = uname(&u) == 0 ? u.machine : "unknown";
  d.cpu_model = cpu_model();
  d.cores = probe_cores();
  d.cpu_features = cpu_features();
  d.max_threads = std::max(1u, std::thread::hardware_concurrency());
  probe_opencl(&d);
  return d;
}

const DeviceInfo& device_info() {
  static const DeviceInfo info = probe_device_info();
  return info;
}

Telemetry read_telemetry() {
  Telemetry t;
  t.timestamp_ns = monotonic_ns();
  unsigned n = unsigned(std::max(1L, sysconf(_SC_NPROCESSORS_CONF)));
  for (unsigned i = 0; i < n; ++i) {
    auto s = read_small_file("/sys/devices/system/cpu/cpu" + std::to_string(i) +
                             "/cpufreq/scaling_cur_freq", 64);
    if (!s) continue;
    try {
      t.cores.push_back({i, std::stoull(trim(*s))});
    } catch (...) {
    }
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir("/sys/class/thermal"), ::closedir);
  if (dir) {
    std::vector<std::string> zones;
    while (dirent* e = ::readdir(dir.get())) {
      std::string name = e->d_name;
      if (name.rfind("thermal_zone", 0) == 0) zones.push_back(name);
    }
    // thermal_zone2 before thermal_zone10.
    std::sort(zones.begin(), zones.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    for (const auto& z : zones) {
      std::string base = "/sys/class/thermal/" + z;
      auto type = read_small_file(base + "/type", 256);
      auto temp = read_small_file(base + "/temp", 64);
      if (!temp) continue;
      try {
        t.thermal.push_back({type ? trim(*type) : z, std::stoll(trim(*temp))});
      } catch (...) {
      }
    }
  }
  return t;
}

}  // namespace npas
