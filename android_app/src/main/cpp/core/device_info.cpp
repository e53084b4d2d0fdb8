// Device probing: sysfs (core/sysfs.h), uname, CPU feature bits; /proc/cpuinfo only for a
// model name where sysfs has no MIDR (x86).
#include "core/device_info.h"

#include <dirent.h>
#include <elf.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include "core/os_util.h"
#include "core/sysfs.h"

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

std::string cpu_model(const std::vector<SysfsCpu>& cpus) {
  std::string from_sysfs = describe_cpus(cpus);
  if (!from_sysfs.empty()) return from_sysfs;
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

namespace {
SysfsCpus sysfs_cpus() {
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  long conf = sysconf(_SC_NPROCESSORS_CONF);
  if (conf > long(n)) n = unsigned(conf);
  return read_sysfs_cpus(n);
}

std::vector<CpuCoreInfo> cores_of(const SysfsCpus& found) {
  std::vector<CpuCoreInfo> cores;
  for (const SysfsCpu& c : found.cpus) {
    CpuCoreInfo info;
    info.id = c.id;
    info.max_freq_khz = c.max_freq_khz;
    info.capacity = c.capacity;
    info.cluster = c.cluster;
    info.online = c.online;
    cores.push_back(info);
  }
  mark_big_cores(&cores);
  return cores;
}
}  // namespace

std::vector<CpuCoreInfo> probe_cores(std::vector<std::string>* missing) {
  SysfsCpus found = sysfs_cpus();
  missing->insert(missing->end(), found.missing.begin(), found.missing.end());
  return cores_of(found);
}

void mark_big_cores(std::vector<CpuCoreInfo>* cores) {
  uint64_t top_freq = 0, top_capacity = 0;
  for (const auto& c : *cores) {
    if (!c.online) continue;
    top_freq = std::max(top_freq, c.max_freq_khz);
    top_capacity = std::max<uint64_t>(top_capacity, c.capacity);
  }
  for (auto& c : *cores) {
    c.is_big = c.online && (top_freq     ? c.max_freq_khz == top_freq
                            : top_capacity ? c.capacity == top_capacity
                                           : true);
  }
}

bool running_on_android() {
#if defined(__ANDROID__)
  return true;
#else
  return ::access("/system/build.prop", F_OK) == 0 && ::access("/data/local/tmp", F_OK) == 0;
#endif
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
  d.os = running_on_android() ? "android" : "linux";
  utsname u{};
  d.machine = uname(&u) == 0 ? u.machine : "unknown";
  SysfsCpus cpus = sysfs_cpus();
  d.missing = cpus.missing;
  d.cores = cores_of(cpus);
  d.cpu_model = cpu_model(cpus.cpus);
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
  const std::string& root = sysfs_root();
  std::string text;
  for (const CpuCoreInfo& c : device_info().cores) {
    const std::string id = std::to_string(c.id);
    if (!read_sysfs_value(root + "/devices/system/cpu/cpu" + id + "/cpufreq/scaling_cur_freq",
                          "cpu" + id + " scaling_cur_freq", &text, &t.missing)) {
      continue;
    }
    try {
      t.cores.push_back({c.id, std::stoull(trim(text))});
    } catch (...) {
      t.missing.push_back("cpu" + id + " scaling_cur_freq: not a number");
    }
  }
  const std::string thermal = root + "/class/thermal";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(thermal.c_str()), ::closedir);
  if (!dir) {
    if (errno != ENOENT) t.missing.push_back(std::string("thermal zones: ") + std::strerror(errno));
    return t;
  }
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
    std::string base = thermal + "/" + z;
    std::string type;
    std::string name = read_sysfs_value(base + "/type", z + " type", &type, &t.missing)
                           ? trim(type) : z;
    std::string who = name == z ? z : z + " (" + name + ")";
    if (!read_sysfs_value(base + "/temp", who + " temp", &text, &t.missing)) continue;
    try {
      t.thermal.push_back({name, std::stoll(trim(text))});
    } catch (...) {
      t.missing.push_back(who + " temp: not a number");
    }
  }
  return t;
}

}  // namespace npas
