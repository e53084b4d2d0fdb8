// What this device is: ABI, CPU model, cores (from sysfs: core/sysfs.h), CPU features, OpenCL
// platforms (probed through dlopen, never linked), plus live telemetry (frequencies, thermal).
// What a probe could not read is listed in `missing`, and the rest still works.
#ifndef NPAS_CORE_DEVICE_INFO_H
#define NPAS_CORE_DEVICE_INFO_H

#include <cstdint>
#include <string>
#include <vector>

namespace npas {

struct CpuCoreInfo {
  uint32_t id = 0;
  uint64_t max_freq_khz = 0;  // 0 when the OS does not expose it
  bool is_big = true;         // online, in the cluster with the highest max frequency
  uint32_t capacity = 0;      // the scheduler's cpu_capacity (arm64); 0 unknown
  uint32_t cluster = 0;       // frequency domain: its first CPU
  bool online = true;
};

struct OpenClDeviceInfo {
  std::string name, vendor, version, driver_version;
  std::vector<std::string> extensions;
  uint32_t compute_units = 0;
  uint64_t global_mem_bytes = 0;
};

struct OpenClPlatformInfo {
  std::string name, vendor, version;
  std::vector<OpenClDeviceInfo> devices;
};

struct DeviceInfo {
  std::string abi;      // "x86_64", "arm64-v8a"
  std::string machine;  // uname -m
  std::string os;       // "linux", "android"
  std::string cpu_model;
  std::vector<CpuCoreInfo> cores;
  std::vector<std::string> cpu_features;
  std::vector<OpenClPlatformInfo> opencl_platforms;
  std::string opencl_status;
  uint32_t max_threads = 1;
  std::vector<std::string> missing;  // what the probes could not read, and why
};

// Probed once per process (OpenCL probing can be slow) and cached.
const DeviceInfo& device_info();

// Uncached probes, for tests and for the cache above.
DeviceInfo probe_device_info();
std::vector<CpuCoreInfo> probe_cores(std::vector<std::string>* missing);
// Marks the big cores: online, with the highest max frequency (else the highest capacity);
// all online cores when neither is known.
void mark_big_cores(std::vector<CpuCoreInfo>* cores);
// True when this process runs on Android, whatever libc it was built with (a static glibc
// runner on a phone): bionic, or Android's system partition and /data/local/tmp.
bool running_on_android();
void probe_opencl(DeviceInfo* info);

// The ids of the big cores (all cores when frequencies are unknown or all equal).
std::vector<int> big_core_ids(const DeviceInfo& info);

// The threads a model gets when the client asks for 0: one per big core (all cores when
// frequencies are unknown), at least 1. Reported as DeviceInfo.default_threads.
int default_threads(const DeviceInfo& info);

struct CoreFrequency {
  uint32_t id = 0;
  uint64_t cur_freq_khz = 0;
};

struct ThermalZone {
  std::string name;
  int64_t temp_millicelsius = 0;
};

struct Telemetry {
  uint64_t timestamp_ns = 0;  // CLOCK_MONOTONIC
  std::vector<CoreFrequency> cores;
  std::vector<ThermalZone> thermal;
  std::vector<std::string> missing;  // "cpu4 scaling_cur_freq: Permission denied", ...
};

// Reads sysfs now (the cores device_info() knows, every thermal zone); absent files are
// skipped, unreadable ones named in `missing`.
Telemetry read_telemetry();

// e_machine of this build: EM_X86_64 or EM_AARCH64 (and its name, "x86_64" / "aarch64").
uint16_t runner_elf_machine();
std::string elf_machine_name(uint16_t machine);

}  // namespace npas

#endif  // NPAS_CORE_DEVICE_INFO_H
