// OpenCL through dlopen: the few Khronos definitions the runner needs, a function-pointer table
// loaded once per process, owning handles for every OpenCL object, and the choice of device.
// No OpenCL headers and no link-time dependency, so one binary runs with or without a GPU.
#ifndef NPAS_CORE_OPENCL_H
#define NPAS_CORE_OPENCL_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace npas {
namespace cl {

// ---- Types and constants (values from the Khronos cl.h) ----
using cl_int = int32_t;
using cl_uint = uint32_t;
using cl_ulong = uint64_t;
using cl_bitfield = uint64_t;
using cl_platform_id = struct _cl_platform_id*;
using cl_device_id = struct _cl_device_id*;
using cl_context = struct _cl_context*;
using cl_command_queue = struct _cl_command_queue*;
using cl_mem = struct _cl_mem*;
using cl_program = struct _cl_program*;
using cl_kernel = struct _cl_kernel*;
using cl_event = struct _cl_event*;
using cl_context_properties = intptr_t;

constexpr cl_int CL_SUCCESS = 0;
constexpr cl_int CL_MEM_OBJECT_ALLOCATION_FAILURE = -4;
constexpr cl_int CL_OUT_OF_RESOURCES = -5;
constexpr cl_int CL_OUT_OF_HOST_MEMORY = -6;
constexpr cl_int CL_BUILD_PROGRAM_FAILURE = -11;
constexpr cl_int CL_INVALID_KERNEL_NAME = -46;

constexpr cl_uint CL_PLATFORM_VERSION = 0x0901;
constexpr cl_uint CL_PLATFORM_NAME = 0x0902;
constexpr cl_uint CL_PLATFORM_VENDOR = 0x0903;

constexpr cl_bitfield CL_DEVICE_TYPE_GPU = 1 << 2;
constexpr cl_bitfield CL_DEVICE_TYPE_ALL = 0xFFFFFFFF;
constexpr cl_uint CL_DEVICE_TYPE = 0x1000;
constexpr cl_uint CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002;
constexpr cl_uint CL_DEVICE_MAX_WORK_ITEM_SIZES = 0x1005;
constexpr cl_uint CL_DEVICE_MAX_WORK_GROUP_SIZE = 0x1004;
constexpr cl_uint CL_DEVICE_MAX_MEM_ALLOC_SIZE = 0x1010;
constexpr cl_uint CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F;
constexpr cl_uint CL_DEVICE_NAME = 0x102B;
constexpr cl_uint CL_DEVICE_VENDOR = 0x102C;
constexpr cl_uint CL_DRIVER_VERSION = 0x102D;
constexpr cl_uint CL_DEVICE_VERSION = 0x102F;
constexpr cl_uint CL_DEVICE_EXTENSIONS = 0x1030;

constexpr cl_context_properties CL_CONTEXT_PLATFORM = 0x1084;
constexpr cl_bitfield CL_QUEUE_PROFILING_ENABLE = 1 << 1;
constexpr cl_bitfield CL_MEM_READ_WRITE = 1 << 0;
constexpr cl_bitfield CL_MEM_READ_ONLY = 1 << 2;
constexpr cl_bitfield CL_MEM_COPY_HOST_PTR = 1 << 5;
constexpr cl_uint CL_TRUE = 1;
constexpr cl_uint CL_FALSE = 0;

constexpr cl_uint CL_PROGRAM_BINARY_SIZES = 0x1165;
constexpr cl_uint CL_PROGRAM_BINARIES = 0x1166;
constexpr cl_uint CL_PROGRAM_BUILD_LOG = 0x1183;
constexpr cl_uint CL_KERNEL_NUM_ARGS = 0x1191;
constexpr cl_uint CL_KERNEL_WORK_GROUP_SIZE = 0x11B0;
constexpr cl_uint CL_PROFILING_COMMAND_START = 0x1282;
constexpr cl_uint CL_PROFILING_COMMAND_END = 0x1283;

// ---- The entry points the runner uses ----
struct Api {
  cl_int (*GetPlatformIDs)(cl_uint, cl_platform_id*, cl_uint*);
  cl_int (*GetPlatformInfo)(cl_platform_id, cl_uint, size_t, void*, size_t*);
  cl_int (*GetDeviceIDs)(cl_platform_id, cl_bitfield, cl_uint, cl_device_id*, cl_uint*);
  cl_int (*GetDeviceInfo)(cl_device_id, cl_uint, size_t, void*, size_t*);
  cl_context (*CreateContext)(const cl_context_properties*, cl_uint, const cl_device_id*,
                              void (*)(const char*, const void*, size_t, void*), void*, cl_int*);
  cl_int (*ReleaseContext)(cl_context);
  cl_command_queue (*CreateCommandQueue)(cl_context, cl_device_id, cl_bitfield, cl_int*);
  cl_int (*ReleaseCommandQueue)(cl_command_queue);
  cl_mem (*CreateBuffer)(cl_context, cl_bitfield, size_t, void*, cl_int*);
  cl_int (*ReleaseMemObject)(cl_mem);
  cl_program (*CreateProgramWithSource)(cl_context, cl_uint, const char**, const size_t*,
                                        cl_int*);
  cl_program (*CreateProgramWithBinary)(cl_context, cl_uint, const cl_device_id*,
                                        const size_t*, const unsigned char**, cl_int*, cl_int*);
  cl_int (*BuildProgram)(cl_program, cl_uint, const cl_device_id*, const char*,
                         void (*)(cl_program, void*), void*);
  cl_int (*GetProgramBuildInfo)(cl_program, cl_device_id, cl_uint, size_t, void*, size_t*);
  cl_int (*GetProgramInfo)(cl_program, cl_uint, size_t, void*, size_t*);
  cl_int (*ReleaseProgram)(cl_program);
  cl_kernel (*CreateKernel)(cl_program, const char*, cl_int*);
  cl_int (*ReleaseKernel)(cl_kernel);
  cl_int (*GetKernelInfo)(cl_kernel, cl_uint, size_t, void*, size_t*);
  cl_int (*GetKernelWorkGroupInfo)(cl_kernel, cl_device_id, cl_uint, size_t, void*, size_t*);
  cl_int (*SetKernelArg)(cl_kernel, cl_uint, size_t, const void*);
  cl_int (*EnqueueNDRangeKernel)(cl_command_queue, cl_kernel, cl_uint, const size_t*,
                                 const size_t*, const size_t*, cl_uint, const cl_event*,
                                 cl_event*);
  cl_int (*EnqueueWriteBuffer)(cl_command_queue, cl_mem, cl_uint, size_t, size_t, const void*,
                               cl_uint, const cl_event*, cl_event*);
  cl_int (*EnqueueReadBuffer)(cl_command_queue, cl_mem, cl_uint, size_t, size_t, void*, cl_uint,
                              const cl_event*, cl_event*);
  cl_int (*Finish)(cl_command_queue);
  cl_int (*GetEventProfilingInfo)(cl_event, cl_uint, size_t, void*, size_t*);
  cl_int (*ReleaseEvent)(cl_event);
};

// The table, loaded on first use (thread-safe) and kept for the life of the process: ICD
// loaders do not like being unloaded. nullptr when no library could be loaded or it lacks an
// entry point; `why` then says which libraries were tried or what is missing.
const Api* api(std::string* why);
// The library that was loaded ("libOpenCL.so.1", a vendor path), empty when none.
std::string library_name();

// "CL_INVALID_KERNEL_NAME (-46)".
std::string error_name(cl_int err);
// "clEnqueueNDRangeKernel returned CL_INVALID_WORK_GROUP_SIZE (-54)", with a status code that
// fits: out-of-memory errors are ResourceExhausted, everything else Internal.
Status cl_error(const std::string& what, cl_int err);

// A string-valued clGet*Info query (trailing NULs removed; empty on error).
std::string platform_string(const Api& a, cl_platform_id p, cl_uint param);
std::string device_string(const Api& a, cl_device_id d, cl_uint param);

// An owning OpenCL handle: releases with the table's release function for its type.
template <typename T>
class Handle {
 public:
  Handle() = default;
  Handle(const Api* a, T h) : api_(a), h_(h) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : api_(o.api_), h_(std::exchange(o.h_, nullptr)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      api_ = o.api_;
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  T get() const { return h_; }
  explicit operator bool() const { return h_ != nullptr; }
  void reset();

 private:
  const Api* api_ = nullptr;
  T h_ = nullptr;
};

template <> inline void Handle<cl_context>::reset() {
  if (h_) api_->ReleaseContext(h_);
  h_ = nullptr;
}
template <> inline void Handle<cl_command_queue>::reset() {
  if (h_) api_->ReleaseCommandQueue(h_);
  h_ = nullptr;
}
template <> inline void Handle<cl_mem>::reset() {
  if (h_) api_->ReleaseMemObject(h_);
  h_ = nullptr;
}
template <> inline void Handle<cl_program>::reset() {
  if (h_) api_->ReleaseProgram(h_);
  h_ = nullptr;
}
template <> inline void Handle<cl_kernel>::reset() {
  if (h_) api_->ReleaseKernel(h_);
  h_ = nullptr;
}
template <> inline void Handle<cl_event>::reset() {
  if (h_) api_->ReleaseEvent(h_);
  h_ = nullptr;
}

// The device the GPU backend runs on, and what it can do.
struct Device {
  cl_platform_id platform = nullptr;
  cl_device_id id = nullptr;
  std::string name, vendor, version, driver_version, platform_name, platform_version;
  std::vector<std::string> extensions;
  size_t max_work_group_size = 0;
  size_t max_work_item_size0 = 0;  // CL_DEVICE_MAX_WORK_ITEM_SIZES[0]
  uint64_t max_mem_alloc_size = 0;
  bool is_gpu = false;

  bool has_extension(const std::string& e) const;
};

// The first GPU device of the first platform that has one, else the first device of any type
// (PoCL is a CPU device). FailedPrecondition "no OpenCL device: <why>" when there is none.
StatusOr<Device> choose_device(const Api& a);

}  // namespace cl
}  // namespace npas

#endif  // NPAS_CORE_OPENCL_H
