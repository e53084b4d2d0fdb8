// The GPU backend: a bundle's OpenCL C source built once for the chosen device (program
// binaries cached on disk), one arena buffer and one weight buffer, one kernel per step
// symbol, and one in-order profiling queue on which the steps run as 1-D NDRanges.
//
// Kernel ABI (GPU): every step symbol is
//   __kernel void SYMBOL(__global float *arena, __global const float *weights)
// (half instead of float in fp16 bundles); tensors and params are at the manifest's byte
// offsets in those two buffers, baked into the source by the code generator.
#ifndef NPAS_CORE_GPU_MODEL_H
#define NPAS_CORE_GPU_MODEL_H

#include <memory>
#include <string>

#include "core/artifact_store.h"
#include "core/cl_program_cache.h"
#include "core/manifest.h"
#include "core/model.h"
#include "core/status.h"

namespace npas {

// Validates the manifest (backend GPU), picks the OpenCL device, builds the program and
// creates buffers and kernels. Status codes:
//   FAILED_PRECONDITION  no OpenCL library/platform/device ("no OpenCL device: <why>"); the
//                        bundle needs an extension the device lacks; the program does not
//                        build (the message carries the trimmed build log); not an OpenCL
//                        bundle
//   NOT_FOUND            an artifact is not in the store; a step's kernel is not in the program
//   INVALID_ARGUMENT     a malformed manifest; local_size over the device's or the kernel's
//                        work-group limit; a kernel that does not take (arena, weights)
//   RESOURCE_EXHAUSTED   arena or weights larger than the device allocates; out of memory
// `cache_dir` holds program binaries keyed by source, device, driver and build options;
// empty: no cache.
StatusOr<std::unique_ptr<Model>> load_gpu_model(const Manifest& manifest,
                                                ArtifactStore& store,
                                                const ManifestLimits& limits,
                                                const std::string& cache_dir);

}  // namespace npas

#endif  // NPAS_CORE_GPU_MODEL_H
