// Manifest validation: every count, index, size and offset is checked here, once, so the
// loader and the executor can trust them.
#include "core/manifest.h"

#include <limits>

#include "core/sha256.h"

namespace npas {
namespace {

std::string u(uint64_t v) { return std::to_string(v); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

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

Status check_tensor(const Manifest& m, size_t i, const ManifestLimits& limits) {
  const TensorSpec& t = m.tensors[i];
  std::string who = "manifest '" + m.name + "': tensor " + u(i) + " '" + t.name + "'";
  if (t.dtype != "float32") {
    return InvalidArgument(who + ": dtype '" + t.dtype + "' is not supported; only float32");
  }
  if (t.shape.empty() || t.shape.size() > limits.max_rank) {
    return InvalidArgument(who + ": rank " + u(t.shape.size()) + " must be 1.." +
                           u(limits.max_rank));
  }
  uint64_t elems = 1;
  for (int64_t d : t.shape) {
    if (d <= 0) return InvalidArgument(who + ": shape " + shape_str(t.shape) +
                                       " has a dimension <= 0");
    if (elems > std::numeric_limits<uint64_t>::max() / 4 / uint64_t(d)) {
      return InvalidArgument(who + ": shape " + shape_str(t.shape) + " overflows");
    }
    elems *= uint64_t(d);
  }
  if (t.nbytes != elems * 4) {
    return InvalidArgument(who + ": nbytes " + u(t.nbytes) + " but shape " +
                           shape_str(t.shape) + " of float32 needs " + u(elems * 4));
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

}  // namespace

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
                         ManifestArtifacts* which) {
  std::string who = "manifest '" + m.name + "'";
  if (m.format_version != kManifestFormatVersion) {
    return FailedPrecondition(who + ": format_version " + u(m.format_version) +
                              ", this runner reads " + u(kManifestFormatVersion));
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
    std::string aw = who + ": artifact " + u(i) + " (role '" + a.role + "')";
    if (!is_valid_sha256_hex(a.sha256)) {
      return InvalidArgument(aw + ": sha256 '" + a.sha256.substr(0, 80) +
                             "' is not 64 lowercase hex characters");
    }
    if (a.role == "kernels") {
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
    } else if (a.kind == ArtifactKind::kUnspecified) {
      return InvalidArgument(aw + ": kind is ARTIFACT_KIND_UNSPECIFIED");
    }
  }
  if (found.kernels < 0) {
    return InvalidArgument(who + ": no artifact with role 'kernels' (KERNEL_LIBRARY)");
  }

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
  for (size_t i = 0; i < m.tensors.size(); ++i) NPAS_RETURN_IF_ERROR(check_tensor(m, i, limits));
  NPAS_RETURN_IF_ERROR(
      check_index_list(m.inputs, m.tensors.size(), limits.max_model_io, who + ": inputs"));
  NPAS_RETURN_IF_ERROR(
      check_index_list(m.outputs, m.tensors.size(), limits.max_model_io, who + ": outputs"));
  if (m.outputs.empty()) return InvalidArgument(who + ": no outputs");

  // Steps.
  if (m.steps.size() > limits.max_steps) {
    return ResourceExhausted(who + ": " + u(m.steps.size()) + " steps, limit " +
                             u(limits.max_steps));
  }
  for (size_t i = 0; i < m.steps.size(); ++i) {
    const Step& s = m.steps[i];
    std::string sw = who + ": step " + u(i) + " '" + s.name + "'";
    if (!is_c_identifier(s.symbol)) {
      return InvalidArgument(sw + ": symbol '" + s.symbol.substr(0, 80) +
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
      if (!fits(p.offset, p.nbytes, weights_size)) {
        return InvalidArgument(sw + ": param " + u(j) + " offset " + u(p.offset) + " + nbytes " +
                               u(p.nbytes) + " is past the weight blob's " + u(weights_size) +
                               " bytes" + (found.weights < 0 ? " (no weights artifact)" : ""));
      }
    }
    if (s.work_items == 0 || s.work_items > limits.max_work_items) {
      return InvalidArgument(sw + ": work_items " + u(s.work_items) + " must be 1.." +
                             u(limits.max_work_items));
    }
  }
  if (which) *which = found;
  return Status::Ok();
}

}  // namespace npas
