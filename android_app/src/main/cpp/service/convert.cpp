// Proto <-> core conversion.
#include "service/convert.h"

namespace npas {

std::string bounded_status_message(const std::string& message) {
  const size_t budget = kMaxStatusWireBytes - 64;  // room for the note below
  size_t wire = 0, i = 0;
  for (; i < message.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(message[i]);
    size_t w = (c < 0x20 || c > 0x7e || c == '%') ? 3 : 1;  // grpc-message percent-encoding
    if (wire + w > budget) break;
    wire += w;
  }
  if (i == message.size()) return message;
  while (i > 0 && (static_cast<unsigned char>(message[i]) & 0xC0) == 0x80) --i;
  return message.substr(0, i) + " ... (message cut at " + std::to_string(i) + " of " +
         std::to_string(message.size()) + " bytes)";
}

grpc::Status to_grpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())),
                      bounded_status_message(s.message()));
}

Manifest from_proto(const pb::Manifest& p) {
  Manifest m;
  m.format_version = p.format_version();
  m.name = p.name();
  m.target.arch = p.target().arch();
  m.target.os = p.target().os();
  m.target.abi = p.target().abi();
  m.target.features.assign(p.target().features().begin(), p.target().features().end());
  m.toolchain.compiler = p.toolchain().compiler();
  m.toolchain.version = p.toolchain().version();
  m.toolchain.flags.assign(p.toolchain().flags().begin(), p.toolchain().flags().end());
  m.kernel_abi_version = p.kernel_abi_version();
  for (const auto& a : p.artifacts()) {
    m.artifacts.push_back({a.role(), static_cast<ArtifactKind>(a.kind()), a.sha256(), a.size()});
  }
  m.tensors.reserve(size_t(p.tensors_size()));
  for (const auto& t : p.tensors()) {
    TensorSpec s;
    s.name = t.name();
    s.shape.assign(t.shape().begin(), t.shape().end());
    s.dtype = t.dtype();
    s.arena_offset = t.arena_offset();
    s.nbytes = t.nbytes();
    m.tensors.push_back(std::move(s));
  }
  m.inputs.assign(p.inputs().begin(), p.inputs().end());
  m.outputs.assign(p.outputs().begin(), p.outputs().end());
  m.arena_bytes = p.arena_bytes();
  m.scratch_bytes_per_thread = p.scratch_bytes_per_thread();
  m.steps.reserve(size_t(p.steps_size()));
  for (const auto& s : p.steps()) {
    Step st;
    st.name = s.name();
    st.op = s.op();
    st.symbol = s.symbol();
    st.inputs.assign(s.inputs().begin(), s.inputs().end());
    st.output = s.output();
    for (const auto& pr : s.params()) st.params.push_back({pr.offset(), pr.nbytes()});
    st.work_items = s.work_items();
    st.flops = s.flops();
    st.local_size = s.local_size();
    m.steps.push_back(std::move(st));
  }
  m.weights_bytes = p.weights_bytes();
  m.prepare.reserve(size_t(p.prepare_size()));
  for (const auto& s : p.prepare()) {
    m.prepare.push_back({s.name(), s.symbol(), {s.src().offset(), s.src().nbytes()},
                         {s.dst().offset(), s.dst().nbytes()}, s.work_items()});
  }
  m.content_hash = p.content_hash();
  return m;
}

void to_proto(const DeviceInfo& d, pb::DeviceInfo* out) {
  out->set_abi(d.abi);
  out->set_machine(d.machine);
  out->set_os(d.os);
  out->set_cpu_model(d.cpu_model);
  for (const auto& c : d.cores) {
    auto* pc = out->add_cores();
    pc->set_id(c.id);
    pc->set_max_freq_khz(c.max_freq_khz);
    pc->set_is_big(c.is_big);
    pc->set_capacity(c.capacity);
    pc->set_cluster(c.cluster);
    pc->set_offline(!c.online);
  }
  for (const auto& f : d.cpu_features) out->add_cpu_features(f);
  for (const auto& p : d.opencl_platforms) {
    auto* pp = out->add_opencl_platforms();
    pp->set_name(p.name);
    pp->set_vendor(p.vendor);
    pp->set_version(p.version);
    for (const auto& dev : p.devices) {
      auto* pd = pp->add_devices();
      pd->set_name(dev.name);
      pd->set_vendor(dev.vendor);
      pd->set_version(dev.version);
      pd->set_driver_version(dev.driver_version);
      for (const auto& e : dev.extensions) pd->add_extensions(e);
      pd->set_compute_units(dev.compute_units);
      pd->set_global_mem_bytes(dev.global_mem_bytes);
    }
  }
  out->set_opencl_status(d.opencl_status);
  out->set_max_threads(d.max_threads);
  out->set_default_threads(uint32_t(default_threads(d)));
  for (const auto& m : d.missing) out->add_missing(m);
}

void to_proto(const Telemetry& t, pb::Telemetry* out) {
  out->set_timestamp_ns(t.timestamp_ns);
  for (const auto& c : t.cores) {
    auto* pc = out->add_cores();
    pc->set_id(c.id);
    pc->set_cur_freq_khz(c.cur_freq_khz);
  }
  for (const auto& z : t.thermal) {
    auto* pz = out->add_thermal();
    pz->set_name(z.name);
    pz->set_temp_millicelsius(z.temp_millicelsius);
  }
  for (const auto& m : t.missing) out->add_missing(m);
}

}  // namespace npas
