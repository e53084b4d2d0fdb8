// The core tests' two-step model as a proto Manifest (y = 2 * (x + w) over 37 floats:
// k_add1 then k_double_scratch from tests/test_kernels.c), and storing bytes in a store: what
// the request fuzz target and the service stress test load.
#ifndef NPAS_TESTS_TWO_STEP_MODEL_H
#define NPAS_TESTS_TWO_STEP_MODEL_H

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/artifact_store.h"
#include "core/sha256.h"
#include "npas/runner/v1/runner.pb.h"

#define TWO_STEP_CHECK(cond)                                                       \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                \
    }                                                                              \
  } while (0)

namespace npas_test {

namespace pb = ::npas::runner::v1;

inline std::string put(npas::ArtifactStore& store, const std::string& bytes) {
  std::string sha = npas::Sha256::hex(bytes.data(), bytes.size());
  auto w = store.begin_write(sha, bytes.size());
  TWO_STEP_CHECK(w.ok());
  TWO_STEP_CHECK(w.value()->append(bytes.data(), bytes.size()).ok());
  TWO_STEP_CHECK(w.value()->finish().ok());
  return sha;
}

// The core tests' two-step model: y = 2 * (x + w) over 37 floats, k_add1 then k_double_scratch.
inline pb::Manifest two_step(const std::string& ksha, uint64_t ksize, const std::string& wsha,
                      uint64_t wsize) {
  const int64_t n = 37;
  const uint64_t nb = n * 4, slot = (nb + 63) / 64 * 64;
  pb::Manifest m;
  m.set_format_version(2);
  m.set_weights_bytes(wsize);  // no prepare steps: the blob is the weight buffer
  m.set_kernel_abi_version(1);
  m.set_name("two_step");
  m.mutable_target()->set_arch("x86_64");
  auto* k = m.add_artifacts();
  k->set_role("kernels");
  k->set_kind(pb::KERNEL_LIBRARY);
  k->set_sha256(ksha);
  k->set_size(ksize);
  auto* w = m.add_artifacts();
  w->set_role("weights");
  w->set_kind(pb::WEIGHTS);
  w->set_sha256(wsha);
  w->set_size(wsize);
  const char* names[] = {"x", "h", "y"};
  for (int i = 0; i < 3; ++i) {
    auto* t = m.add_tensors();
    t->set_name(names[i]);
    t->add_shape(1);
    t->add_shape(n);
    t->set_dtype("float32");
    t->set_arena_offset(uint64_t(i) * slot);
    t->set_nbytes(nb);
  }
  m.add_inputs(0);
  m.add_outputs(2);
  m.set_arena_bytes(3 * slot);
  m.set_scratch_bytes_per_thread(16);
  auto* s1 = m.add_steps();
  s1->set_name("add");
  s1->set_op("add");
  s1->set_symbol("k_add1");
  s1->add_inputs(0);
  s1->set_output(1);
  auto* p = s1->add_params();
  p->set_offset(0);
  p->set_nbytes(nb);
  s1->set_work_items(n);
  auto* s2 = m.add_steps();
  s2->set_name("double");
  s2->set_op("mul");
  s2->set_symbol("k_double_scratch");
  s2->add_inputs(1);
  s2->set_output(2);
  s2->set_work_items(n);
  return m;
}

}  // namespace npas_test

#endif  // NPAS_TESTS_TWO_STEP_MODEL_H
