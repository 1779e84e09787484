// A small fork-join thread pool for the native kernels.
//
// Why our own pool instead of OpenMP / OpenBLAS threads: both spin-wait for a long time after each
// parallel region and collapse when another process holds a core (ENGINE-NOTES #11: 1.4 GFLOP/s on
// small GEMMs with 2 threads). Here workers spin only for a few microseconds, then sleep on a
// condition variable, and the caller never waits for a worker that has not started: tasks are
// claimed dynamically, so a descheduled worker just gets fewer of them.
#pragma once
#include <functional>

namespace moelab {

// Threads that run a parallel_for, the calling thread included (>= 1).
int pool_threads();
// Resize the pool (n >= 1). Not to be called while a parallel_for is running.
void set_pool_threads(int n);
// Run fn(0..n-1), each index exactly once, spread over the pool; returns when all are done.
// Nested calls (from inside a task) and concurrent callers run serially on the calling thread.
void parallel_for(int n, const std::function<void(int)>& fn);

}  // namespace moelab
