/* Hand-written freestanding kernels for the core's tests: the shape of what codegen emits. */
#include "core/npas_kernel_abi.h"

const uint32_t npas_kernel_abi_version = NPAS_KERNEL_ABI_VERSION;

/* output[i] = inputs[0][i] + params[0][i] */
void k_add1(const npas_step_args *a, int64_t begin, int64_t end, void *scratch) {
  (void)scratch;
  for (int64_t i = begin; i < end; i++) a->output[i] = a->inputs[0][i] + a->params[0][i];
}

/* output[i] = inputs[0][i] * 2, staged through the thread's scratch to prove it is private. */
void k_double_scratch(const npas_step_args *a, int64_t begin, int64_t end, void *scratch) {
  float *s = (float *)scratch;
  for (int64_t i = begin; i < end; i++) {
    s[0] = a->inputs[0][i] * 2.0f;
    a->output[i] = s[0];
  }
}

/* output[i] = inputs[0][i] + inputs[1][i] */
void k_add2(const npas_step_args *a, int64_t begin, int64_t end, void *scratch) {
  (void)scratch;
  for (int64_t i = begin; i < end; i++) a->output[i] = a->inputs[0][i] + a->inputs[1][i];
}
