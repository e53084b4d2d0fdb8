// libFuzzer target: artifact uploads as chunk sequences against a real store on disk (tiny
// limits): declared sizes and hashes that lie or not, chunks that split, overshoot or stop
// short, uploads dropped half way, several at once. After each input: every finished upload is
// stored under its hash with exactly its bytes, nothing else appeared, no temp file is left,
// and the store's byte count matches its files and stays within its limit.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/stat.h>

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

const std::string& dir() {
  static const std::string d = npas_fuzz::scratch_dir("upload");
  return d;
}

std::string file_bytes(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    std::fclose(f);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  npas_fuzz::empty_dir(dir());
  npas::StoreLimits limits;
  limits.max_artifact_bytes = 1 + in.ConsumeIntegralInRange<uint64_t>(0, 4096);
  limits.max_store_bytes = 1 + in.ConsumeIntegralInRange<uint64_t>(0, 8192);
  auto opened = npas::ArtifactStore::open(dir(), limits);
  FUZZ_CHECK(opened.ok());
  npas::ArtifactStore& store = *opened.value();

  struct Upload {
    std::unique_ptr<npas::ArtifactWriter> w;
    std::string content;  // what the client means to send
    std::string sent;     // what it sent
  };
  std::vector<Upload> open_uploads;
  std::map<std::string, std::string> stored;  // sha -> bytes of finished uploads
  for (int op = 0; op < 64 && in.remaining_bytes() > 0; ++op) {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: {  // header: a sha of the content, another sha, or garbage; size true or not
        Upload u;
        u.content = in.ConsumeRandomLengthString(6000);
        std::string sha = npas::Sha256::hex(u.content.data(), u.content.size());
        const int lie = in.ConsumeIntegralInRange<int>(0, 3);
        if (lie == 1) sha[in.ConsumeIntegralInRange<size_t>(0, 63)] ^= 1;
        if (lie == 2) sha = in.ConsumeRandomLengthString(80);
        uint64_t declared = u.content.size();
        if (in.ConsumeBool()) declared = in.ConsumeIntegralInRange<uint64_t>(0, 1ull << 40);
        auto w = store.begin_write(sha, declared);
        if (!w.ok()) break;
        u.w = std::move(w).value();
        open_uploads.push_back(std::move(u));
        break;
      }
      case 1: {  // a chunk of an open upload (its bytes, or extra ones past its end)
        if (open_uploads.empty()) break;
        Upload& u = open_uploads[in.ConsumeIntegralInRange<size_t>(0, open_uploads.size() - 1)];
        size_t n = in.ConsumeIntegralInRange<size_t>(0, 3000);
        std::string chunk = u.content.substr(std::min(u.sent.size(), u.content.size()), n);
        if (in.ConsumeBool() && chunk.size() < n) chunk += std::string(n - chunk.size(), 'x');
        npas::Status s = u.w->append(chunk.data(), chunk.size());
        if (s.ok()) u.sent += chunk;
        break;
      }
      case 2: {  // finish an open upload
        if (open_uploads.empty()) break;
        size_t i = in.ConsumeIntegralInRange<size_t>(0, open_uploads.size() - 1);
        Upload& u = open_uploads[i];
        npas::Status s = u.w->finish();
        if (s.ok()) {
          const std::string sha = npas::Sha256::hex(u.sent.data(), u.sent.size());
          FUZZ_CHECK(store.has(sha) || u.w->already_present());
          stored[sha] = u.sent;
        }
        open_uploads.erase(open_uploads.begin() + long(i));
        break;
      }
      default: {  // the client goes away
        if (!open_uploads.empty()) open_uploads.pop_back();
        break;
      }
    }
  }
  open_uploads.clear();
  FUZZ_CHECK(npas_fuzz::count_temp_files(dir()) == 0);
  // What is stored hashes to its name, and the count matches the files.
  uint64_t on_disk = 0;
  for (const auto& [sha, bytes] : stored) {
    if (!store.has(sha)) continue;  // evicted by a later upload
    FUZZ_CHECK(file_bytes(store.path_of(sha)) == bytes);
    FUZZ_CHECK(store.verify(sha).ok());
    on_disk += bytes.size();
  }
  FUZZ_CHECK(store.used_bytes() <= limits.max_store_bytes);
  FUZZ_CHECK(on_disk <= limits.max_store_bytes);
  return 0;
}
