// moelab-cuda's kernels. CUDA C++ that also compiles as host C++ (compat.cuh): nvcc builds it for
// sm_80 / sm_90 (plus PTX for newer GPUs), g++ builds it for the emulation of the launch grid that
// the tests run on machines without a GPU. Only the TF32 tensor-core GEMM is device-only.
//
// Dense GEMM: C = act(alpha op(A) op(B) + bias), 64x64 output tiles, K in steps of 16 through
// shared memory, 16x16 threads each owning a 4x4 strided block of outputs (FP32 FMA); on sm_80+
// the same tiling feeds WMMA m16n16k8 TF32 fragments (4 warps, 32x32 each).
//
// Fused MoE experts (arXiv:2101.03961 style token-choice routing, any top-k): assignments n are
// grouped by expert (count, scan, place: order[] holds n by expert); a grouped GEMM then runs over
// a flat list of 64-row tiles of all experts (an expert with no rows has no tiles), gathering its A
// rows through an index map (x[tokenIndex[n]]), optionally applying the activation while loading,
// and either storing row n or scatter-adding weight[n] * row into out[tokenIndex[n]] with atomics.
// Weight gradients dW[e] = sum_{n of e} a_n^T b_n are a second grouped kernel, one output tile per
// (expert, tile), reducing over the expert's rows 16 at a time.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "compat.cuh"
#include "kernels.h"

#if defined(MLC_DEVICE_BUILD)
#include <mma.h>
#endif

namespace mlc {

// ------------------------------------------------------------------------------------------------
// Launch, errors, memory

#if defined(MLC_DEVICE_BUILD)
static void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  if (e == cudaErrorMemoryAllocation) {
    size_t freeB = 0, totalB = 0;
    cudaGetLastError();
    cudaMemGetInfo(&freeB, &totalB);
    throw std::runtime_error(std::string("moelab-cuda: out of device memory (") + what + "; " +
                             std::to_string(freeB >> 20) + " MiB free of " + std::to_string(totalB >> 20) + " MiB)");
  }
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorUnsupportedPtxVersion) {
    throw std::runtime_error(std::string("moelab-cuda: ") + what +
                             ": the addon has kernels for sm_80 and sm_90 (and PTX 9.0); this GPU cannot run them (" +
                             cudaGetErrorString(e) + ")");
  }
  throw std::runtime_error(std::string("moelab-cuda: ") + what + ": " + cudaGetErrorString(e));
}

template <class... P, class... A>
static void launch(void (*k)(P...), dim3 g, dim3 b, A... args) {
  if (g.x == 0 || g.y == 0 || g.z == 0) return;
  k<<<g, b>>>(static_cast<P>(args)...);
  check(cudaGetLastError(), "kernel launch");
}
#else
template <class... P, class... A>
static void launch(void (*k)(P...), dim3 g, dim3 b, A... args) {
  mlc_emu::run_grid(g, b, [&]() { k(static_cast<P>(args)...); });
}
#endif

static bool g_tf32 = true;

std::string device_status() {
#if defined(MLC_DEVICE_BUILD)
  int driver = 0, runtime = 0, count = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  if (driver == 0) return "no NVIDIA driver is loaded (libcuda.so not found)";
  if (driver < runtime) {
    return "the NVIDIA driver supports CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
           ", older than the addon's runtime " + std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10) +
           ": update the driver";
  }
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return std::string("no CUDA device answers (") + (e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)) + ")";
  }
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  if (p.major < 8) {
    return std::string(p.name) + " is sm_" + std::to_string(p.major) + std::to_string(p.minor) +
           "; the addon is built for sm_80 and newer (Ampere, Hopper)";
  }
  return "";
#else
  return "";
#endif
}

DeviceInfo device_info() {
  DeviceInfo info{};
#if defined(MLC_DEVICE_BUILD)
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  info.emulated = false;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  check(cudaMemGetInfo(&info.freeBytes, &info.totalBytes), "cudaMemGetInfo");
  cudaDriverGetVersion(&info.driverVersion);
  cudaRuntimeGetVersion(&info.runtimeVersion);
#else
  info.emulated = true;
  info.name = "CPU emulation of the CUDA launch grid";
#endif
  return info;
}

bool set_tf32(bool on) {
#if defined(MLC_DEVICE_BUILD)
  g_tf32 = on;
#else
  (void)on;
  g_tf32 = false;
#endif
  return g_tf32;
}

void* raw_alloc(size_t bytes) {
#if defined(MLC_DEVICE_BUILD)
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), (std::string("allocating ") + std::to_string(bytes >> 20) + " MiB").c_str());
  return p;
#else
  void* p = std::malloc(bytes);
  if (!p) throw std::runtime_error("moelab-cuda emulation: out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
#endif
}
void raw_free(void* p) {
#if defined(MLC_DEVICE_BUILD)
  cudaFree(p);
#else
  std::free(p);
#endif
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
#if defined(MLC_DEVICE_BUILD)
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device");
#else
  std::memcpy(dst, src, bytes);
#endif
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
#if defined(MLC_DEVICE_BUILD)
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
#else
  std::memcpy(dst, src, bytes);
#endif
}
void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
#if defined(MLC_DEVICE_BUILD)
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0), "device copy");
#else
  std::memcpy(dst, src, bytes);
#endif
}
void zero(void* p, size_t bytes) {
  if (bytes == 0) return;
#if defined(MLC_DEVICE_BUILD)
  check(cudaMemsetAsync(p, 0, bytes, 0), "memset");
#else
  std::memset(p, 0, bytes);
#endif
}
void synchronize() {
#if defined(MLC_DEVICE_BUILD)
  check(cudaDeviceSynchronize(), "synchronize");
#endif
}

namespace {
// Scratch of n elements of T from the pool, returned at scope exit.
template <class T>
struct Scratch {
  T* p;
  size_t bytes;
  explicit Scratch(size_t n) : p(nullptr), bytes(n * sizeof(T)) {
    if (bytes) p = static_cast<T*>(pool_alloc(bytes));
  }
  ~Scratch() {
    if (p) pool_free(p, bytes);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

inline unsigned blocks_for(long n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }
constexpr int kThreads = 256;

// The index arithmetic every kernel shares.
// This thread's position in a one-dimensional launch.
__device__ __forceinline__ long global_index() { return static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; }
// Tiles of `tile` covering n.
MLC_HD unsigned ceil_div(long n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

// ------------------------------------------------------------------------------------------------
// Activations

// _FusedMatMul's activations (FUSED_MATMUL_ACTIVATION_CODE).
MLC_HD float fused_act(float v, int act, float alpha) {
  switch (act) {
    case 1: return v < 0.f ? 0.f : v;
    case 2: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case 3: return 1.f / (1.f + expf(-v));
    case 4: return v >= 0.f ? v : expf(v) - 1.f;
    case 5: return v >= 0.f ? v : alpha * v;
    default: return v;
  }
}

// The MoE experts' activations (MOE_ACTIVATION_CODE) and their derivatives.
MLC_HD float moe_act(float v, int act) {
  switch (act) {
    case 1: return v > 0.f ? v : 0.f;
    case 2: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case 3: return v / (1.f + expf(-v));
    case 4: return v > 0.f ? v * v : 0.f;
    default: return v;
  }
}
MLC_HD float moe_act_grad(float v, int act) {
  switch (act) {
    case 1: return v > 0.f ? 1.f : 0.f;
    case 2: return 0.5f * (1.f + erff(v * 0.70710678118654752f)) + v * 0.39894228040143268f * expf(-0.5f * v * v);
    case 3: {
      float s = 1.f / (1.f + expf(-v));
      return s * (1.f + v * (1.f - s));
    }
    case 4: return v > 0.f ? 2.f * v : 0.f;
    default: return 1.f;
  }
}

// Sum of v over the block (blockDim.x a power of two, sh holds blockDim.x floats). Every thread
// of the block must call it.
__device__ float block_sum(float v, float* sh) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  float r = sh[0];
  __syncthreads();
  return r;
}
__device__ float block_max(float v, float* sh) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
    __syncthreads();
  }
  float r = sh[0];
  __syncthreads();
  return r;
}

// ------------------------------------------------------------------------------------------------
// Dense GEMM

constexpr int GB = 64;  // output tile side
constexpr int GK = 16;  // reduction step
constexpr int GT = 16;  // threads per tile side (each owns 4x4 outputs, strided by 16)

// One GK step of a thread's 4x4 outputs (rows ty + GT i, columns tx + GT j of the 64x64 tile):
// acc[i][j] += sum_k As[k][ty + GT i] Bs[k][tx + GT j]. Shared by the dense and the grouped GEMMs.
__device__ __forceinline__ void tile_fma(const float (*As)[GB + 1], const float (*Bs)[GB + 1], float (&acc)[4][4], int tx, int ty) {
  for (int k = 0; k < GK; k++) {
    float ar[4], br[4];
    for (int i = 0; i < 4; i++) ar[i] = As[k][ty + GT * i];
    for (int j = 0; j < 4; j++) br[j] = Bs[k][tx + GT * j];
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) acc[i][j] += ar[i] * br[j];
  }
}

template <bool TA, bool TB>
__global__ void gemm_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
                         long sA, long sB, const float* __restrict__ bias, int act, float alpha) {
  __shared__ float As[GK][GB + 1];
  __shared__ float Bs[GK][GB + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * GT + tx;
  const long bz = blockIdx.z;
  const float* a = A + bz * sA;
  const float* b = B + bz * sB;
  float* c = C + bz * static_cast<long>(M) * N;
  const int row0 = blockIdx.y * GB, col0 = blockIdx.x * GB;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += GK) {
    for (int i = tid; i < GB * GK; i += GT * GT) {
      // Consecutive threads read consecutive addresses of A in either layout.
      const int m = TA ? i % GB : i / GK, k = TA ? i / GB : i % GK;
      const int gm = row0 + m, gk = k0 + k;
      As[k][m] = (gm < M && gk < K) ? (TA ? a[static_cast<long>(gk) * M + gm] : a[static_cast<long>(gm) * K + gk]) : 0.f;
    }
    for (int i = tid; i < GB * GK; i += GT * GT) {
      const int n = TB ? i / GK : i % GB, k = TB ? i % GK : i / GB;
      const int gn = col0 + n, gk = k0 + k;
      Bs[k][n] = (gn < N && gk < K) ? (TB ? b[static_cast<long>(gn) * K + gk] : b[static_cast<long>(gk) * N + gn]) : 0.f;
    }
    __syncthreads();
    tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
  for (int i = 0; i < 4; i++) {
    const int gm = row0 + ty + GT * i;
    if (gm >= M) continue;
    for (int j = 0; j < 4; j++) {
      const int gn = col0 + tx + GT * j;
      if (gn >= N) continue;
      float v = acc[i][j];
      if (bias) v += bias[gn];
      c[static_cast<long>(gm) * N + gn] = fused_act(v, act, alpha);
    }
  }
}

#if defined(MLC_DEVICE_BUILD)
// The same tiling on tensor cores: 4 warps, each a 32x32 quarter of the 64x64 tile as 2x2 WMMA
// m16n16k8 TF32 fragments (inputs rounded to TF32, FP32 accumulation). Device only (sm_80+).
template <bool TA, bool TB>
__global__ void gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
                          long sA, long sB, const float* __restrict__ bias, int act, float alpha) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  __shared__ __align__(32) float As[GB][GK + 4];
  __shared__ __align__(32) float Bs[GK][GB + 4];
  __shared__ __align__(32) float Cs[GB][GB + 4];
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
  const long bz = blockIdx.z;
  const float* a = A + bz * sA;
  const float* b = B + bz * sB;
  float* c = C + bz * static_cast<long>(M) * N;
  const int row0 = blockIdx.y * GB, col0 = blockIdx.x * GB;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);
  for (int k0 = 0; k0 < K; k0 += GK) {
    for (int i = tid; i < GB * GK; i += 128) {
      const int m = TA ? i % GB : i / GK, k = TA ? i / GB : i % GK;
      const int gm = row0 + m, gk = k0 + k;
      As[m][k] = (gm < M && gk < K) ? (TA ? a[static_cast<long>(gk) * M + gm] : a[static_cast<long>(gm) * K + gk]) : 0.f;
    }
    for (int i = tid; i < GB * GK; i += 128) {
      const int n = TB ? i / GK : i % GB, k = TB ? i % GK : i / GB;
      const int gn = col0 + n, gk = k0 + k;
      Bs[k][n] = (gn < N && gk < K) ? (TB ? b[static_cast<long>(gn) * K + gk] : b[static_cast<long>(gk) * N + gn]) : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < GK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
      for (int i = 0; i < 2; i++) {
        wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], GK + 4);
        for (int t = 0; t < fa[i].num_elements; t++) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
      }
      for (int j = 0; j < 2; j++) {
        wmma::load_matrix_sync(fb[j], &Bs[kk][wn * 32 + j * 16], GB + 4);
        for (int t = 0; t < fb[j].num_elements; t++) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
      }
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], GB + 4, wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < GB * GB; i += 128) {
    const int m = i / GB, n = i % GB, gm = row0 + m, gn = col0 + n;
    if (gm < M && gn < N) {
      float v = Cs[m][n];
      if (bias) v += bias[gn];
      c[static_cast<long>(gm) * N + gn] = fused_act(v, act, alpha);
    }
  }
#endif
}
#endif
}  // namespace

void gemm(bool ta, bool tb, int batch, int M, int N, int K, const float* A, long strideA, const float* B, long strideB,
          float* C, const float* bias, int act, float alpha) {
  if (batch == 0 || M == 0 || N == 0) return;
  for (int b0 = 0; b0 < batch; b0 += 65535) {
    const int nb = std::min(batch - b0, 65535);
    const float* a = A + static_cast<long>(b0) * strideA;
    const float* b = B + static_cast<long>(b0) * strideB;
    float* c = C + static_cast<long>(b0) * M * N;
    dim3 grid(ceil_div(N, GB), ceil_div(M, GB), nb);
#if defined(MLC_DEVICE_BUILD)
    if (g_tf32) {
      dim3 block(128);
      if (ta && tb) launch(gemm_tf32<true, true>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
      else if (ta) launch(gemm_tf32<true, false>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
      else if (tb) launch(gemm_tf32<false, true>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
      else launch(gemm_tf32<false, false>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
      continue;
    }
#endif
    dim3 block(GT, GT);
    if (ta && tb) launch(gemm_f32<true, true>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
    else if (ta) launch(gemm_f32<true, false>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
    else if (tb) launch(gemm_f32<false, true>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
    else launch(gemm_f32<false, false>, grid, block, a, b, c, M, N, K, strideA, strideB, bias, act, alpha);
  }
}

// ------------------------------------------------------------------------------------------------
// Elementwise, reductions, layout

namespace {
MLC_HD long offset6(long i, const Strides6& s, const long* str) {
  long off = 0;
  for (int d = s.rank - 1; d >= 0; d--) {
    const long q = i / s.shape[d];
    off += (i - q * s.shape[d]) * str[d];
    i = q;
  }
  return off;
}

// Unary codes (kernels/elementwise.ts UNARY): 0 neg, 1 exp, 2 log, 3 sqrt, 4 rsqrt, 5 square,
// 6 relu (NaN stays NaN), 7 sigmoid, 8 tanh, 9 abs, 10 step (alpha for x <= 0), 11 reciprocal,
// 12 erf, 13 sin, 14 cos, 15 floor, 16 ceil, 17 elu, 18 relu6 (NaN stays NaN), 19 log1p, 20 expm1,
// 21 leaky relu (slope alpha).
__global__ void unary_k(const float* x, float* out, long n, int op, float alpha) {
  const long i = global_index();
  if (i >= n) return;
  const float v = x[i];
  float r;
  switch (op) {
    case 0: r = -v; break;
    case 1: r = expf(v); break;
    case 2: r = logf(v); break;
    case 3: r = sqrtf(v); break;
    case 4: r = 1.f / sqrtf(v); break;
    case 5: r = v * v; break;
    case 6: r = v < 0.f ? 0.f : v; break;
    case 7: r = 1.f / (1.f + expf(-v)); break;
    case 8: r = tanhf(v); break;
    case 9: r = fabsf(v); break;
    case 10: r = v != v ? v : (v > 0.f ? 1.f : alpha); break;
    case 11: r = 1.f / v; break;
    case 12: r = erff(v); break;
    case 13: r = sinf(v); break;
    case 14: r = cosf(v); break;
    case 15: r = floorf(v); break;
    case 16: r = ceilf(v); break;
    case 17: r = v >= 0.f ? v : expf(v) - 1.f; break;
    case 18: r = v < 0.f ? 0.f : (v > 6.f ? 6.f : v); break;
    case 19: r = log1pf(v); break;
    case 20: r = expm1f(v); break;
    default: r = v < 0.f ? alpha * v : v; break;
  }
  out[i] = r;
}

__global__ void fill_k(float* out, long n, float value) {
  const long i = global_index();
  if (i < n) out[i] = value;
}
template <class S, class D>
__global__ void cast_k(const S* x, D* out, long n) {
  const long i = global_index();
  if (i < n) out[i] = static_cast<D>(x[i]);
}

// [outer, R, inner] -> [outer, inner]; one block per output row when inner == 1, else one thread per output.
__global__ void reduce_rows_k(const float* x, float* out, long R, int kind) {
  __shared__ float sh[kThreads];
  const long o = blockIdx.x;
  const float* row = x + o * R;
  float acc = kind == 2 ? -INFINITY : 0.f;
  for (long r = threadIdx.x; r < R; r += blockDim.x) {
    const float v = row[r];
    if (kind == 2) acc = (v > acc || v != v) ? v : acc;
    else acc += kind == 3 ? v * v : v;
  }
  float total = kind == 2 ? block_max(acc, sh) : block_sum(acc, sh);
  if (threadIdx.x == 0) out[o] = kind == 1 ? total / static_cast<float>(R) : total;
}
__global__ void reduce_cols_k(const float* x, float* out, long outer, long R, long inner, int kind) {
  const long i = global_index();
  if (i >= outer * inner) return;
  const long o = i / inner, c = i - o * inner;
  const float* p = x + o * R * inner + c;
  float acc = kind == 2 ? -INFINITY : 0.f;
  for (long r = 0; r < R; r++) {
    const float v = p[r * inner];
    if (kind == 2) acc = (v > acc || v != v) ? v : acc;
    else acc += kind == 3 ? v * v : v;
  }
  out[i] = kind == 1 ? acc / static_cast<float>(R) : acc;
}

template <class T>
__global__ void gather_k(const T* x, const int* idx, T* out, long outer, long dim, long inner, long nIdx, int* bad) {
  const long i = global_index();
  if (i >= outer * nIdx * inner) return;
  const long c = i % inner, j = (i / inner) % nIdx, o = i / (inner * nIdx);
  const int k = idx[j];
  if (k < 0 || k >= dim) {
    atomicMax(bad, static_cast<int>(j) + 1);
    out[i] = T(0);
    return;
  }
  out[i] = x[(o * dim + k) * inner + c];
}

__global__ void segment_sum_k(const float* x, const int* ids, float* out, long n, long inner, long numSegments) {
  const long i = global_index();
  if (i >= n * inner) return;
  const long r = i / inner, c = i - r * inner;
  const int s = ids[r];
  if (s >= 0 && s < numSegments) atomicAdd(&out[s * inner + c], x[i]);
}

__global__ void softmax_k(const float* x, float* out, long cols) {
  __shared__ float sh[kThreads];
  const float* row = x + static_cast<long>(blockIdx.x) * cols;
  float* o = out + static_cast<long>(blockIdx.x) * cols;
  float m = -INFINITY;
  for (long c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
  m = block_max(m, sh);
  float s = 0.f;
  for (long c = threadIdx.x; c < cols; c += blockDim.x) s += expf(row[c] - m);
  s = block_sum(s, sh);
  for (long c = threadIdx.x; c < cols; c += blockDim.x) o[c] = expf(row[c] - m) / s;
}

// One thread per row: k rounds, each picking the next (value descending, index ascending) after
// the previous pick. O(k cols) per row without scratch; top-k of MoE routers has small k.
__global__ void topk_k(const float* x, float* values, int* indices, long rows, long cols, int k) {
  const long r = global_index();
  if (r >= rows) return;
  const float* row = x + r * cols;
  float pv = INFINITY;
  long pi = -1;
  for (int kk = 0; kk < k; kk++) {
    float bv = -INFINITY;
    long bi = -1;
    for (long c = 0; c < cols; c++) {
      const float v = row[c];
      const bool after = v < pv || (v == pv && c > pi);
      if (after && (bi < 0 || v > bv)) {
        bv = v;
        bi = c;
      }
    }
    values[r * k + kk] = bi < 0 ? 0.f : bv;
    indices[r * k + kk] = static_cast<int>(bi < 0 ? 0 : bi);
    pv = bv;
    pi = bi;
  }
}

// The softmax top-k router gate (core's MoelabSoftmaxTopK), one thread per token row: k selection
// rounds on z + bias as topk_k does (-Infinity and NaN never chosen: a row may make fewer than k
// choices, its other slots get expert -1, weight 0), then weight_s = softmax(z)[e_s] (raw), or the
// softmax of the chosen scores alone when renormalising (the row's normaliser cancels, so a NaN
// elsewhere in the row does not reach the weights: the same as moelab-cpu). Outputs slot-major [k, T].
__global__ void softmax_topk_k(const float* z, const float* bias, float* weight, int* expert, long T, int E, int k, bool renormalize) {
  const long t = global_index();
  if (t >= T) return;
  const float* row = z + t * E;
  float pv = INFINITY;
  int pi = -1, n = 0;
  for (int s = 0; s < k; s++) {
    float bv = -INFINITY;
    int bi = -1;
    for (int e = 0; e < E; e++) {
      const float v = bias ? row[e] + bias[e] : row[e];
      if (!(v > -INFINITY)) continue;
      const bool after = v < pv || (v == pv && e > pi);
      if (after && (bi < 0 || v > bv)) {
        bv = v;
        bi = e;
      }
    }
    if (bi < 0) break;
    expert[s * T + t] = bi;
    n++;
    pv = bv;
    pi = bi;
  }
  float m = -INFINITY, sum = 0.f;
  if (renormalize) {
    for (int s = 0; s < n; s++) m = fmaxf(m, row[expert[s * T + t]]);
    for (int s = 0; s < n; s++) sum += expf(row[expert[s * T + t]] - m);
  } else {
    for (int e = 0; e < E; e++) m = fmaxf(m, row[e]);
    for (int e = 0; e < E; e++) sum += expf(row[e] - m);
  }
  for (int s = 0; s < n; s++) weight[s * T + t] = expf(row[expert[s * T + t]] - m) / sum;
  for (int s = n; s < k; s++) {
    weight[s * T + t] = 0.f;
    expert[s * T + t] = -1;
  }
}

// Its backward: with dot = sum_s w_s dy_s, renormalised dscores[e_s] = w_s (dy_s - dot) (0
// elsewhere); raw dscores[j] = p_j (dy_j - dot) with dy_j the slot gradient of expert j.
__global__ void softmax_topk_grad_k(const float* dy, const float* z, const float* weight, const int* expert, float* dz, long T, int E, int k,
                                    bool renormalize) {
  const long t = global_index();
  if (t >= T) return;
  float* g = dz + t * E;
  float dot = 0.f;
  for (int s = 0; s < k; s++)
    if (expert[s * T + t] >= 0) dot += weight[s * T + t] * dy[s * T + t];
  const float* row = z + t * E;
  float m = -INFINITY;
  for (int e = 0; e < E; e++) m = fmaxf(m, row[e]);
  if (renormalize || !(m > -INFINITY)) {
    for (int e = 0; e < E; e++) g[e] = 0.f;
    if (renormalize)
      for (int s = 0; s < k; s++) {
        const int e = expert[s * T + t];
        if (e >= 0) g[e] = weight[s * T + t] * (dy[s * T + t] - dot);
      }
    return;
  }
  float sum = 0.f;
  for (int e = 0; e < E; e++) sum += expf(row[e] - m);
  const float inv = 1.f / sum;
  for (int e = 0; e < E; e++) g[e] = expf(row[e] - m) * (-dot * inv);
  for (int s = 0; s < k; s++) {
    const int e = expert[s * T + t];
    if (e >= 0) g[e] += weight[s * T + t] * dy[s * T + t];
  }
}

__global__ void layer_norm_forward_k(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                                     long D, float eps) {
  __shared__ float sh[kThreads];
  const long r = blockIdx.x;
  const float* row = x + r * D;
  float s = 0.f;
  for (long c = threadIdx.x; c < D; c += blockDim.x) s += row[c];
  const float mu = block_sum(s, sh) / static_cast<float>(D);
  float q = 0.f;
  for (long c = threadIdx.x; c < D; c += blockDim.x) q += (row[c] - mu) * (row[c] - mu);
  const float rs = 1.f / sqrtf(block_sum(q, sh) / static_cast<float>(D) + eps);
  for (long c = threadIdx.x; c < D; c += blockDim.x) y[r * D + c] = (row[c] - mu) * rs * gamma[c] + (beta ? beta[c] : 0.f);
  if (threadIdx.x == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma.
__global__ void layer_norm_dx_k(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd, float* dx,
                                long D) {
  __shared__ float sh[kThreads];
  const long r = blockIdx.x;
  const float mu = mean[r], rs = rstd[r];
  float a = 0.f, b = 0.f;
  for (long c = threadIdx.x; c < D; c += blockDim.x) {
    const float g = dy[r * D + c] * gamma[c], xh = (x[r * D + c] - mu) * rs;
    a += g;
    b += g * xh;
  }
  a = block_sum(a, sh) / static_cast<float>(D);
  b = block_sum(b, sh) / static_cast<float>(D);
  for (long c = threadIdx.x; c < D; c += blockDim.x) {
    const float g = dy[r * D + c] * gamma[c], xh = (x[r * D + c] - mu) * rs;
    dx[r * D + c] = rs * (g - a - xh * b);
  }
}
__global__ void layer_norm_dparams_k(const float* dy, const float* x, const float* mean, const float* rstd, float* dgamma, float* dbeta,
                                     long rows, long D) {
  const long c = global_index();
  if (c >= D) return;
  float g = 0.f, b = 0.f;
  for (long r = 0; r < rows; r++) {
    const float d = dy[r * D + c];
    g += d * (x[r * D + c] - mean[r]) * rstd[r];
    b += d;
  }
  dgamma[c] = g;
  if (dbeta) dbeta[c] = b;
}

__global__ void adamw_k(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut, long n,
                        AdamWScalars s) {
  const long i = global_index();
  if (i >= n) return;
  const float m2 = m[i] * s.beta1 + g[i] * s.oneMinusBeta1;
  const float v2 = v[i] * s.beta2 + (g[i] * g[i]) * s.oneMinusBeta2;
  const float update = (m2 / s.bc1) / (sqrtf(v2 / s.bc2) + s.eps);
  float next = p[i] - update * s.lr;
  if (s.decay) next = next - p[i] * s.lrTimesDecay;
  mOut[i] = m2;
  vOut[i] = v2;
  pOut[i] = next;
}
}  // namespace

void unary(const float* x, float* out, long n, int op, float alpha) {
  launch(unary_k, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, out, n, op, alpha);
}
void fill(float* out, long n, float value) { launch(fill_k, dim3(blocks_for(n, kThreads)), dim3(kThreads), out, n, value); }
void cast_int_to_float(const int* x, float* out, long n) {
  launch(cast_k<int, float>, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, out, n);
}
void cast_float_to_int(const float* x, int* out, long n) {
  launch(cast_k<float, int>, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, out, n);
}
void cast_bool_to_float(const uint8_t* x, float* out, long n) {
  launch(cast_k<uint8_t, float>, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, out, n);
}
void reduce(const float* x, float* out, long outer, long R, long inner, int kind) {
  if (outer * inner == 0) return;
  if (inner == 1) launch(reduce_rows_k, dim3(static_cast<unsigned>(outer)), dim3(kThreads), x, out, R, kind);
  else launch(reduce_cols_k, dim3(blocks_for(outer * inner, kThreads)), dim3(kThreads), x, out, outer, R, inner, kind);
}
static long bad_position(int* bad) {
  int h = 0;
  copy_to_host(&h, bad, sizeof(int));
  return h - 1;
}
long gather(const float* x, const int* idx, float* out, long outer, long dim, long inner, long nIdx) {
  const long n = outer * nIdx * inner;
  if (n == 0) return -1;
  Scratch<int> bad(1);
  zero(bad.p, sizeof(int));
  launch(gather_k<float>, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, idx, out, outer, dim, inner, nIdx, bad.p);
  return bad_position(bad.p);
}
long gather_int(const int* x, const int* idx, int* out, long outer, long dim, long inner, long nIdx) {
  const long n = outer * nIdx * inner;
  if (n == 0) return -1;
  Scratch<int> bad(1);
  zero(bad.p, sizeof(int));
  launch(gather_k<int>, dim3(blocks_for(n, kThreads)), dim3(kThreads), x, idx, out, outer, dim, inner, nIdx, bad.p);
  return bad_position(bad.p);
}
void segment_sum(const float* x, const int* ids, float* out, long n, long inner, long numSegments) {
  zero(out, sizeof(float) * numSegments * inner);
  launch(segment_sum_k, dim3(blocks_for(n * inner, kThreads)), dim3(kThreads), x, ids, out, n, inner, numSegments);
}
void softmax(const float* x, float* out, long rows, long cols) {
  if (cols == 0) return;
  launch(softmax_k, dim3(static_cast<unsigned>(rows)), dim3(kThreads), x, out, cols);
}
void topk(const float* x, float* values, int* indices, long rows, long cols, int k) {
  if (k == 0) return;
  launch(topk_k, dim3(blocks_for(rows, 64)), dim3(64), x, values, indices, rows, cols, k);
}
void softmax_topk_forward(const float* scores, const float* bias, float* weight, int* expert, long T, int E, int k, bool renormalize) {
  launch(softmax_topk_k, dim3(blocks_for(T, 64)), dim3(64), scores, bias, weight, expert, T, E, k, renormalize);
}
void softmax_topk_backward(const float* dy, const float* scores, const float* weight, const int* expert, float* dscores, long T, int E, int k,
                           bool renormalize) {
  launch(softmax_topk_grad_k, dim3(blocks_for(T, 64)), dim3(64), dy, scores, weight, expert, dscores, T, E, k, renormalize);
}
void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, long rows, long D,
                        float eps) {
  launch(layer_norm_forward_k, dim3(static_cast<unsigned>(rows)), dim3(kThreads), x, gamma, beta, y, mean, rstd, D, eps);
}
void layer_norm_backward(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd, float* dx,
                         float* dgamma, float* dbeta, long rows, long D) {
  launch(layer_norm_dx_k, dim3(static_cast<unsigned>(rows)), dim3(kThreads), dy, x, gamma, mean, rstd, dx, D);
  launch(layer_norm_dparams_k, dim3(blocks_for(D, kThreads)), dim3(kThreads), dy, x, mean, rstd, dgamma, dbeta, rows, D);
}
void adamw(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut, long n,
           const AdamWScalars& s) {
  launch(adamw_k, dim3(blocks_for(n, kThreads)), dim3(kThreads), p, g, m, v, pOut, mOut, vOut, n, s);
}

// ------------------------------------------------------------------------------------------------
// Fused MoE experts

namespace {
// Assignments grouped by expert: order[off[e] .. off[e+1]) are the assignments n of expert e, and
// tileOff[e] is the first of expert e's ceil(count / GB) row tiles in the flat tile list.
struct Route {
  const int* off;
  const int* tileOff;
  const int* order;
  int E;
};

__global__ void check_range_k(const int* idx, long n, long limit, int* bad) {
  const long i = global_index();
  if (i < n && (idx[i] < 0 || idx[i] >= limit)) atomicMax(bad, static_cast<int>(i) + 1);
}
__global__ void route_count_k(const int* expert, long N, int* counts) {
  const long i = global_index();
  if (i < N) atomicAdd(&counts[expert[i]], 1);
}
// One thread: E is the number of experts (tens to hundreds).
__global__ void route_scan_k(const int* counts, int E, int* off, int* tileOff, int* fill) {
  if (threadIdx.x != 0) return;
  off[0] = 0;
  tileOff[0] = 0;
  for (int e = 0; e < E; e++) {
    off[e + 1] = off[e] + counts[e];
    tileOff[e + 1] = tileOff[e] + static_cast<int>(ceil_div(counts[e], GB));
    fill[e] = 0;
  }
}
__global__ void route_place_k(const int* expert, long N, const int* off, int* fill, int* order) {
  const long i = global_index();
  if (i < N) {
    const int e = expert[i];
    order[off[e] + atomicAdd(&fill[e], 1)] = static_cast<int>(i);
  }
}

// Row tile `t` of the flat list: its expert (the last e with tileOff[e] <= t) and first position.
MLC_HD int tile_expert(const Route& r, int t) {
  int lo = 0, hi = r.E;
  while (lo + 1 < hi) {
    const int mid = (lo + hi) / 2;
    if (r.tileOff[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Expert weights W [E, din, dout] as the grouped GEMMs read them, one element at a time:
// at(e, i, j) = W[e, i, j]. DenseW is a float32 tensor; PackedW dequantizes weight-only quantized
// codes while the GEMM loads its tile (the float weights never exist in memory):
//   W[e, i, j] = scale[e, i / group, j] * (u - zero[e, i / group, j]),
// u the j-th `bits`-bit code of row (e, i), a little-endian bit stream of `words` 32-bit words.
struct DenseW {
  const float* w;
  int din, dout;
  __device__ __forceinline__ float at(int e, int i, int j) const { return w[(static_cast<long>(e) * din + i) * dout + j]; }
};
struct PackedW {
  const unsigned* codes;
  const float* scale;
  const float* zero;
  int din, dout, bits, group, words, groups;
  __device__ __forceinline__ float at(int e, int i, int j) const {
    const unsigned* row = codes + (static_cast<long>(e) * din + i) * words;
    const long bit = static_cast<long>(j) * bits;
    const int w = static_cast<int>(bit >> 5), sh = static_cast<int>(bit & 31);
    unsigned u = row[w] >> sh;
    if (sh + bits > 32) u |= row[w + 1] << (32 - sh);  // a code across two words (bits = 3)
    u &= (1u << bits) - 1u;
    const long g = (static_cast<long>(e) * groups + i / group) * dout + j;
    return scale[g] * (static_cast<float>(u) - zero[g]);
  }
};

// An expert's input row as the grouped GEMMs load it: act?(a[k]) (aAct < 0: none), times
// a[glu + k] for GLU experts (glu > 0: the offset of the up projection x W3 in the row).
__device__ __forceinline__ float load_act(const float* a, int k, int aAct, int glu) {
  float v = a[k];
  if (aAct >= 0) v = moe_act(v, aAct);
  if (glu > 0) v *= a[glu + k];
  return v;
}

// For every sorted position p of expert e: y = load_act(A[aMap(n)]) op(W[e]) (op(W) [K,Nc]: W
// itself, or W^T when TB), n = order[p]. SCATTER: C[cMap(n)] += scale[n] * y (atomics); else
// C[n] = y. aMap, cMap and scale may be null (identity / 1); lda, ldc are row strides. grid (tiles
// upper bound, ceil(Nc / GB)), block GT x GT.
template <bool TB, bool SCATTER, class WS>
__global__ void grouped_rows_k(Route r, const float* __restrict__ A, long lda, const int* aMap, int aAct, int aGlu, WS W, int K, int Nc,
                               float* C, long ldc, const int* cMap, const float* scale) {
  __shared__ float As[GK][GB + 1];
  __shared__ float Bs[GK][GB + 1];
  __shared__ int rowN[GB];
  const int t = blockIdx.x;
  if (t >= r.tileOff[r.E]) return;  // the whole block: past the last tile
  const int e = tile_expert(r, t);
  const int p0 = r.off[e] + (t - r.tileOff[e]) * GB;
  const int rows = min(GB, r.off[e + 1] - p0);
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * GT + tx;
  const int col0 = blockIdx.y * GB;
  for (int i = tid; i < GB; i += GT * GT) rowN[i] = i < rows ? r.order[p0 + i] : -1;
  __syncthreads();
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += GK) {
    for (int i = tid; i < GB * GK; i += GT * GT) {
      const int m = i / GK, k = i % GK, gk = k0 + k, n = rowN[m];
      As[k][m] = (n >= 0 && gk < K) ? load_act(A + (aMap ? aMap[n] : n) * lda, gk, aAct, aGlu) : 0.f;
    }
    for (int i = tid; i < GB * GK; i += GT * GT) {
      // Consecutive threads read consecutive addresses of W in either orientation.
      const int nn = TB ? i / GK : i % GB, k = TB ? i % GK : i / GB;
      const int gn = col0 + nn, gk = k0 + k;
      Bs[k][nn] = (gn < Nc && gk < K) ? (TB ? W.at(e, gn, gk) : W.at(e, gk, gn)) : 0.f;
    }
    __syncthreads();
    tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
  for (int i = 0; i < 4; i++) {
    const int n = rowN[ty + GT * i];
    if (n < 0) continue;
    const float s = SCATTER && scale ? scale[n] : 1.f;
    float* crow = C + (SCATTER && cMap ? cMap[n] : n) * ldc;
    for (int j = 0; j < 4; j++) {
      const int gn = col0 + tx + GT * j;
      if (gn >= Nc) continue;
      if (SCATTER) atomicAdd(&crow[gn], s * acc[i][j]);
      else crow[gn] = acc[i][j];
    }
  }
}

// dW[e] [Ka, Nb] = sum over the assignments n of expert e of (aScale[n] load_act(A[aMap(n)]))^T
// B[bMap(n)]; lda, ldb are row strides. grid (ceil(Nb / GB), ceil(Ka / GB), E), block GT x GT;
// experts without rows get zeros.
__global__ void grouped_wgrad_k(Route r, const float* __restrict__ A, long lda, const int* aMap, const float* aScale, int aAct, int aGlu,
                                int Ka, const float* __restrict__ B, long ldb, const int* bMap, int Nb, float* dW) {
  __shared__ float As[GK][GB + 1];
  __shared__ float Bs[GK][GB + 1];
  __shared__ int rowN[GK];
  const int e = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * GT + tx;
  const int row0 = blockIdx.y * GB, col0 = blockIdx.x * GB;
  const int pBegin = r.off[e], pEnd = r.off[e + 1];
  float acc[4][4] = {};
  for (int p0 = pBegin; p0 < pEnd; p0 += GK) {
    if (tid < GK) rowN[tid] = p0 + tid < pEnd ? r.order[p0 + tid] : -1;
    __syncthreads();
    for (int i = tid; i < GB * GK; i += GT * GT) {
      const int kk = i / GB, m = i % GB, n = rowN[kk], gm = row0 + m;
      float v = 0.f;
      if (n >= 0 && gm < Ka) {
        v = load_act(A + (aMap ? aMap[n] : n) * lda, gm, aAct, aGlu);
        if (aScale) v *= aScale[n];
      }
      As[kk][m] = v;
    }
    for (int i = tid; i < GB * GK; i += GT * GT) {
      const int kk = i / GB, nn = i % GB, n = rowN[kk], gn = col0 + nn;
      Bs[kk][nn] = (n >= 0 && gn < Nb) ? B[static_cast<long>(bMap ? bMap[n] : n) * ldb + gn] : 0.f;
    }
    __syncthreads();
    tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
  float* out = dW + static_cast<long>(e) * Ka * Nb;
  for (int i = 0; i < 4; i++) {
    const int gm = row0 + ty + GT * i;
    if (gm >= Ka) continue;
    for (int j = 0; j < 4; j++) {
      const int gn = col0 + tx + GT * j;
      if (gn < Nb) out[static_cast<long>(gm) * Nb + gn] = acc[i][j];
    }
  }
}

// Per assignment n (one block each), from G[n] = dy[tok[n]] W2[e]^T [h] and the forward's record
// Hn (MLP: the pre-activation a; GLU: [a | b], b = x W3):
//   dweight[n] = g . G[n] with g = act(a) (MLP) or act(a) b (GLU);
//   MLP: D[n] = weight[n] G[n] act'(a)                           (D [N, h], may alias G)
//   GLU: D[n] = [weight[n] G[n] b act'(a) | weight[n] G[n] act(a)] (D [N, 2h])
__global__ void moe_hidden_grad_k(const float* H, const float* G, float* D, const float* weight, float* dweight, int h, int act, bool glu) {
  __shared__ float sh[kThreads];
  const long n = blockIdx.x;
  const int hw = glu ? 2 * h : h;
  const float* hr = H + n * hw;
  const float* gr = G + n * h;
  float* dr = D + n * hw;
  float s = 0.f;
  for (int j = threadIdx.x; j < h; j += blockDim.x) s += load_act(hr, j, act, glu ? h : 0) * gr[j];
  s = block_sum(s, sh);
  const float w = weight[n];
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    const float a = hr[j], g = gr[j];
    if (glu) {
      dr[j] = w * g * hr[h + j] * moe_act_grad(a, act);
      dr[h + j] = w * g * moe_act(a, act);
    } else {
      dr[j] = w * g * moe_act_grad(a, act);
    }
  }
  if (threadIdx.x == 0) dweight[n] = s;
}

// dweight[n] = Y[n] . dy[outRow[n]] (one block per assignment).
__global__ void row_dot_k(const float* Y, const float* dy, const int* dyMap, float* out, int cols) {
  __shared__ float sh[kThreads];
  const long n = blockIdx.x;
  const float* a = Y + n * cols;
  const float* b = dy + static_cast<long>(dyMap[n]) * cols;
  float s = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) s += a[j] * b[j];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) out[n] = s;
}

// The routing of one fused op: index checks, then the counting sort by expert.
struct Routing {
  Scratch<int> ints;  // counts E | off E+1 | tileOff E+1 | fill E | order N | bad 1
  Route route;
  int E, N;
  Routing(int E_, int N_) : ints(static_cast<size_t>(4) * E_ + 3 + N_), E(E_), N(N_) {
    int* base = ints.p;
    route = Route{base + E, base + 2 * E + 1, base + 4 * E + 2, E};
  }
  int* counts() { return ints.p; }
  int* off() { return ints.p + E; }
  int* tileOff() { return ints.p + 2 * E + 1; }
  int* fill() { return ints.p + 3 * E + 2; }
  int* order() { return ints.p + 4 * E + 2; }
  int* bad() { return ints.p + 4 * E + 2 + N; }

  // "" or "<name>[i] is outside [0, limit)" for the first bad index array.
  std::string check(const char* kernel, std::initializer_list<std::pair<const char*, std::pair<const int*, long>>> checks) {
    for (auto& c : checks) {
      zero(bad(), sizeof(int));
      launch(check_range_k, dim3(blocks_for(N, kThreads)), dim3(kThreads), c.second.first, static_cast<long>(N), c.second.second, bad());
      int h = 0;
      copy_to_host(&h, bad(), sizeof(int));
      if (h > 0) {
        int v = 0;
        copy_to_host(&v, c.second.first + (h - 1), sizeof(int));
        return std::string(kernel) + ": " + c.first + "[" + std::to_string(h - 1) + "] = " + std::to_string(v) + " is outside [0, " +
               std::to_string(c.second.second) + ")";
      }
    }
    return "";
  }
  void sort(const int* expert) {
    zero(counts(), sizeof(int) * E);
    launch(route_count_k, dim3(blocks_for(N, kThreads)), dim3(kThreads), expert, static_cast<long>(N), counts());
    launch(route_scan_k, dim3(1), dim3(1), counts(), E, off(), tileOff(), fill());
    launch(route_place_k, dim3(blocks_for(N, kThreads)), dim3(kThreads), expert, static_cast<long>(N), off(), fill(), order());
  }
  dim3 row_grid(int Nc) const { return dim3(static_cast<unsigned>(N / GB + E + 1), ceil_div(Nc, GB)); }
  dim3 wgrad_grid(int Ka, int Nb) const {
    return dim3(ceil_div(Nb, GB), ceil_div(Ka, GB), static_cast<unsigned>(E));
  }
};

// The expert bank of one fused MLP / GLU / packed op: W1 (and W3 when gated) [E, d, h], W2 [E, h, d].
template <class WS>
struct Experts {
  WS w1, w3, w2;
  bool gated;
};

// out[tok[n]] += weight[n] g(x[tok[n]]) W2[e]; hidden[n] = x[tok[n]] W1[e] (| x[tok[n]] W3[e] when gated).
template <class WS>
std::string experts_forward(const char* kernel, const Experts<WS>& ex, const float* x, const int* tok, const int* expert, const float* weight,
                            float* out, float* hidden, int T, int d, int h, int E, int N, int act) {
  zero(out, sizeof(float) * T * d);
  if (N == 0 || E == 0) return "";
  Routing rt(E, N);
  std::string bad = rt.check(kernel, {{"tokenIndex", {tok, T}}, {"expertIndex", {expert, E}}});
  if (!bad.empty()) return bad;
  rt.sort(expert);
  const dim3 block(GT, GT);
  const int hw = ex.gated ? 2 * h : h;
  const float* none = nullptr;
  const int* noMap = nullptr;
  launch(grouped_rows_k<false, false, WS>, rt.row_grid(h), block, rt.route, x, static_cast<long>(d), tok, -1, 0, ex.w1, d, h, hidden,
         static_cast<long>(hw), noMap, none);
  if (ex.gated)
    launch(grouped_rows_k<false, false, WS>, rt.row_grid(h), block, rt.route, x, static_cast<long>(d), tok, -1, 0, ex.w3, d, h, hidden + h,
           static_cast<long>(hw), noMap, none);
  launch(grouped_rows_k<false, true, WS>, rt.row_grid(d), block, rt.route, static_cast<const float*>(hidden), static_cast<long>(hw), noMap, act,
         ex.gated ? h : 0, ex.w2, h, d, out, static_cast<long>(d), tok, weight);
  return "";
}

// dx, dweight, and (when dw1 is non-null: float experts) dw1, dw3, dw2.
template <class WS>
std::string experts_backward(const char* kernel, const Experts<WS>& ex, const float* dy, const float* x, const int* tok, const int* expert,
                             const float* weight, const float* hidden, float* dx, float* dw1, float* dw3, float* dw2, float* dweight, int T,
                             int d, int h, int E, int N, int act) {
  zero(dx, sizeof(float) * T * d);
  if (N == 0 || E == 0) {
    if (dw1) {
      zero(dw1, sizeof(float) * E * d * h);
      zero(dw2, sizeof(float) * E * h * d);
      if (ex.gated) zero(dw3, sizeof(float) * E * d * h);
    }
    return "";
  }
  Routing rt(E, N);
  std::string bad = rt.check(kernel, {{"tokenIndex", {tok, T}}, {"expertIndex", {expert, E}}});
  if (!bad.empty()) return bad;
  rt.sort(expert);
  const dim3 block(GT, GT);
  const int hw = ex.gated ? 2 * h : h;
  const float* none = nullptr;
  const int* noMap = nullptr;
  Scratch<float> G(static_cast<size_t>(N) * h);
  Scratch<float> Dg(ex.gated ? static_cast<size_t>(N) * hw : 0);
  float* D = ex.gated ? Dg.p : G.p;
  // G[n] = dy[tok[n]] W2[e]^T
  launch(grouped_rows_k<true, false, WS>, rt.row_grid(h), block, rt.route, dy, static_cast<long>(d), tok, -1, 0, ex.w2, d, h, G.p,
         static_cast<long>(h), noMap, none);
  // dW2[e] = sum_n (weight[n] g_n)^T dy[tok[n]]
  if (dw1)
    launch(grouped_wgrad_k, rt.wgrad_grid(h, d), block, rt.route, hidden, static_cast<long>(hw), noMap, weight, act, ex.gated ? h : 0, h, dy,
           static_cast<long>(d), tok, d, dw2);
  launch(moe_hidden_grad_k, dim3(static_cast<unsigned>(N)), dim3(kThreads), hidden, static_cast<const float*>(G.p), D, weight, dweight, h, act,
         ex.gated);
  for (int part = 0; part < (ex.gated ? 2 : 1); part++) {
    const float* Dp = D + part * h;
    // dW1[e] (dW3[e]) = sum_n x[tok[n]]^T D[n]
    if (dw1)
      launch(grouped_wgrad_k, rt.wgrad_grid(d, h), block, rt.route, x, static_cast<long>(d), tok, none, -1, 0, d, Dp, static_cast<long>(hw),
             noMap, h, part ? dw3 : dw1);
    // dx[tok[n]] += D[n] W1[e]^T (+ the W3 half)
    launch(grouped_rows_k<true, true, WS>, rt.row_grid(d), block, rt.route, Dp, static_cast<long>(hw), noMap, -1, 0, part ? ex.w3 : ex.w1, h,
           d, dx, static_cast<long>(d), tok, none);
  }
  return "";
}

Experts<DenseW> dense_experts(const float* w1, const float* w3, const float* w2, int d, int h) {
  return Experts<DenseW>{DenseW{w1, d, h}, DenseW{w3, d, h}, DenseW{w2, h, d}, w3 != nullptr};
}

PackedW packed_weight(const PackedWeight& p, int din, int dout, int bits, int group) {
  const int g = group <= 0 || group >= din ? (din > 0 ? din : 1) : group;
  return PackedW{reinterpret_cast<const unsigned*>(p.codes), p.scale, p.zero, din, dout, bits, g, static_cast<int>(ceil_div(static_cast<long>(dout) * bits, 32)),
                 static_cast<int>(ceil_div(din, g))};
}

Experts<PackedW> packed_experts(const PackedExperts& p, int d, int h) {
  return Experts<PackedW>{packed_weight(p.w1, d, h, p.bits, p.group), packed_weight(p.w3, d, h, p.bits, p.group),
                          packed_weight(p.w2, h, d, p.bits, p.group), p.w3.codes != nullptr};
}
}  // namespace

std::string moe_mlp_forward(const float* x, const float* w1, const float* w2, const int* tok, const int* expert, const float* weight,
                            float* out, float* hidden, int T, int d, int h, int E, int N, int act) {
  return experts_forward("MoelabMoeMLP", dense_experts(w1, nullptr, w2, d, h), x, tok, expert, weight, out, hidden, T, d, h, E, N, act);
}

std::string moe_mlp_backward(const float* dy, const float* x, const float* w1, const float* w2, const int* tok, const int* expert,
                             const float* weight, const float* hidden, float* dx, float* dw1, float* dw2, float* dweight, int T, int d,
                             int h, int E, int N, int act) {
  return experts_backward("MoelabMoeMLPGrad", dense_experts(w1, nullptr, w2, d, h), dy, x, tok, expert, weight, hidden, dx, dw1, nullptr,
                          dw2, dweight, T, d, h, E, N, act);
}

std::string moe_glu_forward(const float* x, const float* w1, const float* w3, const float* w2, const int* tok, const int* expert,
                            const float* weight, float* out, float* hidden, int T, int d, int h, int E, int N, int act) {
  return experts_forward("MoelabMoeGLU", dense_experts(w1, w3, w2, d, h), x, tok, expert, weight, out, hidden, T, d, h, E, N, act);
}

std::string moe_glu_backward(const float* dy, const float* x, const float* w1, const float* w3, const float* w2, const int* tok,
                             const int* expert, const float* weight, const float* hidden, float* dx, float* dw1, float* dw3, float* dw2,
                             float* dweight, int T, int d, int h, int E, int N, int act) {
  return experts_backward("MoelabMoeGLUGrad", dense_experts(w1, w3, w2, d, h), dy, x, tok, expert, weight, hidden, dx, dw1, dw3, dw2,
                          dweight, T, d, h, E, N, act);
}

std::string moe_packed_forward(const PackedExperts& p, const float* x, const int* tok, const int* expert, const float* weight, float* out,
                               float* hidden, int T, int d, int h, int E, int N, int act) {
  return experts_forward("MoelabMoePacked", packed_experts(p, d, h), x, tok, expert, weight, out, hidden, T, d, h, E, N, act);
}

std::string moe_packed_backward(const PackedExperts& p, const float* dy, const float* x, const int* tok, const int* expert,
                                const float* weight, const float* hidden, float* dx, float* dweight, int T, int d, int h, int E, int N,
                                int act) {
  return experts_backward("MoelabMoePackedGrad", packed_experts(p, d, h), dy, x, tok, expert, weight, hidden, dx, nullptr, nullptr, nullptr,
                          dweight, T, d, h, E, N, act);
}

std::string moe_linear_forward(const float* x, const float* w, const int* inRow, const int* outRow, const int* expert,
                               const float* weight, float* out, int R, int din, int dout, int E, int N, int outRows) {
  zero(out, sizeof(float) * outRows * dout);
  if (N == 0 || E == 0) return "";
  Routing rt(E, N);
  std::string bad = rt.check("MoelabMoeLinear", {{"inRow", {inRow, R}}, {"outRow", {outRow, outRows}}, {"expertIndex", {expert, E}}});
  if (!bad.empty()) return bad;
  rt.sort(expert);
  launch(grouped_rows_k<false, true, DenseW>, rt.row_grid(dout), dim3(GT, GT), rt.route, x, static_cast<long>(din), inRow, -1, 0,
         DenseW{w, din, dout}, din, dout, out, static_cast<long>(dout), outRow, weight);
  return "";
}

std::string moe_linear_backward(const float* dy, const float* x, const float* w, const int* inRow, const int* outRow, const int* expert,
                                const float* weight, float* dx, float* dw, float* dweight, int R, int din, int dout, int E, int N,
                                int outRows) {
  zero(dx, sizeof(float) * R * din);
  if (N == 0 || E == 0) {
    zero(dw, sizeof(float) * E * din * dout);
    return "";
  }
  Routing rt(E, N);
  std::string bad =
      rt.check("MoelabMoeLinearGrad", {{"inRow", {inRow, R}}, {"outRow", {outRow, outRows}}, {"expertIndex", {expert, E}}});
  if (!bad.empty()) return bad;
  rt.sort(expert);
  const dim3 block(GT, GT);
  const DenseW W{w, din, dout};
  const int* noMap = nullptr;
  const float* none = nullptr;
  // dx[inRow[n]] += weight[n] dy[outRow[n]] w[e]^T
  launch(grouped_rows_k<true, true, DenseW>, rt.row_grid(din), block, rt.route, dy, static_cast<long>(dout), outRow, -1, 0, W, dout, din, dx,
         static_cast<long>(din), inRow, weight);
  // dw[e] = sum_n (weight[n] x[inRow[n]])^T dy[outRow[n]]
  launch(grouped_wgrad_k, rt.wgrad_grid(din, dout), block, rt.route, x, static_cast<long>(din), inRow, weight, -1, 0, din, dy,
         static_cast<long>(dout), outRow, dout, dw);
  // dweight[n] = (x[inRow[n]] w[e]) . dy[outRow[n]]
  Scratch<float> Y(static_cast<size_t>(N) * dout);
  launch(grouped_rows_k<false, false, DenseW>, rt.row_grid(dout), block, rt.route, x, static_cast<long>(din), inRow, -1, 0, W, din, dout, Y.p,
         static_cast<long>(dout), noMap, none);
  launch(row_dot_k, dim3(static_cast<unsigned>(N)), dim3(kThreads), static_cast<const float*>(Y.p), dy, outRow, dweight, dout);
  return "";
}
}  // namespace mlc

#include "kernels_attention.cuh"
#include "kernels_data.cuh"
