// Thread pool with spin-then-futex waiting.
#include "core/thread_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <string>

namespace npas {
namespace {

// How long an idle worker spins before sleeping (and the caller before it yields): long
// enough to bridge the gap between two steps of one inference (a chunk's imbalance at a
// layer's tail, ~30-100 us in ResNet-18 at 2 threads), short enough not to burn a core when
// the thread waited for is preempted. 2^13 pauses is ~0.2 ms on the Zen 4 host (2^16 was
// 1.6 ms); there, under load average ~9 from other processes, int8 ResNet-18 at 2 threads
// 43.9 -> 30.3 ms and VGG-16 0.84x by median, CPU per inference 18.3 -> 13.0 ms (the spinning
// took the share of the group's CPU its sibling was waiting for).
constexpr int kSpinIterations = 1 << 13;
// With more threads than cores, spinning only steals time from the thread being waited for.
constexpr int kOversubscribedSpinIterations = 16;
// Chunks per thread: enough that the running threads can take over a stalled one's share,
// few enough that a kernel's per-call set-up stays small against its work.
constexpr int64_t kChunksPerThread = 4;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex needs a plain word");

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

inline int64_t chunk_begin(int64_t n, int i, int parts) {
  // n <= 2^40 and parts <= 2^16 keep the product in range; __int128 makes it not matter.
  return int64_t((__int128)n * i / parts);
}

}  // namespace

int pin_current_thread(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  // pid 0: the calling thread (Linux affinity is per thread).
  return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

ScopedCallerAffinity::ScopedCallerAffinity(int cpu) {
  if (cpu < 0) return;
  cpu_set_t old;
  CPU_ZERO(&old);
  if (sched_getaffinity(0, sizeof old, &old) != 0) {
    error_ = errno;
    return;
  }
  error_ = pin_current_thread(cpu);
  if (error_ != 0) return;
  old_mask_.resize(sizeof old);
  std::memcpy(old_mask_.data(), &old, sizeof old);
  restore_ = true;
}

ScopedCallerAffinity::~ScopedCallerAffinity() {
  if (!restore_) return;
  cpu_set_t old;
  std::memcpy(&old, old_mask_.data(), sizeof old);
  sched_setaffinity(0, sizeof old, &old);
}

ThreadPool::ThreadPool(int threads, std::vector<int> affinity)
    : threads_(threads < 1 ? 1 : threads), affinity_(std::move(affinity)) {
  unsigned cores = std::thread::hardware_concurrency();
  spin_iterations_ = (cores == 0 || unsigned(threads_) <= cores) ? kSpinIterations
                                                                 : kOversubscribedSpinIterations;
  pin_errors_.assign(size_t(threads_), 0);
  segments_ = std::make_unique<Segment[]>(size_t(threads_));
  try {
    workers_.reserve(size_t(threads_ - 1));
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
    // Each worker pins itself first: wait for their outcomes, so affinity_note() is complete.
    while (pin_reports_.load(std::memory_order_acquire) < int(workers_.size())) sched_yield();
  } catch (const std::exception& e) {  // std::system_error (EAGAIN), std::bad_alloc
    started_ = ResourceExhausted("cannot start thread " + std::to_string(workers_.size() + 2) +
                                 " of " + std::to_string(threads_) + " (" + e.what() +
                                 "); ask for fewer threads");
    stop_workers();
  }
}

StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::create(int threads, std::vector<int> affinity) {
  auto pool = std::make_unique<ThreadPool>(threads, std::move(affinity));
  if (!pool->started().ok()) return pool->started();
  return pool;
}

void ThreadPool::stop_workers() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  futex_wake_all(&generation_);
  for (auto& t : workers_) t.join();
  workers_.clear();
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::parallel_for(int64_t n, RangeFn fn, void* ctx) {
  if (n <= 0) return;
  if (threads_ == 1) {
    fn(ctx, 0, 0, n);
    return;
  }
  int64_t chunks = std::min<int64_t>(n, int64_t(threads_) * kChunksPerThread);
  fn_ = fn;
  ctx_ = ctx;
  n_ = n;
  chunks_ = chunks;
  done_.store(0, std::memory_order_relaxed);
  for (int t = 0; t < threads_; ++t) {
    uint64_t b = uint64_t(chunk_begin(chunks, t, threads_));
    uint64_t e = uint64_t(chunk_begin(chunks, t + 1, threads_));
    segments_[size_t(t)].word.store(e << 32 | b, std::memory_order_release);
  }
  generation_.fetch_add(1, std::memory_order_seq_cst);  // pairs with sleepers_ (Dekker)
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation_);

  run_chunks(0);

  int spins = 0;
  while (done_.load(std::memory_order_acquire) != chunks) {
    if (++spins < spin_iterations_) {
      cpu_relax();
    } else {
      sched_yield();
    }
  }
}

void ThreadPool::run_chunks(int worker) {
  for (int k = 0; k < threads_; ++k) {  // its own segment first, then the others'
    std::atomic<uint64_t>& seg = segments_[size_t((worker + k) % threads_)].word;
    uint64_t word = seg.load(std::memory_order_acquire);
    for (;;) {
      uint64_t end = word >> 32, next = word & 0xffffffffu;
      if (next >= end) break;
      if (!seg.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
        continue;  // `word` now holds the current value
      }
      // The job is read after the claim: its chunk is not done, so the caller still waits.
      int64_t b = chunk_begin(n_, int(next), int(chunks_));
      int64_t e = chunk_begin(n_, int(next) + 1, int(chunks_));
      if (e > b) fn_(ctx_, worker, b, e);
      done_.fetch_add(1, std::memory_order_acq_rel);
      word = seg.load(std::memory_order_acquire);
    }
  }
}

std::string ThreadPool::affinity_note() const {
  std::string note;
  for (size_t w = 1; w < pin_errors_.size(); ++w) {
    if (pin_errors_[w] == 0) continue;
    note += (note.empty() ? "" : "; ") + std::string("worker ") + std::to_string(w) +
            " on cpu " + std::to_string(affinity_[w % affinity_.size()]) + ": " +
            std::strerror(pin_errors_[w]);
  }
  return note;
}

void ThreadPool::worker_loop(int worker) {
  if (!affinity_.empty()) {
    pin_errors_[size_t(worker)] = pin_current_thread(affinity_[size_t(worker) % affinity_.size()]);
  }
  pin_reports_.fetch_add(1, std::memory_order_release);
  // Generation 0 is the pool's initial state; a job may be posted before this thread runs.
  uint32_t seen = 0;
  for (;;) {
    int spins = 0;
    uint32_t gen;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < spin_iterations_) {
        cpu_relax();
        continue;
      }
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      // Re-check after announcing ourselves so a wake between the load and the wait is not lost;
      // FUTEX_WAIT itself returns at once when the word changed.
      if (generation_.load(std::memory_order_seq_cst) == seen) futex_wait(&generation_, seen);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      spins = 0;
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    run_chunks(worker);
  }
}

}  // namespace npas

