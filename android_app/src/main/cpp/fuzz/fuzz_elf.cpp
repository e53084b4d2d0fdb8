// libFuzzer target: the checks a kernel library passes before dlopen, on a file of the
// fuzzer's bytes: the ELF header (class, byte order, machine, type) and the exports read from
// the file (section headers, .dynsym, its string table, the ABI constant's bytes), and the step
// table (core/step_check.h: the symbol's bytes and their parse). Nothing is ever loaded; the
// checks must hold for any file, truncated or lying.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/cpu_model.h"
#include "core/step_check.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = npas_fuzz::scratch_dir("elf") + "/lib.so";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::write(fd, data, size) == ssize_t(size));
  ::close(fd);
  const std::string sha(64, 'a');
  npas::Status elf = npas::check_kernel_elf(path, sha);
  if (elf.ok()) {
    FUZZ_CHECK(size >= 64);  // a whole 64-bit ELF header
    auto exports = npas::read_kernel_exports(path, sha);
    if (exports.ok()) {
      for (const std::string& f : exports.value().functions) FUZZ_CHECK(!f.empty());
    } else {
      FUZZ_CHECK(exports.status().code() == npas::Code::kFailedPrecondition);
    }
  } else {
    FUZZ_CHECK(elf.code() == npas::Code::kFailedPrecondition);
  }
  auto table = npas::read_step_table(path, sha);
  if (table.ok()) {
    if (table.value()) {
      for (const auto& [symbol, e] : *table.value()) {
        FUZZ_CHECK(!symbol.empty());
        FUZZ_CHECK(e.input_bytes.size() <= 4096 && e.param_bytes.size() <= 4096);
      }
    }
  } else {
    FUZZ_CHECK(table.status().code() == npas::Code::kFailedPrecondition);
  }
  // The table's text parser on the bytes themselves.
  auto parsed = npas::parse_step_table(std::string(reinterpret_cast<const char*>(data), size),
                                       "fuzz");
  if (!parsed.ok()) FUZZ_CHECK(parsed.status().code() == npas::Code::kFailedPrecondition);
  return 0;
}
