// The OpenCL loader (dlopen + dlsym into a table), error names, and device choice.
#include "core/opencl.h"

#include <dlfcn.h>

#include <mutex>
#include <sstream>

namespace npas {
namespace cl {
namespace {

struct Loaded {
  Api api{};
  bool ok = false;
  std::string why;
  std::string library;
};

template <typename Fn>
bool bind(void* lib, const char* name, Fn* slot, std::string* missing) {
  *slot = reinterpret_cast<Fn>(dlsym(lib, name));
  if (!*slot) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *slot != nullptr;
}

Loaded load() {
  Loaded out;
#if defined(NPAS_STATIC_RUNNER)
  // A static executable has no dynamic loader of its own to hand a vendor's libOpenCL.so (on
  // a phone: a bionic library); trying would crash or mislead, so say it plainly.
  out.why = "this static build has no GPU backend (a static executable cannot load the "
            "system's OpenCL driver); use the app for --backend gpu";
  return out;
#endif
  std::vector<const char*> candidates = {"libOpenCL.so.1", "libOpenCL.so"};
#if defined(__ANDROID__)
  // Not part of the NDK: vendors put it here (the app declares <uses-native-library>).
  candidates.push_back("/vendor/lib64/libOpenCL.so");
  candidates.push_back("/system/vendor/lib64/libOpenCL.so");
  candidates.push_back("/system/lib64/libOpenCL.so");
#endif
  void* lib = nullptr;
  std::string tried;
  for (const char* name : candidates) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) {
      out.library = name;
      break;
    }
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  if (!lib) {
    out.why = "no OpenCL library found (tried " + tried + ")";
    return out;
  }
  Api& a = out.api;
  std::string missing;
  bind(lib, "clGetPlatformIDs", &a.GetPlatformIDs, &missing);
  bind(lib, "clGetPlatformInfo", &a.GetPlatformInfo, &missing);
  bind(lib, "clGetDeviceIDs", &a.GetDeviceIDs, &missing);
  bind(lib, "clGetDeviceInfo", &a.GetDeviceInfo, &missing);
  bind(lib, "clCreateContext", &a.CreateContext, &missing);
  bind(lib, "clReleaseContext", &a.ReleaseContext, &missing);
  // The OpenCL 1.x entry point: deprecated in 2.0 but exported by every ICD loader and by
  // Adreno/Mali drivers, and it takes plain properties.
  bind(lib, "clCreateCommandQueue", &a.CreateCommandQueue, &missing);
  bind(lib, "clReleaseCommandQueue", &a.ReleaseCommandQueue, &missing);
  bind(lib, "clCreateBuffer", &a.CreateBuffer, &missing);
  bind(lib, "clReleaseMemObject", &a.ReleaseMemObject, &missing);
  bind(lib, "clCreateProgramWithSource", &a.CreateProgramWithSource, &missing);
  bind(lib, "clCreateProgramWithBinary", &a.CreateProgramWithBinary, &missing);
  bind(lib, "clBuildProgram", &a.BuildProgram, &missing);
  bind(lib, "clGetProgramBuildInfo", &a.GetProgramBuildInfo, &missing);
  bind(lib, "clGetProgramInfo", &a.GetProgramInfo, &missing);
  bind(lib, "clReleaseProgram", &a.ReleaseProgram, &missing);
  bind(lib, "clCreateKernel", &a.CreateKernel, &missing);
  bind(lib, "clReleaseKernel", &a.ReleaseKernel, &missing);
  bind(lib, "clGetKernelInfo", &a.GetKernelInfo, &missing);
  bind(lib, "clGetKernelWorkGroupInfo", &a.GetKernelWorkGroupInfo, &missing);
  bind(lib, "clSetKernelArg", &a.SetKernelArg, &missing);
  bind(lib, "clEnqueueNDRangeKernel", &a.EnqueueNDRangeKernel, &missing);
  bind(lib, "clEnqueueWriteBuffer", &a.EnqueueWriteBuffer, &missing);
  bind(lib, "clEnqueueReadBuffer", &a.EnqueueReadBuffer, &missing);
  bind(lib, "clFinish", &a.Finish, &missing);
  bind(lib, "clGetEventProfilingInfo", &a.GetEventProfilingInfo, &missing);
  bind(lib, "clReleaseEvent", &a.ReleaseEvent, &missing);
  if (!missing.empty()) {
    out.why = "OpenCL library " + out.library + " lacks " + missing;
    return out;  // the library stays open; a process has one anyway
  }
  out.ok = true;
  return out;
}

const Loaded& loaded() {
  static const Loaded l = load();  // thread-safe since C++11
  return l;
}

template <typename Fn, typename H>
std::string info_string(Fn fn, H h, cl_uint param) {
  size_t size = 0;
  if (fn(h, param, 0, nullptr, &size) != CL_SUCCESS || size == 0 || size > (1 << 20)) return "";
  std::string s(size, '\0');
  if (fn(h, param, size, s.data(), nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

}  // namespace

const Api* api(std::string* why) {
  const Loaded& l = loaded();
  if (!l.ok) {
    if (why) *why = l.why;
    return nullptr;
  }
  return &l.api;
}

std::string library_name() { return loaded().library; }

std::string error_name(cl_int err) {
  const char* n = nullptr;
  switch (err) {
    case 0: n = "CL_SUCCESS"; break;
    case -1: n = "CL_DEVICE_NOT_FOUND"; break;
    case -2: n = "CL_DEVICE_NOT_AVAILABLE"; break;
    case -3: n = "CL_COMPILER_NOT_AVAILABLE"; break;
    case -4: n = "CL_MEM_OBJECT_ALLOCATION_FAILURE"; break;
    case -5: n = "CL_OUT_OF_RESOURCES"; break;
    case -6: n = "CL_OUT_OF_HOST_MEMORY"; break;
    case -7: n = "CL_PROFILING_INFO_NOT_AVAILABLE"; break;
    case -11: n = "CL_BUILD_PROGRAM_FAILURE"; break;
    case -30: n = "CL_INVALID_VALUE"; break;
    case -32: n = "CL_INVALID_PLATFORM"; break;
    case -33: n = "CL_INVALID_DEVICE"; break;
    case -34: n = "CL_INVALID_CONTEXT"; break;
    case -36: n = "CL_INVALID_COMMAND_QUEUE"; break;
    case -38: n = "CL_INVALID_MEM_OBJECT"; break;
    case -42: n = "CL_INVALID_BINARY"; break;
    case -43: n = "CL_INVALID_BUILD_OPTIONS"; break;
    case -44: n = "CL_INVALID_PROGRAM"; break;
    case -45: n = "CL_INVALID_PROGRAM_EXECUTABLE"; break;
    case -46: n = "CL_INVALID_KERNEL_NAME"; break;
    case -47: n = "CL_INVALID_KERNEL_DEFINITION"; break;
    case -48: n = "CL_INVALID_KERNEL"; break;
    case -49: n = "CL_INVALID_ARG_INDEX"; break;
    case -50: n = "CL_INVALID_ARG_VALUE"; break;
    case -51: n = "CL_INVALID_ARG_SIZE"; break;
    case -52: n = "CL_INVALID_KERNEL_ARGS"; break;
    case -53: n = "CL_INVALID_WORK_DIMENSION"; break;
    case -54: n = "CL_INVALID_WORK_GROUP_SIZE"; break;
    case -55: n = "CL_INVALID_WORK_ITEM_SIZE"; break;
    case -56: n = "CL_INVALID_GLOBAL_OFFSET"; break;
    case -58: n = "CL_INVALID_EVENT"; break;
    case -59: n = "CL_INVALID_OPERATION"; break;
    case -61: n = "CL_INVALID_BUFFER_SIZE"; break;
    case -63: n = "CL_INVALID_GLOBAL_WORK_SIZE"; break;
    case -1001: n = "CL_PLATFORM_NOT_FOUND_KHR"; break;
    default: break;
  }
  std::string s = n ? n : "OpenCL error";
  return s + " (" + std::to_string(err) + ")";
}

Status cl_error(const std::string& what, cl_int err) {
  std::string m = what + " returned " + error_name(err);
  if (err == CL_OUT_OF_HOST_MEMORY || err == CL_OUT_OF_RESOURCES ||
      err == CL_MEM_OBJECT_ALLOCATION_FAILURE) {
    return ResourceExhausted(m);
  }
  return Internal(m);
}

std::string platform_string(const Api& a, cl_platform_id p, cl_uint param) {
  return info_string(a.GetPlatformInfo, p, param);
}

std::string device_string(const Api& a, cl_device_id d, cl_uint param) {
  return info_string(a.GetDeviceInfo, d, param);
}

bool Device::has_extension(const std::string& e) const {
  for (const auto& x : extensions) {
    if (x == e) return true;
  }
  return false;
}

StatusOr<Device> choose_device(const Api& a) {
  auto none = [](const std::string& why) { return FailedPrecondition("no OpenCL device: " + why); };
  cl_uint n_platforms = 0;
  cl_int err = a.GetPlatformIDs(0, nullptr, &n_platforms);
  if (err != CL_SUCCESS || n_platforms == 0) {
    return none("OpenCL library " + library_name() + " loaded, no platforms (clGetPlatformIDs " +
                "returned " + error_name(err) + ", " + std::to_string(n_platforms) +
                " platforms)");
  }
  std::vector<cl_platform_id> platforms(n_platforms);
  err = a.GetPlatformIDs(n_platforms, platforms.data(), nullptr);
  if (err != CL_SUCCESS) return none("clGetPlatformIDs returned " + error_name(err));

  Device best;
  bool have_any = false;
  for (cl_platform_id p : platforms) {
    cl_uint n = 0;
    if (a.GetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 0, nullptr, &n) != CL_SUCCESS || n == 0) continue;
    std::vector<cl_device_id> devs(n);
    if (a.GetDeviceIDs(p, CL_DEVICE_TYPE_ALL, n, devs.data(), nullptr) != CL_SUCCESS) continue;
    for (cl_device_id d : devs) {
      cl_bitfield type = 0;
      a.GetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, nullptr);
      bool gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
      if (!have_any || (gpu && !best.is_gpu)) {
        best = Device{};
        best.platform = p;
        best.id = d;
        best.is_gpu = gpu;
        have_any = true;
      }
      if (best.is_gpu) break;
    }
    if (best.is_gpu) break;
  }
  if (!have_any) {
    return none(std::to_string(n_platforms) + " OpenCL platform(s), none with a device");
  }
  Device& d = best;
  d.name = device_string(a, d.id, CL_DEVICE_NAME);
  d.vendor = device_string(a, d.id, CL_DEVICE_VENDOR);
  d.version = device_string(a, d.id, CL_DEVICE_VERSION);
  d.driver_version = device_string(a, d.id, CL_DRIVER_VERSION);
  d.platform_name = platform_string(a, d.platform, CL_PLATFORM_NAME);
  d.platform_version = platform_string(a, d.platform, CL_PLATFORM_VERSION);
  std::istringstream ext(device_string(a, d.id, CL_DEVICE_EXTENSIONS));
  for (std::string e; ext >> e;) d.extensions.push_back(e);
  size_t wg = 0;
  if (a.GetDeviceInfo(d.id, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, nullptr) == CL_SUCCESS) {
    d.max_work_group_size = wg;
  }
  size_t sizes[3] = {0, 0, 0};  // at least 3 dimensions; ask for the first 3 only
  size_t got = 0;
  if (a.GetDeviceInfo(d.id, CL_DEVICE_MAX_WORK_ITEM_SIZES, 0, nullptr, &got) == CL_SUCCESS &&
      got >= sizeof(size_t)) {
    std::vector<size_t> all(got / sizeof(size_t));
    if (a.GetDeviceInfo(d.id, CL_DEVICE_MAX_WORK_ITEM_SIZES, all.size() * sizeof(size_t),
                        all.data(), nullptr) == CL_SUCCESS) {
      sizes[0] = all[0];
    }
  }
  d.max_work_item_size0 = sizes[0] ? sizes[0] : d.max_work_group_size;
  cl_ulong alloc = 0;
  if (a.GetDeviceInfo(d.id, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, nullptr) ==
      CL_SUCCESS) {
    d.max_mem_alloc_size = alloc;
  }
  return best;
}

}  // namespace cl
}  // namespace npas
