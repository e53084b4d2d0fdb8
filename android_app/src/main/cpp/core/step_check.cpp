// The step table of a kernel library, read from its file and compared with the manifest.
#include "core/step_check.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "core/os_util.h"

namespace npas {
namespace {

constexpr size_t kMaxTableCount = 4096;  // inputs or params of one kernel

bool parse_u64(const std::string& s, uint64_t* v) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  uint64_t x = 0;
  for (char c : s) {
    const uint64_t d = uint64_t(c - '0');
    if (x > (UINT64_MAX - d) / 10) return false;
    x = x * 10 + d;
  }
  *v = x;
  return true;
}

// What one kernel call of a step touches, in the manifest's terms.
struct Use {
  std::string what;  // "step 3 'conv1'" or "prepare step 0 'w'"
  const std::string* symbol;
  uint64_t work_items;
  std::vector<uint64_t> input_bytes;
  uint64_t output_bytes;
  std::vector<uint64_t> param_bytes;
};

Status check_use(const Use& s, const StepExtent& k, uint64_t scratch_bytes) {
  const std::string kernel = "kernel '" + clip(*s.symbol) + "'";
  auto bad = [&](const std::string& field, uint64_t got, const std::string& rel, uint64_t want) {
    return InvalidArgument(s.what + ": " + field + " " + u(got) + " is " + rel + " the " +
                           u(want) + " its " + kernel + " was generated for (the library's "
                           "step table); the manifest does not match its kernels");
  };
  if (s.work_items > k.work_items) return bad("work_items", s.work_items, "over", k.work_items);
  if (s.input_bytes.size() != k.input_bytes.size()) {
    return bad("the input count", s.input_bytes.size(), "not", k.input_bytes.size());
  }
  for (size_t j = 0; j < s.input_bytes.size(); ++j) {
    if (s.input_bytes[j] < k.input_bytes[j]) {
      return bad("input " + u(j) + "'s nbytes", s.input_bytes[j], "under", k.input_bytes[j]);
    }
  }
  if (s.output_bytes < k.output_bytes) {
    return bad("the output's nbytes", s.output_bytes, "under", k.output_bytes);
  }
  if (s.param_bytes.size() != k.param_bytes.size()) {
    return bad("the param count", s.param_bytes.size(), "not", k.param_bytes.size());
  }
  for (size_t j = 0; j < s.param_bytes.size(); ++j) {
    if (s.param_bytes[j] < k.param_bytes[j]) {
      return bad("param " + u(j) + "'s nbytes", s.param_bytes[j], "under", k.param_bytes[j]);
    }
  }
  if (scratch_bytes < k.scratch_bytes) {
    return bad("scratch_bytes_per_thread", scratch_bytes, "under", k.scratch_bytes);
  }
  return Status::Ok();
}

}  // namespace

StatusOr<StepTable> parse_step_table(const std::string& text, const std::string& who) {
  std::istringstream lines(text);
  std::string line;
  size_t n = 0;
  auto bad = [&](const std::string& why) {
    return FailedPrecondition(who + ": its " + kStepTableSymbol + ", line " + u(n) + ": " + why);
  };
  StepTable table;
  while (std::getline(lines, line)) {
    ++n;
    std::istringstream in(line);
    std::vector<std::string> t;
    for (std::string w; in >> w;) t.push_back(w);
    if (n == 1) {
      if (t.size() != 2 || t[0] != "npas-step-table") return bad("not a step table header");
      uint64_t v = 0;
      if (!parse_u64(t[1], &v) || v != kStepTableVersion) {
        return bad("version " + clip(t[1]) + ", this runner reads version " +
                   u(kStepTableVersion));
      }
      continue;
    }
    if (t.empty()) continue;
    StepExtent e;
    size_t i = 1;
    auto num = [&](uint64_t* v) { return i < t.size() && parse_u64(t[i++], v); };
    auto list = [&](std::vector<uint64_t>* out) {
      uint64_t count = 0;
      if (!num(&count) || count > kMaxTableCount || count > t.size() - i) return false;
      out->resize(size_t(count));
      for (uint64_t& v : *out) {
        if (!num(&v)) return false;
      }
      return true;
    };
    if (!num(&e.work_items) || !num(&e.scratch_bytes) || !num(&e.output_bytes) ||
        !list(&e.input_bytes) || !list(&e.param_bytes) || i != t.size()) {
      return bad("not 'SYMBOL WORK_ITEMS SCRATCH OUTPUT N_INPUTS INPUTS... N_PARAMS "
                 "PARAMS...' of decimal numbers");
    }
    if (!table.emplace(t[0], std::move(e)).second) {
      return bad("kernel '" + clip(t[0]) + "' is listed twice");
    }
  }
  if (n == 0) return bad("empty");
  return table;
}

StatusOr<std::optional<StepTable>> read_step_table(const std::string& path,
                                                   const std::string& sha) {
  const std::string who = "kernel library " + sha;
  auto bad = [&](const std::string& why) {
    return FailedPrecondition(who + ": cannot read its " + kStepTableSymbol +
                              " from the file (" + why + ")");
  };
  const std::optional<StepTable> none;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("cannot open kernel library " + sha, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("cannot stat kernel library " + sha, errno);
  const uint64_t file_size = uint64_t(st.st_size);
  Elf64_Ehdr h{};
  // Not an ELF file of the runner's kind: the load's ELF checks name the problem.
  if (!pread_exact(fd.get(), &h, sizeof h, 0, file_size) ||
      std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0 || h.e_ident[EI_CLASS] != ELFCLASS64 ||
      h.e_ident[EI_DATA] != ELFDATA2LSB || h.e_shentsize != sizeof(Elf64_Shdr) ||
      h.e_shnum == 0 || h.e_shnum >= SHN_LORESERVE) {
    return none;
  }
  std::vector<Elf64_Shdr> sections(h.e_shnum);
  if (!pread_exact(fd.get(), sections.data(), uint64_t(h.e_shnum) * sizeof(Elf64_Shdr), h.e_shoff,
                 file_size)) {
    return none;
  }
  const Elf64_Shdr* dynsym = nullptr;
  for (const Elf64_Shdr& sh : sections) {
    if (sh.sh_type == SHT_DYNSYM) dynsym = &sh;
  }
  if (!dynsym || dynsym->sh_entsize != sizeof(Elf64_Sym) || dynsym->sh_link >= sections.size()) {
    return none;
  }
  const Elf64_Shdr& strtab = sections[dynsym->sh_link];
  if (strtab.sh_type != SHT_STRTAB || strtab.sh_size > kMaxStepTableBytes ||
      dynsym->sh_size > kMaxStepTableBytes) {
    return none;
  }
  std::vector<char> names(size_t(strtab.sh_size) + 1, '\0');
  std::vector<Elf64_Sym> syms(size_t(dynsym->sh_size / sizeof(Elf64_Sym)));
  if (!pread_exact(fd.get(), names.data(), strtab.sh_size, strtab.sh_offset, file_size) ||
      !pread_exact(fd.get(), syms.data(), uint64_t(syms.size()) * sizeof(Elf64_Sym),
                 dynsym->sh_offset, file_size)) {
    return none;
  }
  for (const Elf64_Sym& sym : syms) {
    if (sym.st_name == 0 || sym.st_name >= strtab.sh_size) continue;
    if (std::strcmp(names.data() + sym.st_name, kStepTableSymbol) != 0) continue;
    if (sym.st_shndx == SHN_UNDEF || sym.st_shndx >= sections.size()) {
      return bad("the symbol is not defined in the library");
    }
    const Elf64_Shdr& sec = sections[sym.st_shndx];
    // Read-only data in the file: what the loader would map is what is read here.
    if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sec.sh_type != SHT_PROGBITS ||
        (sec.sh_flags & (SHF_WRITE | SHF_EXECINSTR)) != 0 || sym.st_size == 0 ||
        sym.st_size > kMaxStepTableBytes || sym.st_value < sec.sh_addr ||
        sym.st_value - sec.sh_addr > sec.sh_size ||
        sec.sh_size - (sym.st_value - sec.sh_addr) < sym.st_size) {
      return bad("the symbol is not read-only data stored in the file");
    }
    std::string text(size_t(sym.st_size), '\0');
    if (!pread_exact(fd.get(), text.data(), sym.st_size, sec.sh_offset + (sym.st_value - sec.sh_addr),
                   file_size)) {
      return bad("the symbol's bytes are past the end of the file");
    }
    if (text.back() != '\0') return bad("the string is not NUL-terminated");
    text.resize(std::strlen(text.c_str()));
    auto table = parse_step_table(text, who);
    if (!table.ok()) return table.status();
    return std::optional<StepTable>(std::move(table).value());
  }
  return none;
}

Status check_steps_against_table(const Manifest& m, const StepTable& table) {
  // Every function a generated library exports is in its table: a symbol that is not is no
  // kernel of it (missing, or a data object), which the load's symbol checks refuse by name.
  auto find = [&](const Use& s) -> const StepExtent* {
    auto it = table.find(*s.symbol);
    return it == table.end() ? nullptr : &it->second;
  };
  auto nbytes = [&](uint32_t t) { return t < m.tensors.size() ? m.tensors[t].nbytes : 0; };
  for (size_t i = 0; i < m.steps.size(); ++i) {
    const Step& s = m.steps[i];
    Use use{"step " + u(i) + " '" + clip(s.name) + "'", &s.symbol, s.work_items, {},
            nbytes(s.output), {}};
    for (uint32_t t : s.inputs) use.input_bytes.push_back(nbytes(t));
    for (const ParamRef& p : s.params) use.param_bytes.push_back(p.nbytes);
    if (const StepExtent* k = find(use)) {
      NPAS_RETURN_IF_ERROR(check_use(use, *k, m.scratch_bytes_per_thread));
    }
  }
  for (size_t i = 0; i < m.prepare.size(); ++i) {
    const PrepareStep& p = m.prepare[i];
    if (p.symbol.empty()) continue;  // a byte copy: no kernel
    Use use{"prepare step " + u(i) + " '" + clip(p.name) + "'", &p.symbol, p.work_items, {},
            p.dst.nbytes, {p.src.nbytes}};
    if (const StepExtent* k = find(use)) {
      NPAS_RETURN_IF_ERROR(check_use(use, *k, m.scratch_bytes_per_thread));
    }
  }
  return Status::Ok();
}

Status check_step_table(const std::string& path, const std::string& sha, const Manifest& m) {
  auto table = read_step_table(path, sha);
  if (!table.ok()) return table.status();
  if (!table.value()) return Status::Ok();
  return check_steps_against_table(m, *table.value());
}

}  // namespace npas
