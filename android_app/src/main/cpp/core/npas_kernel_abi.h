/* The kernel ABI: how the runner calls the code that codegen emits.
 *
 * Kernels are freestanding (no libc, no malloc, no globals that need relocation at run time
 * beyond the library's own read-only data): the runner hands them every pointer. One kernel
 * library holds one function per step of the bundle's manifest; the manifest names the symbol.
 *
 * codegen/emit/c.py writes the same definitions into every generated source (it includes no
 * headers); tests/test_abi.py compiles both together and checks they agree.
 */
#ifndef NPAS_KERNEL_ABI_H
#define NPAS_KERNEL_ABI_H

#include <stdint.h>

#define NPAS_KERNEL_ABI_VERSION 1u

#ifdef __cplusplus
extern "C" {
#endif

typedef struct npas_step_args {
  /* Activations, in the order of the step's `inputs` in the manifest (arena pointers). */
  const float *const *inputs;
  /* The step's output tensor (arena pointer). */
  float *output;
  /* Parameters, in the order of the step's `params` (pointers into the weight blob,
   * 64-byte aligned). */
  const float *const *params;
} npas_step_args;

/* One step's kernel. It computes work items [begin, end) of the step's `work_items`.
 * `scratch` is this thread's scratch area of `scratch_bytes_per_thread` bytes (64-byte
 * aligned; NULL when the manifest asks for none). Calls on disjoint ranges may run
 * concurrently on different threads. */
typedef void (*npas_kernel_fn)(const npas_step_args *args, int64_t begin, int64_t end,
                               void *scratch);

/* Every kernel library exports this symbol; the runner refuses a library whose value differs
 * from NPAS_KERNEL_ABI_VERSION. */
#define NPAS_ABI_VERSION_SYMBOL "npas_kernel_abi_version"

#ifdef __cplusplus
}
#endif

#endif /* NPAS_KERNEL_ABI_H */
