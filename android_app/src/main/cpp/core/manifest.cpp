// Manifest validation: every count, index, size and offset is checked here, once, so the
// loader and the executor can trust them.
#include "core/manifest.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "core/sha256.h"

namespace npas {
namespace {

const char* kind_name(ArtifactKind k) {
  switch (k) {
    case ArtifactKind::kKernelLibrary: return "KERNEL_LIBRARY";
    case ArtifactKind::kWeights: return "WEIGHTS";
    case ArtifactKind::kOpenClSource: return "OPENCL_SOURCE";
    default: return "ARTIFACT_KIND_UNSPECIFIED";
  }
}

// a + b <= limit without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

Status check_tensor(const Manifest& m, size_t i, const ManifestLimits& limits, Backend backend) {
  const TensorSpec& t = m.tensors[i];
  std::string who = "manifest '" + clip(m.name) + "': tensor " + u(i) + " '" + clip(t.name) + "'";
  if (t.dtype == "float16" && backend != Backend::kGpu) {
    return InvalidArgument(who + ": dtype 'float16' is for GPU (OpenCL) bundles only; the CPU "
                           "backend takes float32");
  }
  const uint64_t esize = dtype_size(t.dtype);
  if (esize == 0) {
    return InvalidArgument(who + ": dtype '" + clip(t.dtype) + "' is not supported; " +
                           (backend == Backend::kGpu ? "float32 or float16" : "only float32"));
  }
  if (t.shape.empty() || t.shape.size() > limits.max_rank) {
    return InvalidArgument(who + ": rank " + u(t.shape.size()) + " must be 1.." +
                           u(limits.max_rank));
  }
  uint64_t elems = 1;
  for (int64_t d : t.shape) {
    if (d <= 0) return InvalidArgument(who + ": shape " + shape_str(t.shape) +
                                       " has a dimension <= 0");
    if (elems > std::numeric_limits<uint64_t>::max() / esize / uint64_t(d)) {
      return InvalidArgument(who + ": shape " + shape_str(t.shape) + " overflows");
    }
    elems *= uint64_t(d);
  }
  if (t.nbytes != elems * esize) {
    return InvalidArgument(who + ": nbytes " + u(t.nbytes) + " but shape " +
                           shape_str(t.shape) + " of " + t.dtype + " needs " +
                           u(elems * esize));
  }
  if (t.arena_offset % kTensorAlignment != 0) {
    return InvalidArgument(who + ": arena_offset " + u(t.arena_offset) +
                           " is not a multiple of " + u(kTensorAlignment));
  }
  if (!fits(t.arena_offset, t.nbytes, m.arena_bytes)) {
    return InvalidArgument(who + ": arena_offset " + u(t.arena_offset) + " + nbytes " +
                           u(t.nbytes) + " is past arena_bytes " + u(m.arena_bytes));
  }
  return Status::Ok();
}

Status check_index_list(const std::vector<uint32_t>& idx, size_t n_tensors, size_t max,
                        const std::string& what) {
  if (idx.size() > max) {
    return ResourceExhausted(what + ": " + u(idx.size()) + " entries, the runner takes at most " +
                             u(max));
  }
  for (size_t j = 0; j < idx.size(); ++j) {
    if (idx[j] >= n_tensors) {
      return InvalidArgument(what + "[" + u(j) + "] = " + u(idx[j]) +
                             " is out of range; the manifest has " + u(n_tensors) + " tensors");
    }
  }
  return Status::Ok();
}

// Toolchain.flags of a GPU bundle become clBuildProgram's options: printable ASCII without
// spaces (they are joined with spaces), each an option ("-..."), bounded in count and length.
Status check_build_flags(const Manifest& m, const ManifestLimits& limits) {
  std::string who = "manifest '" + clip(m.name) + "': toolchain.flags";
  if (m.toolchain.flags.size() > limits.max_build_flags) {
    return ResourceExhausted(who + ": " + u(m.toolchain.flags.size()) + " flags, limit " +
                             u(limits.max_build_flags));
  }
  uint64_t total = 0;
  for (size_t i = 0; i < m.toolchain.flags.size(); ++i) {
    const std::string& f = m.toolchain.flags[i];
    std::string fw = who + "[" + u(i) + "]";
    if (f.size() < 2 || f[0] != '-') {
      return InvalidArgument(fw + " '" + clip(f) +
                             "' is not a build option; options start with '-'");
    }
    for (char c : f) {
      if (c < 0x21 || c > 0x7e) {
        return InvalidArgument(fw + " '" + clip(f) +
                               "' has a character that is not printable ASCII or is a space; "
                               "give each option as its own flag");
      }
    }
    total += f.size() + (i ? 1 : 0);
  }
  if (total > limits.max_build_options_bytes) {
    return ResourceExhausted(who + ": the build options are " + u(total) +
                             " bytes, the runner takes at most " +
                             u(limits.max_build_options_bytes));
  }
  return Status::Ok();
}

// The prepare steps against the blob and the weight buffer; *ranges gets the buffer ranges
// they write, sorted by offset (empty: no prepare steps, the blob is the buffer).
Status check_prepare(const Manifest& m, const ManifestLimits& limits, uint64_t blob, bool gpu,
                     std::vector<std::pair<uint64_t, uint64_t>>* ranges) {
  const std::string who = "manifest '" + clip(m.name) + "'";
  if (m.weights_bytes > limits.max_weights_bytes) {
    return ResourceExhausted(who + ": weights_bytes " + u(m.weights_bytes) +
                             " is over the runner's limit of " + u(limits.max_weights_bytes));
  }
  if (m.prepare.empty()) {
    if (m.weights_bytes != blob) {
      return InvalidArgument(who + ": weights_bytes " + u(m.weights_bytes) +
                             ", but with no prepare steps the weight buffer is the blob, " +
                             u(blob) + " bytes");
    }
    return Status::Ok();
  }
  if (blob == 0 && m.weights_bytes > 0) {
    return InvalidArgument(who + ": " + u(m.prepare.size()) + " prepare steps but no weight "
                           "blob (no weights artifact) to prepare the weights from");
  }
  if (gpu) {
    return InvalidArgument(who + ": " + u(m.prepare.size()) +
                           " prepare steps; a GPU bundle ships its weights as they are used "
                           "(prepare steps are for CPU bundles)");
  }
  if (m.prepare.size() > limits.max_prepare_steps) {
    return ResourceExhausted(who + ": " + u(m.prepare.size()) + " prepare steps, limit " +
                             u(limits.max_prepare_steps));
  }
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, size_t>> sorted;
  for (size_t i = 0; i < m.prepare.size(); ++i) {
    const PrepareStep& p = m.prepare[i];
    const std::string pw = who + ": prepare step " + u(i) + " '" + clip(p.name) + "'";
    const struct { const char* key; const ParamRef& ref; uint64_t limit; const char* what; } refs[] = {
        {"src", p.src, blob, "the weight blob's"}, {"dst", p.dst, m.weights_bytes, "weights_bytes"}};
    for (const auto& r : refs) {
      if (r.ref.offset % kParamAlignment != 0) {
        return InvalidArgument(pw + ": " + r.key + " offset " + u(r.ref.offset) +
                               " is not a multiple of " + u(kParamAlignment));
      }
      if (!fits(r.ref.offset, r.ref.nbytes, r.limit)) {
        return InvalidArgument(pw + ": " + r.key + " offset " + u(r.ref.offset) + " + nbytes " +
                               u(r.ref.nbytes) + " is past " + r.what + " " + u(r.limit) +
                               " bytes");
      }
    }
    if (p.symbol.empty()) {
      if (p.src.nbytes != p.dst.nbytes || p.work_items != 1) {
        return InvalidArgument(pw + ": a copy (no symbol) of src nbytes " + u(p.src.nbytes) +
                               " into dst nbytes " + u(p.dst.nbytes) + " with work_items " +
                               u(p.work_items) + "; a copy needs equal sizes and work_items 1");
      }
    } else {
      if (!is_c_identifier(p.symbol)) {
        return InvalidArgument(pw + ": symbol '" + clip(p.symbol) + "' is not a C identifier");
      }
      if (p.work_items == 0 || p.work_items > limits.max_work_items) {
        return InvalidArgument(pw + ": work_items " + u(p.work_items) + " must be 1.." +
                               u(limits.max_work_items));
      }
    }
    sorted.push_back({{p.dst.offset, p.dst.offset + p.dst.nbytes}, i});
  }
  std::sort(sorted.begin(), sorted.end());
  for (size_t k = 1; k < sorted.size(); ++k) {
    if (sorted[k].first.first < sorted[k - 1].first.second) {
      return InvalidArgument(who + ": prepare step " + u(sorted[k].second) +
                             "'s dst overlaps prepare step " + u(sorted[k - 1].second) +
                             "'s (each byte of the weight buffer is written by one step)");
    }
  }
  ranges->clear();
  for (const auto& e : sorted) ranges->push_back(e.first);
  return Status::Ok();
}

// `p` lies inside one of the sorted, disjoint ranges.
bool covered(const std::vector<std::pair<uint64_t, uint64_t>>& ranges, const ParamRef& p) {
  if (p.nbytes == 0) return true;
  auto it = std::upper_bound(ranges.begin(), ranges.end(),
                             std::make_pair(p.offset, std::numeric_limits<uint64_t>::max()));
  if (it == ranges.begin()) return false;
  --it;
  return it->first <= p.offset && p.nbytes <= it->second - p.offset && p.offset <= it->second;
}

}  // namespace

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

uint64_t dtype_size(const std::string& dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "float16") return 2;
  return 0;
}

std::string build_options(const Manifest& m) {
  std::string s;
  for (const auto& f : m.toolchain.flags) s += (s.empty() ? "" : " ") + f;
  return s;
}

bool is_c_identifier(const std::string& s) {
  if (s.empty() || s.size() > 256) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

Status validate_manifest(const Manifest& m, const ManifestLimits& limits,
                         ManifestArtifacts* which, Backend backend) {
  std::string who = "manifest '" + clip(m.name) + "'";
  const bool gpu = backend == Backend::kGpu;
  const bool opencl_bundle = m.target.arch == kOpenClArch;
  if (gpu && !opencl_bundle) {
    return FailedPrecondition(who + ": target arch '" + clip(m.target.arch) +
                              "' is a CPU bundle; backend GPU needs an OpenCL bundle (target "
                              "arch 'opencl'); load it with backend CPU or compile for the GPU");
  }
  if (!gpu && opencl_bundle) {
    return FailedPrecondition(who + ": target arch 'opencl' is a GPU bundle; load it with "
                              "backend GPU");
  }
  if (m.format_version != kManifestFormatVersion) {
    return FailedPrecondition(who + ": format_version " + u(m.format_version) +
                              ", this runner reads " + u(kManifestFormatVersion) +
                              "; compile the bundle with the npas of this runner");
  }
  if (m.kernel_abi_version != 1) {
    return FailedPrecondition(who + ": kernel_abi_version " + u(m.kernel_abi_version) +
                              ", this runner implements 1");
  }

  // Artifacts.
  ManifestArtifacts found;
  uint64_t weights_size = 0;
  for (size_t i = 0; i < m.artifacts.size(); ++i) {
    const ArtifactRef& a = m.artifacts[i];
    std::string aw = who + ": artifact " + u(i) + " (role '" + clip(a.role) + "')";
    if (!is_valid_sha256_hex(a.sha256)) {
      return InvalidArgument(aw + ": sha256 '" + clip(a.sha256) +
                             "' is not 64 lowercase hex characters");
    }
    if (a.role == "kernels") {
      if (gpu) {
        return InvalidArgument(aw + ": a GPU bundle carries OpenCL source (role 'opencl'), "
                               "not a kernel library");
      }
      if (a.kind != ArtifactKind::kKernelLibrary) {
        return InvalidArgument(aw + ": kind " + kind_name(a.kind) + ", expected KERNEL_LIBRARY");
      }
      if (found.kernels >= 0) return InvalidArgument(who + ": more than one 'kernels' artifact");
      found.kernels = int(i);
    } else if (a.role == "weights") {
      if (a.kind != ArtifactKind::kWeights) {
        return InvalidArgument(aw + ": kind " + kind_name(a.kind) + ", expected WEIGHTS");
      }
      if (found.weights >= 0) return InvalidArgument(who + ": more than one 'weights' artifact");
      found.weights = int(i);
      weights_size = a.size;
    } else if (a.role == "opencl") {
      if (!gpu) {
        return InvalidArgument(aw + ": OpenCL source in a CPU bundle; the CPU backend runs a "
                               "kernel library (role 'kernels')");
      }
      if (a.kind != ArtifactKind::kOpenClSource) {
        return InvalidArgument(aw + ": kind " + kind_name(a.kind) + ", expected OPENCL_SOURCE");
      }
      if (found.opencl >= 0) return InvalidArgument(who + ": more than one 'opencl' artifact");
      found.opencl = int(i);
    } else if (a.kind == ArtifactKind::kUnspecified) {
      return InvalidArgument(aw + ": kind is ARTIFACT_KIND_UNSPECIFIED");
    }
  }
  if (!gpu && found.kernels < 0) {
    return InvalidArgument(who + ": no artifact with role 'kernels' (KERNEL_LIBRARY)");
  }
  if (gpu && found.opencl < 0) {
    return InvalidArgument(who + ": no artifact with role 'opencl' (OPENCL_SOURCE)");
  }
  if (gpu) NPAS_RETURN_IF_ERROR(check_build_flags(m, limits));

  // Sizes.
  if (m.arena_bytes > limits.max_arena_bytes) {
    return ResourceExhausted(who + ": arena_bytes " + u(m.arena_bytes) +
                             " is over the runner's limit of " + u(limits.max_arena_bytes));
  }
  if (m.scratch_bytes_per_thread > limits.max_scratch_bytes_per_thread) {
    return ResourceExhausted(who + ": scratch_bytes_per_thread " +
                             u(m.scratch_bytes_per_thread) + " is over the runner's limit of " +
                             u(limits.max_scratch_bytes_per_thread));
  }

  // Tensors.
  if (m.tensors.size() > limits.max_tensors) {
    return ResourceExhausted(who + ": " + u(m.tensors.size()) + " tensors, limit " +
                             u(limits.max_tensors));
  }
  for (size_t i = 0; i < m.tensors.size(); ++i) NPAS_RETURN_IF_ERROR(check_tensor(m, i, limits, backend));
  NPAS_RETURN_IF_ERROR(
      check_index_list(m.inputs, m.tensors.size(), limits.max_model_io, who + ": inputs"));
  NPAS_RETURN_IF_ERROR(
      check_index_list(m.outputs, m.tensors.size(), limits.max_model_io, who + ": outputs"));
  if (m.outputs.empty()) return InvalidArgument(who + ": no outputs");

  // The weight buffer and the prepare steps that build it.
  std::vector<std::pair<uint64_t, uint64_t>> buffer;
  NPAS_RETURN_IF_ERROR(check_prepare(m, limits, weights_size, gpu, &buffer));

  // Steps.
  if (m.steps.size() > limits.max_steps) {
    return ResourceExhausted(who + ": " + u(m.steps.size()) + " steps, limit " +
                             u(limits.max_steps));
  }
  for (size_t i = 0; i < m.steps.size(); ++i) {
    const Step& s = m.steps[i];
    std::string sw = who + ": step " + u(i) + " '" + clip(s.name) + "'";
    if (!is_c_identifier(s.symbol)) {
      return InvalidArgument(sw + ": symbol '" + clip(s.symbol) +
                             "' is not a C identifier");
    }
    NPAS_RETURN_IF_ERROR(
        check_index_list(s.inputs, m.tensors.size(), limits.max_step_inputs, sw + ": inputs"));
    if (s.output >= m.tensors.size()) {
      return InvalidArgument(sw + ": output " + u(s.output) + " is out of range; the manifest has " +
                             u(m.tensors.size()) + " tensors");
    }
    if (s.params.size() > limits.max_step_params) {
      return ResourceExhausted(sw + ": " + u(s.params.size()) + " params, limit " +
                               u(limits.max_step_params));
    }
    for (size_t j = 0; j < s.params.size(); ++j) {
      const ParamRef& p = s.params[j];
      if (p.offset % kParamAlignment != 0) {
        return InvalidArgument(sw + ": param " + u(j) + " offset " + u(p.offset) +
                               " is not a multiple of " + u(kParamAlignment));
      }
      if (!fits(p.offset, p.nbytes, m.weights_bytes)) {
        return InvalidArgument(sw + ": param " + u(j) + " offset " + u(p.offset) + " + nbytes " +
                               u(p.nbytes) + " is past weights_bytes " + u(m.weights_bytes) +
                               (found.weights < 0 ? " (no weights artifact)" : ""));
      }
      if (!m.prepare.empty() && !covered(buffer, p)) {
        return InvalidArgument(sw + ": param " + u(j) + " (offset " + u(p.offset) + ", nbytes " +
                               u(p.nbytes) + ") is not inside one prepare step's dst: nothing "
                               "would write those bytes");
      }
    }
    const uint64_t max_items = gpu ? limits.max_gpu_work_items : limits.max_work_items;
    if (s.work_items == 0 || s.work_items > max_items) {
      return InvalidArgument(sw + ": work_items " + u(s.work_items) + " must be 1.." +
                             u(max_items) + (gpu ? " (the GPU's 1-D global size)" : ""));
    }
    if (gpu && s.local_size > 0 && s.work_items % s.local_size != 0) {
      return InvalidArgument(sw + ": work_items " + u(s.work_items) +
                             " is not a multiple of local_size " + u(s.local_size) +
                             "; pad the global size or use local_size 0");
    }
  }
  if (which) *which = found;
  return Status::Ok();
}

}  // namespace npas
