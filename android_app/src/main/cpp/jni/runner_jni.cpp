// The JNI shell: dev.npas.runner.NativeRunner's external functions over RunnerServer. Starts the
// gRPC server (its own threads serve calls), stops it, and reports its state as a JSON string.
// Only JNI and standard types cross this file's boundary; gRPC stays inside npas_service.
#include <jni.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "core/device_info.h"
#include "core/os_util.h"
#include "service/runner_server.h"

#if defined(__ANDROID__)
#include <android/log.h>
#endif

namespace {

void log_line(const std::string& line) {
#if defined(__ANDROID__)
  __android_log_write(ANDROID_LOG_INFO, "NpasRunner", line.c_str());
#else
  std::fprintf(stderr, "npas-runner-jni: %s\n", line.c_str());
#endif
}

// One server per process: the service runs in its own process (":runner").
struct State {
  std::mutex mu;
  std::unique_ptr<npas::RunnerServer> server;
  std::string store_dir;
  uint64_t started_ns = 0;
  std::string last_error;
  // Outlives the server that made it, so the app still shows it after a stop or a restart.
  std::optional<npas::LastMeasurement> last_measurement;
};

State& state() {
  static State s;
  return s;
}

// Keeps the newer of the state's measurement and `m` (servers come and go; callers hold s.mu).
void remember(State& s, std::optional<npas::LastMeasurement> m) {
  if (m && (!s.last_measurement ||
            m->finished_unix_ms >= s.last_measurement->finished_unix_ms)) {
    s.last_measurement = std::move(m);
  }
}

void throw_java(JNIEnv* env, const char* cls, const std::string& msg) {
  if (env->ExceptionCheck()) return;  // keep the first exception
  jclass c = env->FindClass(cls);
  if (c) env->ThrowNew(c, msg.c_str());
}

// A jstring as std::string; false (with a Java exception pending) when it cannot be read.
bool to_string(JNIEnv* env, jstring s, const char* what, std::string* out) {
  if (!s) {
    throw_java(env, "java/lang/IllegalArgumentException", std::string(what) + " is null");
    return false;
  }
  const char* chars = env->GetStringUTFChars(s, nullptr);
  if (!chars) return false;  // OutOfMemoryError already thrown
  out->assign(chars);
  env->ReleaseStringUTFChars(s, chars);
  return true;
}

// `s` as the inside of a JSON string, ASCII only: everything else as \uXXXX (UTF-16, surrogate
// pairs above U+FFFF), bytes that are not UTF-8 as U+FFFD. ASCII because NewStringUTF takes
// modified UTF-8, which differs from UTF-8 above U+FFFF (CheckJNI aborts on it), and a model
// name is any string the host sent.
std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  auto u16 = [&out](unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", v);
    out += buf;
  };
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20 || c == 0x7f) {
            u16(c);
          } else {
            out += char(c);
          }
      }
      ++i;
      continue;
    }
    // A UTF-8 sequence: its length from the lead byte, then continuation bytes, no overlong
    // forms, no surrogates, nothing above U+10FFFF.
    size_t len = c >= 0xf8 ? 0 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    unsigned cp = len == 4 ? c & 0x07u : len == 3 ? c & 0x0fu : c & 0x1fu;
    bool ok = len != 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc & 0xc0) == 0x80;
      cp = (cp << 6) | (cc & 0x3fu);
    }
    static const unsigned kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
    if (!ok) {
      u16(0xfffd);
      ++i;  // resynchronise on the next byte
      continue;
    }
    if (cp >= 0x10000) {
      cp -= 0x10000;
      u16(0xd800 + (cp >> 10));
      u16(0xdc00 + (cp & 0x3ffu));
    } else {
      u16(cp);
    }
    i += len;
  }
  return out;
}

// Frequencies and the hottest thermal zone, so the phone's owner can see throttling.
std::string telemetry_json() {
  npas::Telemetry t = npas::read_telemetry();
  std::string out = "\"cpu_freq_khz\":[";
  for (size_t i = 0; i < t.cores.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(t.cores[i].cur_freq_khz);
  }
  out += "]";
  const npas::ThermalZone* hottest = nullptr;
  for (const auto& z : t.thermal) {
    if (!hottest || z.temp_millicelsius > hottest->temp_millicelsius) hottest = &z;
  }
  if (hottest) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", double(hottest->temp_millicelsius) / 1000.0);
    out += ",\"max_temp_c\":" + std::string(buf) + ",\"max_temp_zone\":\"" +
           json_escape(hottest->name) + "\"";
  }
  return out;
}

std::string measurement_json(const std::optional<npas::LastMeasurement>& m) {
  if (!m) return "null";
  return "{\"model\":\"" + json_escape(m->model) + "\",\"backend\":\"" +
         json_escape(m->backend) + "\",\"threads\":" + std::to_string(m->threads) +
         ",\"runs\":" + std::to_string(m->runs) + ",\"warmup\":" + std::to_string(m->warmup) +
         ",\"median_ns\":" + std::to_string(m->median_ns) +
         ",\"min_ns\":" + std::to_string(m->min_ns) +
         ",\"p90_ns\":" + std::to_string(m->p90_ns) +
         ",\"finished_unix_ms\":" + std::to_string(m->finished_unix_ms) + "}";
}

}  // namespace

extern "C" {

// int start(String listen, String token, String storeDir, long maxArtifactBytes,
//           long maxStoreBytes): the bound port. Throws IllegalStateException when already
// running or when the server cannot start (the message says why).
JNIEXPORT jint JNICALL Java_dev_npas_runner_NativeRunner_start(JNIEnv* env, jclass,
                                                               jstring listen, jstring token,
                                                               jstring store_dir,
                                                               jlong max_artifact_bytes,
                                                               jlong max_store_bytes) {
  npas::RunnerConfig config;
  if (!to_string(env, listen, "listen", &config.listen) ||
      !to_string(env, token, "token", &config.token) ||
      !to_string(env, store_dir, "storeDir", &config.store_dir)) {
    return 0;
  }
  config.allow_remote = false;  // the app only ever serves loopback (adb forward)
  if (max_artifact_bytes > 0) config.store_limits.max_artifact_bytes = uint64_t(max_artifact_bytes);
  if (max_store_bytes > 0) config.store_limits.max_store_bytes = uint64_t(max_store_bytes);

#if defined(__ANDROID__)
  // gRPC's c-ares resolver needs JNI set-up on Android to find DNS servers; the runner only
  // binds address literals, for which the platform resolver is enough. Set before gRPC starts.
  setenv("GRPC_DNS_RESOLVER", "native", /*overwrite=*/0);
#endif

  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.server) {
    throw_java(env, "java/lang/IllegalStateException",
               "the runner is already listening on " + s.server->address() + "; stop it first");
    return 0;
  }
  auto server = npas::RunnerServer::start(config);
  if (!server.ok()) {
    s.last_error = server.status().to_string();
    log_line("start failed: " + s.last_error);
    throw_java(env, "java/lang/IllegalStateException", s.last_error);
    return 0;
  }
  s.server = std::move(server).value();
  s.store_dir = config.store_dir;
  s.started_ns = npas::monotonic_ns();
  s.last_error.clear();
  // The same line the host executable prints, so `adb logcat -s NpasRunner` shows the port.
  log_line("NPAS-RUNNER LISTENING " + s.server->address());
  return jint(s.server->port());
}

// void stop(): stops accepting calls, lets calls in progress finish (bounded grace period) and
// returns when the server is gone. Does nothing when not running.
JNIEXPORT void JNICALL Java_dev_npas_runner_NativeRunner_stop(JNIEnv*, jclass) {
  std::unique_ptr<npas::RunnerServer> server;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    server = std::move(s.server);
    s.started_ns = 0;
  }
  if (server) {
    server->shutdown();
    server->wait();
    log_line("stopped");
    // Taken after wait(): a benchmark finishing in the grace period counts.
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    remember(s, server->last_measurement());
  }
  // `server` is destroyed here, outside the lock, so status() never waits on a shutdown.
}

// String status(): {"running":bool, "address", "port", "uptime_s", "store_dir", "cpu_freq_khz",
// "max_temp_c", "max_temp_zone", "last_error", "last_measurement"}; absent fields are unknown.
// last_measurement is the last Benchmark that succeeded in this process, or null:
// {"model", "backend" ("cpu"/"gpu"), "threads", "runs", "warmup", "median_ns", "min_ns",
//  "p90_ns", "finished_unix_ms"}.
JNIEXPORT jstring JNICALL Java_dev_npas_runner_NativeRunner_status(JNIEnv* env, jclass) {
  std::string json = "{";
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.server) {
      char uptime[32];
      std::snprintf(uptime, sizeof uptime, "%.1f",
                    double(npas::monotonic_ns() - s.started_ns) / 1e9);
      json += "\"running\":true,\"address\":\"" + json_escape(s.server->address()) +
              "\",\"port\":" + std::to_string(s.server->port()) + ",\"uptime_s\":" + uptime +
              ",\"store_dir\":\"" + json_escape(s.store_dir) + "\"";
    } else {
      json += "\"running\":false";
    }
    if (!s.last_error.empty()) json += ",\"last_error\":\"" + json_escape(s.last_error) + "\"";
    if (s.server) remember(s, s.server->last_measurement());
    json += ",\"last_measurement\":" + measurement_json(s.last_measurement);
  }
  json += "," + telemetry_json() + "}";
  return env->NewStringUTF(json.c_str());
}

}  // extern "C"
