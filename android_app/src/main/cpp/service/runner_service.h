// The gRPC Runner service: authentication, argument checks that belong to the protocol, and
// calls into the core. Nothing else lives here.
#ifndef NPAS_SERVICE_RUNNER_SERVICE_H
#define NPAS_SERVICE_RUNNER_SERVICE_H

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "core/artifact_store.h"
#include "core/manifest.h"
#include "core/model_registry.h"
#include "npas/runner/v1/runner.grpc.pb.h"
#include "service/last_measurement.h"

namespace npas {

constexpr const char* kRunnerVersion = "0.1.0";
constexpr uint32_t kProtocolMajor = 1;
constexpr uint32_t kProtocolMinor = 3;  // 1: GPU backend, Step.local_size, float16;
                                        // 2: DeviceInfo.default_threads; 3: first run,
                                        // warm-up by time, pause, peak RSS, layer symbols,
                                        // Telemetry.missing
constexpr const char* kTokenMetadataKey = "x-npas-token";
// Under the store directory: OpenCL program binaries (not artifacts; the store skips them).
constexpr const char* kProgramCacheDir = "cl-cache";

// The largest request message each RPC reads: its wire size is checked after the token and
// before it is parsed (RESOURCE_EXHAUSTED naming the RPC and the limit). Run and Benchmark
// carry input tensors: for them the server's --max-message-bytes is the bound.
constexpr size_t kMaxTinyRequestBytes = 64 << 10;  // GetDeviceInfo, UnloadModel
// MissingArtifacts: up to 100000 sha256 values of 64 characters and 2 bytes of framing each.
constexpr size_t kMaxMissingArtifactsRequestBytes = 7 << 20;
// UploadArtifact, per message: a header, or a data chunk of at most 1 MiB (the host's
// chunk size) and its framing.
constexpr size_t kMaxUploadChunkBytes = 1 << 20;
constexpr size_t kMaxUploadMessageBytes = kMaxUploadChunkBytes + 1024;
// LoadModel: the manifest (tens of KB for VGG16; 8 MiB is room for thousands of steps).
constexpr size_t kMaxLoadModelRequestBytes = 8 << 20;

class RunnerService final : public ::npas::runner::v1::Runner::Service {
 public:
  using Ctx = grpc::ServerContext;
  RunnerService(std::string token, std::unique_ptr<ArtifactStore> store,
                const ManifestLimits& manifest_limits, size_t max_models,
                uint64_t max_model_bytes = 0, uint32_t upload_idle_timeout_s = 60);
  ~RunnerService() override;

  grpc::Status GetDeviceInfo(Ctx* ctx, const runner::v1::DeviceInfoRequest* req,
                             runner::v1::DeviceInfo* resp) override;
  grpc::Status MissingArtifacts(Ctx* ctx, const runner::v1::MissingArtifactsRequest* req,
                                runner::v1::MissingArtifactsResponse* resp) override;
  // UploadArtifact: served by upload_stream (below), which sees each message's size before
  // parsing it.
  grpc::Status LoadModel(Ctx* ctx, const runner::v1::LoadModelRequest* req,
                         runner::v1::LoadModelResponse* resp) override;
  grpc::Status Run(Ctx* ctx, const runner::v1::RunRequest* req,
                   runner::v1::RunResponse* resp) override;
  grpc::Status Benchmark(Ctx* ctx, const runner::v1::BenchmarkRequest* req,
                         runner::v1::BenchmarkResponse* resp) override;
  grpc::Status UnloadModel(Ctx* ctx, const runner::v1::UnloadModelRequest* req,
                           runner::v1::UnloadModelResponse* resp) override;

  // What each RPC does once the caller is authenticated: the RPCs above call these, and so do
  // the fuzz targets (fuzz/), which feed them requests decoded from their bytes. Exceptions
  // escape (the RPCs turn them into statuses). `ctx` may be null.
  grpc::Status missing_artifacts(const runner::v1::MissingArtifactsRequest* req,
                                 runner::v1::MissingArtifactsResponse* resp);
  grpc::Status upload_artifact(const std::function<bool(runner::v1::UploadChunk*)>& read,
                               const std::function<bool()>& cancelled,
                               runner::v1::UploadResponse* resp);
  grpc::Status load_model(const runner::v1::LoadModelRequest* req,
                          runner::v1::LoadModelResponse* resp);
  grpc::Status run(const runner::v1::RunRequest* req, runner::v1::RunResponse* resp);
  grpc::Status benchmark(Ctx* ctx, const runner::v1::BenchmarkRequest* req,
                         runner::v1::BenchmarkResponse* resp);
  grpc::Status unload_model(const runner::v1::UnloadModelRequest* req);

  // The last Benchmark that succeeded; empty before the first. Thread-safe.
  std::optional<LastMeasurement> last_measurement() const;

 private:
  // UNAUTHENTICATED unless the call carries the session token (constant-time compare).
  grpc::Status authenticate(const Ctx* ctx) const;

  // Each RPC is served from its raw message: the token is checked first, then the message's
  // size against the RPC's limit, and only then is it parsed and the RPC method above called.
  template <class Req, class Resp>
  void serve_capped(int index, const char* rpc, size_t max_bytes,
                    grpc::Status (RunnerService::*method)(Ctx*, const Req*, Resp*));
  grpc::Status upload_stream(
      Ctx* ctx, grpc::ServerReaderWriter<runner::v1::UploadResponse, grpc::ByteBuffer>* stream);

  // An upload in progress, watched for progress: one that receives nothing for
  // upload_idle_timeout_ns is cancelled, so a stalled client cannot keep its reserved space.
  struct UploadWatch {
    grpc::ServerContext* ctx;
    std::atomic<uint64_t> last_ns;
  };
  void watch_uploads();

  std::string token_;
  std::unique_ptr<ArtifactStore> store_;
  ManifestLimits manifest_limits_;
  ModelRegistry models_;
  mutable std::mutex last_mu_;
  std::optional<LastMeasurement> last_;
  uint64_t upload_idle_timeout_ns_;
  std::mutex uploads_mu_;
  std::condition_variable uploads_cv_;
  std::set<UploadWatch*> uploads_;
  bool stopping_ = false;
  std::thread watchdog_;  // last: started when everything above exists
};

}  // namespace npas

#endif  // NPAS_SERVICE_RUNNER_SERVICE_H
