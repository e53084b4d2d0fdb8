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

grpc::Status to_grpc(const Status& s);
Manifest from_proto(const pb::Manifest& m);
void to_proto(const DeviceInfo& d, pb::DeviceInfo* out);
void to_proto(const Telemetry& t, pb::Telemetry* out);

}  // namespace npas

#endif  // NPAS_SERVICE_CONVERT_H
