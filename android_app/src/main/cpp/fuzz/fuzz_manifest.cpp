// libFuzzer target: a Manifest message (proto bytes, as LoadModel carries it) decoded and
// validated for both backends. Whatever validate_manifest accepts must be safe for the loader
// and the executors to index with: every tensor inside the arena, every index in range, every
// param inside the weight buffer (prepare sources inside the shipped blob), a memory need that does not overflow.
#include <cstddef>
#include <cstdint>

#include "core/manifest.h"
#include "core/model.h"
#include "fuzz/fuzz_common.h"
#include "npas/runner/v1/runner.pb.h"
#include "service/convert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  npas::runner::v1::Manifest pbm;
  if (!pbm.ParseFromArray(data, int(size))) return 0;
  const npas::Manifest m = npas::from_proto(pbm);
  const npas::ManifestLimits limits;
  for (npas::Backend b : {npas::Backend::kCpu, npas::Backend::kGpu}) {
    npas::ManifestArtifacts which;
    npas::Status s = npas::validate_manifest(m, limits, &which, b);
    if (!s.ok()) {
      FUZZ_CHECK(!s.message().empty() && s.message().size() < 64 * 1024);
      continue;
    }
    for (const npas::TensorSpec& t : m.tensors) {
      FUZZ_CHECK(t.arena_offset <= m.arena_bytes && t.nbytes <= m.arena_bytes - t.arena_offset);
    }
    // format 2: the kernels index the weight buffer (weights_bytes), which prepare steps
    // build from the shipped blob; without prepare steps the buffer is the blob
    const uint64_t blob = which.weights >= 0 ? m.artifacts[size_t(which.weights)].size : 0;
    const uint64_t wsize = m.weights_bytes;
    if (m.prepare.empty()) FUZZ_CHECK(wsize == blob);
    for (const npas::PrepareStep& ps : m.prepare) {
      FUZZ_CHECK(ps.src.offset <= blob && ps.src.nbytes <= blob - ps.src.offset);
      FUZZ_CHECK(ps.dst.offset <= wsize && ps.dst.nbytes <= wsize - ps.dst.offset);
      FUZZ_CHECK(ps.work_items >= 1);
    }
    for (const npas::Step& st : m.steps) {
      FUZZ_CHECK(st.output < m.tensors.size());
      for (uint32_t i : st.inputs) FUZZ_CHECK(i < m.tensors.size());
      for (const npas::ParamRef& p : st.params) {
        FUZZ_CHECK(p.offset <= wsize && p.nbytes <= wsize - p.offset);
      }
      FUZZ_CHECK(st.work_items >= 1);
    }
    for (uint32_t i : m.inputs) FUZZ_CHECK(i < m.tensors.size());
    for (uint32_t i : m.outputs) FUZZ_CHECK(i < m.tensors.size());
    FUZZ_CHECK(b == npas::Backend::kCpu ? which.kernels >= 0 : which.opencl >= 0);
    const npas::MemoryNeed need = npas::memory_need(m, b, 256);
    FUZZ_CHECK(need.total() >= need.arena && need.total() >= need.weights);
    (void)npas::build_options(m);
  }
  return 0;
}
