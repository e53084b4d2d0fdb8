// The artifact store: a directory of files named by the lowercase sha256 of their content.
// A file appears under its name only when complete and verified (temp file, fsync, rename) and
// is read-only (0444), which Android requires before dlopen.
#ifndef NPAS_CORE_ARTIFACT_STORE_H
#define NPAS_CORE_ARTIFACT_STORE_H

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "core/os_util.h"
#include "core/sha256.h"
#include "core/status.h"

namespace npas {

struct StoreLimits {
  uint64_t max_artifact_bytes = 1ull << 30;  // VGG16 in float32 is 553 MB
  uint64_t max_store_bytes = 4ull << 30;
};

class ArtifactStore;

// One upload in progress. Dropping it without finish() removes the temporary file and gives
// back the reserved space.
class ArtifactWriter {
 public:
  ~ArtifactWriter();
  ArtifactWriter(const ArtifactWriter&) = delete;
  ArtifactWriter& operator=(const ArtifactWriter&) = delete;

  // InvalidArgument when more bytes arrive than the header declared.
  Status append(const void* data, size_t size);
  // DataLoss when the size or the sha256 differ from the header; then nothing is stored.
  Status finish();
  uint64_t received() const { return received_; }
  // The artifact was already in the store: the bytes are checked but not written.
  bool already_present() const { return discard_; }

 private:
  friend class ArtifactStore;
  ArtifactWriter(ArtifactStore* store, std::string sha, uint64_t size, bool discard);

  ArtifactStore* store_;
  std::string sha_;
  uint64_t size_;
  bool discard_;
  bool done_ = false;
  uint64_t received_ = 0;
  Sha256 hash_;
  UniqueFd fd_;
  std::string temp_path_;
};

class ArtifactStore {
 public:
  // Creates `dir` when missing, removes stale temp files, and counts the bytes stored.
  static StatusOr<std::unique_ptr<ArtifactStore>> open(const std::string& dir,
                                                       const StoreLimits& limits);

  const StoreLimits& limits() const { return limits_; }
  const std::string& dir() const { return dir_; }
  // `sha` must be valid (is_valid_sha256_hex); every public call checks it.
  bool has(const std::string& sha) const;
  // The size of a stored artifact; NotFound when absent.
  StatusOr<uint64_t> size_of(const std::string& sha) const;
  std::string path_of(const std::string& sha) const { return dir_ + "/" + sha; }
  uint64_t used_bytes() const;

  // Starts an upload. InvalidArgument for a malformed sha, ResourceExhausted over a limit.
  // When the artifact is present already the writer only checks the bytes.
  StatusOr<std::unique_ptr<ArtifactWriter>> begin_write(const std::string& sha, uint64_t size);

 private:
  friend class ArtifactWriter;
  ArtifactStore(std::string dir, const StoreLimits& limits) : dir_(std::move(dir)), limits_(limits) {}
  void release_reservation(uint64_t size);
  // Moves a finished temp file into place (or drops it when another upload won the race).
  Status commit(const std::string& temp_path, const std::string& sha, uint64_t size);

  std::string dir_;
  StoreLimits limits_;
  mutable std::mutex mu_;
  uint64_t used_ = 0;      // bytes in complete artifacts
  uint64_t reserved_ = 0;  // bytes promised to uploads in progress
};

}  // namespace npas

#endif  // NPAS_CORE_ARTIFACT_STORE_H
