/*
 * npas_count: a qemu TCG plugin (qemu-user, plugin API version 1 as in qemu 7.2) that counts
 * the guest instructions a program executes, in total and by class, and writes the running
 * counts each time the program marks a point of interest.
 *
 * Marks are syscalls no real program makes: lseek(-1, MARK_BASE + code, SEEK_SET). They fail
 * with EBADF and change nothing, so a program that marks runs the same without the plugin.
 * The guest side (host/bench/arm64/guest.py for ncnn and MNN, the runner's --count-markers
 * for ours) marks 1 before and 2 after each counted inference, and 0x100 + i before step i.
 *
 * Output (out=PATH, one line each, flushed at once so a killed process loses nothing):
 *   # npas-count 2 <class names...> all_threads
 *   M <code> <count of each class...> <all>   at each mark: the marking thread's counts since
 *                                             it started, then every thread's total
 *   E <count of each class...> <all>          at exit: every thread's counts
 * A mark counts its own thread only, so other threads (gRPC's pollers, a Python's helpers)
 * do not blur a single-threaded inference; the all-threads total tells whether the work ran
 * on the marking thread at all.
 *
 * Counting is per translation block: a callback adds the block's class counts to its vCPU's
 * (in qemu-user, its thread's) counters when the block starts executing, so a block left
 * early (a fault, a syscall that does not return) is counted whole. Classes come from the A64
 * encoding of each instruction, decided once at translation.
 *
 * Build: cc -shared -fPIC -O2 -I<qemu source>/include/qemu npas_count.c -o libnpas_count.so
 * (scripts/build_arm64.sh does it, with the header from Debian's qemu source package).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARK_BASE_HI 0x4E504153u /* "NPAS": the upper 32 bits of the mark's offset */
#define AARCH64_SYS_LSEEK 62

enum {
  C_TOTAL,      /* every instruction */
  C_FP_SIMD,    /* data processing, scalar floating point and Advanced SIMD */
  C_LDST,       /* loads and stores, any register file */
  C_FMLA,       /* FMLA/FMLS vector and by element, single and double precision */
  C_FMLA_F16,   /* FMLA/FMLS vector and by element, half precision */
  C_FMLAL,      /* FMLAL/FMLSL(2): half precision products into single precision */
  C_DOT,        /* SDOT/UDOT vector and by element */
  C_MMLA,       /* SMMLA/UMMLA (int8 matrix multiply-accumulate) */
  C_INT_MLA,    /* MLA/MLS and SMLAL/UMLAL/SMLSL/UMLSL(2), vector and by element */
  C_FMA_SCALAR, /* FMADD/FMSUB/FNMADD/FNMSUB and scalar FMLA/FMLS by element */
  N_CLASSES
};

static const char* const kClassNames[N_CLASSES] = {
    "total", "fp_simd", "ldst", "fmla", "fmla_f16", "fmlal", "dot", "mmla", "int_mla",
    "fma_scalar"};

/* One pattern of an instruction class: (insn & mask) == value. */
typedef struct {
  uint32_t mask, value;
  int cls;
} Pattern;

/* The multiply-accumulate encodings (Arm ARM, A64 Advanced SIMD and floating point). The bits
 * left out of a mask are Q (bit 30: 64 or 128 bits), the registers, the element index and the
 * accumulate/subtract variant; U (bit 29) is kept where it separates two instructions. */
static const Pattern kPatterns[] = {
    /* FMLA/FMLS (vector), sz: 0 Q 0 01110 o1 sz 1 Rm 110011 Rn Rd */
    {0xBF20FC00u, 0x0E20CC00u, C_FMLA},
    /* FMLA/FMLS (by element), sz: 0 Q 0 01111 1 sz L M Rm 0 o2 01 H 0 Rn Rd */
    {0xBF80B400u, 0x0F801000u, C_FMLA},
    /* FMLA/FMLS (vector), half: 0 Q 0 01110 a 10 Rm 00 0111 Rn Rd */
    {0xBF60FC00u, 0x0E400C00u, C_FMLA_F16},
    /* FMLA/FMLS (by element), half: 0 Q 0 01111 00 L M Rm 0 o2 01 H 0 Rn Rd */
    {0xBFC0B400u, 0x0F001000u, C_FMLA_F16},
    /* FMLAL/FMLSL (vector): 0 Q 0 01110 S 01 Rm 111011; FMLAL2/FMLSL2: 0 Q 1 01110 S 01 Rm 110011 */
    {0xBF60FC00u, 0x0E20EC00u, C_FMLAL},
    {0xBF60FC00u, 0x2E20CC00u, C_FMLAL},
    /* FMLAL/FMLSL (by element): 0 Q 0 01111 10 L M Rm 0 S 00 H 0; the 2 forms: U=1, 1 S 00 */
    {0xBFC0B400u, 0x0F800000u, C_FMLAL},
    {0xBFC0B400u, 0x2F808000u, C_FMLAL},
    /* SDOT/UDOT (vector): 0 Q U 01110 10 0 Rm 100101; (by element): 0 Q U 01111 10 L M Rm 1110 H 0 */
    {0x9FE0FC00u, 0x0E809400u, C_DOT},
    {0x9FC0F400u, 0x0F80E000u, C_DOT},
    /* SMMLA/UMMLA: 0 1 U 01110 10 0 Rm 101001 */
    {0xDFE0FC00u, 0x4E80A400u, C_MMLA},
    /* MLA/MLS (vector): 0 Q U 01110 size 1 Rm 100101; (by element): 0 Q 1 01111 size L M Rm 0 o2 00 H 0 */
    {0x9F20FC00u, 0x0E209400u, C_INT_MLA},
    {0xBF00B400u, 0x2F000000u, C_INT_MLA},
    /* SMLAL/UMLAL/SMLSL/UMLSL(2) (vector): 0 Q U 01110 size 1 Rm 10 o1 000;
       (by element): 0 Q U 01111 size L M Rm 0 o2 10 H 0 */
    {0x9F20DC00u, 0x0E208000u, C_INT_MLA},
    {0x9F00B400u, 0x0F002000u, C_INT_MLA},
    /* FMADD/FMSUB/FNMADD/FNMSUB: 0 0 0 11111 ftype o1 Rm o0 Ra Rn Rd */
    {0xFF000000u, 0x1F000000u, C_FMA_SCALAR},
    /* FMLA/FMLS (by element), scalar forms: 01 0 11111 1 sz ... and 01 0 11111 00 ... (half) */
    {0xFF80B400u, 0x5F801000u, C_FMA_SCALAR},
    {0xFFC0B400u, 0x5F001000u, C_FMA_SCALAR},
};

/* Per vCPU (qemu-user: per guest thread; qemu reuses the index of a thread that exited).
 * Indices past the table share its last row: counts stay whole, only less attributed. */
#define MAX_VCPUS 1024
static uint64_t counts[MAX_VCPUS][N_CLASSES];
static FILE* out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* A translated block's class counts, kept for the life of the process (blocks are
 * retranslated, never freed here: a few MB for the largest programs measured). */
typedef struct {
  uint32_t n[N_CLASSES];
} TbCounts;

static void on_tb_exec(unsigned int vcpu, void* udata) {
  const TbCounts* t = udata;
  uint64_t* c = counts[vcpu < MAX_VCPUS ? vcpu : MAX_VCPUS - 1];
  for (int i = 0; i < N_CLASSES; ++i) c[i] += t->n[i];
}

static int mac_class(uint32_t insn) {
  for (size_t i = 0; i < sizeof kPatterns / sizeof kPatterns[0]; ++i) {
    if ((insn & kPatterns[i].mask) == kPatterns[i].value) return kPatterns[i].cls;
  }
  return -1;
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  TbCounts* t = calloc(1, sizeof *t);
  if (!t) return; /* out of memory: this block goes uncounted rather than crash the guest */
  size_t insns = qemu_plugin_tb_n_insns(tb);
  for (size_t i = 0; i < insns; ++i) {
    struct qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    uint32_t op = 0;
    if (qemu_plugin_insn_size(insn) == 4) memcpy(&op, qemu_plugin_insn_data(insn), 4);
    t->n[C_TOTAL]++;
    if ((op & 0x0E000000u) == 0x0E000000u) t->n[C_FP_SIMD]++;  /* op0 = x111 */
    if ((op & 0x0A000000u) == 0x08000000u) t->n[C_LDST]++;     /* op0 = x1x0 */
    int c = mac_class(op);
    if (c >= 0) t->n[c]++;
  }
  qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS, t);
}

/* Racy reads of other threads' counters: a mark is a snapshot, not a barrier. */
static uint64_t all_threads(int c) {
  uint64_t sum = 0;
  for (int v = 0; v < MAX_VCPUS; ++v) sum += counts[v][c];
  return sum;
}

static void write_counts(const char* prefix, const uint64_t* c) {
  fputs(prefix, out);
  for (int i = 0; i < N_CLASSES; ++i) fprintf(out, " %" PRIu64, c[i]);
  fprintf(out, " %" PRIu64 "\n", all_threads(C_TOTAL));
  fflush(out);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8) {
  (void)id; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
  /* lseek's fd is an int: only its low 32 bits are defined in the register */
  if (num != AARCH64_SYS_LSEEK || (uint32_t)a1 != 0xFFFFFFFFu || (a2 >> 32) != MARK_BASE_HI)
    return;
  char prefix[32];
  snprintf(prefix, sizeof prefix, "M %" PRIu32, (uint32_t)a2);
  pthread_mutex_lock(&out_lock);
  if (out) write_counts(prefix, counts[vcpu < MAX_VCPUS ? vcpu : MAX_VCPUS - 1]);
  pthread_mutex_unlock(&out_lock);
}

static void on_exit_cb(qemu_plugin_id_t id, void* p) {
  (void)id; (void)p;
  pthread_mutex_lock(&out_lock);
  uint64_t sum[N_CLASSES];
  for (int i = 0; i < N_CLASSES; ++i) sum[i] = all_threads(i);
  write_counts("E", sum);
  fclose(out);
  out = NULL;
  pthread_mutex_unlock(&out_lock);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info,
                                           int argc, char** argv) {
  const char* path = NULL;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      path = argv[i] + 4;
    } else {
      fprintf(stderr, "npas_count: unknown argument '%s' (expected out=PATH)\n", argv[i]);
      return -1;
    }
  }
  if (!path || !*path) {
    fprintf(stderr, "npas_count: missing out=PATH\n");
    return -1;
  }
  if (info->system_emulation || strcmp(info->target_name, "aarch64") != 0) {
    fprintf(stderr, "npas_count: only for qemu-aarch64 (user mode), not %s%s\n",
            info->target_name, info->system_emulation ? " system emulation" : "");
    return -1;
  }
  out = fopen(path, "w");
  if (!out) {
    fprintf(stderr, "npas_count: cannot write %s\n", path);
    return -1;
  }
  fputs("# npas-count 2", out);
  for (int c = 0; c < N_CLASSES; ++c) fprintf(out, " %s", kClassNames[c]);
  fputs(" all_threads\n", out);
  fflush(out);
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
  return 0;
}
