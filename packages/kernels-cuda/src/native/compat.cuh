// One source, two compilers. kernels.cu is CUDA C++: nvcc compiles it for the device (sm_80 /
// sm_90), and g++ compiles the very same kernel bodies as host C++ for the emulation build, where
// this header supplies what CUDA's front end would: the execution-space keywords, the built-in
// index variables, __shared__, __syncthreads(), atomics and the few math intrinsics the kernels use.
// In emulation a launch runs on emu.cc's scheduler: every thread of a block is a fiber with its
// own stack (its own registers and locals), __shared__ variables are static thread-local storage
// (one copy per OS thread, and one OS thread runs one block at a time), and __syncthreads()
// switches back to the scheduler, which resumes the block's threads only once all of them arrived.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define MLC_DEVICE_BUILD 1
#else
#include <math.h>

#include <cmath>
#include <cstdint>
#include <functional>

namespace mlc_emu {
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// What a running emulated thread sees (blockIdx = bid, threadIdx = tid); the scheduler updates
// tid before each switch.
struct ThreadView {
  dim3 grid, block, bid, tid;
};
extern thread_local ThreadView view;
// Suspends the calling thread until every thread of its block called it.
void sync_threads();
// Runs body once per thread of every block, blocks one after the other.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& body);
}  // namespace mlc_emu

using dim3 = mlc_emu::dim3;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __syncthreads() ::mlc_emu::sync_threads()
#define threadIdx (::mlc_emu::view.tid)
#define blockIdx (::mlc_emu::view.bid)
#define blockDim (::mlc_emu::view.block)
#define gridDim (::mlc_emu::view.grid)

// Threads of one launch are fibers on one OS thread and switch only at __syncthreads(): a
// read-modify-write is atomic without hardware support.
inline float atomicAdd(float* p, float v) {
  float old = *p;
  *p = old + v;
  return old;
}
inline int atomicAdd(int* p, int v) {
  int old = *p;
  *p = old + v;
  return old;
}
inline int atomicMax(int* p, int v) {
  int old = *p;
  if (v > old) *p = v;
  return old;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
#endif

#define MLC_HD __host__ __device__ __forceinline__

// Fully unrolls the loop that follows on the device (so that a small array indexed by its counter
// stays in registers); nothing on the host.
#if defined(__CUDACC__)
#define MLC_UNROLL _Pragma("unroll")
#else
#define MLC_UNROLL
#endif
