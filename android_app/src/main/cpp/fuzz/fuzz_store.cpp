// libFuzzer target: the artifact store's index and eviction. A store directory is filled with
// the fuzzer's files (well-named and corrupt artifacts, junk names, stale temp files), opened
// (the index: what it counts, what it cleans up), then driven with has / pin / unpin /
// note_wanted / verify / uploads that force eviction. Invariants: a pinned artifact is never
// evicted; a verified artifact hashes to its name; a corrupt one never verifies; no temp file
// survives; what the store counts never exceeds its limit after an upload succeeded.
#include <fcntl.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/artifact_store.h"
#include "core/sha256.h"
#include "fuzz/fuzz_common.h"

namespace {

void write_file(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  (void)!::write(fd, bytes.data(), bytes.size());
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = npas_fuzz::scratch_dir("store");
  FuzzedDataProvider in(data, size);
  npas_fuzz::empty_dir(dir);
  std::vector<std::string> names;  // artifacts the directory starts with
  // what the file of each name holds now: true when its content hashes to its name. Two
  // generated files can share a name (the same content, one of them corrupted): the last
  // written is what is on disk.
  std::map<std::string, bool> good;
  const int files = in.ConsumeIntegralInRange<int>(0, 12);
  for (int i = 0; i < files; ++i) {
    std::string content = in.ConsumeRandomLengthString(2000);
    std::string name = npas::Sha256::hex(content.data(), content.size());
    bool ok = true;
    switch (in.ConsumeIntegralInRange<int>(0, 4)) {
      case 1: content += "!"; ok = false; break;          // corrupt: content != name
      case 2: name = in.ConsumeRandomLengthString(70); ok = false; break;  // junk name
      case 3: name = ".upload-" + name.substr(0, 16) + "-x"; ok = false; break;  // stale temp
      default: break;
    }
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      continue;
    }
    write_file(dir + "/" + name, content);
    if (npas::is_valid_sha256_hex(name)) {
      names.push_back(name);
      good[name] = ok;
    }
  }
  npas::StoreLimits limits;
  limits.max_artifact_bytes = 4096;
  limits.max_store_bytes = 1 + in.ConsumeIntegralInRange<uint64_t>(0, 20000);
  auto opened = npas::ArtifactStore::open(dir, limits);
  FUZZ_CHECK(opened.ok());
  npas::ArtifactStore& store = *opened.value();
  FUZZ_CHECK(npas_fuzz::count_temp_files(dir) == 0);  // open() removed the stale ones

  std::vector<std::unique_ptr<npas::ArtifactPins>> pins;
  auto pick = [&]() -> std::string {
    if (names.empty() || in.ConsumeBool()) return in.ConsumeRandomLengthString(70);
    return names[in.ConsumeIntegralInRange<size_t>(0, names.size() - 1)];
  };
  for (int op = 0; op < 48 && in.remaining_bytes() > 0; ++op) {
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: (void)store.has(pick()); break;
      case 1: pins.push_back(store.pin({pick(), pick()})); break;
      case 2: if (!pins.empty()) pins.erase(pins.begin()); break;
      case 3: store.note_wanted({pick(), pick(), pick()}); break;
      case 4: {
        std::string sha = pick();
        npas::Status s = store.verify(sha);
        auto g = good.find(sha);
        if (g != good.end() && !g->second) FUZZ_CHECK(!s.ok());
        if (s.ok()) {
          FUZZ_CHECK(npas::is_valid_sha256_hex(sha));
          FUZZ_CHECK(store.has(sha));
        }
        break;
      }
      default: {  // an upload that needs room
        std::string content = in.ConsumeRandomLengthString(4096);
        std::string sha = npas::Sha256::hex(content.data(), content.size());
        std::vector<std::string> pinned;
        for (const auto& p : pins) {
          for (const auto& s : p->shas()) {
            if (store.has(s)) pinned.push_back(s);
          }
        }
        auto w = store.begin_write(sha, content.size());
        if (!w.ok()) break;
        npas::Status s = w.value()->append(content.data(), content.size());
        if (s.ok()) s = w.value()->finish();
        if (s.ok() && !w.value()->already_present()) {
          good[sha] = true;  // a finished upload replaced whatever file had that name
          FUZZ_CHECK(store.has(sha));
          FUZZ_CHECK(store.used_bytes() <= limits.max_store_bytes);
        }
        for (const auto& p : pinned) FUZZ_CHECK(store.has(p));  // never evicted
        break;
      }
    }
  }
  pins.clear();
  FUZZ_CHECK(npas_fuzz::count_temp_files(dir) == 0);
  return 0;
}
