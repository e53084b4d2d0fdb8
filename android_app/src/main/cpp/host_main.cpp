// npas-runner: the runner as a host executable. Parses flags, starts the gRPC server, prints
// one line "NPAS-RUNNER LISTENING <host>:<port>" on stdout (the Python host reads the port from
// it), logs to stderr, and shuts down cleanly on SIGTERM/SIGINT.
#include <link.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>

#include "core/device_info.h"
#include "core/os_util.h"
#include "core/sysfs.h"
#include "service/runner_server.h"

namespace {

const char kUsage[] =
    "usage: npas-runner --token-file PATH --store DIR [options]\n"
    "\n"
    "Runs compiled NPAS bundles for npas-host over gRPC.\n"
    "\n"
    "  --listen HOST:PORT         address to listen on (default 127.0.0.1:0; port 0 picks a\n"
    "                             free port, printed as 'NPAS-RUNNER LISTENING HOST:PORT')\n"
    "  --token-file PATH          file holding the session token (required); every call must\n"
    "                             carry it in metadata key x-npas-token\n"
    "  --store DIR                artifact store directory, created if missing (required,\n"
    "                             except on Android: /data/local/tmp/npas/store)\n"
    "  --allow-remote             allow a listen address that is not loopback\n"
    "  --max-artifact-bytes N     largest artifact accepted (default 1073741824)\n"
    "  --max-store-bytes N        total bytes the store may hold (default 4294967296)\n"
    "  --max-models N             models loaded at once (default 16)\n"
    "  --max-model-bytes N        memory all loaded models may hold together: weights,\n"
    "                             arenas, scratch (default: 3/4 of the device's memory)\n"
    "  --upload-idle-timeout-s N  cancel an upload that receives nothing for N seconds and\n"
    "                             free its reserved space (default 60)\n"
    "  --max-message-bytes N      largest request message read (default 16777216); checked\n"
    "                             before the token, so it bounds an unauthenticated call\n"
  "  --exit-on-stdin-eof        shut down when stdin reaches end of file: the parent holds\n"
  "                             the pipe's write end, so the runner goes when it does, even\n"
  "                             when the parent is SIGKILLed\n"
    "  --count-markers            mark each timed run and, per layer, each step with a\n"
    "                             syscall the instruction-counting qemu plugin watches for\n"
    "                             (npas-host bench arm64); costs a syscall per mark\n"
    "  --sysfs-root DIR           read CPU topology, frequencies and thermal zones from DIR\n"
    "                             instead of /sys (tests feed it a tree of their own)\n"
    "  --version                  version, build id and linkage, then exit\n"
    "  --help                     this text\n";

// Where a phone's standalone runner keeps its artifacts (npas-host install pushes the runner
// to /data/local/tmp/npas).
const char kAndroidStore[] = "/data/local/tmp/npas/store";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "npas-runner: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

// The NT_GNU_BUILD_ID note of this executable (from its program headers: works in static
// and dynamic builds alike), as hex; "unknown" when the linker wrote none.
std::string build_id() {
  std::string hex;
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void* out) -> int {
        auto* id = static_cast<std::string*>(out);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_NOTE) continue;
          const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
          const char* end = p + ph.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            const auto* n = reinterpret_cast<const ElfW(Nhdr)*>(p);
            const char* name = p + sizeof(ElfW(Nhdr));
            const char* desc = name + ((n->n_namesz + 3) & ~3u);
            if (desc + n->n_descsz > end) break;
            if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 &&
                std::memcmp(name, "GNU", 4) == 0) {
              static const char kHex[] = "0123456789abcdef";
              for (unsigned k = 0; k < n->n_descsz; ++k) {
                unsigned char b = static_cast<unsigned char>(desc[k]);
                id->push_back(kHex[b >> 4]);
                id->push_back(kHex[b & 15]);
              }
              return 1;
            }
            p = desc + ((n->n_descsz + 3) & ~3u);
          }
        }
        return 1;  // the first object reported is the executable itself
      },
      &hex);
  return hex.empty() ? "unknown" : hex;
}

int print_version() {
#if defined(NPAS_STATIC_RUNNER)
  const char* linkage = "static, no GPU backend";
#else
  const char* linkage = "dynamic";
#endif
#if defined(__aarch64__)
  const char* arch = "arm64";
#elif defined(__x86_64__)
  const char* arch = "x86-64";
#else
  const char* arch = "unknown-arch";
#endif
  std::printf("npas-runner %s (%s, %s) build-id %s\n", NPAS_VERSION, arch, linkage,
              build_id().c_str());
  return 0;
}

bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 19) {
    return false;
  }
  *out = std::stoull(s);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  npas::RunnerConfig config;
  std::string token_file;
  bool exit_on_stdin_eof = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    uint64_t n = 0;
    if (a == "--version") {
      return print_version();
    } else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--allow-remote") {
      config.allow_remote = true;
    } else if (a == "--count-markers") {
      npas::set_count_marks(true);
    } else if (a == "--exit-on-stdin-eof") {
      exit_on_stdin_eof = true;
    } else if (a == "--listen") {
      if (!value(&config.listen)) return usage_error("--listen needs HOST:PORT");
    } else if (a == "--token-file") {
      if (!value(&token_file)) return usage_error("--token-file needs a path");
    } else if (a == "--store") {
      if (!value(&config.store_dir)) return usage_error("--store needs a directory");
    } else if (a == "--sysfs-root") {
      if (!value(&v) || v.empty() || v[0] != '/') {
        return usage_error("--sysfs-root needs an absolute directory");
      }
      struct stat st {};
      if (::stat(v.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        return usage_error("--sysfs-root " + v + " is not a directory");
      }
      npas::set_sysfs_root(v);
    } else if (a == "--max-artifact-bytes") {
      if (!value(&v) || !parse_u64(v, &n) || n == 0) {
        return usage_error("--max-artifact-bytes needs a positive byte count");
      }
      config.store_limits.max_artifact_bytes = n;
    } else if (a == "--max-store-bytes") {
      if (!value(&v) || !parse_u64(v, &n) || n == 0) {
        return usage_error("--max-store-bytes needs a positive byte count");
      }
      config.store_limits.max_store_bytes = n;
    } else if (a == "--max-message-bytes") {
      if (!value(&v) || !parse_u64(v, &n) || n < (2u << 20) || n > (1u << 30)) {
        return usage_error("--max-message-bytes needs a byte count 2097152..1073741824");
      }
      config.max_receive_message_bytes = int(n);
    } else if (a == "--max-model-bytes") {
      if (!value(&v) || !parse_u64(v, &n) || n == 0) {
        return usage_error("--max-model-bytes needs a positive byte count");
      }
      config.max_model_bytes = n;
    } else if (a == "--upload-idle-timeout-s") {
      if (!value(&v) || !parse_u64(v, &n) || n == 0 || n > 86400) {
        return usage_error("--upload-idle-timeout-s needs seconds 1..86400");
      }
      config.upload_idle_timeout_s = uint32_t(n);
    } else if (a == "--max-models") {
      if (!value(&v) || !parse_u64(v, &n) || n == 0 || n > 1024) {
        return usage_error("--max-models needs a count 1..1024");
      }
      config.max_models = size_t(n);
    } else {
      return usage_error("unknown argument '" + a + "'");
    }
  }
  if (token_file.empty()) return usage_error("--token-file is required");
  if (config.store_dir.empty() && npas::running_on_android()) {
    config.store_dir = kAndroidStore;  // the shell user's one writable place
  }
  if (config.store_dir.empty()) return usage_error("--store is required");

  auto token = npas::read_small_file(token_file, 4096);
  if (!token) {
    std::fprintf(stderr, "npas-runner: cannot read token file %s: %s\n", token_file.c_str(),
                 std::strerror(errno));
    return 2;
  }
  config.token = npas::trim(*token);
  if (config.token.empty()) {
    std::fprintf(stderr, "npas-runner: token file %s is empty; put a random token in it\n",
                 token_file.c_str());
    return 2;
  }
  struct stat st {};
  if (::stat(token_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    std::fprintf(stderr,
                 "npas-runner: warning: token file %s is readable by group/others (mode %03o); "
                 "chmod 600 it\n",
                 token_file.c_str(), unsigned(st.st_mode & 0777));
  }

  // Block the stop signals in every thread (gRPC's included); one thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A client that goes away mid-write must not kill the runner.
  signal(SIGPIPE, SIG_IGN);

  auto server = npas::RunnerServer::start(config);
  if (!server.ok()) {
    std::fprintf(stderr, "npas-runner: %s\n", server.status().to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "npas-runner: store %s, listening on %s\n", config.store_dir.c_str(),
               server.value()->address().c_str());
  std::printf("NPAS-RUNNER LISTENING %s\n", server.value()->address().c_str());
  std::fflush(stdout);

  npas::RunnerServer* srv = server.value().get();
  if (exit_on_stdin_eof) {
    // Detached: it may still be blocked in read() when main returns, which is fine.
    std::thread([] {
      char buf[256];
      for (;;) {
        ssize_t r = ::read(STDIN_FILENO, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR)) break;
      }
      std::fprintf(stderr, "npas-runner: stdin closed (parent gone)\n");
      ::kill(::getpid(), SIGTERM);
    }).detach();
  }
  std::thread signal_thread([&stop_signals, srv] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "npas-runner: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv->shutdown();
  });
  srv->wait();
  signal_thread.join();
  std::fprintf(stderr, "npas-runner: stopped\n");
  return 0;
}
