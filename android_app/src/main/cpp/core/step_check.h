// The manifest checked against the kernels it names, before the library is loaded.
//
// A generated kernel library exports `npas_step_table` (codegen/emit/c.py): a read-only,
// NUL-terminated text, per kernel the largest work_items it was generated for, the scratch
// bytes per thread it uses, and the bytes of its output, of each input and of each param. The
// runner reads it from the file (no code of the library runs) and refuses a manifest whose
// steps disagree: more work items than the kernel covers, fewer or smaller tensors or params
// than it reads and writes, less scratch than it uses. Those would make the kernel read or
// write outside its buffers; a manifest alone could crash the runner or corrupt its memory.
//
//   npas-step-table 1
//   SYMBOL WORK_ITEMS SCRATCH OUTPUT_BYTES N_INPUTS INPUT_BYTES... N_PARAMS PARAM_BYTES...
//
// A prepare kernel's line has no inputs: param 0 is the shipped array it reads (the prepare
// step's src) and its output the param it writes (dst). A library without the table (written
// by hand, or generated before it existed) is loaded as before, unchecked.
#ifndef NPAS_CORE_STEP_CHECK_H
#define NPAS_CORE_STEP_CHECK_H

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/manifest.h"
#include "core/status.h"

namespace npas {

constexpr const char* kStepTableSymbol = "npas_step_table";
constexpr uint32_t kStepTableVersion = 1;
constexpr uint64_t kMaxStepTableBytes = 64ull << 20;

struct StepExtent {
  uint64_t work_items = 0;
  uint64_t scratch_bytes = 0;
  uint64_t output_bytes = 0;
  std::vector<uint64_t> input_bytes;
  std::vector<uint64_t> param_bytes;
};
using StepTable = std::map<std::string, StepExtent>;

// Parses the table's text; FailedPrecondition naming the line on anything malformed.
StatusOr<StepTable> parse_step_table(const std::string& text, const std::string& who);

// The table of the library at `path` (`sha` names it in errors), read from the file without
// loading it. nullopt when the file exports no table, or is not an ELF file this reader
// understands (the load's own ELF checks then say what is wrong with it). FailedPrecondition
// when the symbol is there but is not a read-only NUL-terminated string stored in the file,
// or does not parse.
StatusOr<std::optional<StepTable>> read_step_table(const std::string& path,
                                                   const std::string& sha);

// Every step and prepare step of `m` (a validated CPU manifest) against `table`:
// InvalidArgument naming the step, the field and both values on a disagreement. A symbol the
// table does not list is no kernel of the library (every function a generated library exports
// is listed): the load's symbol checks refuse it by name (missing, or a data object).
Status check_steps_against_table(const Manifest& m, const StepTable& table);

// read_step_table, then check_steps_against_table when there is a table.
Status check_step_table(const std::string& path, const std::string& sha, const Manifest& m);

}  // namespace npas

#endif  // NPAS_CORE_STEP_CHECK_H
