// gRPC server lifecycle.
#include "service/runner_server.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>

#include <chrono>

#include "core/os_util.h"

#include "service/runner_service.h"

namespace npas {

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

Status parse_listen_address(const std::string& listen, bool allow_remote, std::string* host,
                            int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return InvalidArgument("--listen '" + listen + "' is not HOST:PORT (e.g. 127.0.0.1:0)");
  }
  std::string h = listen.substr(0, colon);
  std::string p = listen.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(p) > 65535) {
    return InvalidArgument("--listen '" + listen + "': port '" + p + "' is not 0..65535");
  }
  if (h.find(':') != std::string::npos && !(h.front() == '[' && h.back() == ']')) {
    return InvalidArgument("--listen '" + listen + "': write IPv6 addresses as [ADDR]:PORT");
  }
  // Numeric addresses only: a name would go through the C library's resolver, and a static
  // glibc runner on Android has no name service to load (glibc NSS). "localhost" is mapped
  // here, without asking anyone.
  if (h == "localhost") h = "127.0.0.1";
  in_addr v4{};
  in6_addr v6{};
  const bool bracketed = h.size() >= 2 && h.front() == '[' && h.back() == ']';
  if (inet_pton(AF_INET, h.c_str(), &v4) != 1 &&
      !(bracketed && inet_pton(AF_INET6, h.substr(1, h.size() - 2).c_str(), &v6) == 1)) {
    return InvalidArgument("--listen '" + listen + "': host '" + h +
                           "' is not a numeric address; the runner resolves no names (a "
                           "static runner on a phone has no name service): give an IPv4 "
                           "address, [IPv6] or localhost");
  }
  if (!allow_remote && !is_loopback_host(h)) {
    return FailedPrecondition("--listen '" + listen + "': host '" + h +
                              "' is not a loopback address; the runner executes code it "
                              "receives, so it listens on 127.0.0.1, ::1 or localhost unless "
                              "started with --allow-remote");
  }
  *host = h;
  *port = std::stoi(p);
  return Status::Ok();
}

namespace {

// The token check where gRPC runs it before a request's message is read: on the initial
// metadata, in the transport (not blocking: a compare), so a call without the token is failed
// UNAUTHENTICATED before its body is buffered or parsed. The service checks again (and says
// which of missing or wrong it was).
class TokenCheck final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenCheck(std::string token) : token_(std::move(token)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& md, grpc::AuthContext*, OutputMetadata*,
                       OutputMetadata*) override {
    auto it = md.find(kTokenMetadataKey);
    if (it == md.end() || !constant_time_equal(token_, it->second.data(), it->second.size())) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          std::string(it == md.end() ? "missing" : "wrong") +
                              " session token (metadata key x-npas-token)");
    }
    return grpc::Status::OK;
  }

 private:
  std::string token_;
};

}  // namespace

StatusOr<std::unique_ptr<RunnerServer>> RunnerServer::start(const RunnerConfig& config) {
  if (config.token.empty()) return InvalidArgument("the session token is empty");
  std::string host;
  int port = 0;
  NPAS_RETURN_IF_ERROR(parse_listen_address(config.listen, config.allow_remote, &host, &port));
  auto store = ArtifactStore::open(config.store_dir, config.store_limits);
  if (!store.ok()) return store.status();

  std::unique_ptr<RunnerServer> s(new RunnerServer());  // private constructor
  s->service_ = std::make_unique<RunnerService>(config.token, std::move(store).value(),
                                                config.manifest_limits, config.max_models,
                                                config.max_model_bytes,
                                                config.upload_idle_timeout_s);
  grpc::ServerBuilder builder;
  int selected = 0;
  // gRPC runs an auth metadata processor only under credentials with a security connector
  // (insecure ones assert): on loopback, local credentials (no handshake on the wire, so
  // plain clients connect; a peer must be local), which is the default listen address.
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (is_loopback_host(host)) {
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
    creds->SetAuthMetadataProcessor(std::make_shared<TokenCheck>(config.token));
  } else {
    creds = grpc::InsecureServerCredentials();  // --allow-remote: the service checks the token
  }
  builder.AddListeningPort(host + ":" + std::to_string(port), creds, &selected);
  builder.SetMaxReceiveMessageSize(config.max_receive_message_bytes);
  // What the transport may buffer per call: a fixed HTTP/2 window. With gRPC's default BDP
  // probing, the window of a fast stream (an upload over loopback) grows to many MB, so a few
  // concurrent uploads of hundreds of MB filled the memory quota below, and gRPC's reclaimer
  // then reset a random stream (RST_STREAM ENHANCE_YOUR_CALM: the client saw
  // RESOURCE_EXHAUSTED "Stream removed"). A message larger than the window still arrives
  // whole: gRPC opens the window to the size of a message being read.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamWindowBytes);
  // The quota bounds what the transport holds in all (a message is buffered whole before its
  // size is checked, and with --allow-remote before the token is): room for the calls the
  // runner serves at once, each at its window, plus a few messages at the limit.
  grpc::ResourceQuota quota("npas-runner");
  quota.Resize(memory_quota_bytes(config.max_receive_message_bytes));
  builder.SetResourceQuota(quota);
  builder.SetMaxSendMessageSize(config.max_send_message_bytes);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || selected == 0) {
    return Status(Code::kUnavailable, "cannot listen on " + host + ":" + std::to_string(port) +
                                          " (address in use, or not an address of this host)");
  }
  s->port_ = selected;
  s->address_ = host + ":" + std::to_string(selected);
  return s;
}

RunnerServer::~RunnerServer() {
  shutdown();
  wait();
}

void RunnerServer::shutdown() {
  std::call_once(shutdown_once_, [this] {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
}

std::optional<LastMeasurement> RunnerServer::last_measurement() const {
  return service_->last_measurement();
}

void RunnerServer::wait() {
  if (server_) server_->Wait();
}

}  // namespace npas
