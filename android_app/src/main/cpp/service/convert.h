// The one place where proto messages and core structs meet.
#ifndef NPAS_SERVICE_CONVERT_H
#define NPAS_SERVICE_CONVERT_H

#include <grpcpp/grpcpp.h>

#include "core/device_info.h"
#include "core/manifest.h"
#include "core/status.h"
#include "npas/runner/v1/runner.pb.h"

namespace npas {

namespace pb = ::npas::runner::v1;

// The message is kept under kMaxStatusWireBytes as gRPC sends it (percent-encoded, in trailing
// metadata, which clients cap at 8 KB by default): a longer one would reach the client as a
// transport error instead of its status. Values in messages are clip()ped already; this is
// the last bound.
constexpr size_t kMaxStatusWireBytes = 6144;
grpc::Status to_grpc(const Status& s);
std::string bounded_status_message(const std::string& message);
Manifest from_proto(const pb::Manifest& m);
void to_proto(const DeviceInfo& d, pb::DeviceInfo* out);
void to_proto(const Telemetry& t, pb::Telemetry* out);

}  // namespace npas

#endif  // NPAS_SERVICE_CONVERT_H
