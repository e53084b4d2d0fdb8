// gRPC Runner service over the core.
#include "service/runner_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <new>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/method_handler.h>

#include "core/device_info.h"
#include "core/cpu_model.h"
#include "core/gpu_model.h"
#include "core/npas_kernel_abi.h"
#include "core/model.h"
#include "core/os_util.h"
#include "core/sha256.h"
#include "service/convert.h"

namespace npas {
namespace {

namespace pb = ::npas::runner::v1;

grpc::Status invalid(const std::string& m) { return to_grpc(InvalidArgument(m)); }

std::vector<TensorView> views_of(const google::protobuf::RepeatedPtrField<pb::Tensor>& ts) {
  std::vector<TensorView> v;
  v.reserve(size_t(ts.size()));
  for (const auto& t : ts) {
    TensorView tv;
    tv.name = t.name();
    tv.shape.assign(t.shape().begin(), t.shape().end());
    tv.dtype = t.dtype();
    tv.data = t.data().data();
    tv.size = t.data().size();
    v.push_back(std::move(tv));
  }
  return v;
}

void log_error(const char* rpc, const Status& s) {
  if (!s.ok()) std::fprintf(stderr, "npas-runner: %s: %s\n", rpc, s.to_string().c_str());
}

// Runs one call's body; an exception that escapes it (a failed allocation, a refused thread)
// becomes an error status instead of terminating the runner, which gRPC would let happen.
template <typename F>
grpc::Status guarded(const char* rpc, F&& body) {
  Status s;
  try {
    return body();
  } catch (const std::bad_alloc&) {
    s = ResourceExhausted(std::string(rpc) + ": out of memory");
  } catch (const std::exception& e) {
    s = Internal(std::string(rpc) + ": " + e.what());
  }
  log_error(rpc, s);
  return to_grpc(s);
}

grpc::Status too_big(const char* rpc, size_t got, size_t max) {
  return to_grpc(ResourceExhausted(std::string(rpc) + ": a request message of " +
                                   std::to_string(got) + " bytes is over this RPC's limit of " +
                                   std::to_string(max) + " bytes; not read"));
}

// The methods' indices in the Runner service, in the proto's order (the generated code's).
enum MethodIndex : int {
  kGetDeviceInfo = 0,
  kMissingArtifacts = 1,
  kUploadArtifact = 2,
  kLoadModel = 3,
  kRun = 4,
  kBenchmark = 5,
  kUnloadModel = 6,
};

}  // namespace

template <class Req, class Resp>
void RunnerService::serve_capped(int index, const char* rpc, size_t max_bytes,
                                 grpc::Status (RunnerService::*method)(Ctx*, const Req*, Resp*)) {
  // gRPC's "streamed unary" handler: the request arrives as bytes (a ByteBuffer), not parsed.
  using Streamer = grpc::ServerUnaryStreamer<grpc::ByteBuffer, Resp>;
  MarkMethodStreamed(index, new grpc::internal::StreamedUnaryHandler<grpc::ByteBuffer, Resp>(
                                [this, rpc, max_bytes, method](Ctx* ctx, Streamer* stream) {
    grpc::Status auth = authenticate(ctx);
    if (!auth.ok()) return auth;
    grpc::ByteBuffer raw;
    if (!stream->Read(&raw)) return invalid(std::string(rpc) + ": no request message");
    if (raw.Length() > max_bytes) return too_big(rpc, raw.Length(), max_bytes);
    Req req;
    if (!grpc::SerializationTraits<Req>::Deserialize(&raw, &req).ok()) {
      return invalid(std::string(rpc) + ": the request message does not parse");
    }
    Resp resp;
    grpc::Status s = (this->*method)(ctx, &req, &resp);
    if (s.ok() && !stream->Write(resp)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, std::string(rpc) + ": client gone");
    }
    return s;
  }));
}

RunnerService::RunnerService(std::string token, std::unique_ptr<ArtifactStore> store,
                             const ManifestLimits& manifest_limits, size_t max_models,
                             uint64_t max_model_bytes, uint32_t upload_idle_timeout_s)
    : token_(std::move(token)),
      store_(std::move(store)),
      manifest_limits_(manifest_limits),
      models_(max_models, max_model_bytes),
      upload_idle_timeout_ns_(uint64_t(upload_idle_timeout_s) * 1000000000ull) {
  serve_capped(kGetDeviceInfo, "GetDeviceInfo", kMaxTinyRequestBytes,
               &RunnerService::GetDeviceInfo);
  serve_capped(kMissingArtifacts, "MissingArtifacts", kMaxMissingArtifactsRequestBytes,
               &RunnerService::MissingArtifacts);
  serve_capped(kLoadModel, "LoadModel", kMaxLoadModelRequestBytes, &RunnerService::LoadModel);
  serve_capped(kRun, "Run", SIZE_MAX, &RunnerService::Run);  // the server's limit bounds it
  serve_capped(kBenchmark, "Benchmark", SIZE_MAX, &RunnerService::Benchmark);
  serve_capped(kUnloadModel, "UnloadModel", kMaxTinyRequestBytes, &RunnerService::UnloadModel);
  using UploadStream = grpc::ServerReaderWriter<pb::UploadResponse, grpc::ByteBuffer>;
  MarkMethodStreamed(
      kUploadArtifact,
      new grpc::internal::BidiStreamingHandler<RunnerService, grpc::ByteBuffer,
                                               pb::UploadResponse>(
          [](RunnerService* s, Ctx* ctx, UploadStream* stream) {
            return s->upload_stream(ctx, stream);
          },
          this));
  if (upload_idle_timeout_ns_ > 0) watchdog_ = std::thread([this] { watch_uploads(); });
}

RunnerService::~RunnerService() {
  {
    std::lock_guard<std::mutex> lock(uploads_mu_);
    stopping_ = true;
  }
  uploads_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

void RunnerService::watch_uploads() {
  const auto period = std::chrono::nanoseconds(
      std::min<uint64_t>(upload_idle_timeout_ns_ / 4 + 1, 1000000000ull));
  std::unique_lock<std::mutex> lock(uploads_mu_);
  while (!stopping_) {
    uploads_cv_.wait_for(lock, period);
    const uint64_t now = monotonic_ns();
    for (UploadWatch* w : uploads_) {
      uint64_t last = w->last_ns.load(std::memory_order_relaxed);
      if (now > last && now - last > upload_idle_timeout_ns_) {
        std::fprintf(stderr,
                     "npas-runner: UploadArtifact: nothing received for %llu s, cancelled (its "
                     "reserved space is freed)\n",
                     (unsigned long long)(upload_idle_timeout_ns_ / 1000000000ull));
        w->last_ns.store(now, std::memory_order_relaxed);  // one message per stall
        w->ctx->TryCancel();
      }
    }
  }
}

grpc::Status RunnerService::authenticate(const Ctx* ctx) const {
  const auto& md = ctx->client_metadata();
  auto it = md.find(kTokenMetadataKey);
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing session token (metadata key x-npas-token)");
  }
  const grpc::string_ref& got = it->second;
  // Constant time in the token's content; the length is not a secret worth hiding.
  const bool match = constant_time_equal(token_, got.data(), got.size());
  if (!match) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "wrong session token (metadata key x-npas-token)");
  }
  return grpc::Status::OK;
}

grpc::Status RunnerService::GetDeviceInfo(Ctx* ctx, const pb::DeviceInfoRequest*,
                                          pb::DeviceInfo* resp) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  to_proto(device_info(), resp);
  resp->set_runner_version(kRunnerVersion);
  resp->set_protocol_major(kProtocolMajor);
  resp->set_protocol_minor(kProtocolMinor);
  resp->set_kernel_abi_version(NPAS_KERNEL_ABI_VERSION);
  resp->set_max_artifact_bytes(store_->limits().max_artifact_bytes);
  resp->set_max_store_bytes(store_->limits().max_store_bytes);
  return grpc::Status::OK;
}

grpc::Status RunnerService::MissingArtifacts(Ctx* ctx, const pb::MissingArtifactsRequest* req,
                                 pb::MissingArtifactsResponse* resp) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  return guarded("MissingArtifacts", [&] { return missing_artifacts(req, resp); });
}

grpc::Status RunnerService::missing_artifacts(const pb::MissingArtifactsRequest* req,
                                 pb::MissingArtifactsResponse* resp) {
  if (req->sha256_size() > 100000) return invalid("at most 100000 sha256 values per call");
  for (int i = 0; i < req->sha256_size(); ++i) {
    const std::string& sha = req->sha256(i);
    if (!is_valid_sha256_hex(sha)) {
      return invalid("sha256[" + std::to_string(i) + "] '" + clip(sha) +
                     "' is not 64 lowercase hex characters");
    }
  }
  // Asked for together: one bundle, whose artifacts an upload of one of them must not evict.
  store_->note_wanted({req->sha256().begin(), req->sha256().end()});
  for (const auto& sha : req->sha256()) {
    if (!store_->has(sha)) resp->add_missing(sha);
  }
  return grpc::Status::OK;
}

grpc::Status RunnerService::upload_stream(
    Ctx* ctx, grpc::ServerReaderWriter<pb::UploadResponse, grpc::ByteBuffer>* stream) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  UploadWatch watch{ctx, {monotonic_ns()}};
  struct Unwatch {
    RunnerService* s;
    UploadWatch* w;
    ~Unwatch() {
      std::lock_guard<std::mutex> lock(s->uploads_mu_);
      s->uploads_.erase(w);
    }
  };
  {
    std::lock_guard<std::mutex> lock(uploads_mu_);
    uploads_.insert(&watch);
  }
  Unwatch unwatch{this, &watch};
  // A message over the limit, or one that does not parse, ends the upload with this status
  // (the partial file is removed like any failed upload's).
  grpc::Status refused;
  auto read = [&](pb::UploadChunk* chunk) {
    grpc::ByteBuffer raw;
    if (!stream->Read(&raw)) return false;
    watch.last_ns.store(monotonic_ns(), std::memory_order_relaxed);
    if (raw.Length() > kMaxUploadMessageBytes) {
      refused = too_big("UploadArtifact", raw.Length(), kMaxUploadMessageBytes);
      return false;
    }
    if (!grpc::SerializationTraits<pb::UploadChunk>::Deserialize(&raw, chunk).ok()) {
      refused = invalid("UploadArtifact: an upload message does not parse");
      return false;
    }
    return true;
  };
  pb::UploadResponse resp;
  grpc::Status s = guarded("UploadArtifact", [&] {
    return upload_artifact(read, [&] { return !refused.ok() || ctx->IsCancelled(); }, &resp);
  });
  if (!refused.ok()) {
    std::fprintf(stderr, "npas-runner: %s\n", refused.error_message().c_str());
    return refused;
  }
  if (s.ok() && !stream->Write(resp)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "UploadArtifact: client gone");
  }
  return s;
}

grpc::Status RunnerService::upload_artifact(const std::function<bool(pb::UploadChunk*)>& read,
                                            const std::function<bool()>& cancelled,
                                            pb::UploadResponse* resp) {
  pb::UploadChunk chunk;
  if (!read(&chunk)) return invalid("empty upload: the first message must be a header");
  if (chunk.part_case() != pb::UploadChunk::kHeader) {
    return invalid("the first upload message must be a header, got data");
  }
  const pb::ArtifactHeader header = chunk.header();
  if (header.kind() == pb::ARTIFACT_KIND_UNSPECIFIED) {
    return invalid("upload header: kind is ARTIFACT_KIND_UNSPECIFIED");
  }
  if (!pb::ArtifactKind_IsValid(header.kind())) {
    return invalid("upload header: unknown kind " + std::to_string(header.kind()));
  }
  auto writer = store_->begin_write(header.sha256(), header.size());
  if (!writer.ok()) {
    log_error("UploadArtifact", writer.status());
    return to_grpc(writer.status());
  }
  while (read(&chunk)) {
    if (chunk.part_case() != pb::UploadChunk::kData) {
      return invalid("artifact " + header.sha256() + ": a second header in the upload");
    }
    Status s = writer.value()->append(chunk.data().data(), chunk.data().size());
    if (!s.ok()) {
      log_error("UploadArtifact", s);
      return to_grpc(s);  // stop reading: the client sent more than it declared
    }
  }
  if (cancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "upload cancelled (by the client, or idle past the runner's "
                        "--upload-idle-timeout-s)");
  }
  Status s = writer.value()->finish();
  if (!s.ok()) {
    log_error("UploadArtifact", s);
    return to_grpc(s);
  }
  resp->set_sha256(header.sha256());
  resp->set_size(header.size());
  resp->set_already_present(writer.value()->already_present());
  return grpc::Status::OK;
}

grpc::Status RunnerService::LoadModel(Ctx* ctx, const pb::LoadModelRequest* req,
                                 pb::LoadModelResponse* resp) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  return guarded("LoadModel", [&] { return load_model(req, resp); });
}

grpc::Status RunnerService::load_model(const pb::LoadModelRequest* req,
                                 pb::LoadModelResponse* resp) {
  const bool gpu = req->backend() == pb::GPU;
  if (!gpu && req->backend() != pb::CPU && req->backend() != pb::BACKEND_UNSPECIFIED) {
    return invalid("unknown backend " + std::to_string(req->backend()));
  }
  if (!req->has_manifest()) return invalid("LoadModel needs a manifest");
  Status room = models_.check_room();
  if (!room.ok()) return to_grpc(room);

  const Manifest manifest = from_proto(req->manifest());
  // Pinned before the load reads them, so a concurrent upload cannot evict them meanwhile.
  std::vector<std::string> shas;
  for (const ArtifactRef& a : manifest.artifacts) shas.push_back(a.sha256);
  std::unique_ptr<ArtifactPins> pins = store_->pin(shas);

  // Checked before anything is allocated: the manifest, then its memory against what all
  // loaded models may hold together.
  const Backend backend = gpu ? Backend::kGpu : Backend::kCpu;
  Status valid = validate_manifest(manifest, manifest_limits_, nullptr, backend);
  if (!valid.ok()) return to_grpc(valid);
  ThreadPlan plan;
  if (!gpu) {
    ThreadRequest treq;
    treq.threads = req->threads();
    treq.cpu_affinity.assign(req->cpu_affinity().begin(), req->cpu_affinity().end());
    treq.pin_big_cores = req->pin_big_cores();
    auto p = plan_threads(treq, device_info());
    if (!p.ok()) return to_grpc(p.status());
    plan = std::move(p).value();
  }
  const MemoryNeed need = memory_need(manifest, backend, plan.threads);
  auto memory = models_.reserve_memory(need.total(), need.describe(manifest.name));
  if (!memory.ok()) {
    log_error("LoadModel", memory.status());
    return to_grpc(memory.status());
  }

  StatusOr<std::unique_ptr<Model>> model = Status(Code::kInternal, "not loaded");
  if (gpu) {
    model = load_gpu_model(manifest, *store_, manifest_limits_,
                           store_->dir() + "/" + kProgramCacheDir);
  } else {
    model = load_cpu_model(manifest, *store_, manifest_limits_, plan);
  }
  if (!model.ok()) {
    log_error("LoadModel", model.status());
    return to_grpc(model.status());
  }
  uint64_t init_ns = model.value()->init_ns();
  int threads = model.value()->threads();
  std::vector<int> affinity = model.value()->cpu_affinity();
  std::string affinity_note = model.value()->affinity_note();
  if (!affinity_note.empty()) {
    std::fprintf(stderr, "npas-runner: LoadModel: pinning refused, running unpinned: %s\n",
                 affinity_note.c_str());
  }
  auto handle = models_.add(std::move(model).value(), std::move(pins),
                            std::move(memory).value());
  if (!handle.ok()) return to_grpc(handle.status());
  resp->set_handle(handle.value());
  resp->set_init_ns(init_ns);
  resp->set_threads(uint32_t(threads));
  for (int c : affinity) resp->add_cpu_affinity(uint32_t(c));
  resp->set_affinity_note(affinity_note);
  return grpc::Status::OK;
}

grpc::Status RunnerService::Run(Ctx* ctx, const pb::RunRequest* req,
                                 pb::RunResponse* resp) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  return guarded("Run", [&] { return run(req, resp); });
}

grpc::Status RunnerService::run(const pb::RunRequest* req,
                                 pb::RunResponse* resp) {
  auto lease = models_.acquire(req->handle());
  if (!lease.ok()) return to_grpc(lease.status());
  Model& model = lease.value()->model();
  uint64_t latency = 0;
  Status s = model.run(views_of(req->inputs()), &latency);
  if (!s.ok()) return to_grpc(s);
  const Manifest& m = model.manifest();
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const TensorSpec& t = m.tensors[m.outputs[i]];
    auto* out = resp->add_outputs();
    out->set_name(t.name);
    for (int64_t d : t.shape) out->add_shape(d);
    out->set_dtype(t.dtype);
    out->set_data(model.output_data(i), model.output_size(i));
  }
  resp->set_latency_ns(latency);
  return grpc::Status::OK;
}

grpc::Status RunnerService::Benchmark(Ctx* ctx, const pb::BenchmarkRequest* req,
                                 pb::BenchmarkResponse* resp) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  return guarded("Benchmark", [&] { return benchmark(ctx, req, resp); });
}

grpc::Status RunnerService::benchmark(Ctx* ctx, const pb::BenchmarkRequest* req,
                                      pb::BenchmarkResponse* resp) {
  auto lease = models_.acquire(req->handle());
  if (!lease.ok()) return to_grpc(lease.status());
  Model& model = lease.value()->model();

  BenchmarkOptions opts;
  // proto: 0 means the default; the limits are checked by Model::benchmark
  opts.warmup = req->warmup() == 0 ? kDefaultBenchmarkWarmup : req->warmup();
  opts.runs = req->runs() == 0 ? kDefaultBenchmarkRuns : req->runs();
  opts.warmup_min_ns = uint64_t(req->warmup_min_ms()) * 1000000ull;
  opts.pause_ns = uint64_t(req->pause_us()) * 1000ull;
  opts.per_layer = req->per_layer();
  opts.inputs = views_of(req->inputs());
  opts.cancelled = [ctx] { return ctx && ctx->IsCancelled(); };

  to_proto(read_telemetry(), resp->mutable_telemetry_before());
  BenchmarkResult result;
  Status s = model.benchmark(opts, &result);
  if (!s.ok()) return to_grpc(s);
  to_proto(read_telemetry(), resp->mutable_telemetry_after());

  resp->mutable_samples_ns()->Add(result.samples_ns.begin(), result.samples_ns.end());
  resp->mutable_warmup_ns()->Add(result.warmup_ns.begin(), result.warmup_ns.end());
  resp->set_init_ns(model.init_ns());
  resp->set_threads(uint32_t(model.threads()));
  resp->set_first_run_ns(result.first_run_ns);
  resp->set_first_run_cold(result.first_run_cold);
  resp->set_warmup_elapsed_ns(result.warmup_elapsed_ns);
  resp->set_rss_before_bytes(result.rss_before_bytes);
  resp->set_peak_rss_bytes(result.peak_rss_bytes);
  resp->set_memory_note(result.memory_note);
  const Manifest& m = model.manifest();
  for (size_t i = 0; i < result.layer_ns.size(); ++i) {
    auto* l = resp->add_layers();
    l->set_name(m.steps[i].name);
    l->set_op(m.steps[i].op);
    l->set_symbol(m.steps[i].symbol);
    l->mutable_samples_ns()->Add(result.layer_ns[i].begin(), result.layer_ns[i].end());
  }

  LastMeasurement last;
  last.model = m.name;
  last.backend = model.backend() == Backend::kGpu ? "gpu" : "cpu";
  last.threads = model.threads();
  last.runs = uint32_t(result.samples_ns.size());
  last.warmup = uint32_t(result.warmup_ns.size());
  set_sample_stats(result.samples_ns, &last);
  last.finished_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
  std::lock_guard<std::mutex> lock(last_mu_);
  last_ = std::move(last);
  return grpc::Status::OK;
}

std::optional<LastMeasurement> RunnerService::last_measurement() const {
  std::lock_guard<std::mutex> lock(last_mu_);
  return last_;
}

grpc::Status RunnerService::UnloadModel(Ctx* ctx, const pb::UnloadModelRequest* req,
                                        pb::UnloadModelResponse*) {
  grpc::Status auth = authenticate(ctx);
  if (!auth.ok()) return auth;
  return unload_model(req);
}

grpc::Status RunnerService::unload_model(const pb::UnloadModelRequest* req) {
  return to_grpc(models_.remove(req->handle()));
}

}  // namespace npas
