// The artifact store: a directory of files named by the lowercase sha256 of their content.
// A file appears under its name only when complete and verified (temp file, fsync, rename) and
// is read-only (0444), which Android requires before dlopen.
//
// Eviction: each artifact's mtime is its last use (set on store, on has(), and when a model
// pins it for loading; it survives restarts). When an upload's data would go over
// max_store_bytes, the least recently used artifacts that no loaded model pins are deleted
// until it fits, as its bytes arrive (a header alone evicts nothing). The artifacts asked for
// together with the one being uploaded (one MissingArtifacts call: a bundle being assembled,
// note_wanted) are kept too, for kWantedTtlNs: evicting them would leave a bundle that never
// loads; when the store cannot hold the whole bundle, the upload is ResourceExhausted.
//
// Verification: before a load uses an artifact, verify() checks its content against its name.
// A file is hashed on its first use in this process and again whenever its (device, inode,
// size, mtime, ctime) differ from when it was last found good; in between, a stat suffices. A
// write through the file system changes ctime (which no user can set back), so a file changed
// since it was verified is hashed again. The store's own touches update the record only when
// the file still matched it just before.
#ifndef NPAS_CORE_ARTIFACT_STORE_H
#define NPAS_CORE_ARTIFACT_STORE_H

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <map>
#include <string>
#include <vector>

#include "core/os_util.h"
#include "core/sha256.h"
#include "core/status.h"

namespace npas {

struct StoreLimits {
  uint64_t max_artifact_bytes = 1ull << 30;  // VGG16 in float32 is 553 MB
  uint64_t max_store_bytes = 4ull << 30;
};

class ArtifactStore;

// Artifacts kept out of eviction while this object lives (a loaded model holds one).
class ArtifactPins {
 public:
  ~ArtifactPins();
  ArtifactPins(const ArtifactPins&) = delete;
  ArtifactPins& operator=(const ArtifactPins&) = delete;
  const std::vector<std::string>& shas() const { return shas_; }

 private:
  friend class ArtifactStore;
  ArtifactPins(ArtifactStore* store, std::vector<std::string> shas)
      : store_(store), shas_(std::move(shas)) {}
  ArtifactStore* store_;
  std::vector<std::string> shas_;
};

// Files of a cache directory (the OpenCL program binaries under <store>/cl-cache) beyond
// max_bytes in all: the least recently modified are deleted (temp files are left alone).
constexpr uint64_t kProgramCacheMaxBytes = 256ull << 20;
void trim_cache_dir(const std::string& dir, uint64_t max_bytes);

// One upload in progress. Dropping it without finish() removes the temporary file and gives
// back the reserved space.
class ArtifactWriter {
 public:
  ~ArtifactWriter();
  ArtifactWriter(const ArtifactWriter&) = delete;
  ArtifactWriter& operator=(const ArtifactWriter&) = delete;

  // DataLoss when more bytes arrive than the header declared (a size mismatch, as in finish).
  Status append(const void* data, size_t size);
  // DataLoss when the size or the sha256 differ from the header; then nothing is stored.
  Status finish();
  uint64_t received() const { return received_; }
  // Store space made for this upload so far (grows with the data, up to the declared size).
  uint64_t room() const { return room_; }
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
  uint64_t room_ = 0;
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
  // A present artifact counts as used now (eviction takes the least recently used first).
  bool has(const std::string& sha) const;
  // The size of a stored artifact; NotFound when absent.
  StatusOr<uint64_t> size_of(const std::string& sha) const;
  std::string path_of(const std::string& sha) const { return dir_ + "/" + sha; }
  uint64_t used_bytes() const;

  // Starts an upload. InvalidArgument for a malformed sha, ResourceExhausted over a limit.
  // When the artifact is present already the writer only checks the bytes. When the store
  // would go over max_store_bytes, unpinned artifacts are evicted, least recently used first
  // (logged to stderr); ResourceExhausted only when even that cannot make room.
  StatusOr<std::unique_ptr<ArtifactWriter>> begin_write(const std::string& sha, uint64_t size);

  // The artifacts of one bundle, asked for together (MissingArtifacts): while one of them is
  // uploaded, the others are not evicted for it (for kWantedTtlNs, or until pinned).
  void note_wanted(const std::vector<std::string>& shas);
  static constexpr uint64_t kWantedTtlNs = 600ull * 1000000000ull;
  static constexpr size_t kMaxWantedSets = 64, kMaxWantedSetSize = 1024;
  // Space an upload claims as its data arrives, in steps of at most this much.
  static constexpr uint64_t kRoomStep = 4ull << 20;

  // Marks the artifacts used now and keeps them from eviction until the result is dropped.
  // Malformed shas are skipped. Pins count: two models may pin one artifact.
  std::unique_ptr<ArtifactPins> pin(const std::vector<std::string>& shas);
  bool pinned(const std::string& sha) const;

  // The stored artifact's content still hashes to `sha` (see Verification above). A mismatch
  // deletes the file, logs it, and is NotFound ("... was corrupted in the store and has been
  // removed; upload it again"), so the host re-uploads it as it does an evicted one; never
  // load a file this refused. NotFound when absent.
  Status verify(const std::string& sha);

 private:
  // What stat() said about a file when its content was last found to match its name.
  struct FileId {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const FileId& o) const {
      return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns &&
             ctime_ns == o.ctime_ns;
    }
  };
  static FileId file_id(const struct stat& st);
  // Under verified_mu_: the record of `sha` now that its file was found good (or dropped).
  void remember_verified_locked(const std::string& sha) const;
  friend class ArtifactWriter;
  ArtifactStore(std::string dir, const StoreLimits& limits) : dir_(std::move(dir)), limits_(limits) {}
  friend class ArtifactPins;
  void release_reservation(uint64_t size);
  void unpin(const std::vector<std::string>& shas);
  // Sets the artifact's mtime to a fresh stamp (strictly increasing within the process).
  void touch(const std::string& sha) const;
  // Under mu_: evicts until `size` more bytes fit, or ResourceExhausted (evicting nothing).
  // With evict false only says whether that could be done.
  Status make_room_locked(const std::string& sha, uint64_t size, bool evict);
  // Makes room for `size` more bytes of an upload in progress and reserves them.
  Status grow_reservation(const std::string& sha, uint64_t size);
  // Moves a finished temp file into place (or drops it when another upload won the race).
  Status commit(const std::string& temp_path, const std::string& sha, uint64_t size);

  std::string dir_;
  StoreLimits limits_;
  mutable std::mutex mu_;
  uint64_t used_ = 0;      // bytes in complete artifacts
  uint64_t reserved_ = 0;  // bytes promised to uploads in progress
  std::map<std::string, int> pins_;
  struct WantedSet {
    uint64_t at_ns;
    std::vector<std::string> shas;  // sorted
  };
  std::vector<WantedSet> wanted_;  // oldest first
  mutable std::mutex stamp_mu_;
  mutable int64_t last_stamp_ns_ = 0;
  mutable std::mutex verified_mu_;  // taken before stamp_mu_, never after
  mutable std::map<std::string, FileId> verified_;
};

}  // namespace npas

#endif  // NPAS_CORE_ARTIFACT_STORE_H
