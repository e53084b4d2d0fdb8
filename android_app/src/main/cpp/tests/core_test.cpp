// Tests of the core without gRPC: sha256 vectors, the store, manifest checks, the thread pool,
// a real kernel library loaded and run, and the OpenCL backend on whatever OpenCL device the
// machine has (PoCL in CI; skipped with a note when there is none).
// Usage: npas_core_test KERNEL_LIB STORE_DIR
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/artifact_store.h"
#include "core/device_info.h"
#include "core/manifest.h"
#include "core/cpu_model.h"
#include "core/gpu_model.h"
#include "core/model.h"
#include "core/model_registry.h"
#include "core/os_util.h"
#include "core/sha256.h"
#include "core/step_check.h"
#include "core/thread_pool.h"

namespace {

int g_failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

#define CHECK_CODE(status, expected_code)                                                  \
  do {                                                                                     \
    npas::Status s_ = (status);                                                            \
    if (s_.code() != (expected_code)) {                                                    \
      std::fprintf(stderr, "%s:%d: expected %s, got %s\n", __FILE__, __LINE__,             \
                   npas::code_name(expected_code), s_.to_string().c_str());                \
      ++g_failures;                                                                        \
    }                                                                                      \
  } while (0)

using namespace npas;

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void test_sha256() {
  CHECK(Sha256::hex("", 0) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(Sha256::hex("abc", 3) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(Sha256::hex(two_blocks.data(), two_blocks.size()) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces to exercise the buffering.
  std::string a(1000000, 'a');
  Sha256 h;
  size_t off = 0, piece = 1;
  while (off < a.size()) {
    size_t n = std::min(piece, a.size() - off);
    h.update(a.data() + off, n);
    off += n;
    piece = piece * 3 % 1021 + 1;
  }
  CHECK(h.finish_hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  CHECK(is_valid_sha256_hex(std::string(64, 'a')));
  CHECK(!is_valid_sha256_hex(std::string(64, 'A')));
  CHECK(!is_valid_sha256_hex(std::string(63, 'a')));
  CHECK(!is_valid_sha256_hex("../../../../etc/passwd"));
}

std::string put(ArtifactStore& store, const std::string& bytes) {
  std::string sha = Sha256::hex(bytes.data(), bytes.size());
  auto w = store.begin_write(sha, bytes.size());
  CHECK(w.ok());
  if (!w.ok()) return sha;
  CHECK(w.value()->append(bytes.data(), bytes.size()).ok());
  CHECK(w.value()->finish().ok());
  return sha;
}

void test_store(const std::string& dir) {
  StoreLimits limits;
  limits.max_artifact_bytes = 1000;
  limits.max_store_bytes = 1500;
  auto st = ArtifactStore::open(dir, limits);
  CHECK(st.ok());
  ArtifactStore& store = *st.value();
  std::string data(600, 'x');
  std::string sha = put(store, data);
  CHECK(store.has(sha));
  struct stat s {};
  CHECK(::stat(store.path_of(sha).c_str(), &s) == 0 && (s.st_mode & 0777) == 0444);
  CHECK(read_file(store.path_of(sha)) == data);
  CHECK(store.used_bytes() == 600);

  // Present already: bytes are checked, nothing is written.
  auto again = store.begin_write(sha, data.size());
  CHECK(again.ok() && again.value()->already_present());
  CHECK(again.value()->append(data.data(), data.size()).ok());
  CHECK(again.value()->finish().ok());
  CHECK(store.used_bytes() == 600);

  // Wrong content -> DataLoss, nothing stored, reservation returned.
  std::string other(500, 'y');
  std::string wrong_sha = Sha256::hex("z", 1);
  auto w = store.begin_write(wrong_sha, other.size());
  CHECK(w.ok());
  CHECK(w.value()->append(other.data(), other.size()).ok());
  CHECK_CODE(w.value()->finish(), Code::kDataLoss);
  w.value().reset();
  CHECK(!store.has(wrong_sha));
  // Short stream -> DataLoss; long stream -> InvalidArgument.
  auto shortw = store.begin_write(Sha256::hex(other.data(), other.size()), other.size());
  CHECK(shortw.value()->append(other.data(), 10).ok());
  CHECK_CODE(shortw.value()->finish(), Code::kDataLoss);
  shortw.value().reset();
  auto longw = store.begin_write(Sha256::hex(other.data(), 10), 10);
  CHECK_CODE(longw.value()->append(other.data(), 11), Code::kDataLoss);
  longw.value().reset();

  CHECK_CODE(store.begin_write(std::string(64, 'b'), 1001).status(), Code::kResourceExhausted);
  {
    auto pins = store.pin({sha});  // else the 600 bytes would be evicted to make room
    CHECK_CODE(store.begin_write(std::string(64, 'b'), 901).status(), Code::kResourceExhausted);
    CHECK(store.begin_write(std::string(64, 'b'), 900).ok());
  }
  CHECK(store.has(sha));
  CHECK_CODE(store.begin_write("../x", 1).status(), Code::kInvalidArgument);
  CHECK(store.used_bytes() == 600);

  // Reopening counts what is there.
  auto reopened = ArtifactStore::open(dir, limits);
  CHECK(reopened.ok() && reopened.value()->used_bytes() == 600);
}

// verify(): a stored artifact is checked against its name; a file changed since it was last
// found good is hashed again (even when its size and mtime are put back); a mismatch deletes
// it. Touches by the store itself keep the record.
void test_store_verify(const std::string& dir) {
  auto st = ArtifactStore::open(dir, StoreLimits{});
  CHECK(st.ok());
  ArtifactStore& store = *st.value();
  std::string sha = put(store, std::string(5000, 'v'));
  CHECK(store.verify(sha).ok());
  CHECK(store.has(sha));  // a touch: must not make the next verify hash or fail
  CHECK(store.verify(sha).ok());
  const std::string path = store.path_of(sha);
  struct stat before {};
  CHECK(::stat(path.c_str(), &before) == 0);
  ::chmod(path.c_str(), 0644);
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    CHECK(fd.valid() && ::pwrite(fd.get(), "w", 1, 2500) == 1);
  }
  struct timespec times[2] = {before.st_mtim, before.st_mtim};
  ::utimensat(AT_FDCWD, path.c_str(), times, 0);  // mtime back: only ctime tells
  Status bad = store.verify(sha);
  CHECK_CODE(bad, Code::kNotFound);
  CHECK(bad.message().find("corrupted") != std::string::npos);
  CHECK(!store.has(sha));
  CHECK(store.used_bytes() == 0);
  CHECK_CODE(store.verify(sha), Code::kNotFound);
  put(store, std::string(5000, 'v'));  // re-uploaded: good again
  CHECK(store.verify(sha).ok());
}

// LRU eviction: room is made by deleting the least recently used unpinned artifacts.
// (present() looks at the file without counting as a use; has() and pin() count.)
void test_store_eviction(const std::string& dir) {
  StoreLimits limits;
  limits.max_artifact_bytes = 1000;
  limits.max_store_bytes = 1000;
  auto st = ArtifactStore::open(dir, limits);
  CHECK(st.ok());
  ArtifactStore& store = *st.value();
  auto present = [](const ArtifactStore& s, const std::string& sha) {
    struct stat buf {};
    return ::stat(s.path_of(sha).c_str(), &buf) == 0;
  };
  std::string a = put(store, std::string(300, 'a'));
  std::string b = put(store, std::string(300, 'b'));
  std::string c = put(store, std::string(300, 'c'));
  CHECK(store.used_bytes() == 900);
  CHECK(store.has(a));  // a is used again: b is now the least recently used
  std::string d = put(store, std::string(300, 'd'));  // c a d
  CHECK(present(store, a) && !present(store, b) && present(store, c) && present(store, d));
  CHECK(store.used_bytes() == 900);

  // A pinned artifact never goes, even when it is the least recently used.
  std::string e, f;
  {
    auto pins = store.pin({c});
    CHECK(store.pinned(c));
    CHECK(store.has(a) && store.has(d));                // c a d
    e = put(store, std::string(300, 'e'));  // c is pinned -> a goes: c d e
    CHECK(!present(store, a) && present(store, c) && present(store, d) && present(store, e));
    f = put(store, std::string(300, 'f'));  // d goes: c e f
    CHECK(present(store, c) && !present(store, d) && present(store, e) && present(store, f));

    // Still too big with every unpinned artifact gone: the error names the pinned bytes and
    // nothing is evicted in vain.
    auto pins2 = store.pin({e});  // c f e
    std::string big(500, 'g');
    auto w = store.begin_write(Sha256::hex(big.data(), big.size()), big.size());
    CHECK_CODE(w.status(), Code::kResourceExhausted);
    CHECK(w.status().message().find("600 pinned by loaded models") != std::string::npos);
    CHECK(present(store, c) && present(store, e) && present(store, f));
  }
  CHECK(!store.pinned(c) && !store.pinned(e));
  std::string big(500, 'g');
  std::string g = put(store, big);  // unpinned now: c and f (the oldest) make room
  CHECK(!present(store, c) && !present(store, f) && present(store, e) && present(store, g));
  CHECK(store.used_bytes() == 800);

  // The last-use times are the files' mtimes: a reopened store evicts in the same order.
  std::string h = put(store, std::string(200, 'h'));  // 1000: full, g e h
  CHECK(store.has(e));                                // g h e
  auto reopened = ArtifactStore::open(dir, limits);
  CHECK(reopened.ok() && reopened.value()->used_bytes() == 1000);
  put(*reopened.value(), std::string(100, 'i'));
  CHECK(!present(store, g) && present(store, e) && present(store, h));

  // The program-binary cache: the oldest files go beyond the cap; temp files are left alone.
  std::string cache = dir + "/cl-cache";
  CHECK(::mkdir(cache.c_str(), 0700) == 0);
  for (int i = 0; i < 4; ++i) {
    std::string p = cache + "/k" + std::to_string(i);
    FILE* fp = std::fopen(p.c_str(), "wb");
    CHECK(fp != nullptr);
    if (fp) {
      std::fputs(std::string(100, 'x').c_str(), fp);
      std::fclose(fp);
    }
    struct timespec t[2] = {{1000 + i, 0}, {1000 + i, 0}};
    CHECK(::utimensat(AT_FDCWD, p.c_str(), t, 0) == 0);
  }
  trim_cache_dir(cache, 250);
  struct stat s {};
  CHECK(::stat((cache + "/k0").c_str(), &s) != 0 && ::stat((cache + "/k1").c_str(), &s) != 0);
  CHECK(::stat((cache + "/k2").c_str(), &s) == 0 && ::stat((cache + "/k3").c_str(), &s) == 0);
}

void test_thread_pool() {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads, {});
    for (int64_t n : {1, 2, 7, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (int rep = 0; rep < 50; ++rep) {
        pool.parallel_for(
            n,
            [](void* ctx, int, int64_t b, int64_t e) {
              auto* h = static_cast<std::vector<std::atomic<int>>*>(ctx);
              for (int64_t i = b; i < e; ++i) (*h)[size_t(i)].fetch_add(1);
            },
            &hits);
      }
      bool all = true;
      for (auto& x : hits) all = all && x.load() == 50;
      CHECK(all);
    }
    // Chunks are claimed, so one worker runs several: its index (its scratch) must still be
    // in range and never in use by two chunks at once.
    struct Use {
      std::vector<std::atomic<int>> busy;
      std::atomic<int> bad{0};
      explicit Use(int t) : busy(size_t(t)) {}
    } use(threads);
    for (int rep = 0; rep < 200; ++rep) {
      pool.parallel_for(
          64,
          [](void* ctx, int worker, int64_t b, int64_t e) {
            auto* u = static_cast<Use*>(ctx);
            if (worker < 0 || size_t(worker) >= u->busy.size() ||
                u->busy[size_t(worker)].fetch_add(1) != 0) {
              u->bad.fetch_add(1);
              return;
            }
            volatile int64_t sink = 0;
            for (int64_t i = b; i < e; ++i) sink = sink + i;
            u->busy[size_t(worker)].fetch_sub(1);
          },
          &use);
    }
    CHECK(use.bad.load() == 0);
  }
}

// A manifest for y = relu-free (x + w) * 2 over n floats, steps: add1 then double_scratch.
Manifest two_step_manifest(const std::string& ksha, uint64_t ksize, const std::string& wsha,
                           uint64_t wsize, int64_t n) {
  Manifest m;
  m.format_version = 2;
  m.kernel_abi_version = 1;
  m.name = "two_step";
  m.artifacts = {{"kernels", ArtifactKind::kKernelLibrary, ksha, ksize},
                 {"weights", ArtifactKind::kWeights, wsha, wsize}};
  m.weights_bytes = wsize;  // no prepare steps: the blob is the weight buffer
  uint64_t nb = uint64_t(n) * 4;
  uint64_t slot = (nb + 63) / 64 * 64;
  m.tensors = {{"x", {1, n}, "float32", 0, nb},
               {"h", {1, n}, "float32", slot, nb},
               {"y", {1, n}, "float32", 2 * slot, nb}};
  m.inputs = {0};
  m.outputs = {2};
  m.arena_bytes = 3 * slot;
  m.scratch_bytes_per_thread = 16;
  Step s1{"add", "add", "k_add1", {0}, 1, {{0, nb}}, uint64_t(n), 0};
  Step s2{"double", "mul", "k_double_scratch", {1}, 2, {}, uint64_t(n), 0};
  m.steps = {s1, s2};
  return m;
}

void test_manifest_checks() {
  std::string k(64, 'a'), w(64, 'b');
  Manifest good = two_step_manifest(k, 100, w, 40, 10);
  ManifestLimits lim;
  CHECK(validate_manifest(good, lim, nullptr).ok());

  Manifest m = good;
  m.format_version = 1;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kFailedPrecondition);
  m = good;
  m.tensors[1].arena_offset = UINT64_MAX - 15;  // offset + nbytes overflows
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.tensors[1].arena_offset = 8;  // misaligned
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.tensors[0].shape = {1, 0};
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.tensors[0].shape = {INT64_MAX, INT64_MAX};
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.tensors[0].nbytes = 44;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[0].params[0].nbytes = 41;  // past the 40-byte blob
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  // Prepare steps (format 2): the buffer built from the blob, each param inside one dst.
  m = good;
  m.weights_bytes = 128;
  m.prepare = {{"add", "", {0, 40}, {64, 40}, 1}};
  m.steps[0].params[0] = {64, 40};
  CHECK(validate_manifest(m, lim, nullptr).ok());
  Manifest p = m;
  p.steps[0].params[0] = {0, 40};  // nothing writes [0, 40)
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kInvalidArgument);
  p = m;
  p.prepare[0].dst.nbytes = 44;  // a copy of unequal sizes
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kInvalidArgument);
  p = m;
  p.prepare.push_back({"add", "k_add1", {0, 40}, {64, 64}, 1});  // overlapping destinations
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kInvalidArgument);
  p = m;
  p.prepare[0].src = {64, 40};  // past the 40-byte blob
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kInvalidArgument);
  p = m;
  p.weights_bytes = lim.max_weights_bytes + 64;
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kResourceExhausted);
  p = good;
  p.weights_bytes = 64;  // no prepare steps: the buffer is the 40-byte blob
  CHECK_CODE(validate_manifest(p, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[0].params[0].offset = UINT64_MAX - 63;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[1].inputs = {3};
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[1].output = 3;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.outputs = {9};
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[1].symbol = "k; rm -rf /";
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.steps[1].work_items = 0;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.artifacts.pop_back();  // params now point into no blob
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.artifacts.push_back(m.artifacts[0]);
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.artifacts[0].sha256 = "../../lib";
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kInvalidArgument);
  m = good;
  m.arena_bytes = lim.max_arena_bytes + 1;
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kResourceExhausted);
  m = good;
  m.steps[0].inputs.assign(65, 0);
  CHECK_CODE(validate_manifest(m, lim, nullptr), Code::kResourceExhausted);
}

void test_model(const std::string& kernel_lib, const std::string& dir) {
  auto st = ArtifactStore::open(dir + "/models", StoreLimits{});
  CHECK(st.ok());
  ArtifactStore& store = *st.value();
  std::string lib = read_file(kernel_lib);
  CHECK(!lib.empty());
  std::string ksha = put(store, lib);
  const int64_t n = 37;
  std::vector<float> wv(n), xv(n);
  for (int64_t i = 0; i < n; ++i) {
    wv[size_t(i)] = float(i);
    xv[size_t(i)] = 0.5f * float(i) - 3.0f;
  }
  std::string wbytes(reinterpret_cast<const char*>(wv.data()), wv.size() * 4);
  std::string wsha = put(store, wbytes);
  Manifest m = two_step_manifest(ksha, lib.size(), wsha, wbytes.size(), n);

  for (int threads : {1, 3, 64}) {  // 64 > work items
    ThreadPlan plan;
    plan.threads = threads;
    auto model = load_cpu_model(m, store, ManifestLimits{}, plan);
    CHECK(model.ok());
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().to_string().c_str());
      continue;
    }
    TensorView x{"x", {1, n}, "float32", xv.data(), xv.size() * 4};
    uint64_t ns = 0;
    CHECK(model.value()->run({x}, &ns).ok());
    const float* y = reinterpret_cast<const float*>(model.value()->output_data(0));
    bool right = true;
    for (int64_t i = 0; i < n; ++i) right = right && y[i] == (xv[size_t(i)] + wv[size_t(i)]) * 2;
    CHECK(right);

    TensorView bad = x;
    bad.shape = {n, 1};
    CHECK_CODE(model.value()->run({bad}, &ns), Code::kInvalidArgument);
    bad = x;
    bad.size -= 4;
    CHECK_CODE(model.value()->run({bad}, &ns), Code::kInvalidArgument);
    CHECK_CODE(model.value()->run({}, &ns), Code::kInvalidArgument);

    BenchmarkOptions opts;
    opts.warmup = 3;
    opts.runs = 20;
    opts.per_layer = true;
    BenchmarkResult r;
    CHECK(model.value()->benchmark(opts, &r).ok());
    CHECK(r.samples_ns.size() == 20 && r.warmup_ns.size() == 3 && r.layer_ns.size() == 2);
    CHECK(r.layer_ns[1].size() == 20);
  }

  ThreadPlan one;
  Manifest missing = m;
  missing.steps[1].symbol = "k_does_not_exist";
  auto r1 = load_cpu_model(missing, store, ManifestLimits{}, one);
  CHECK_CODE(r1.status(), Code::kNotFound);
  CHECK(r1.status().message().find("k_does_not_exist") != std::string::npos);

  Manifest wrong_size = m;
  wrong_size.artifacts[0].size += 1;
  CHECK_CODE(load_cpu_model(wrong_size, store, ManifestLimits{}, one).status(),
             Code::kFailedPrecondition);

  // The same library claiming to be aarch64 (or x86_64 when this runner is arm64).
  std::string foreign = lib;
  uint16_t other = runner_elf_machine() == 62 ? 183 : 62;
  std::memcpy(&foreign[18], &other, 2);
  std::string fsha = put(store, foreign);
  Manifest arm = m;
  arm.artifacts[0] = {"kernels", ArtifactKind::kKernelLibrary, fsha, foreign.size()};
  auto r2 = load_cpu_model(arm, store, ManifestLimits{}, one);
  CHECK_CODE(r2.status(), Code::kFailedPrecondition);
  CHECK(r2.status().message().find("is built for " + elf_machine_name(other) + ", this runner is") !=
        std::string::npos);

  // Registry: cap and handles.
  ModelRegistry reg(1);
  auto a = load_cpu_model(m, store, ManifestLimits{}, one);
  auto h = reg.add(std::move(a).value());
  CHECK(h.ok() && h.value().size() == 32);
  CHECK_CODE(reg.check_room(), Code::kResourceExhausted);
  CHECK(reg.acquire(h.value()).ok());
  CHECK_CODE(reg.acquire("nope").status(), Code::kNotFound);
  CHECK(reg.remove(h.value()).ok());
  CHECK_CODE(reg.remove(h.value()), Code::kNotFound);
}

// y = (x + w) * 2 again, as OpenCL: x at float 0, h at 64, y at 128 (n <= 64).
const char kGpuSource[] =
    "__kernel void g_add(__global float *arena, __global const float *weights) {\n"
    "  size_t i = get_global_id(0);\n"
    "  if (i < N) arena[64 + i] = arena[i] + weights[i];\n"
    "}\n"
    "__kernel void g_double(__global float *arena, __global const float *weights) {\n"
    "  size_t i = get_global_id(0);\n"
    "  if (i < N) arena[128 + i] = 2.0f * arena[64 + i];\n"
    "}\n";

Manifest gpu_manifest(const std::string& ssha, uint64_t ssize, const std::string& wsha,
                      uint64_t wsize, int64_t n) {
  Manifest m;
  m.format_version = 2;
  m.weights_bytes = wsize;
  m.kernel_abi_version = 1;
  m.name = "gpu_two_step";
  m.target = {"opencl", "linux", "opencl", {}};
  m.toolchain = {"opencl", "1.2", {"-DN=" + std::to_string(n), "-cl-std=CL1.2"}};
  m.artifacts = {{"opencl", ArtifactKind::kOpenClSource, ssha, ssize},
                 {"weights", ArtifactKind::kWeights, wsha, wsize}};
  uint64_t nb = uint64_t(n) * 4;
  m.tensors = {{"x", {1, n}, "float32", 0, nb},
               {"h", {1, n}, "float32", 256, nb},
               {"y", {1, n}, "float32", 512, nb}};
  m.inputs = {0};
  m.outputs = {2};
  m.arena_bytes = 768;
  Step s1{"add", "add", "g_add", {0}, 1, {{0, nb}}, 64, 0, 16};
  Step s2{"double", "mul", "g_double", {1}, 2, {}, 64, 0, 0};
  m.steps = {s1, s2};
  return m;
}

void test_gpu_manifest_checks() {
  std::string s(64, 'a'), w(64, 'b');
  Manifest good = gpu_manifest(s, 100, w, 160, 37);
  ManifestLimits lim;
  CHECK(validate_manifest(good, lim, nullptr, Backend::kGpu).ok());
  // An OpenCL bundle on the CPU and a CPU bundle on the GPU.
  CHECK_CODE(validate_manifest(good, lim, nullptr, Backend::kCpu), Code::kFailedPrecondition);
  Manifest m = good;
  m.target.arch = "x86_64";
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kFailedPrecondition);
  // A 2^40 global size passed validation and tripped an assertion in the OpenCL driver.
  m = good;
  m.steps[0].local_size = 0;
  m.steps[0].work_items = 1ull << 40;
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m.steps[0].work_items = lim.max_gpu_work_items;
  CHECK(validate_manifest(m, lim, nullptr, Backend::kGpu).ok());
  m = good;
  m.steps[0].local_size = 7;  // 64 % 7 != 0
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m = good;
  m.toolchain.flags = {"-D X=1"};
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m = good;
  m.toolchain.flags = {"cl-fast-relaxed-math"};
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m = good;
  m.toolchain.flags = {"-D" + std::string(5000, 'x')};
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kResourceExhausted);
  m = good;
  m.artifacts.push_back(m.artifacts[0]);
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m = good;
  m.artifacts.erase(m.artifacts.begin());
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  m = good;
  m.artifacts.push_back({"kernels", ArtifactKind::kKernelLibrary, s, 10});
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  // float16: 2 bytes per element, GPU only.
  m = good;
  for (auto& t : m.tensors) {
    t.dtype = "float16";
    t.nbytes /= 2;
  }
  CHECK(validate_manifest(m, lim, nullptr, Backend::kGpu).ok());
  m.tensors[0].nbytes *= 2;
  CHECK_CODE(validate_manifest(m, lim, nullptr, Backend::kGpu), Code::kInvalidArgument);
  Manifest cpu = two_step_manifest(std::string(64, 'a'), 100, w, 40, 10);
  cpu.tensors[0].dtype = "float16";
  cpu.tensors[0].nbytes = 20;
  CHECK_CODE(validate_manifest(cpu, lim, nullptr), Code::kInvalidArgument);

  CHECK(build_options(good) == "-DN=37 -cl-std=CL1.2");
  std::string k = program_cache_key("s", "p", "d", "v", "drv", "-O");
  CHECK(k.size() == 64 && k == program_cache_key("s", "p", "d", "v", "drv", "-O"));
  CHECK(k != program_cache_key("s", "p", "d", "v", "drv2", "-O"));
  CHECK(program_cache_key("ab", "c", "", "", "", "") != program_cache_key("a", "bc", "", "", "", ""));

  CHECK(float_to_half(0.0f) == 0x0000 && float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(-2.0f) == 0xC000 && float_to_half(65504.0f) == 0x7BFF);
  CHECK(float_to_half(1e6f) == 0x7C00 && float_to_half(5.9604645e-8f) == 0x0001);
  CHECK(float_to_half(1.0f + 1.0f / 2048) == 0x3C00);  // tie -> even
  CHECK(float_to_half(1.0f + 3.0f / 2048) == 0x3C02);
}

void test_gpu_model(const std::string& dir) {
  DeviceInfo probe;
  probe_opencl(&probe);
  size_t devices = 0;
  for (const auto& p : probe.opencl_platforms) devices += p.devices.size();

  auto st = ArtifactStore::open(dir + "/gpu", StoreLimits{});
  CHECK(st.ok());
  ArtifactStore& store = *st.value();
  const int64_t n = 37;
  std::string src = kGpuSource;
  std::string ssha = put(store, src);
  std::vector<float> wv(n), xv(n);
  for (int64_t i = 0; i < n; ++i) {
    wv[size_t(i)] = 0.25f * float(i);
    xv[size_t(i)] = 1.5f - 0.125f * float(i);
  }
  std::string wbytes(reinterpret_cast<const char*>(wv.data()), wv.size() * 4);
  std::string wsha = put(store, wbytes);
  Manifest m = gpu_manifest(ssha, src.size(), wsha, wbytes.size(), n);
  std::string cache = dir + "/gpu/cl-cache";

  auto model = load_gpu_model(m, store, ManifestLimits{}, cache);
  if (devices == 0) {
    std::printf("note: no OpenCL device (%s); GPU load must say so\n",
                probe.opencl_status.c_str());
    CHECK_CODE(model.status(), Code::kFailedPrecondition);
    CHECK(model.status().message().find("no OpenCL device") != std::string::npos);
    return;
  }
  CHECK(model.ok());
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().to_string().c_str());
    return;
  }
  Model& gm = *model.value();
  CHECK(gm.threads() == 1 && gm.backend() == Backend::kGpu);
  TensorView x{"x", {1, n}, "float32", xv.data(), xv.size() * 4};
  uint64_t ns = 0;
  CHECK(gm.run({x}, &ns).ok());
  const float* y = reinterpret_cast<const float*>(gm.output_data(0));
  bool right = true;
  for (int64_t i = 0; i < n; ++i) right = right && y[i] == (xv[size_t(i)] + wv[size_t(i)]) * 2;
  CHECK(right);
  TensorView half_x = x;
  half_x.dtype = "float16";
  CHECK_CODE(gm.run({half_x}, &ns), Code::kInvalidArgument);

  BenchmarkOptions opts;
  opts.warmup = 2;
  opts.runs = 30;
  opts.per_layer = true;
  BenchmarkResult r;
  CHECK(gm.benchmark(opts, &r).ok());
  CHECK(r.samples_ns.size() == 30 && r.warmup_ns.size() == 2 && r.layer_ns.size() == 2);
  bool sums_fit = true;
  for (size_t i = 0; i < 30; ++i) {
    sums_fit = sums_fit && r.layer_ns[0][i] + r.layer_ns[1][i] <= r.samples_ns[i];
  }
  CHECK(sums_fit);

  // The program binary was cached; a second load uses it and computes the same.
  size_t cached = 0;
  if (DIR* d = ::opendir(cache.c_str())) {
    while (dirent* e = ::readdir(d)) cached += is_valid_sha256_hex(e->d_name) ? 1 : 0;
    ::closedir(d);
  }
  CHECK(cached == 1);
  auto again = load_gpu_model(m, store, ManifestLimits{}, cache);
  CHECK(again.ok() && again.value()->run({x}, &ns).ok() &&
        std::memcmp(again.value()->output_data(0), y, size_t(n) * 4) == 0);

  Manifest missing = m;
  missing.steps[1].symbol = "g_nope";
  auto r1 = load_gpu_model(missing, store, ManifestLimits{}, cache);
  CHECK_CODE(r1.status(), Code::kNotFound);
  CHECK(r1.status().message().find("g_nope") != std::string::npos);

  std::string broken = src;
  broken.replace(broken.find("2.0f *"), 6, "2.0f *+*");
  Manifest bad = m;
  bad.artifacts[0] = {"opencl", ArtifactKind::kOpenClSource, put(store, broken), broken.size()};
  auto r2 = load_gpu_model(bad, store, ManifestLimits{}, cache);
  CHECK_CODE(r2.status(), Code::kFailedPrecondition);
  CHECK(r2.status().message().find("'g_double' (line 7)") != std::string::npos);

  Manifest fp16 = m;
  fp16.target.features = {"cl_khr_fp16"};
  bool has_fp16 = false;
  for (const auto& p : probe.opencl_platforms) {
    for (const auto& d : p.devices) {
      for (const auto& e : d.extensions) has_fp16 = has_fp16 || e == "cl_khr_fp16";
    }
  }
  if (!has_fp16) {
    auto r3 = load_gpu_model(fp16, store, ManifestLimits{}, cache);
    CHECK_CODE(r3.status(), Code::kFailedPrecondition);
    CHECK(r3.status().message().find("needs cl_khr_fp16") != std::string::npos);
  }
}

void test_device() {
  const DeviceInfo& d = device_info();
  CHECK(!d.abi.empty() && !d.cores.empty() && d.max_threads >= 1);
  CHECK(!big_core_ids(d).empty());
  CHECK(default_threads(d) == int(big_core_ids(d).size()));
  ThreadRequest any;
  auto dflt = plan_threads(any, d);
  CHECK(dflt.ok() && dflt.value().threads == default_threads(d));
  CHECK(!d.opencl_status.empty());
  ThreadRequest req;
  req.threads = 2;
  req.pin_big_cores = true;
  auto plan = plan_threads(req, d);
  CHECK(plan.ok() && plan.value().threads == 2 && plan.value().affinity.size() == 2);
  req.cpu_affinity = {uint32_t(d.cores.size())};
  CHECK_CODE(plan_threads(req, d).status(), Code::kInvalidArgument);
}

}  // namespace

// The step table (core/step_check.h): its parse, and the manifest checked against it.
void test_step_table() {
  const std::string good =
      "npas-step-table 1\n"
      "k_add1 37 0 148 1 148 1 148\n"
      "k_double_scratch 37 4 148 1 148 0\n"
      "npas_prepare_0 4 0 64 0 1 36\n";
  auto t = parse_step_table(good, "lib");
  CHECK(t.ok());
  CHECK(t.value().size() == 3);
  CHECK(t.value().at("k_double_scratch").scratch_bytes == 4);
  CHECK(t.value().at("k_add1").param_bytes == std::vector<uint64_t>{148});
  for (const char* bad : {"", "npas-step-table 2\n", "npas-step-table 1\nk 1 2\n",
                          "npas-step-table 1\nk 1 0 4 1 4 0 extra\n",
                          "npas-step-table 1\nk 1 0 4 99999999 4 0\n",
                          "npas-step-table 1\nk 1 0 4 0 0\nk 1 0 4 0 0\n",
                          "npas-step-table 1\nk 1 0 -4 0 0\n",
                          "npas-step-table 1\nk 99999999999999999999999 0 4 0 0\n"}) {
    auto r = parse_step_table(bad, "lib");
    CHECK(!r.ok() && r.status().code() == Code::kFailedPrecondition);
  }
  const Manifest m = two_step_manifest(std::string(64, 'a'), 100, std::string(64, 'b'), 192, 37);
  CHECK(check_steps_against_table(m, t.value()).ok());
  auto refused = [&](Manifest bad, const char* field) {
    Status s = check_steps_against_table(bad, t.value());
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find(field) != std::string::npos);
  };
  Manifest more = m;
  more.steps[0].work_items = 38;
  refused(more, "work_items 38 is over the 37");
  Manifest small_out = m;
  small_out.tensors[1].nbytes = 144;
  refused(small_out, "output's nbytes 144 is under the 148");
  Manifest small_param = m;
  small_param.steps[0].params[0].nbytes = 64;
  refused(small_param, "param 0's nbytes 64 is under the 148");
  Manifest two_inputs = m;
  two_inputs.steps[1].inputs = {1, 0};
  refused(two_inputs, "input count 2 is not the 1");
  Manifest no_scratch = m;
  no_scratch.scratch_bytes_per_thread = 0;
  refused(no_scratch, "scratch_bytes_per_thread 0 is under the 4");
  Manifest prep = m;
  prep.prepare = {{"w", "npas_prepare_0", {0, 32}, {0, 64}, 4}};
  refused(prep, "param 0's nbytes 32 is under the 36");
  Manifest unknown = m;
  unknown.steps[0].symbol = "not_in_the_table";  // left to the load's symbol checks
  CHECK(check_steps_against_table(unknown, t.value()).ok());
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s KERNEL_LIB STORE_DIR\n", argv[0]);
    return 2;
  }
  std::string dir = argv[2];
  std::string cmd = "rm -rf '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) return 2;
  test_sha256();
  test_store(dir + "/store");
  test_store_eviction(dir + "/evict");
  test_store_verify(dir + "/verify");
  test_thread_pool();
  test_manifest_checks();
  test_step_table();
  test_model(argv[1], dir);
  test_gpu_manifest_checks();
  test_gpu_model(dir);
  test_device();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all core tests passed\n");
  return 0;
}
