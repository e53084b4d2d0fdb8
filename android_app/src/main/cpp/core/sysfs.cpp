// sysfs probes: CPU lists, frequencies, capacities, frequency domains, MIDRs; telemetry reads.
#include "core/sysfs.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/os_util.h"
#include "core/status.h"

namespace npas {
namespace {

std::string& root_storage() {
  static std::string root = "/sys";
  return root;
}

bool parse_u64(const std::string& text, uint64_t* out) {
  std::string t = trim(text);
  if (t.empty() || t.size() > 20) return false;
  int base = 10;
  size_t at = 0;
  if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) {
    base = 16;
    at = 2;
  }
  uint64_t v = 0;
  for (; at < t.size(); ++at) {
    char c = t[at];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : base == 16 && c >= 'a' && c <= 'f' ? c - 'a' + 10
            : base == 16 && c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
    if (d < 0) return false;
    if (v > (UINT64_MAX - uint64_t(d)) / uint64_t(base)) return false;
    v = v * uint64_t(base) + uint64_t(d);
  }
  *out = v;
  return true;
}

// A number from a CPU's sysfs file; absent and unreadable files give false (the latter
// noted in *missing), so does a file whose content is not a number.
bool cpu_number(uint32_t cpu, const std::string& file, uint64_t* out,
                std::vector<std::string>* missing) {
  std::string text;
  std::string path = sysfs_root() + "/devices/system/cpu/cpu" + std::to_string(cpu) + "/" + file;
  if (!read_sysfs_value(path, "cpu" + std::to_string(cpu) + " " + file, &text, missing)) {
    return false;
  }
  if (!parse_u64(text, out)) {
    missing->push_back("cpu" + std::to_string(cpu) + " " + file + ": not a number ('" +
                       clip(trim(text), 40) + "')");
    return false;
  }
  return true;
}

std::string part_name(uint32_t midr) {
  const uint32_t impl = midr >> 24, part = (midr >> 4) & 0xFFFu;
  static const std::map<uint32_t, const char*> kArm = {
      {0xd03, "Cortex-A53"}, {0xd04, "Cortex-A35"}, {0xd05, "Cortex-A55"},
      {0xd07, "Cortex-A57"}, {0xd08, "Cortex-A72"}, {0xd09, "Cortex-A73"},
      {0xd0a, "Cortex-A75"}, {0xd0b, "Cortex-A76"}, {0xd0c, "Neoverse-N1"},
      {0xd0d, "Cortex-A77"}, {0xd40, "Neoverse-V1"}, {0xd41, "Cortex-A78"},
      {0xd44, "Cortex-X1"},  {0xd46, "Cortex-A510"}, {0xd47, "Cortex-A710"},
      {0xd48, "Cortex-X2"},  {0xd49, "Neoverse-N2"}, {0xd4d, "Cortex-A715"},
      {0xd4e, "Cortex-X3"},  {0xd80, "Cortex-A520"}, {0xd81, "Cortex-A720"},
      {0xd82, "Cortex-X4"}};
  static const std::map<uint32_t, const char*> kQualcomm = {
      {0x802, "Kryo 385 Gold"}, {0x803, "Kryo 385 Silver"}, {0x804, "Kryo 485 Gold"},
      {0x805, "Kryo 485 Silver"}};
  static const std::map<uint32_t, const char*> kSamsung = {
      {0x001, "Exynos M1"}, {0x002, "Exynos M3"}, {0x003, "Exynos M4"}, {0x004, "Exynos M5"}};
  const std::map<uint32_t, const char*>* table =
      impl == 0x41 ? &kArm : impl == 0x51 ? &kQualcomm : impl == 0x53 ? &kSamsung : nullptr;
  if (table) {
    auto it = table->find(part);
    if (it != table->end()) return it->second;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "implementer 0x%02x part 0x%03x", unsigned(impl),
                unsigned(part));
  return buf;
}

}  // namespace

void set_sysfs_root(const std::string& root) { root_storage() = root; }
const std::string& sysfs_root() { return root_storage(); }

bool read_sysfs_value(const std::string& path, const std::string& what, std::string* value,
                      std::vector<std::string>* missing) {
  int err = 0;
  auto text = read_small_file(path, 4096, &err);
  if (text) {
    *value = *text;
    return true;
  }
  if (err != ENOENT && err != ENOTDIR) missing->push_back(what + ": " + std::strerror(err));
  return false;
}

bool parse_cpu_list(const std::string& text, std::vector<uint32_t>* out) {
  std::vector<uint32_t> ids;
  std::string t = trim(text);
  if (t.empty()) {
    out->clear();
    return true;  // an empty list ("online" with every CPU off is not a thing, but valid)
  }
  size_t at = 0;
  while (at <= t.size()) {
    size_t comma = t.find(',', at);
    std::string item = t.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    size_t dash = item.find('-');
    uint64_t lo = 0, hi = 0;
    if (!parse_u64(item.substr(0, dash), &lo)) return false;
    hi = lo;
    if (dash != std::string::npos && !parse_u64(item.substr(dash + 1), &hi)) return false;
    if (hi < lo || hi >= 4096 || (!ids.empty() && lo <= ids.back())) return false;
    for (uint64_t c = lo; c <= hi; ++c) ids.push_back(uint32_t(c));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  *out = std::move(ids);
  return true;
}

SysfsCpus read_sysfs_cpus(unsigned fallback_count) {
  SysfsCpus r;
  const std::string base = sysfs_root() + "/devices/system/cpu/";
  std::vector<uint32_t> ids, online;
  bool have_ids = false;
  for (const char* list : {"possible", "present"}) {
    std::string text;
    if (!read_sysfs_value(base + list, std::string("cpu ") + list, &text, &r.missing)) continue;
    if (parse_cpu_list(text, &ids) && !ids.empty()) {
      have_ids = true;
      break;
    }
    r.missing.push_back(std::string("cpu ") + list + ": not a CPU list ('" +
                        clip(trim(text), 40) + "')");
  }
  if (!have_ids) {
    ids.clear();
    for (unsigned i = 0; i < fallback_count; ++i) ids.push_back(i);
  }
  std::string text;
  const bool have_online = read_sysfs_value(base + "online", "cpu online", &text, &r.missing) &&
                           parse_cpu_list(text, &online);
  for (uint32_t id : ids) {
    SysfsCpu c;
    c.id = id;
    c.cluster = id;
    if (have_online) {
      c.online = false;
      for (uint32_t o : online) c.online = c.online || o == id;
    }
    uint64_t v = 0;
    if (cpu_number(id, "cpufreq/cpuinfo_max_freq", &v, &r.missing) ||
        cpu_number(id, "cpufreq/scaling_max_freq", &v, &r.missing)) {
      c.max_freq_khz = v;
    }
    if (cpu_number(id, "cpu_capacity", &v, &r.missing)) c.capacity = uint32_t(v);
    std::vector<uint32_t> domain;
    if (read_sysfs_value(base + "cpu" + std::to_string(id) + "/cpufreq/related_cpus",
                         "cpu" + std::to_string(id) + " cpufreq/related_cpus", &text,
                         &r.missing) &&
        parse_cpu_list(text, &domain) && !domain.empty()) {
      c.cluster = domain.front();
    }
    if (cpu_number(id, "regs/identification/midr_el1", &v, &r.missing)) c.midr = uint32_t(v);
    r.cpus.push_back(c);
  }
  return r;
}

std::string describe_cpus(const std::vector<SysfsCpu>& cpus) {
  // Clusters in order of first appearance, then printed biggest (highest frequency) first.
  struct Group {
    std::string name;
    unsigned count = 0;
    uint64_t freq = 0;
  };
  std::vector<Group> groups;
  for (const SysfsCpu& c : cpus) {
    if (c.midr == 0) continue;
    std::string name = part_name(c.midr);
    bool found = false;
    for (Group& g : groups) {
      if (g.name == name) {
        ++g.count;
        g.freq = std::max(g.freq, c.max_freq_khz);
        found = true;
      }
    }
    if (!found) groups.push_back({name, 1, c.max_freq_khz});
  }
  std::stable_sort(groups.begin(), groups.end(),
                   [](const Group& a, const Group& b) { return a.freq > b.freq; });
  std::string out;
  for (const Group& g : groups) {
    out += (out.empty() ? "" : " + ") + std::to_string(g.count) + "x " + g.name;
  }
  return out;
}

}  // namespace npas
