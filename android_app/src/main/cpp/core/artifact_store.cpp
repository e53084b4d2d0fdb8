// Content-addressed artifact store.
#include "core/artifact_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace npas {
namespace {

constexpr const char* kTempPrefix = ".upload-";

// An upload's temp file is named .upload-p<PID>-<sha prefix>-XXXXXX, so that a runner opening
// a store another live runner shares (two local runners, a device pool on one host) leaves
// that runner's uploads in flight alone. Stale: a temp of another name, of this process (a
// store reopened in the same process starts over), or of a process that no longer exists.
bool temp_is_stale(const std::string& name) {
  const size_t at = std::strlen(kTempPrefix);
  if (name.size() <= at + 1 || name[at] != 'p') return true;
  long long pid = 0;
  size_t i = at + 1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && i < at + 11; ++i) {
    pid = pid * 10 + (name[i] - '0');
  }
  if (i == at + 1 || i >= name.size() || name[i] != '-' || pid <= 0 || pid > 0x7fffffffLL) {
    return true;
  }
  if (pid_t(pid) == ::getpid()) return true;
  return ::kill(pid_t(pid), 0) != 0 && errno == ESRCH;  // EPERM: it exists (another user)
}

Status make_dirs(const std::string& dir) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoError("cannot create store directory " + partial, errno);
    }
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return ErrnoError("store directory " + dir, errno);
  if (!S_ISDIR(st.st_mode)) return FailedPrecondition("store path " + dir + " is not a directory");
  return Status::Ok();
}

Status write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write " + path, errno);
    }
    p += n;
    size -= size_t(n);
  }
  return Status::Ok();
}

int64_t mtime_ns(const struct stat& st) {
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + int64_t(st.st_mtim.tv_nsec);
}

struct OldFile {
  int64_t stamp;
  std::string name;
  uint64_t size;
  bool operator<(const OldFile& o) const {
    return stamp != o.stamp ? stamp < o.stamp : name < o.name;
  }
};

}  // namespace

void trim_cache_dir(const std::string& dir, uint64_t max_bytes) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return;
  std::vector<OldFile> files;
  uint64_t total = 0;
  while (dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;  // ., .., temp files being written
    struct stat st {};
    if (::stat((dir + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    files.push_back({mtime_ns(st), name, uint64_t(st.st_size)});
    total += uint64_t(st.st_size);
  }
  if (total <= max_bytes) return;
  std::sort(files.begin(), files.end());
  for (const OldFile& f : files) {
    if (total <= max_bytes) break;
    if (::unlink((dir + "/" + f.name).c_str()) != 0 && errno != ENOENT) continue;
    total -= f.size;
    std::fprintf(stderr, "npas-runner: program cache over %llu bytes: evicted %s (%llu bytes)\n",
                 (unsigned long long)max_bytes, f.name.c_str(), (unsigned long long)f.size);
  }
}

ArtifactPins::~ArtifactPins() { store_->unpin(shas_); }

StatusOr<std::unique_ptr<ArtifactStore>> ArtifactStore::open(const std::string& dir,
                                                             const StoreLimits& limits) {
  if (dir.empty()) return InvalidArgument("artifact store directory is empty");
  NPAS_RETURN_IF_ERROR(make_dirs(dir));
  std::unique_ptr<ArtifactStore> store(new ArtifactStore(dir, limits));  // private ctor
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return ErrnoError("cannot list store directory " + dir, errno);
  std::vector<std::string> stale;
  while (dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name.rfind(kTempPrefix, 0) == 0) {
      if (temp_is_stale(name)) stale.push_back(name);
      continue;
    }
    if (!is_valid_sha256_hex(name)) continue;
    struct stat st {};
    if (::stat(store->path_of(name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      store->used_ += uint64_t(st.st_size);
    }
  }
  for (const auto& name : stale) ::unlink((dir + "/" + name).c_str());
  if (store->used_ > limits.max_store_bytes) {
    // Started with a lower --max-store-bytes than the files take: back under it now, least
    // recently used first (nothing is pinned yet), not only when an upload needs room (found
    // by fuzz_store: a zero-byte upload left a store over its limit).
    std::lock_guard<std::mutex> lock(store->mu_);
    NPAS_RETURN_IF_ERROR(store->make_room_locked("the store's limit at start", 0, true));
  }
  return store;
}

bool ArtifactStore::has(const std::string& sha) const {
  if (!is_valid_sha256_hex(sha)) return false;
  struct stat st {};
  if (::stat(path_of(sha).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  touch(sha);
  return true;
}

void ArtifactStore::touch(const std::string& sha) const {
  // A touch changes ctime: keep the file's verified record only when it matched just before.
  std::lock_guard<std::mutex> vlock(verified_mu_);
  bool was_good = false;
  auto it = verified_.find(sha);
  if (it != verified_.end()) {
    struct stat st {};
    was_good = ::stat(path_of(sha).c_str(), &st) == 0 && file_id(st) == it->second;
    if (!was_good) verified_.erase(it);
  }
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  int64_t stamp = int64_t(now.tv_sec) * 1000000000 + int64_t(now.tv_nsec);
  {
    // Strictly increasing, so uses within one clock tick still order.
    std::lock_guard<std::mutex> lock(stamp_mu_);
    if (stamp <= last_stamp_ns_) stamp = last_stamp_ns_ + 1;
    last_stamp_ns_ = stamp;
  }
  struct timespec times[2];
  times[0].tv_sec = time_t(stamp / 1000000000);
  times[0].tv_nsec = long(stamp % 1000000000);
  times[1] = times[0];
  ::utimensat(AT_FDCWD, path_of(sha).c_str(), times, 0);  // best effort
  if (was_good) remember_verified_locked(sha);
}

ArtifactStore::FileId ArtifactStore::file_id(const struct stat& st) {
  FileId id;
  id.dev = uint64_t(st.st_dev);
  id.ino = uint64_t(st.st_ino);
  id.size = uint64_t(st.st_size);
  id.mtime_ns = mtime_ns(st);
  id.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + int64_t(st.st_ctim.tv_nsec);
  return id;
}

void ArtifactStore::remember_verified_locked(const std::string& sha) const {
  struct stat st {};
  if (::stat(path_of(sha).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    verified_[sha] = file_id(st);
  } else {
    verified_.erase(sha);
  }
}

Status ArtifactStore::verify(const std::string& sha) {
  if (!is_valid_sha256_hex(sha)) {
    return InvalidArgument("sha256 '" + clip(sha) + "' is not 64 lowercase hex characters");
  }
  const std::string path = path_of(sha);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return NotFound("artifact " + sha + " is not in the store; upload it");
    return ErrnoError("cannot open artifact " + sha, errno);
  }
  struct stat before {};
  if (::fstat(fd.get(), &before) != 0) return ErrnoError("cannot stat artifact " + sha, errno);
  const FileId id = file_id(before);
  {
    std::lock_guard<std::mutex> vlock(verified_mu_);
    auto it = verified_.find(sha);
    if (it != verified_.end() && it->second == id) return Status::Ok();
  }
  // Hashed without a lock: other calls go on meanwhile.
  Sha256 hash;
  // Sized to the file (at most 1 MiB): most artifacts are small, and a fresh 1 MiB buffer per
  // call was most of a small artifact's verification time (zeroing and page faults).
  std::vector<uint8_t> buf(size_t(std::clamp<uint64_t>(id.size + 1, 4096, 1 << 20)));
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read artifact " + sha, errno);
    }
    if (n == 0) break;
    hash.update(buf.data(), size_t(n));
  }
  const std::string got = hash.finish_hex();
  struct stat after {};
  const bool unchanged = ::fstat(fd.get(), &after) == 0 && file_id(after) == id;
  if (got == sha) {
    std::lock_guard<std::mutex> vlock(verified_mu_);
    if (unchanged) verified_[sha] = id;  // a file changed while hashed is hashed next time
    return Status::Ok();
  }
  {
    // Delete it unless the name meanwhile holds another file (a fresh upload).
    std::lock_guard<std::mutex> lock(mu_);
    std::lock_guard<std::mutex> vlock(verified_mu_);
    verified_.erase(sha);
    struct stat now {};
    if (::stat(path.c_str(), &now) == 0 && uint64_t(now.st_dev) == id.dev &&
        uint64_t(now.st_ino) == id.ino && ::unlink(path.c_str()) == 0) {
      used_ = used_ > id.size ? used_ - id.size : 0;
    }
  }
  std::fprintf(stderr,
               "npas-runner: artifact %s was corrupted in the store (its content hashes to %s, "
               "%llu bytes); removed it\n",
               sha.c_str(), got.c_str(), (unsigned long long)id.size);
  return NotFound("artifact " + sha + " was corrupted in the store (its content hashes to " +
                  got + ") and has been removed; upload it again");
}

void ArtifactStore::note_wanted(const std::vector<std::string>& shas) {
  if (shas.size() < 2 || shas.size() > kMaxWantedSetSize) return;  // nothing to keep together
  WantedSet w{monotonic_ns(), shas};
  std::sort(w.shas.begin(), w.shas.end());
  w.shas.erase(std::unique(w.shas.begin(), w.shas.end()), w.shas.end());
  std::lock_guard<std::mutex> lock(mu_);
  wanted_.push_back(std::move(w));
  if (wanted_.size() > kMaxWantedSets) wanted_.erase(wanted_.begin());
}

std::unique_ptr<ArtifactPins> ArtifactStore::pin(const std::vector<std::string>& shas) {
  std::vector<std::string> valid;
  for (const auto& sha : shas) {
    if (is_valid_sha256_hex(sha)) valid.push_back(sha);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& sha : valid) ++pins_[sha];
  }
  for (const auto& sha : valid) touch(sha);
  return std::unique_ptr<ArtifactPins>(new ArtifactPins(this, std::move(valid)));
}

void ArtifactStore::unpin(const std::vector<std::string>& shas) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& sha : shas) {
    auto it = pins_.find(sha);
    if (it != pins_.end() && --it->second <= 0) pins_.erase(it);
  }
}

bool ArtifactStore::pinned(const std::string& sha) const {
  std::lock_guard<std::mutex> lock(mu_);
  return pins_.count(sha) != 0;
}

Status ArtifactStore::make_room_locked(const std::string& sha, uint64_t size, bool evict) {
  const uint64_t limit = limits_.max_store_bytes;
  if (used_ + reserved_ + size <= limit) return Status::Ok();
  // The other artifacts of the bundles `sha` was asked for with, recently.
  const uint64_t now = monotonic_ns();
  std::vector<std::string> siblings;
  for (const WantedSet& w : wanted_) {
    if (now - w.at_ns > kWantedTtlNs) continue;
    if (!std::binary_search(w.shas.begin(), w.shas.end(), sha)) continue;
    siblings.insert(siblings.end(), w.shas.begin(), w.shas.end());
  }
  std::sort(siblings.begin(), siblings.end());
  std::vector<OldFile> candidates;
  uint64_t evictable = 0, pinned_bytes = 0, sibling_bytes = 0;
  {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir_.c_str()), ::closedir);
    if (!d) return ErrnoError("cannot list store directory " + dir_, errno);
    while (dirent* e = ::readdir(d.get())) {
      std::string name = e->d_name;
      if (!is_valid_sha256_hex(name)) continue;
      struct stat st {};
      if (::stat(path_of(name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      if (pins_.count(name)) {
        pinned_bytes += uint64_t(st.st_size);
        continue;
      }
      if (std::binary_search(siblings.begin(), siblings.end(), name)) {
        sibling_bytes += uint64_t(st.st_size);
        continue;
      }
      candidates.push_back({mtime_ns(st), name, uint64_t(st.st_size)});
      evictable += uint64_t(st.st_size);
    }
  }
  used_ = pinned_bytes + sibling_bytes + evictable;  // resync (commits hold mu_ too)
  if (pinned_bytes + sibling_bytes + reserved_ + size > limit) {
    std::string bundle =
        sibling_bytes == 0
            ? ""
            : ", " + std::to_string(sibling_bytes) +
                  " are other artifacts of the bundle being uploaded with it (asked for "
                  "together; evicting them would leave a bundle that never loads)";
    return ResourceExhausted(
        "artifact store " + dir_ + " is full: " + std::to_string(used_) + " bytes stored (" +
        std::to_string(pinned_bytes) + " pinned by loaded models" + bundle +
        ", the rest evictable), " + std::to_string(reserved_) + " in uploads, limit " +
        std::to_string(limit) + "; cannot take " + std::to_string(size) + " more for " + sha +
        " even after evicting every other artifact (unload models, raise --max-store-bytes, "
        "or clear " + dir_ + ")");
  }
  if (!evict) return Status::Ok();
  std::sort(candidates.begin(), candidates.end());
  for (const OldFile& c : candidates) {
    if (used_ + reserved_ + size <= limit) break;
    if (::unlink(path_of(c.name).c_str()) != 0 && errno != ENOENT) {
      int err = errno;
      return ErrnoError("cannot evict " + path_of(c.name), err);
    }
    used_ = used_ > c.size ? used_ - c.size : 0;
    {
      std::lock_guard<std::mutex> vlock(verified_mu_);
      verified_.erase(c.name);
    }
    std::fprintf(stderr,
                 "npas-runner: artifact store over %llu bytes: evicted least recently used %s "
                 "(%llu bytes) for %s\n",
                 (unsigned long long)limit, c.name.c_str(), (unsigned long long)c.size,
                 sha.c_str());
  }
  return Status::Ok();
}

Status ArtifactStore::grow_reservation(const std::string& sha, uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  NPAS_RETURN_IF_ERROR(make_room_locked(sha, size, true));
  reserved_ += size;
  return Status::Ok();
}

StatusOr<uint64_t> ArtifactStore::size_of(const std::string& sha) const {
  if (!is_valid_sha256_hex(sha)) {
    return InvalidArgument("sha256 '" + sha + "' is not 64 lowercase hex characters");
  }
  struct stat st {};
  if (::stat(path_of(sha).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return NotFound("artifact " + sha + " is not in the store; upload it first");
  }
  return uint64_t(st.st_size);
}

uint64_t ArtifactStore::used_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

StatusOr<std::unique_ptr<ArtifactWriter>> ArtifactStore::begin_write(const std::string& sha,
                                                                      uint64_t size) {
  if (!is_valid_sha256_hex(sha)) {
    return InvalidArgument("sha256 '" + clip(sha) +
                           "' is not 64 lowercase hex characters");
  }
  if (size > limits_.max_artifact_bytes) {
    return ResourceExhausted("artifact " + sha + " has " + std::to_string(size) +
                             " bytes, over the runner's limit of " +
                             std::to_string(limits_.max_artifact_bytes) +
                             " (--max-artifact-bytes)");
  }
  if (has(sha)) {
    return std::unique_ptr<ArtifactWriter>(new ArtifactWriter(this, sha, size, true));
  }
  {
    // Whether it could fit; the room itself is made as the data arrives (append).
    std::lock_guard<std::mutex> lock(mu_);
    NPAS_RETURN_IF_ERROR(make_room_locked(sha, size, false));
  }
  std::unique_ptr<ArtifactWriter> w(new ArtifactWriter(this, sha, size, false));
  std::string tmpl = dir_ + "/" + kTempPrefix + "p" + std::to_string(::getpid()) + "-" +
                     sha.substr(0, 16) + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkstemp(buf.data());
  if (fd < 0) return ErrnoError("cannot create a temp file in " + dir_, errno);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  w->fd_ = UniqueFd(fd);
  w->temp_path_ = buf.data();
  return w;
}

void ArtifactStore::release_reservation(uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  reserved_ -= size;
}

Status ArtifactStore::commit(const std::string& temp_path, const std::string& sha,
                             uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  reserved_ -= size;
  if (has(sha)) {  // a concurrent upload of the same bytes finished first
    ::unlink(temp_path.c_str());
    return Status::Ok();
  }
  if (::rename(temp_path.c_str(), path_of(sha).c_str()) != 0) {
    int err = errno;
    ::unlink(temp_path.c_str());
    return ErrnoError("cannot move the upload into place as " + path_of(sha), err);
  }
  used_ += size;
  touch(sha);
  {
    // Its bytes were hashed on the way in: good until the file changes.
    std::lock_guard<std::mutex> vlock(verified_mu_);
    remember_verified_locked(sha);
  }
  // Make the rename durable too.
  UniqueFd dfd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.valid()) ::fsync(dfd.get());
  return Status::Ok();
}

ArtifactWriter::ArtifactWriter(ArtifactStore* store, std::string sha, uint64_t size,
                               bool discard)
    : store_(store), sha_(std::move(sha)), size_(size), discard_(discard) {}

ArtifactWriter::~ArtifactWriter() {
  if (done_ || discard_) return;
  fd_.reset();
  // The reservation first: once the temp file is gone, its space is free for the next upload
  // (a client that sees the file gone and uploads again must not find it still reserved).
  store_->release_reservation(room_);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

Status ArtifactWriter::append(const void* data, size_t size) {
  if (done_) return Internal("append after finish for artifact " + sha_);
  if (size > size_ - received_) {
    return DataLoss("artifact " + sha_ + ": more data than the " +
                           std::to_string(size_) + " bytes the header declared (got at least " +
                           std::to_string(received_ + size) + ")");
  }
  if (!discard_ && received_ + size > room_) {
    const uint64_t want = std::min<uint64_t>(
        size_ - room_, std::max<uint64_t>(received_ + size - room_, ArtifactStore::kRoomStep));
    NPAS_RETURN_IF_ERROR(store_->grow_reservation(sha_, want));
    room_ += want;
  }
  hash_.update(data, size);
  received_ += size;
  if (discard_) return Status::Ok();
  return write_all(fd_.get(), data, size, temp_path_);
}

Status ArtifactWriter::finish() {
  if (done_) return Internal("finish called twice for artifact " + sha_);
  if (received_ != size_) {
    return DataLoss("artifact " + sha_ + ": the header declared " + std::to_string(size_) +
                    " bytes, the stream ended after " + std::to_string(received_));
  }
  std::string got = hash_.finish_hex();
  if (got != sha_) {
    return DataLoss("artifact upload: the data's sha256 is " + got + ", the header said " +
                    sha_ + "; the upload was corrupted or the header is wrong");
  }
  if (discard_) {
    done_ = true;
    return Status::Ok();
  }
  if (::fsync(fd_.get()) != 0) return ErrnoError("fsync " + temp_path_, errno);
  if (::fchmod(fd_.get(), 0444) != 0) return ErrnoError("chmod 0444 " + temp_path_, errno);
  fd_.reset();
  done_ = true;  // commit() takes over the temp file and the reservation
  return store_->commit(temp_path_, sha_, size_);
}

}  // namespace npas
