// Summary statistics of a benchmark's samples, as the host computes them.
#include "service/last_measurement.h"

#include <algorithm>
#include <cmath>

namespace npas {

void set_sample_stats(std::vector<uint64_t> samples_ns, LastMeasurement* m) {
  if (samples_ns.empty()) return;
  std::sort(samples_ns.begin(), samples_ns.end());
  const size_t n = samples_ns.size();
  auto at = [&](size_t i) { return double(samples_ns[i]); };
  m->min_ns = samples_ns.front();
  m->median_ns = n % 2 ? samples_ns[n / 2]
                       : uint64_t(std::llround((at(n / 2 - 1) + at(n / 2)) / 2.0));
  const double pos = double(n - 1) * 0.9;
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, n - 1);
  m->p90_ns = uint64_t(std::llround(at(lo) + (at(hi) - at(lo)) * (pos - double(lo))));
}

}  // namespace npas
