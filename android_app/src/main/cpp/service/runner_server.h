// Starting and stopping the gRPC server from a plain config struct: what every shell (host
// executable, Android JNI, arm64 executable) calls.
#ifndef NPAS_SERVICE_RUNNER_SERVER_H
#define NPAS_SERVICE_RUNNER_SERVER_H

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/artifact_store.h"
#include "core/manifest.h"
#include "core/status.h"
#include "service/last_measurement.h"

namespace grpc {
class Server;
}

namespace npas {

class RunnerService;

constexpr int kDefaultMaxReceiveMessageBytes = 16 << 20;
// The HTTP/2 flow-control window of each call (fixed: no BDP probing), what the transport
// buffers for a call beyond the message being read.
constexpr int kStreamWindowBytes = 2 << 20;
// gRPC's memory quota: a few messages at the receive limit (four concurrent 16 MiB requests
// pass), plus a window for each of kQuotaCalls calls at once (uploads, which stream). A 256
// MiB message costs about this much and no more.
constexpr size_t kMemoryQuotaMessages = 3;
constexpr size_t kQuotaCalls = 32;
inline size_t memory_quota_bytes(int max_receive_message_bytes) {
  return size_t(max_receive_message_bytes) * kMemoryQuotaMessages +
         kQuotaCalls * size_t(kStreamWindowBytes);
}

struct RunnerConfig {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  std::string token;                   // required, non-empty
  std::string store_dir;               // created when missing
  bool allow_remote = false;           // without it, only loopback addresses are accepted
  StoreLimits store_limits;
  ManifestLimits manifest_limits;
  size_t max_models = 16;
  // All loaded models' memory together (weights, arenas, scratch); 0: three quarters of the
  // device's memory.
  uint64_t max_model_bytes = 0;
  // An upload that receives nothing for this long is cancelled and its reserved space freed.
  uint32_t upload_idle_timeout_s = 60;
  // The largest message the runner reads, checked by gRPC before the handler (so before the
  // token is) and parsed only when it fits: one unauthenticated call costs at most about this.
  // Legitimate ones: upload chunks of 1 MiB, manifests (tens of KB for VGG16), Run and
  // Benchmark inputs (a 1x3x224x224 float32 image is 0.6 MB). --max-message-bytes raises it.
  int max_receive_message_bytes = kDefaultMaxReceiveMessageBytes;
  int max_send_message_bytes = 256 << 20;  // Run outputs of big models must fit
};

// Splits HOST:PORT (HOST a numeric IPv4 address, [v6], or localhost, which becomes
// 127.0.0.1: no name is resolved) and refuses a non-loopback host unless allow_remote.
Status parse_listen_address(const std::string& listen, bool allow_remote, std::string* host,
                            int* port);
bool is_loopback_host(const std::string& host);

class RunnerServer {
 public:
  static StatusOr<std::unique_ptr<RunnerServer>> start(const RunnerConfig& config);
  ~RunnerServer();

  // HOST:PORT with the port actually bound, e.g. "127.0.0.1:40123".
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // The last Benchmark that succeeded on this server; empty before the first. Thread-safe.
  std::optional<LastMeasurement> last_measurement() const;
  // Stops accepting calls and lets the ones in progress finish (up to a grace period).
  // Thread-safe; calls after the first do nothing.
  void shutdown();
  // Blocks until the server has shut down.
  void wait();

 private:
  RunnerServer() = default;
  std::unique_ptr<RunnerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace npas

#endif  // NPAS_SERVICE_RUNNER_SERVER_H
