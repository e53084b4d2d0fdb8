// What the kernel's sysfs says about the CPUs and thermal zones, read the way a phone allows
// it: /sys/devices/system/cpu (possible and online lists, cpufreq limits and current
// frequencies, cpu_capacity, frequency domains, MIDR_EL1), /sys/class/thermal. Not
// /proc/cpuinfo: its model strings differ by kernel and vendor. Absent files are normal (a VM
// has no cpufreq); a file that exists but cannot be read (an SELinux denial on Android) is
// named in `missing` with the reason, and what could be read is still used.
#ifndef NPAS_CORE_SYSFS_H
#define NPAS_CORE_SYSFS_H

#include <cstdint>
#include <string>
#include <vector>

namespace npas {

// The sysfs mount the probes read ("/sys"). Set once, before the first probe (npas-runner
// --sysfs-root: tests feed it a tree of their own).
void set_sysfs_root(const std::string& root);
const std::string& sysfs_root();

// A kernel CPU list ("0-3,6,8-9") in ascending order; false when malformed.
bool parse_cpu_list(const std::string& text, std::vector<uint32_t>* out);

struct SysfsCpu {
  uint32_t id = 0;
  bool online = true;
  uint64_t max_freq_khz = 0;  // cpuinfo_max_freq, else scaling_max_freq; 0 unknown
  uint32_t capacity = 0;      // cpu_capacity (arm64, 1024 for the biggest); 0 unknown
  uint32_t cluster = 0;       // frequency domain: the first CPU of cpufreq/related_cpus
  uint32_t midr = 0;          // regs/identification/midr_el1 (arm64); 0 unknown
};

struct SysfsCpus {
  std::vector<SysfsCpu> cpus;
  std::vector<std::string> missing;
};

// The CPUs in devices/system/cpu/possible (else present, else 0..fallback_count-1).
SysfsCpus read_sysfs_cpus(unsigned fallback_count);

// "1x Cortex-X1 + 3x Cortex-A78 + 4x Cortex-A55" from the CPUs' MIDRs, biggest first;
// empty when no MIDR was readable.
std::string describe_cpus(const std::vector<SysfsCpu>& cpus);

// One sysfs value read for telemetry: true with the text, or false; then `missing` gets
// "<what>: <reason>" unless the file is simply absent.
bool read_sysfs_value(const std::string& path, const std::string& what, std::string* value,
                      std::vector<std::string>* missing);

}  // namespace npas

#endif  // NPAS_CORE_SYSFS_H
