// A fixed pool that splits one work range [0, n) into contiguous near-equal chunks, a few per
// thread, which the threads claim one at a time; the calling thread is worker 0. Claimed, not
// assigned: on a busy machine a worker the OS has not scheduled yet leaves its share to the
// threads that run, so one preempted thread no longer stalls every layer for a time slice.
// No allocation or locks per call: workers wait on an atomic generation counter (spin, then
// futex), the caller spins until every chunk is done.
#ifndef NPAS_CORE_THREAD_POOL_H
#define NPAS_CORE_THREAD_POOL_H

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"

namespace npas {

class ThreadPool {
 public:
  // fn(ctx, worker, begin, end); called only for non-empty chunks.
  using RangeFn = void (*)(void* ctx, int worker, int64_t begin, int64_t end);

  // `threads` >= 1. When `affinity` is not empty, worker i (i >= 1) is pinned to
  // affinity[i % affinity.size()]; worker 0 is the caller (see pin_caller()).
  // ResourceExhausted, naming how many threads started, when the OS refuses a thread (the
  // ones started are stopped again).
  static StatusOr<std::unique_ptr<ThreadPool>> create(int threads, std::vector<int> affinity);
  // As create(), but check started() before use.
  ThreadPool(int threads, std::vector<int> affinity);
  const Status& started() const { return started_; }
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }
  // Empty when every worker got the core it was given; else which cores the OS refused and
  // why (those workers run unpinned).
  std::string affinity_note() const;
  // Splits [0, n) into chunks claimed by the workers and returns when every chunk is done;
  // `worker` in fn is the claiming thread's index (its scratch), never used by two chunks at
  // once. Not reentrant: one caller at a time (the model's mutex guarantees it).
  void parallel_for(int64_t n, RangeFn fn, void* ctx);

 private:
  void worker_loop(int worker);
  void stop_workers();
  // Claims and runs chunks of the posted job until none is left.
  void run_chunks(int worker);

  int threads_;
  int spin_iterations_;
  std::vector<int> affinity_;
  std::vector<std::thread> workers_;
  // Job description, written by the caller before bumping generation_.
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int64_t chunks_ = 0;
  alignas(64) std::atomic<uint32_t> generation_{0};
  // Chunks are numbered over the whole range; thread t's segment is a contiguous run of them
  // (its share, as in a static split), which it claims first, front to back, before it takes
  // unclaimed chunks from the others' segments. A segment's word is its end (high 32 bits)
  // and its next unclaimed chunk (low 32 bits), claimed by compare-and-swap: a thread still
  // holding an old job's word can only claim a chunk the current job has not handed out (the
  // word must match), so a late thread does no harm.
  struct alignas(64) Segment {
    std::atomic<uint64_t> word{0};
  };
  std::unique_ptr<Segment[]> segments_;
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  Status started_;
  // Each worker's pinning outcome, written before it counts itself in pin_reports_.
  std::vector<int> pin_errors_;  // [worker]: 0 or the errno of sched_setaffinity
  std::atomic<int> pin_reports_{0};
};

// Pins the calling thread to one CPU (no-op for cpu < 0); restores the old mask when dropped.
class ScopedCallerAffinity {
 public:
  explicit ScopedCallerAffinity(int cpu);
  ~ScopedCallerAffinity();
  ScopedCallerAffinity(const ScopedCallerAffinity&) = delete;
  ScopedCallerAffinity& operator=(const ScopedCallerAffinity&) = delete;
  // 0, or the errno with which the OS refused the pin (the thread then runs unpinned).
  int error() const { return error_; }

 private:
  bool restore_ = false;
  int error_ = 0;
  std::vector<uint8_t> old_mask_;  // a cpu_set_t, kept opaque here
};

// Pins the calling thread to `cpu` with sched_setaffinity (bionic has no
// pthread_setaffinity_np); returns 0 or the errno (EINVAL: not a CPU this process may use,
// e.g. outside its Android cpuset).
int pin_current_thread(int cpu);

}  // namespace npas

#endif  // NPAS_CORE_THREAD_POOL_H
