// Concurrent service calls without the transport: 8 threads call the service's own code for
// every RPC (RunnerService::missing_artifacts, upload_artifact, load_model, run, benchmark,
// unload_model) on one store and one registry: shared and private models, uploads of the same
// and of different artifacts, loads past the memory budget. Built into build/tsan by
// scripts/sanitize.sh tsan, where ThreadSanitizer sees all of it (gRPC's own threads, not
// instrumented in Debian's build, are left out on purpose: their hand-offs read as races).
// Every call must end OK or with its expected refusal; exit status 0 when all did.
//
//   npas_service_stress KERNEL_LIB STORE_DIR [ITERATIONS]
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "core/artifact_store.h"
#include "service/runner_service.h"
#include "tests/two_step_model.h"

namespace {

std::atomic<int> g_failures{0};

void expect(const grpc::Status& s, bool ok_expected, const char* what) {
  if (s.ok() != ok_expected) {
    std::fprintf(stderr, "%s: %s (%d: %s)\n", what, ok_expected ? "failed" : "succeeded",
                 int(s.error_code()), s.error_message().c_str());
    ++g_failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s KERNEL_LIB STORE_DIR [ITERATIONS]\n", argv[0]);
    return 2;
  }
  const int iterations = argc > 3 ? std::atoi(argv[3]) : 200;
  std::ifstream f(argv[1], std::ios::binary);
  std::string lib((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  TWO_STEP_CHECK(!lib.empty());
  npas::StoreLimits limits;
  limits.max_store_bytes = 1 << 20;
  auto store = npas::ArtifactStore::open(argv[2], limits);
  TWO_STEP_CHECK(store.ok());
  std::string weights(37 * 4, '\0');
  const std::string ksha = npas_test::put(*store.value(), lib);
  const std::string wsha = npas_test::put(*store.value(), weights);
  const npas_test::pb::Manifest manifest = npas_test::two_step(ksha, lib.size(), wsha,
                                                               weights.size());
  // Room for about 6 of these models at once (each ~850 bytes: weights, arena, 2 x scratch):
  // 8 threads loading run into the budget.
  npas::RunnerService service("token", std::move(store).value(), npas::ManifestLimits{}, 16,
                              6 * 1024, 1);
  namespace pb = npas_test::pb;
  pb::LoadModelRequest load;
  *load.mutable_manifest() = manifest;
  load.set_threads(2);
  pb::LoadModelResponse shared;
  expect(service.load_model(&load, &shared), true, "shared LoadModel");

  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < iterations; ++i) {
        pb::MissingArtifactsRequest mreq;
        mreq.add_sha256(ksha);
        mreq.add_sha256(wsha);
        pb::MissingArtifactsResponse mresp;
        expect(service.missing_artifacts(&mreq, &mresp), true, "MissingArtifacts");
        // An upload: the same bytes from every thread every 4th time, else this thread's own.
        std::string bytes = i % 4 == 0 ? std::string(3000, 'x')
                                       : std::string(1000 + size_t(t), char('a' + i % 20));
        std::vector<pb::UploadChunk> chunks(3);
        chunks[0].mutable_header()->set_kind(pb::WEIGHTS);
        chunks[0].mutable_header()->set_size(bytes.size());
        chunks[0].mutable_header()->set_sha256(npas::Sha256::hex(bytes.data(), bytes.size()));
        chunks[1].set_data(bytes.substr(0, 500));
        chunks[2].set_data(bytes.substr(500));
        size_t next = 0;
        auto read = [&](pb::UploadChunk* c) {
          if (next == chunks.size()) return false;
          *c = chunks[next++];
          return true;
        };
        pb::UploadResponse uresp;
        expect(service.upload_artifact(read, [] { return false; }, &uresp), true, "Upload");
        // A private model, run once, unloaded (or refused by the memory budget).
        pb::LoadModelResponse own;
        grpc::Status ls = service.load_model(&load, &own);
        if (!ls.ok() && ls.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
          expect(ls, true, "own LoadModel");
        }
        const std::string& handle = ls.ok() && i % 2 ? own.handle() : shared.handle();
        pb::RunRequest rreq;
        rreq.set_handle(handle);
        auto* x = rreq.add_inputs();
        x->set_name("x");
        x->add_shape(1);
        x->add_shape(37);
        x->set_dtype("float32");
        x->set_data(std::string(37 * 4, '\0'));
        pb::RunResponse rresp;
        expect(service.run(&rreq, &rresp), true, "Run");
        pb::BenchmarkRequest breq;
        breq.set_handle(shared.handle());
        breq.set_runs(2);
        breq.set_warmup(1);
        breq.set_per_layer(i % 3 == 0);
        pb::BenchmarkResponse bresp;
        expect(service.benchmark(nullptr, &breq, &bresp), true, "Benchmark");
        if (ls.ok()) {
          pb::UnloadModelRequest un;
          un.set_handle(own.handle());
          expect(service.unload_model(&un), true, "UnloadModel");
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  pb::UnloadModelRequest un;
  un.set_handle(shared.handle());
  expect(service.unload_model(&un), true, "shared UnloadModel");
  std::printf("%d threads x %d iterations of every call: %d failures\n", 8, iterations,
              g_failures.load());
  return g_failures.load() == 0 ? 0 : 1;
}
