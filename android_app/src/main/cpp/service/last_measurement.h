// The runner's record of its last successful Benchmark, for the app's status screen. Plain
// types only, so a shell (the JNI library) can read it without seeing gRPC.
#ifndef NPAS_SERVICE_LAST_MEASUREMENT_H
#define NPAS_SERVICE_LAST_MEASUREMENT_H

#include <cstdint>
#include <string>
#include <vector>

namespace npas {

struct LastMeasurement {
  std::string model;    // the manifest's name
  std::string backend;  // "cpu" or "gpu"
  int threads = 0;
  uint32_t runs = 0;    // timed runs, one sample each
  uint32_t warmup = 0;  // runs done first and discarded
  uint64_t median_ns = 0;
  uint64_t min_ns = 0;
  uint64_t p90_ns = 0;
  int64_t finished_unix_ms = 0;  // wall clock when the benchmark ended
};

// Sets median, min and p90 of `samples_ns` (non-empty) the way host/measure.py's Stats does:
// median of an even count is the mean of the middle two, p90 interpolates linearly between
// the closest ranks (numpy's default); both rounded to whole nanoseconds.
void set_sample_stats(std::vector<uint64_t> samples_ns, LastMeasurement* m);

}  // namespace npas

#endif  // NPAS_SERVICE_LAST_MEASUREMENT_H
