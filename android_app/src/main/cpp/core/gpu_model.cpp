// The GPU (OpenCL) backend: load (device, program with binary cache, buffers, kernels) and
// execution (writes, NDRanges, profiling events, reads) on one in-order queue.
#include "core/gpu_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "core/cl_program_cache.h"
#include "core/opencl.h"
#include "core/os_util.h"
#include "core/sha256.h"

namespace npas {
namespace {

using namespace cl;

constexpr size_t kZeroChunk = 1 << 20;

void log_line(const std::string& s) { std::fprintf(stderr, "npas-runner: %s\n", s.c_str()); }

class GpuModel final : public Model {
 public:
  ~GpuModel() override {
    if (queue_) api_->Finish(queue_.get());  // nothing in flight when buffers go away
  }
  Backend backend() const override { return Backend::kGpu; }
  int threads() const override { return 1; }
  const uint8_t* output_data(size_t i) const override { return outputs_[i].data(); }

  static StatusOr<std::unique_ptr<Model>> load(const Manifest& manifest,
                                               ArtifactStore& store,
                                               const ManifestLimits& limits,
                                               const std::string& cache_dir);

 private:
  struct GpuStep {
    cl_kernel kernel = nullptr;  // owned by kernels_
    size_t global = 0;
    size_t local = 0;  // 0: the driver chooses
  };

  GpuModel(const Manifest& m, const Api* a) : Model(m), api_(a) {}

  Status build_program(const std::string& source, const std::string& source_sha,
                       const std::string& cache_dir);
  Status try_binary(const std::vector<uint8_t>& bin, const std::string& options);

  Status write_inputs(const std::vector<TensorView>& inputs) override;
  Status execute(std::vector<std::vector<uint64_t>>* layer_ns, size_t run,
                 uint64_t* ns) override;
  Status read_outputs() override;
  Status step_error(size_t i, const std::string& call, cl_int err) const;

  const Api* api_;
  Device device_;
  // Declared in creation order: destroyed in reverse (events and kernels before the context).
  Handle<cl_context> context_;
  Handle<cl_command_queue> queue_;
  Handle<cl_program> program_;
  Handle<cl_mem> arena_;
  Handle<cl_mem> weights_;
  std::vector<Handle<cl_kernel>> kernels_;  // one per distinct symbol
  std::vector<Handle<cl_event>> events_;    // one per step, for per-layer times
  std::vector<GpuStep> steps_;
  std::vector<std::vector<uint8_t>> outputs_;
  bool from_cache_ = false;
};

Status GpuModel::try_binary(const std::vector<uint8_t>& bin, const std::string& options) {
  const unsigned char* ptr = bin.data();
  size_t len = bin.size();
  cl_int bin_status = 0, err = 0;
  cl_device_id dev = device_.id;
  Handle<cl_program> p(api_, api_->CreateProgramWithBinary(context_.get(), 1, &dev, &len, &ptr,
                                                           &bin_status, &err));
  if (err != CL_SUCCESS || bin_status != CL_SUCCESS || !p) {
    return cl_error("clCreateProgramWithBinary", err != CL_SUCCESS ? err : bin_status);
  }
  err = api_->BuildProgram(p.get(), 1, &dev, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) return cl_error("clBuildProgram (cached binary)", err);
  program_ = std::move(p);
  return Status::Ok();
}

Status GpuModel::build_program(const std::string& source, const std::string& source_sha,
                               const std::string& cache_dir) {
  const Manifest& m = manifest();
  const std::string options = build_options(m);
  std::string key, path;
  if (!cache_dir.empty()) {
    key = program_cache_key(source_sha, device_.platform_name + " " + device_.platform_version,
                            device_.name, device_.version, device_.driver_version, options);
    path = cache_dir + "/" + key;
    std::vector<uint8_t> bin = program_cache_read(path);
    if (!bin.empty()) {
      Status s = try_binary(bin, options);
      if (s.ok()) {
        from_cache_ = true;
        ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);  // last use, for trim_cache_dir
        return s;
      }
      log_line("cached program binary " + path + " is unusable (" + s.message() +
               "); rebuilding from source");
      ::unlink(path.c_str());
    }
  }

  const char* src = source.data();
  size_t len = source.size();
  cl_int err = 0;
  Handle<cl_program> p(api_, api_->CreateProgramWithSource(context_.get(), 1, &src, &len, &err));
  if (err != CL_SUCCESS || !p) return cl_error("clCreateProgramWithSource", err);
  cl_device_id dev = device_.id;
  err = api_->BuildProgram(p.get(), 1, &dev, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) {
    std::string log = build_log(*api_, p.get(), dev);
    log_line("manifest '" + clip(m.name) + "': OpenCL build log:\n" + log);
    std::string where = kernels_with_errors(log, source);
    return FailedPrecondition(
        "manifest '" + clip(m.name) + "': the OpenCL program does not build on " + device_.name +
        " (clBuildProgram returned " + error_name(err) + ", options '" + clip(options, 400) + "')" +
        (where.empty() ? "" : "; errors in kernel " + where) + "; build log:\n" +
        (log.empty() ? std::string("(empty)") : trim_build_log(log)));
  }
  program_ = std::move(p);
  if (!cache_dir.empty()) {
    std::vector<uint8_t> bin = program_binary(*api_, program_.get());
    if (!bin.empty()) {
      Status s = program_cache_write(cache_dir, key, bin);
      if (!s.ok()) log_line("program cache: " + s.message());
      trim_cache_dir(cache_dir, kProgramCacheMaxBytes);
    }
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<Model>> GpuModel::load(const Manifest& manifest,
                                                ArtifactStore& store,
                                                const ManifestLimits& limits,
                                                const std::string& cache_dir) {
  uint64_t t0 = monotonic_ns();
  ManifestArtifacts which;
  NPAS_RETURN_IF_ERROR(validate_manifest(manifest, limits, &which, Backend::kGpu));
  NPAS_RETURN_IF_ERROR(check_artifacts_in_store(manifest, store));
  const std::string who = "manifest '" + clip(manifest.name) + "'";

  std::string why;
  const Api* a = api(&why);
  if (!a) return FailedPrecondition("no OpenCL device: " + why);
  std::unique_ptr<GpuModel> m(new GpuModel(manifest, a));  // private constructor
  auto dev = choose_device(*a);
  if (!dev.ok()) return dev.status();
  m->device_ = std::move(dev).value();
  const Device& d = m->device_;

  // What the bundle needs from the device.
  for (const std::string& f : manifest.target.features) {
    if (!d.has_extension(f)) {
      return FailedPrecondition("bundle '" + clip(manifest.name) + "' needs " + clip(f) +
                                "; device " + d.name + " does not support it");
    }
  }
  // The global size the device addresses (CL_DEVICE_ADDRESS_BITS): a size_t of the device.
  // The manifest's own bound (max_gpu_work_items, what the kernels' int indices reach) is
  // lower on every device seen; this one holds on a 32-bit device too.
  constexpr cl_uint kDeviceAddressBits = 0x100D;  // CL_DEVICE_ADDRESS_BITS
  cl_uint bits = 0;
  uint64_t max_global = UINT64_MAX;
  if (a->GetDeviceInfo(d.id, kDeviceAddressBits, sizeof bits, &bits, nullptr) == CL_SUCCESS &&
      bits > 0 && bits < 64) {
    max_global = (1ull << bits) - 1;
  }
  for (size_t i = 0; i < manifest.steps.size(); ++i) {
    const Step& s = manifest.steps[i];
    if (s.work_items > max_global) {
      return InvalidArgument(who + ": step " + u(i) + " '" + clip(s.name) + "': work_items " +
                             u(s.work_items) + " is over the " + u(max_global) +
                             " work items device " + d.name + " addresses (" + u(bits) +
                             "-bit)");
    }
    size_t limit = std::min(d.max_work_group_size, d.max_work_item_size0);
    if (s.local_size > limit) {
      return InvalidArgument(who + ": step " + u(i) + " '" + clip(s.name) + "': local_size " +
                             u(s.local_size) + " is over the max work-group size " + u(limit) +
                             " of device " + d.name);
    }
  }
  const ArtifactRef* wref =
      which.weights >= 0 ? &manifest.artifacts[size_t(which.weights)] : nullptr;
  for (auto [what, bytes] : {std::make_pair("activation arena", manifest.arena_bytes),
                             std::make_pair("weight blob", wref ? wref->size : 0)}) {
    if (d.max_mem_alloc_size && bytes > d.max_mem_alloc_size) {
      return ResourceExhausted(who + ": the " + what + " of " + u(bytes) +
                               " bytes is over the largest buffer device " + d.name +
                               " allocates (" + u(d.max_mem_alloc_size) + " bytes)");
    }
  }

  // Context and the one in-order, profiling queue.
  cl_int err = 0;
  cl_context_properties props[] = {CL_CONTEXT_PLATFORM,
                                   reinterpret_cast<cl_context_properties>(d.platform), 0};
  cl_device_id dev_id = d.id;
  m->context_ = Handle<cl_context>(a, a->CreateContext(props, 1, &dev_id, nullptr, nullptr, &err));
  if (err != CL_SUCCESS || !m->context_) return cl_error("clCreateContext on " + d.name, err);
  m->queue_ = Handle<cl_command_queue>(
      a, a->CreateCommandQueue(m->context_.get(), dev_id, CL_QUEUE_PROFILING_ENABLE, &err));
  if (err != CL_SUCCESS || !m->queue_) return cl_error("clCreateCommandQueue on " + d.name, err);

  // Program.
  const ArtifactRef& src_ref = manifest.artifacts[size_t(which.opencl)];
  std::string source(size_t(src_ref.size), '\0');
  NPAS_RETURN_IF_ERROR(read_file_into(store.path_of(src_ref.sha256),
                                      reinterpret_cast<uint8_t*>(source.data()), src_ref.size,
                                      "OpenCL source"));
  NPAS_RETURN_IF_ERROR(m->build_program(source, src_ref.sha256, cache_dir));

  // Buffers: the arena (zeroed, as on the CPU) and the weights (a 1-byte stand-in if none).
  size_t arena_bytes = size_t(std::max<uint64_t>(manifest.arena_bytes, 1));
  m->arena_ = Handle<cl_mem>(
      a, a->CreateBuffer(m->context_.get(), CL_MEM_READ_WRITE, arena_bytes, nullptr, &err));
  if (err != CL_SUCCESS || !m->arena_) {
    return cl_error("clCreateBuffer (arena, " + u(arena_bytes) + " bytes)", err);
  }
  std::vector<uint8_t> zeros(std::min(arena_bytes, kZeroChunk), 0);
  for (size_t off = 0; off < arena_bytes; off += zeros.size()) {
    size_t n = std::min(zeros.size(), arena_bytes - off);
    err = a->EnqueueWriteBuffer(m->queue_.get(), m->arena_.get(), CL_TRUE, off, n, zeros.data(),
                                0, nullptr, nullptr);
    if (err != CL_SUCCESS) return cl_error("clEnqueueWriteBuffer (clearing the arena)", err);
  }
  if (wref && wref->size > 0) {
    AlignedBuffer host(size_t(wref->size));
    if (!host.allocated()) {
      return ResourceExhausted("cannot allocate " + u(wref->size) + " bytes for the weights");
    }
    NPAS_RETURN_IF_ERROR(
        read_file_into(store.path_of(wref->sha256), host.data(), wref->size, "weights"));
    m->weights_ = Handle<cl_mem>(
        a, a->CreateBuffer(m->context_.get(), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                           size_t(wref->size), host.data(), &err));
  } else {
    m->weights_ = Handle<cl_mem>(
        a, a->CreateBuffer(m->context_.get(), CL_MEM_READ_ONLY, 1, nullptr, &err));
  }
  if (err != CL_SUCCESS || !m->weights_) return cl_error("clCreateBuffer (weights)", err);

  // Kernels: one per distinct symbol, arguments set once.
  std::map<std::string, cl_kernel> by_symbol;
  cl_mem arena = m->arena_.get(), weights = m->weights_.get();
  for (size_t i = 0; i < manifest.steps.size(); ++i) {
    const Step& s = manifest.steps[i];
    std::string sw = who + ": step " + u(i) + " '" + clip(s.name) + "'";
    auto it = by_symbol.find(s.symbol);
    if (it == by_symbol.end()) {
      Handle<cl_kernel> k(a, a->CreateKernel(m->program_.get(), s.symbol.c_str(), &err));
      if (err == CL_INVALID_KERNEL_NAME) {
        return NotFound(sw + ": kernel '" + clip(s.symbol) + "' is not in the OpenCL program " +
                        src_ref.sha256);
      }
      if (err != CL_SUCCESS || !k) {
        return FailedPrecondition(sw + ": clCreateKernel('" + clip(s.symbol) + "') returned " +
                                  error_name(err));
      }
      cl_uint n_args = 0;
      if (a->GetKernelInfo(k.get(), CL_KERNEL_NUM_ARGS, sizeof n_args, &n_args, nullptr) ==
              CL_SUCCESS &&
          n_args != 2) {
        return InvalidArgument(sw + ": kernel '" + clip(s.symbol) + "' takes " + u(n_args) +
                               " arguments; GPU kernels take 2 (__global float *arena, "
                               "__global const float *weights)");
      }
      err = a->SetKernelArg(k.get(), 0, sizeof arena, &arena);
      if (err == CL_SUCCESS) err = a->SetKernelArg(k.get(), 1, sizeof weights, &weights);
      if (err != CL_SUCCESS) {
        return InvalidArgument(sw + ": kernel '" + clip(s.symbol) + "': clSetKernelArg returned " +
                               error_name(err) + "; GPU kernels take (__global float *arena, "
                               "__global const float *weights)");
      }
      it = by_symbol.emplace(s.symbol, k.get()).first;
      m->kernels_.push_back(std::move(k));
    }
    size_t kwg = 0;
    if (s.local_size > 0 &&
        a->GetKernelWorkGroupInfo(it->second, dev_id, CL_KERNEL_WORK_GROUP_SIZE, sizeof kwg, &kwg,
                                  nullptr) == CL_SUCCESS &&
        kwg > 0 && s.local_size > kwg) {
      return InvalidArgument(sw + ": local_size " + u(s.local_size) + " is over kernel '" +
                             s.symbol + "''s max work-group size " + u(kwg) + " on device " +
                             d.name);
    }
    m->steps_.push_back({it->second, size_t(s.work_items), size_t(s.local_size)});
  }
  m->events_.resize(manifest.steps.size());
  for (uint32_t idx : manifest.outputs) {
    m->outputs_.emplace_back(size_t(manifest.tensors[idx].nbytes));
  }
  m->init_ns_ = monotonic_ns() - t0;
  if (m->from_cache_) log_line(who + ": OpenCL program from the binary cache");
  return std::unique_ptr<Model>(std::move(m));
}

Status GpuModel::step_error(size_t i, const std::string& call, cl_int err) const {
  const Step& s = manifest().steps[i];
  Status e = cl_error(call, err);
  return Status(e.code(), "manifest '" + clip(manifest().name) + "': step " + u(i) + " '" +
                              clip(s.name) + "' (kernel '" + clip(s.symbol) + "'): " +
                              e.message());
}

Status GpuModel::write_inputs(const std::vector<TensorView>& inputs) {
  const Manifest& m = manifest();
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& t = m.tensors[m.inputs[i]];
    if (t.nbytes == 0) continue;
    cl_int err = api_->EnqueueWriteBuffer(queue_.get(), arena_.get(), CL_TRUE,
                                          size_t(t.arena_offset), size_t(t.nbytes),
                                          inputs[i].data, 0, nullptr, nullptr);
    if (err != CL_SUCCESS) {
      return cl_error("input '" + clip(t.name) + "': clEnqueueWriteBuffer", err);
    }
  }
  return Status::Ok();
}

Status GpuModel::execute(std::vector<std::vector<uint64_t>>* layer_ns, size_t run,
                         uint64_t* ns) {
  uint64_t t0 = monotonic_ns();
  for (size_t i = 0; i < steps_.size(); ++i) {
    const GpuStep& s = steps_[i];
    cl_event ev = nullptr;
    cl_int err = api_->EnqueueNDRangeKernel(queue_.get(), s.kernel, 1, nullptr, &s.global,
                                            s.local ? &s.local : nullptr, 0, nullptr,
                                            layer_ns ? &ev : nullptr);
    if (layer_ns) events_[i] = Handle<cl_event>(api_, ev);
    if (err != CL_SUCCESS) {
      api_->Finish(queue_.get());  // drain what was enqueued before reporting
      return step_error(i, "clEnqueueNDRangeKernel", err);
    }
  }
  cl_int err = api_->Finish(queue_.get());
  *ns = monotonic_ns() - t0;
  if (err != CL_SUCCESS) {
    return cl_error("manifest '" + clip(manifest().name) + "': clFinish after the steps", err);
  }
  if (layer_ns) {
    for (size_t i = 0; i < steps_.size(); ++i) {
      cl_ulong start = 0, end = 0;
      err = api_->GetEventProfilingInfo(events_[i].get(), CL_PROFILING_COMMAND_START,
                                        sizeof start, &start, nullptr);
      if (err == CL_SUCCESS) {
        err = api_->GetEventProfilingInfo(events_[i].get(), CL_PROFILING_COMMAND_END,
                                          sizeof end, &end, nullptr);
      }
      if (err != CL_SUCCESS) return step_error(i, "clGetEventProfilingInfo", err);
      (*layer_ns)[i][run] = end >= start ? end - start : 0;
      events_[i].reset();
    }
  }
  return Status::Ok();
}

Status GpuModel::read_outputs() {
  const Manifest& m = manifest();
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const TensorSpec& t = m.tensors[m.outputs[i]];
    if (t.nbytes == 0) continue;
    cl_int err = api_->EnqueueReadBuffer(queue_.get(), arena_.get(), CL_TRUE,
                                         size_t(t.arena_offset), size_t(t.nbytes),
                                         outputs_[i].data(), 0, nullptr, nullptr);
    if (err != CL_SUCCESS) {
      return cl_error("output '" + clip(t.name) + "': clEnqueueReadBuffer", err);
    }
  }
  cl_int err = api_->Finish(queue_.get());
  if (err != CL_SUCCESS) return cl_error("clFinish after reading the outputs", err);
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<Model>> load_gpu_model(const Manifest& manifest,
                                                ArtifactStore& store,
                                                const ManifestLimits& limits,
                                                const std::string& cache_dir) {
  return GpuModel::load(manifest, store, limits, cache_dir);
}

}  // namespace npas
