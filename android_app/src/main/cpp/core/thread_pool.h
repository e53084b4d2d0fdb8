// A fixed pool that splits one work range [0, n) into contiguous near-equal chunks, one per
// thread; the calling thread is worker 0. No allocation or locks per call: workers wait on an
// atomic generation counter (spin, then futex), the caller spins until they are done.
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
  // Splits [0, n) over all workers and returns when every chunk is done. Not reentrant:
  // one caller at a time (the model's mutex guarantees it).
  void parallel_for(int64_t n, RangeFn fn, void* ctx);

 private:
  void worker_loop(int worker);
  void stop_workers();

  int threads_;
  int spin_iterations_;
  std::vector<int> affinity_;
  std::vector<std::thread> workers_;
  // Job description, written by the caller before bumping generation_.
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  alignas(64) std::atomic<uint32_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
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
