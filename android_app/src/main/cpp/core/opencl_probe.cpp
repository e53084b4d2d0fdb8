// OpenCL discovery through dlopen: one runner binary works with or without a GPU, and the
// vendor library (not part of the NDK) is found where Android vendors put it.
#include <dlfcn.h>

#include <cstdint>
#include <sstream>

#include "core/device_info.h"

namespace npas {
namespace {

// The few OpenCL definitions needed here (from the Khronos cl.h), so no headers are required.
using cl_int = int32_t;
using cl_uint = uint32_t;
using cl_ulong = uint64_t;
using cl_platform_id = void*;
using cl_device_id = void*;
constexpr cl_int CL_SUCCESS = 0;
constexpr cl_uint CL_PLATFORM_VERSION = 0x0901;
constexpr cl_uint CL_PLATFORM_NAME = 0x0902;
constexpr cl_uint CL_PLATFORM_VENDOR = 0x0903;
constexpr cl_ulong CL_DEVICE_TYPE_ALL = 0xFFFFFFFF;
constexpr cl_uint CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002;
constexpr cl_uint CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F;
constexpr cl_uint CL_DEVICE_NAME = 0x102B;
constexpr cl_uint CL_DEVICE_VENDOR = 0x102C;
constexpr cl_uint CL_DRIVER_VERSION = 0x102D;
constexpr cl_uint CL_DEVICE_VERSION = 0x102F;
constexpr cl_uint CL_DEVICE_EXTENSIONS = 0x1030;

using GetPlatformIDs = cl_int (*)(cl_uint, cl_platform_id*, cl_uint*);
using GetPlatformInfo = cl_int (*)(cl_platform_id, cl_uint, size_t, void*, size_t*);
using GetDeviceIDs = cl_int (*)(cl_platform_id, cl_ulong, cl_uint, cl_device_id*, cl_uint*);
using GetDeviceInfo = cl_int (*)(cl_device_id, cl_uint, size_t, void*, size_t*);

template <typename Fn, typename Handle>
std::string info_string(Fn fn, Handle h, cl_uint param) {
  size_t size = 0;
  if (fn(h, param, 0, nullptr, &size) != CL_SUCCESS || size == 0 || size > (1 << 20)) return "";
  std::string s(size, '\0');
  if (fn(h, param, size, s.data(), nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

}  // namespace

void probe_opencl(DeviceInfo* info) {
  std::vector<const char*> candidates = {"libOpenCL.so.1", "libOpenCL.so"};
#if defined(__ANDROID__)
  candidates.push_back("/vendor/lib64/libOpenCL.so");
  candidates.push_back("/system/vendor/lib64/libOpenCL.so");
#endif
  // Kept open for the life of the process: ICD loaders do not like being unloaded, and the
  // GPU backend will use the same library.
  void* lib = nullptr;
  std::string tried;
  for (const char* name : candidates) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  if (!lib) {
    info->opencl_status = "no OpenCL library found (tried " + tried + ")";
    return;
  }
  auto get_platforms = reinterpret_cast<GetPlatformIDs>(dlsym(lib, "clGetPlatformIDs"));
  auto platform_info = reinterpret_cast<GetPlatformInfo>(dlsym(lib, "clGetPlatformInfo"));
  auto get_devices = reinterpret_cast<GetDeviceIDs>(dlsym(lib, "clGetDeviceIDs"));
  auto device_info = reinterpret_cast<GetDeviceInfo>(dlsym(lib, "clGetDeviceInfo"));
  if (!get_platforms || !platform_info || !get_devices || !device_info) {
    info->opencl_status = "OpenCL library loaded but lacks clGetPlatformIDs/clGetDeviceInfo";
    return;
  }
  cl_uint n_platforms = 0;
  cl_int err = get_platforms(0, nullptr, &n_platforms);
  if (err != CL_SUCCESS || n_platforms == 0) {
    info->opencl_status = "OpenCL library loaded, no platforms (clGetPlatformIDs returned " +
                          std::to_string(err) + ")";
    return;
  }
  std::vector<cl_platform_id> platforms(n_platforms);
  if (get_platforms(n_platforms, platforms.data(), nullptr) != CL_SUCCESS) {
    info->opencl_status = "clGetPlatformIDs failed";
    return;
  }
  size_t n_devices_total = 0;
  for (cl_platform_id p : platforms) {
    OpenClPlatformInfo pi;
    pi.name = info_string(platform_info, p, CL_PLATFORM_NAME);
    pi.vendor = info_string(platform_info, p, CL_PLATFORM_VENDOR);
    pi.version = info_string(platform_info, p, CL_PLATFORM_VERSION);
    cl_uint n_dev = 0;
    if (get_devices(p, CL_DEVICE_TYPE_ALL, 0, nullptr, &n_dev) == CL_SUCCESS && n_dev > 0) {
      std::vector<cl_device_id> devs(n_dev);
      if (get_devices(p, CL_DEVICE_TYPE_ALL, n_dev, devs.data(), nullptr) == CL_SUCCESS) {
        for (cl_device_id d : devs) {
          OpenClDeviceInfo di;
          di.name = info_string(device_info, d, CL_DEVICE_NAME);
          di.vendor = info_string(device_info, d, CL_DEVICE_VENDOR);
          di.version = info_string(device_info, d, CL_DEVICE_VERSION);
          di.driver_version = info_string(device_info, d, CL_DRIVER_VERSION);
          std::istringstream ext(info_string(device_info, d, CL_DEVICE_EXTENSIONS));
          for (std::string e; ext >> e;) di.extensions.push_back(e);
          cl_uint cu = 0;
          if (device_info(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, nullptr) == CL_SUCCESS) {
            di.compute_units = cu;
          }
          cl_ulong mem = 0;
          if (device_info(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, nullptr) ==
              CL_SUCCESS) {
            di.global_mem_bytes = mem;
          }
          pi.devices.push_back(std::move(di));
        }
      }
    }
    n_devices_total += pi.devices.size();
    info->opencl_platforms.push_back(std::move(pi));
  }
  info->opencl_status = "ok: " + std::to_string(info->opencl_platforms.size()) +
                        " platform(s), " + std::to_string(n_devices_total) + " device(s)";
}

}  // namespace npas
