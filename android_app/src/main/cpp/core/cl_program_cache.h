// The GPU backend's program plumbing, apart from the model: build logs made fit for a Status
// message (bounded, printable, with the kernels their errors point into) and the on-disk
// cache of program binaries keyed by source, device, driver and build options.
#ifndef NPAS_CORE_CL_PROGRAM_CACHE_H
#define NPAS_CORE_CL_PROGRAM_CACHE_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/opencl.h"
#include "core/status.h"

namespace npas {

constexpr size_t kMaxBuildLogBytes = 3000;  // in a Status message (gRPC metadata is ~8 KB)
constexpr uint64_t kMaxCachedBinaryBytes = 256ull << 20;

// Printable, bounded (kMaxBuildLogBytes) build log for a Status message.
std::string trim_build_log(const std::string& log);

// The __kernel functions a build log's error lines point into: compilers report
// "file:LINE:COL: error" (Clang-based: PoCL, Mali, Adreno) and name no function, so the
// line is mapped to the last "__kernel" / "kernel" definition at or above it in the source.
std::string kernels_with_errors(const std::string& log, const std::string& source);

// The program's build log on device `d` ("" when there is none or it cannot be read).
std::string build_log(const cl::Api& a, cl::cl_program p, cl::cl_device_id d);

// The built program's binary for its one device (empty when unavailable or too large).
std::vector<uint8_t> program_binary(const cl::Api& a, cl::cl_program p);

// The binary-cache key: sha256 over the source's sha256, the platform, the device, its
// driver version and the build options.
std::string program_cache_key(const std::string& source_sha, const std::string& platform,
                              const std::string& device, const std::string& device_version,
                              const std::string& driver_version, const std::string& options);

// The cached binary at `path`, or empty when absent, truncated or corrupt (checked against
// its sha256).
std::vector<uint8_t> program_cache_read(const std::string& path);

// Stores `binary` as <dir>/<key> atomically (temp file, fsync, rename). Failure only costs a
// rebuild next time.
Status program_cache_write(const std::string& dir, const std::string& key,
                           const std::vector<uint8_t>& binary);

}  // namespace npas

#endif  // NPAS_CORE_CL_PROGRAM_CACHE_H
