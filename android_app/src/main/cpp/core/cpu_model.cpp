// The CPU backend: bundle loading (validate, ELF check, dlopen, buffers, kernel arguments) and
// execution of every step on the thread pool.
#include "core/cpu_model.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/npas_kernel_abi.h"
#include "core/os_util.h"
#include "core/step_check.h"
#include "core/thread_pool.h"

namespace npas {

StatusOr<ThreadPlan> plan_threads(const ThreadRequest& req, const DeviceInfo& device) {
  ThreadPlan plan;
  std::vector<int> big = big_core_ids(device);
  if (req.threads > kMaxThreads) {
    return InvalidArgument("threads " + u(req.threads) + " is over the limit of " +
                           u(kMaxThreads));
  }
  for (uint32_t cpu : req.cpu_affinity) {
    if (cpu >= device.cores.size() || cpu >= CPU_SETSIZE) {
      return InvalidArgument("cpu_affinity names core " + u(cpu) + ", this device has cores 0.." +
                             u(device.cores.size() - 1));
    }
  }
  plan.threads = req.threads > 0 ? int(req.threads) : default_threads(device);
  std::vector<int> cpus;
  if (!req.cpu_affinity.empty()) {
    cpus.assign(req.cpu_affinity.begin(), req.cpu_affinity.end());
  } else if (req.pin_big_cores) {
    cpus = big;
  }
  for (size_t i = 0; !cpus.empty() && i < size_t(plan.threads); ++i) {
    plan.affinity.push_back(cpus[i % cpus.size()]);
  }
  return plan;
}

Status check_kernel_elf(const std::string& path, const std::string& sha) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("cannot open kernel library " + sha, errno);
  Elf64_Ehdr h{};
  ssize_t n = ::pread(fd.get(), &h, sizeof h, 0);
  std::string who = "kernel library " + sha;
  if (n < EI_NIDENT || std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0) {
    return FailedPrecondition(who + " is not an ELF file");
  }
  if (h.e_ident[EI_CLASS] != ELFCLASS64) {
    return FailedPrecondition(who + " is a 32-bit ELF file, this runner is " +
                              elf_machine_name(runner_elf_machine()) + " (64-bit)");
  }
  if (n < ssize_t(sizeof h)) {
    return FailedPrecondition(who + " is truncated: " + u(uint64_t(n)) +
                              " bytes, shorter than a 64-bit ELF header");
  }
  if (h.e_ident[EI_DATA] != ELFDATA2LSB) {
    return FailedPrecondition(who + " is big-endian; the runner needs little-endian");
  }
  if (h.e_machine != runner_elf_machine()) {
    return FailedPrecondition(who + " is built for " + elf_machine_name(h.e_machine) +
                              ", this runner is " + elf_machine_name(runner_elf_machine()));
  }
  if (h.e_type != ET_DYN) {
    return FailedPrecondition(who + " is not a shared object (e_type " + u(h.e_type) +
                              "); build it with -shared -fPIC");
  }
  return Status::Ok();
}

StatusOr<KernelExports> read_kernel_exports(const std::string& path, const std::string& sha) {
  const std::string who = "kernel library " + sha;
  auto bad = [&](const std::string& why) {
    return FailedPrecondition(who + ": cannot read its " + NPAS_ABI_VERSION_SYMBOL +
                              " from the file before loading it (" + why + ")");
  };
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("cannot open kernel library " + sha, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("cannot stat kernel library " + sha, errno);
  const uint64_t file_size = uint64_t(st.st_size);
  Elf64_Ehdr h{};
  if (!pread_exact(fd.get(), &h, sizeof h, 0, file_size)) return bad("no ELF header");
  if (h.e_shentsize != sizeof(Elf64_Shdr) || h.e_shnum == 0 || h.e_shnum >= SHN_LORESERVE) {
    return bad("no section headers");
  }
  std::vector<Elf64_Shdr> sections(h.e_shnum);
  if (!pread_exact(fd.get(), sections.data(), uint64_t(h.e_shnum) * sizeof(Elf64_Shdr),
                   h.e_shoff, file_size)) {
    return bad("section headers past the end of the file");
  }
  // The dynamic symbol table: what dlsym would search.
  const Elf64_Shdr* dynsym = nullptr;
  for (const Elf64_Shdr& sh : sections) {
    if (sh.sh_type == SHT_DYNSYM) dynsym = &sh;
  }
  if (!dynsym || dynsym->sh_entsize != sizeof(Elf64_Sym) || dynsym->sh_link >= sections.size()) {
    return bad("no dynamic symbol table");
  }
  const Elf64_Shdr& strtab = sections[dynsym->sh_link];
  constexpr uint64_t kMaxTableBytes = 64ull << 20;
  if (strtab.sh_type != SHT_STRTAB || strtab.sh_size > kMaxTableBytes ||
      dynsym->sh_size > kMaxTableBytes) {
    return bad("no usable dynamic string table");
  }
  std::vector<char> names(size_t(strtab.sh_size) + 1, '\0');  // NUL-terminated either way
  std::vector<Elf64_Sym> syms(size_t(dynsym->sh_size / sizeof(Elf64_Sym)));
  if (!pread_exact(fd.get(), names.data(), strtab.sh_size, strtab.sh_offset, file_size) ||
      !pread_exact(fd.get(), syms.data(), uint64_t(syms.size()) * sizeof(Elf64_Sym),
                   dynsym->sh_offset, file_size)) {
    return bad("symbol tables past the end of the file");
  }
  KernelExports out;
  bool have_abi = false;
  for (const Elf64_Sym& sym : syms) {
    if (sym.st_name == 0 || sym.st_name >= strtab.sh_size) continue;
    const char* name = names.data() + sym.st_name;
    if (*name == '\0') continue;  // no step names the empty string (found by fuzz_elf)
    if (std::strcmp(name, NPAS_ABI_VERSION_SYMBOL) != 0) {
      const bool defined = sym.st_shndx != SHN_UNDEF && sym.st_shndx < sections.size();
      if (defined && ELF64_ST_TYPE(sym.st_info) == STT_FUNC &&
          (sections[sym.st_shndx].sh_flags & SHF_EXECINSTR) != 0) {
        out.functions.insert(name);
      }
      continue;
    }
    if (have_abi) continue;
    if (sym.st_shndx == SHN_UNDEF || sym.st_shndx >= sections.size()) {
      return FailedPrecondition(who + " does not define " + NPAS_ABI_VERSION_SYMBOL);
    }
    const Elf64_Shdr& sec = sections[sym.st_shndx];
    if (sym.st_size != sizeof(uint32_t) || sec.sh_type != SHT_PROGBITS ||
        sym.st_value < sec.sh_addr || sym.st_value - sec.sh_addr > sec.sh_size ||
        sec.sh_size - (sym.st_value - sec.sh_addr) < sizeof(uint32_t)) {
      return bad("the symbol is not a 4-byte constant in the file");
    }
    uint32_t v = 0;
    if (!pread_exact(fd.get(), &v, sizeof v, sec.sh_offset + (sym.st_value - sec.sh_addr),
                     file_size)) {
      return bad("the symbol's bytes are past the end of the file");
    }
    out.abi_version = v;  // little-endian, as check_kernel_elf made sure
    have_abi = true;
  }
  if (!have_abi) return FailedPrecondition(who + " does not export " + NPAS_ABI_VERSION_SYMBOL);
  return out;
}

namespace {

class CpuModel final : public Model {
 public:
  ~CpuModel() override {
    pool_.reset();  // workers stop before the library that holds their code goes away
  }
  Backend backend() const override { return Backend::kCpu; }
  int threads() const override { return pool_->threads(); }
  std::vector<int> cpu_affinity() const override { return plan_.affinity; }
  std::string affinity_note() const override { return affinity_note_; }
  const uint8_t* output_data(size_t i) const override {
    return arena_.data() + manifest().tensors[manifest().outputs[i]].arena_offset;
  }

 private:
  friend StatusOr<std::unique_ptr<Model>> npas::load_cpu_model(const Manifest&,
                                                                ArtifactStore&,
                                                                const ManifestLimits&,
                                                                const ThreadPlan&);
  struct PreparedStep {
    npas_kernel_fn fn = nullptr;
    npas_step_args args{};
    int64_t work_items = 0;
    uint8_t* scratch = nullptr;  // worker w uses scratch + w * scratch_stride
    size_t scratch_stride = 0;
  };
  struct DlClose {
    void operator()(void* h) const {
      if (h) dlclose(h);
    }
  };

  CpuModel(const Manifest& m, const ThreadPlan& plan) : Model(m), plan_(plan) {}

  Status write_inputs(const std::vector<TensorView>& inputs) override {
    const Manifest& m = manifest();
    for (size_t i = 0; i < inputs.size(); ++i) {
      const TensorSpec& t = m.tensors[m.inputs[i]];
      if (t.nbytes) std::memcpy(arena_.data() + t.arena_offset, inputs[i].data, t.nbytes);
    }
    return Status::Ok();
  }

  Status execute(std::vector<std::vector<uint64_t>>* layer_ns, size_t run,
                 uint64_t* ns) override {
    uint64_t t0 = monotonic_ns();
    if (!layer_ns) {
      for (PreparedStep& p : steps_) pool_->parallel_for(p.work_items, &run_range, &p);
    } else {
      uint64_t prev = t0;
      for (size_t i = 0; i < steps_.size(); ++i) {
        count_mark(kMarkStepBase + uint32_t(i));
        pool_->parallel_for(steps_[i].work_items, &run_range, &steps_[i]);
        uint64_t t = monotonic_ns();
        (*layer_ns)[i][run] = t - prev;
        prev = t;
      }
    }
    *ns = monotonic_ns() - t0;
    return Status::Ok();
  }

  int caller_cpu() const override { return plan_.affinity.empty() ? -1 : plan_.affinity[0]; }

  static void run_range(void* ctx, int worker, int64_t begin, int64_t end) {
    const auto* p = static_cast<const PreparedStep*>(ctx);
    void* scratch = p->scratch ? p->scratch + size_t(worker) * p->scratch_stride : nullptr;
    p->fn(&p->args, begin, end, scratch);
  }

  ThreadPlan plan_;
  std::unique_ptr<void, DlClose> lib_;
  AlignedBuffer weights_;
  AlignedBuffer arena_;
  AlignedBuffer scratch_;
  std::vector<const float*> arg_pointers_;  // every step's inputs and params, back to back
  std::vector<PreparedStep> steps_;
  std::unique_ptr<ThreadPool> pool_;
  std::string affinity_note_;
};

}  // namespace

StatusOr<std::unique_ptr<Model>> load_cpu_model(const Manifest& manifest,
                                                ArtifactStore& store,
                                                const ManifestLimits& limits,
                                                const ThreadPlan& plan) {
  uint64_t t0 = monotonic_ns();
  ManifestArtifacts which;
  NPAS_RETURN_IF_ERROR(validate_manifest(manifest, limits, &which));
  NPAS_RETURN_IF_ERROR(check_artifacts_in_store(manifest, store));

  std::unique_ptr<CpuModel> m(new CpuModel(manifest, plan));  // private constructor

  // Kernel library: header first, so a wrong architecture is a clear error, not a dlerror.
  const ArtifactRef& kref = manifest.artifacts[size_t(which.kernels)];
  std::string kpath = store.path_of(kref.sha256);
  NPAS_RETURN_IF_ERROR(check_kernel_elf(kpath, kref.sha256));
  // The ABI version is read from the file: a refused library is never loaded, so none of its
  // code (constructors included) runs.
  auto exports = read_kernel_exports(kpath, kref.sha256);
  if (!exports.ok()) return exports.status();
  if (exports.value().abi_version != NPAS_KERNEL_ABI_VERSION) {
    return FailedPrecondition("kernel library " + kref.sha256 + " has kernel ABI version " +
                              u(exports.value().abi_version) + ", this runner implements " +
                              u(NPAS_KERNEL_ABI_VERSION) + " (refused before loading it)");
  }
  // The steps against the library's step table, read from the file (core/step_check.h).
  NPAS_RETURN_IF_ERROR(check_step_table(kpath, kref.sha256, manifest));
  dlerror();
  m->lib_.reset(dlopen(kpath.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!m->lib_) {
    const char* e = dlerror();
    return FailedPrecondition("kernel library " + kref.sha256 + " cannot be loaded: " +
                              (e ? e : "unknown dlopen error"));
  }
  const void* abi_sym = dlsym(m->lib_.get(), NPAS_ABI_VERSION_SYMBOL);
  if (!abi_sym) {
    return FailedPrecondition("kernel library " + kref.sha256 + " does not export " +
                              NPAS_ABI_VERSION_SYMBOL);
  }
  uint32_t abi = *static_cast<const uint32_t*>(abi_sym);
  if (abi != NPAS_KERNEL_ABI_VERSION) {
    return FailedPrecondition("kernel library " + kref.sha256 + " has kernel ABI version " +
                              u(abi) + ", this runner implements " + u(NPAS_KERNEL_ABI_VERSION));
  }

  // Memory: the whole need first, against what the OS has (with overcommit an oversized
  // allocation succeeds and the process dies later), then each buffer checked. While the
  // prepare steps run, the shipped blob is held beside the weight buffer; it is freed before
  // the arena and scratch are allocated.
  const MemoryNeed mem = memory_need(manifest, Backend::kCpu, plan.threads);
  const size_t stride = size_t(mem.scratch_stride);
  const uint64_t scratch_bytes = uint64_t(stride) * uint64_t(plan.threads);  // both bounded
  const uint64_t need = mem.total();
  const uint64_t avail = available_memory_bytes();
  const std::string who = "model '" + clip(manifest.name) + "'";
  if (avail > 0 && need > avail) {
    return ResourceExhausted(mem.describe(manifest.name) + ", this device has " + u(avail) +
                             " available (MemAvailable)");
  }

  // Kernels of the prepare steps, resolved like the steps' (below).
  std::vector<npas_kernel_fn> prepare_fns(manifest.prepare.size(), nullptr);
  for (size_t i = 0; i < manifest.prepare.size(); ++i) {
    const PrepareStep& p = manifest.prepare[i];
    if (p.symbol.empty()) continue;
    void* fn = exports.value().functions.count(p.symbol) ? dlsym(m->lib_.get(), p.symbol.c_str())
                                                          : nullptr;
    if (!fn) {
      return NotFound("prepare step " + u(i) + " '" + clip(p.name) + "': symbol '" +
                      clip(p.symbol) + "' is not a function kernel library " + kref.sha256 +
                      " defines");
    }
    prepare_fns[i] = reinterpret_cast<npas_kernel_fn>(fn);
  }
  auto pool = ThreadPool::create(plan.threads, plan.affinity);
  if (!pool.ok()) {
    return Status(pool.status().code(),
                  "model '" + clip(manifest.name) + "': " + pool.status().message());
  }
  m->pool_ = std::move(pool).value();

  // Weights: the blob is the buffer, or the prepare steps build the buffer from it.
  if (which.weights >= 0) {
    const ArtifactRef& wref = manifest.artifacts[size_t(which.weights)];
    const bool prepared = !manifest.prepare.empty();
    AlignedBuffer blob(prepared ? size_t(wref.size) : 0);
    m->weights_ = AlignedBuffer(size_t(manifest.weights_bytes));
    if (!m->weights_.allocated() || (prepared && !blob.allocated())) {
      return ResourceExhausted(who + ": cannot allocate " + u(manifest.weights_bytes) +
                               " bytes for the weights" +
                               (prepared ? " (and " + u(wref.size) + " for the shipped blob)"
                                         : std::string()));
    }
    AlignedBuffer& into = prepared ? blob : m->weights_;
    NPAS_RETURN_IF_ERROR(
        read_file_into(store.path_of(wref.sha256), into.data(), wref.size, "weights"));
    if (prepared) {
      // Bytes no step writes (alignment gaps) are zero, as in a blob that shipped them.
      std::memset(m->weights_.data(), 0, m->weights_.size());
      for (size_t i = 0; i < manifest.prepare.size(); ++i) {
        const PrepareStep& p = manifest.prepare[i];
        if (!prepare_fns[i]) {
          std::memcpy(m->weights_.data() + p.dst.offset, blob.data() + p.src.offset,
                      size_t(p.src.nbytes));
          continue;
        }
        const float* src = reinterpret_cast<const float*>(blob.data() + p.src.offset);
        CpuModel::PreparedStep ps;
        ps.fn = prepare_fns[i];
        ps.args.inputs = nullptr;
        ps.args.params = &src;
        ps.args.output = reinterpret_cast<float*>(m->weights_.data() + p.dst.offset);
        ps.work_items = int64_t(p.work_items);
        m->pool_->parallel_for(ps.work_items, &CpuModel::run_range, &ps);
      }
    }
  }

  // Arena and scratch.
  m->arena_ = AlignedBuffer(size_t(manifest.arena_bytes));
  if (!m->arena_.allocated()) {
    return ResourceExhausted(who + ": cannot allocate the activation arena of " +
                             u(manifest.arena_bytes) + " bytes");
  }
  if (stride > 0) {
    m->scratch_ = AlignedBuffer(size_t(scratch_bytes));
    if (!m->scratch_.allocated()) {
      return ResourceExhausted(who + ": cannot allocate scratch of " + u(stride) + " bytes x " +
                               u(plan.threads) + " threads");
    }
  }

  // Kernel arguments, computed once. arg_pointers_ is sized before any pointer into it is taken.
  size_t n_ptrs = 0;
  for (const Step& s : manifest.steps) n_ptrs += s.inputs.size() + s.params.size();
  m->arg_pointers_.resize(n_ptrs);
  m->steps_.resize(manifest.steps.size());
  size_t next = 0;
  uint8_t* arena = m->arena_.data();
  for (size_t i = 0; i < manifest.steps.size(); ++i) {
    const Step& s = manifest.steps[i];
    CpuModel::PreparedStep& p = m->steps_[i];
    if (exports.value().functions.count(s.symbol) == 0) {
      // A data object (or anything else dlsym finds) called as a kernel would crash the runner.
      void* other = dlsym(m->lib_.get(), s.symbol.c_str());
      if (other) {
        return InvalidArgument("step " + u(i) + " '" + clip(s.name) + "': symbol '" +
                               clip(s.symbol) + "' in kernel library " + kref.sha256 +
                               " is not a function the library defines (a data object, or a "
                               "symbol of another library); a step calls one of its kernels");
      }
    }
    dlerror();
    void* fn = dlsym(m->lib_.get(), s.symbol.c_str());
    if (!fn) {
      return NotFound("step " + u(i) + " '" + clip(s.name) + "': symbol '" + clip(s.symbol) +
                      "' is not exported by kernel library " + kref.sha256);
    }
    p.fn = reinterpret_cast<npas_kernel_fn>(fn);
    const float** in = m->arg_pointers_.data() + next;
    for (size_t j = 0; j < s.inputs.size(); ++j) {
      in[j] = reinterpret_cast<const float*>(arena + manifest.tensors[s.inputs[j]].arena_offset);
    }
    next += s.inputs.size();
    const float** par = m->arg_pointers_.data() + next;
    for (size_t j = 0; j < s.params.size(); ++j) {
      par[j] = reinterpret_cast<const float*>(m->weights_.data() + s.params[j].offset);
    }
    next += s.params.size();
    p.args.inputs = in;
    p.args.params = par;
    p.args.output = reinterpret_cast<float*>(arena + manifest.tensors[s.output].arena_offset);
    p.work_items = int64_t(s.work_items);
    p.scratch = stride > 0 ? m->scratch_.data() : nullptr;
    p.scratch_stride = stride;
  }

  m->affinity_note_ = m->pool_->affinity_note();
  if (!plan.affinity.empty()) {
    // The caller is worker 0, pinned per run; try it once now so a refusal is reported at
    // the load, next to the workers' (the allowed CPUs are the process's, not the thread's).
    ScopedCallerAffinity probe(plan.affinity[0]);
    if (probe.error() != 0) {
      m->affinity_note_ = "worker 0 (the calling thread) on cpu " +
                          std::to_string(plan.affinity[0]) + ": " +
                          std::strerror(probe.error()) +
                          (m->affinity_note_.empty() ? "" : "; " + m->affinity_note_);
    }
  }
  m->init_ns_ = monotonic_ns() - t0;
  return std::unique_ptr<Model>(std::move(m));
}

}  // namespace npas
