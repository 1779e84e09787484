// A small fork-join thread pool for the native kernels.
//
// Why our own pool instead of OpenMP / OpenBLAS threads: both spin-wait for a long time after each
// parallel region and collapse when another process holds a core (docs/kernels.md#threads: 1.4 GFLOP/s on
// small GEMMs with 2 threads). Here workers spin only for a few microseconds, then sleep on a
// condition variable, and the caller never waits for a worker that has not started: tasks are
// claimed dynamically, so a descheduled worker just gets fewer of them.
#pragma once
#include <algorithm>
#include <functional>

// Per-thread storage: `thread_local`, except in WebAssembly without threads (kernels-wasm's
// single-threaded module), where there is one thread and a `static` is the same. There LLVM
// (Emscripten 3.1.6) cannot link thread-local storage together with the bulk memory operations
// (memory.copy / memory.fill for memcpy / memset) unless the atomics feature is on.
#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
#define MOELAB_THREAD_LOCAL static
#else
#define MOELAB_THREAD_LOCAL thread_local
#endif

namespace moelab {

// Threads that run a parallel_for, the calling thread included (>= 1).
int pool_threads();
// Resize the pool (n >= 1): starts the threads it lacks; threads beyond n are parked (asleep), not
// ended, so a later resize up reuses them. Not to be called while a parallel_for is running.
void set_pool_threads(int n);
// Tasks that the pool's worker threads (not the threads calling parallel_for) have run since the
// pool started: a check that the threads take part (kernels-wasm's threaded build reports it).
long long pool_worker_tasks();
// Run fn(0..n-1), each index exactly once, spread over the pool; returns when all are done.
// Nested calls (from inside a task) and concurrent callers run serially on the calling thread.
void parallel_for(int n, const std::function<void(int)>& fn);

// Below this many floating-point operations a job runs on the calling thread: waking a sleeping
// worker is a system call, and on a busy machine the caller then waits for that worker to be
// scheduled (tens of microseconds), more than the second thread saves. A decoding step's MoE call
// on one token, for example, is ~0.3 MFLOP.
constexpr double kMinParallelFlops = 5e5;

// parallel_for(n, fn) for a job of about `flops` operations in all; fn(0..n-1) in order on the
// calling thread when that is below kMinParallelFlops.
template <class F>
void parallel_for_work(int n, double flops, F&& fn) {
  if (flops < kMinParallelFlops) {
    for (int i = 0; i < n; i++) fn(i);
    return;
  }
  parallel_for(n, fn);
}

// Split [0, n) into parallel chunks of at least `grain` items (memory-bound kernels gain little
// from a second thread on small inputs, and a fork-join costs microseconds).
template <class F>
void parallel_range(long n, long grain, F&& f) {
  if (n <= 0) return;
  int tasks = static_cast<int>(std::min<long>(pool_threads() * 4L, std::max<long>(1, n / std::max(1L, grain))));
  if (tasks <= 1) {
    f(0L, n);
    return;
  }
  long step = (n + tasks - 1) / tasks;
  parallel_for(tasks, [&](int t) {
    long a = t * step, b = std::min(n, a + step);
    if (a < b) f(a, b);
  });
}

}  // namespace moelab
