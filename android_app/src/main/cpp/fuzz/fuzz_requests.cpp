// libFuzzer target: every RPC's request message decoded from the fuzzer's bytes and handed to
// the service's own code for that call (RunnerService::missing_artifacts, upload_artifact,
// load_model, run, benchmark, unload_model: what the RPCs run once the token checked out). The
// first byte picks the call. The service has a real store holding the core tests' kernel
// library and weights, and one model loaded from them at start: Run and Benchmark requests
// get that model's handle (a fuzzer cannot guess 128 random bits), so their inputs and
// options go through the real checks and the kernels run. Models a LoadModel manages to load
// are unloaded at once, never run: a manifest whose work ranges disagree with its kernels is
// the kernels' contract, which the runner cannot check (issue 19, bug 3). Benchmark requests
// are held to a few runs without pauses or timed warm-up, so one input stays fast.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "core/artifact_store.h"
#include "core/sha256.h"
#include "fuzz/fuzz_common.h"
#include "npas/runner/v1/runner.pb.h"
#include "service/runner_service.h"

namespace pb = ::npas::runner::v1;

namespace {

struct World {
  std::unique_ptr<npas::RunnerService> service;
  std::string handle;
  pb::Manifest manifest;
};

std::string put(npas::ArtifactStore& store, const std::string& bytes) {
  std::string sha = npas::Sha256::hex(bytes.data(), bytes.size());
  auto w = store.begin_write(sha, bytes.size());
  FUZZ_CHECK(w.ok());
  FUZZ_CHECK(w.value()->append(bytes.data(), bytes.size()).ok());
  FUZZ_CHECK(w.value()->finish().ok());
  return sha;
}

// The core tests' two-step model: y = 2 * (x + w) over 37 floats, k_add1 then k_double_scratch.
pb::Manifest two_step(const std::string& ksha, uint64_t ksize, const std::string& wsha,
                      uint64_t wsize) {
  const int64_t n = 37;
  const uint64_t nb = n * 4, slot = (nb + 63) / 64 * 64;
  pb::Manifest m;
  m.set_format_version(1);
  m.set_kernel_abi_version(1);
  m.set_name("two_step");
  m.mutable_target()->set_arch("x86_64");
  auto* k = m.add_artifacts();
  k->set_role("kernels");
  k->set_kind(pb::KERNEL_LIBRARY);
  k->set_sha256(ksha);
  k->set_size(ksize);
  auto* w = m.add_artifacts();
  w->set_role("weights");
  w->set_kind(pb::WEIGHTS);
  w->set_sha256(wsha);
  w->set_size(wsize);
  const char* names[] = {"x", "h", "y"};
  for (int i = 0; i < 3; ++i) {
    auto* t = m.add_tensors();
    t->set_name(names[i]);
    t->add_shape(1);
    t->add_shape(n);
    t->set_dtype("float32");
    t->set_arena_offset(uint64_t(i) * slot);
    t->set_nbytes(nb);
  }
  m.add_inputs(0);
  m.add_outputs(2);
  m.set_arena_bytes(3 * slot);
  m.set_scratch_bytes_per_thread(16);
  auto* s1 = m.add_steps();
  s1->set_name("add");
  s1->set_op("add");
  s1->set_symbol("k_add1");
  s1->add_inputs(0);
  s1->set_output(1);
  auto* p = s1->add_params();
  p->set_offset(0);
  p->set_nbytes(nb);
  s1->set_work_items(n);
  auto* s2 = m.add_steps();
  s2->set_name("double");
  s2->set_op("mul");
  s2->set_symbol("k_double_scratch");
  s2->add_inputs(1);
  s2->set_output(2);
  s2->set_work_items(n);
  return m;
}

World& world() {
  static World* w = [] {
    auto* out = new World;
    const std::string dir = npas_fuzz::scratch_dir("requests");
    npas_fuzz::empty_dir(dir);
    npas::StoreLimits limits;
    limits.max_artifact_bytes = 1 << 20;
    limits.max_store_bytes = 4 << 20;
    auto store = npas::ArtifactStore::open(dir, limits);
    FUZZ_CHECK(store.ok());
    std::ifstream f(NPAS_FUZZ_KERNELS, std::ios::binary);
    std::string lib((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    FUZZ_CHECK(!lib.empty());
    std::string weights(37 * 4, '\0');
    for (size_t i = 0; i < weights.size(); i += 4) weights[i + 3] = 0x3f;  // ~0.5f
    const std::string ksha = put(*store.value(), lib);
    const std::string wsha = put(*store.value(), weights);
    out->manifest = two_step(ksha, lib.size(), wsha, weights.size());
    // 64 MiB for all models: a fuzzed load cannot take the machine's memory.
    out->service = std::make_unique<npas::RunnerService>(
        "token", std::move(store).value(), npas::ManifestLimits{}, 4, 64ull << 20, 0);
    pb::LoadModelRequest req;
    *req.mutable_manifest() = out->manifest;
    req.set_threads(2);
    pb::LoadModelResponse resp;
    grpc::Status s = out->service->load_model(&req, &resp);
    if (!s.ok()) std::fprintf(stderr, "fuzz_requests: %s\n", s.error_message().c_str());
    FUZZ_CHECK(s.ok());
    out->handle = resp.handle();
    return out;
  }();
  return *w;
}

void check(const grpc::Status& s) {
  // A clear status, never OK-with-garbage or an unbounded message.
  FUZZ_CHECK(s.ok() || !s.error_message().empty());
  FUZZ_CHECK(s.error_message().size() < 64 * 1024);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  if (size == 0) return 0;
  const uint8_t which = data[0] % 6;
  const uint8_t* body = data + 1;
  const int n = int(size - 1);
  switch (which) {
    case 0: {
      pb::MissingArtifactsRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      pb::MissingArtifactsResponse resp;
      grpc::Status s = w.service->missing_artifacts(&req, &resp);
      check(s);
      if (s.ok()) FUZZ_CHECK(resp.missing_size() <= req.sha256_size());
      break;
    }
    case 1: {  // an upload: length-prefixed UploadChunk messages
      FuzzedDataProvider in(body, size_t(n));
      auto read = [&](pb::UploadChunk* chunk) {
        while (in.remaining_bytes() > 0) {
          std::string msg = in.ConsumeRandomLengthString(8192);
          if (chunk->ParseFromString(msg)) return true;
        }
        return false;
      };
      pb::UploadResponse resp;
      check(w.service->upload_artifact(read, [] { return false; }, &resp));
      break;
    }
    case 2: {
      pb::LoadModelRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      req.set_threads(req.threads() % 4);  // no more than this machine's few cores
      // An artifact without a sha256 gets the stored one of its role, so mutations of the
      // seed's manifest reach the loader past the store lookup.
      for (auto& a : *req.mutable_manifest()->mutable_artifacts()) {
        if (!a.sha256().empty()) continue;
        for (const auto& have : w.manifest.artifacts()) {
          if (have.role() != a.role()) continue;
          a.set_sha256(have.sha256());
          if (a.size() == 0) a.set_size(have.size());
        }
      }
      pb::LoadModelResponse resp;
      grpc::Status s = w.service->load_model(&req, &resp);
      check(s);
      if (s.ok()) {
        pb::UnloadModelRequest un;
        un.set_handle(resp.handle());
        FUZZ_CHECK(w.service->unload_model(&un).ok());
      }
      break;
    }
    case 3: {
      pb::RunRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      req.set_handle(w.handle);
      pb::RunResponse resp;
      grpc::Status s = w.service->run(&req, &resp);
      check(s);
      if (s.ok()) FUZZ_CHECK(resp.outputs_size() == 1 && resp.outputs(0).data().size() == 148);
      break;
    }
    case 4: {
      pb::BenchmarkRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      req.set_handle(w.handle);
      req.set_runs(1 + req.runs() % 3);
      req.set_warmup(req.warmup() % 3);
      req.set_warmup_min_ms(0);
      req.set_pause_us(0);
      pb::BenchmarkResponse resp;
      grpc::Status s = w.service->benchmark(nullptr, &req, &resp);
      check(s);
      if (s.ok()) FUZZ_CHECK(resp.samples_ns_size() == int(req.runs()));
      break;
    }
    default: {
      pb::UnloadModelRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      if (req.handle() == w.handle) return 0;  // the fuzzer's own model stays
      check(w.service->unload_model(&req));
      break;
    }
  }
  return 0;
}
