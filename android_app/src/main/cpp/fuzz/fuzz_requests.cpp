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
#include "tests/two_step_model.h"

namespace pb = ::npas::runner::v1;

namespace {

struct World {
  std::unique_ptr<npas::RunnerService> service;
  std::string handle;
  pb::Manifest manifest;
};

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
    const std::string ksha = npas_test::put(*store.value(), lib);
    const std::string wsha = npas_test::put(*store.value(), weights);
    out->manifest = npas_test::two_step(ksha, lib.size(), wsha, weights.size());
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
