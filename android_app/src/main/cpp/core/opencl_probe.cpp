// OpenCL discovery for GetDeviceInfo: every platform and device through the dlopen'ed loader
// (core/opencl.h), so one runner binary works with or without a GPU.
#include <sstream>

#include "core/device_info.h"
#include "core/opencl.h"

namespace npas {

void probe_opencl(DeviceInfo* info) {
  using namespace cl;
  std::string why;
  const Api* a = api(&why);
  if (!a) {
    info->opencl_status = why;
    return;
  }
  cl_uint n_platforms = 0;
  cl_int err = a->GetPlatformIDs(0, nullptr, &n_platforms);
  if (err != CL_SUCCESS || n_platforms == 0) {
    info->opencl_status = "OpenCL library " + library_name() +
                          " loaded, no platforms (clGetPlatformIDs returned " +
                          error_name(err) + ")";
    return;
  }
  std::vector<cl_platform_id> platforms(n_platforms);
  err = a->GetPlatformIDs(n_platforms, platforms.data(), nullptr);
  if (err != CL_SUCCESS) {
    info->opencl_status = "clGetPlatformIDs returned " + error_name(err);
    return;
  }
  size_t n_devices_total = 0;
  for (cl_platform_id p : platforms) {
    OpenClPlatformInfo pi;
    pi.name = platform_string(*a, p, CL_PLATFORM_NAME);
    pi.vendor = platform_string(*a, p, CL_PLATFORM_VENDOR);
    pi.version = platform_string(*a, p, CL_PLATFORM_VERSION);
    cl_uint n_dev = 0;
    if (a->GetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 0, nullptr, &n_dev) == CL_SUCCESS && n_dev > 0) {
      std::vector<cl_device_id> devs(n_dev);
      if (a->GetDeviceIDs(p, CL_DEVICE_TYPE_ALL, n_dev, devs.data(), nullptr) == CL_SUCCESS) {
        for (cl_device_id d : devs) {
          OpenClDeviceInfo di;
          di.name = device_string(*a, d, CL_DEVICE_NAME);
          di.vendor = device_string(*a, d, CL_DEVICE_VENDOR);
          di.version = device_string(*a, d, CL_DEVICE_VERSION);
          di.driver_version = device_string(*a, d, CL_DRIVER_VERSION);
          std::istringstream ext(device_string(*a, d, CL_DEVICE_EXTENSIONS));
          for (std::string e; ext >> e;) di.extensions.push_back(e);
          cl_uint cu = 0;
          if (a->GetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, nullptr) ==
              CL_SUCCESS) {
            di.compute_units = cu;
          }
          cl_ulong mem = 0;
          if (a->GetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, nullptr) ==
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
