// The host-side entry points of kernels.cu (compiled by nvcc for the device build and by g++ for
// the emulation build) that addon.cc calls. Pointers are device pointers (host memory in the
// emulation build); every function enqueues its launches on the default stream and throws
// std::runtime_error with a one-line message on a CUDA error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mlc {

struct DeviceInfo {
  bool emulated;
  std::string name;
  int major, minor;        // compute capability (0.0 when emulated)
  size_t totalBytes, freeBytes;
  int driverVersion, runtimeVersion;  // 1000 * major + 10 * minor, 0 when emulated
};

// Probes the device once; returns "" when usable, else the one-line reason (no device, driver
// older than the runtime, compute capability below 8.0).
std::string device_status();
DeviceInfo device_info();

// Raw device memory (addon.cc caches freed blocks by size on top of these).
void* raw_alloc(size_t bytes);
void raw_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device(void* dst, const void* src, size_t bytes);
void zero(void* p, size_t bytes);
void synchronize();
// TF32 tensor cores for the dense GEMMs (device build, sm_80+); returns the setting in use.
bool set_tf32(bool on);

// Scratch from addon.cc's pool, returned when the op is done (stream order keeps reuse safe).
void* pool_alloc(size_t bytes);
void pool_free(void* p, size_t bytes);

// C[b] = act(op(A[b]) op(B[b]) + bias) (alpha: leakyrelu's slope); A [M,K] ([K,M] when ta), B [K,N] ([N,K] when tb), batch
// strides in elements (0 broadcasts), bias [N] or null; act: FUSED_MATMUL_ACTIVATION_CODE.
void gemm(bool ta, bool tb, int batch, int M, int N, int K, const float* A, long strideA, const float* B, long strideB,
          float* C, const float* bias, int act, float alpha);

// An index space of rank <= 6 and two operands' strides over it (0 along broadcast axes).
struct Strides6 {
  int rank;
  long shape[6], a[6], b[6];
};
// out = a (op) b with broadcast strides, float32 or int32 (isInt): op BINARY_OP_CODE 0..4 and the
// kernels' own 11 maximum, 12 minimum, 13 pow write the operands' type; the comparisons 5..10 a 0/1 byte.
void binary_op(const void* a, const void* b, void* out, long n, const Strides6& s, int op, bool isInt);
// out[offset(i, s.b)] = x[offset(i, s.a)] for every i of s.shape; elements of 4 bytes or 1 byte.
void strided_copy(const void* x, void* out, long n, const Strides6& s, int elemBytes);
// out[i] = cond[offset(i, s.a)] ? t[i] : e[i] over the values' index space s.shape (the condition's
// strides are 0 along broadcast axes); elements of 4 bytes or 1 byte.
void select(const uint8_t* cond, const void* t, const void* e, void* out, long n, const Strides6& s, int elemBytes);
// out[i] = x[offset(i mod s.b, s.a)] over out's index space s.shape (Tile: s.b is x's shape).
void tile(const void* x, void* out, long n, const Strides6& s, int elemBytes);
// The running sum (product) of x viewed as [outer, R, inner] along R, float32 or int32.
void scan(const void* x, void* out, long outer, long R, long inner, bool product, bool exclusive, bool reverse, bool isInt);
// out[i] = start + i step, as float32 or int32.
void range(void* out, long n, double start, double step, bool isInt);
// out = f(x) for the unary codes of kernels/elementwise.ts.
void unary(const float* x, float* out, long n, int op, float alpha);
void fill(float* out, long n, float value);
void cast_int_to_float(const int* x, float* out, long n);
void cast_float_to_int(const float* x, int* out, long n);
void cast_bool_to_float(const uint8_t* x, float* out, long n);
// out[o, c] over x viewed as [outer, R, inner]: REDUCE_CODE kinds.
void reduce(const float* x, float* out, long outer, long R, long inner, int kind);
// out[o, i, c] = x[o, idx[i], c]; returns the first out-of-range index position, or -1.
long gather(const float* x, const int* idx, float* out, long outer, long dim, long inner, long nIdx);
long gather_int(const int* x, const int* idx, int* out, long outer, long dim, long inner, long nIdx);
void segment_sum(const float* x, const int* ids, float* out, long n, long inner, long numSegments);
void softmax(const float* x, float* out, long rows, long cols);
void topk(const float* x, float* values, int* indices, long rows, long cols, int k);
// core's MoelabSoftmaxTopK gate and its backward; weight, expert, dy: slot-major [k, T].
void softmax_topk_forward(const float* scores, const float* bias, float* weight, int* expert, long T, int E, int k, bool renormalize);
void softmax_topk_backward(const float* dy, const float* scores, const float* weight, const int* expert, float* dscores, long T, int E, int k,
                           bool renormalize);
void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, long rows,
                        long D, float eps);
void layer_norm_backward(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd, float* dx,
                         float* dgamma, float* dbeta, long rows, long D);
struct AdamWScalars {
  float beta1, oneMinusBeta1, beta2, oneMinusBeta2, eps, bc1, bc2, lr, lrTimesDecay;
  bool decay;
};
void adamw(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut, long n,
           const AdamWScalars& s);

// The fused MoE expert ops (core's kernel contract). `hidden` is each assignment's pre-activation
// in assignment order. Return "" or the one-line description of a bad index.
std::string moe_mlp_forward(const float* x, const float* w1, const float* w2, const int* tok, const int* expert,
                            const float* weight, float* out, float* hidden, int T, int d, int h, int E, int N, int act);
std::string moe_mlp_backward(const float* dy, const float* x, const float* w1, const float* w2, const int* tok,
                             const int* expert, const float* weight, const float* hidden, float* dx, float* dw1, float* dw2,
                             float* dweight, int T, int d, int h, int E, int N, int act);
std::string moe_glu_forward(const float* x, const float* w1, const float* w3, const float* w2, const int* tok, const int* expert,
                            const float* weight, float* out, float* hidden, int T, int d, int h, int E, int N, int act);
std::string moe_glu_backward(const float* dy, const float* x, const float* w1, const float* w3, const float* w2, const int* tok,
                             const int* expert, const float* weight, const float* hidden, float* dx, float* dw1, float* dw3, float* dw2,
                             float* dweight, int T, int d, int h, int E, int N, int act);
// Weight-only quantized expert weights (core's MoelabMoePacked layout): codes int32 [E, din,
// ceil(dout bits / 32)], scale and zero [E, ceil(din / group), dout]. w3.codes null: ungated.
struct PackedWeight {
  const int* codes;
  const float* scale;
  const float* zero;
};
struct PackedExperts {
  PackedWeight w1, w3, w2;
  int bits, group;
};
std::string moe_packed_forward(const PackedExperts& p, const float* x, const int* tok, const int* expert, const float* weight, float* out,
                               float* hidden, int T, int d, int h, int E, int N, int act);
std::string moe_packed_backward(const PackedExperts& p, const float* dy, const float* x, const int* tok, const int* expert,
                                const float* weight, const float* hidden, float* dx, float* dweight, int T, int d, int h, int E, int N,
                                int act);
std::string moe_linear_forward(const float* x, const float* w, const int* inRow, const int* outRow, const int* expert,
                               const float* weight, float* out, int R, int din, int dout, int E, int N, int outRows);
std::string moe_linear_backward(const float* dy, const float* x, const float* w, const int* inRow, const int* outRow,
                                const int* expert, const float* weight, float* dx, float* dw, float* dweight, int R, int din,
                                int dout, int E, int N, int outRows);

// Attention over B batches: query head h of H reads key / value head h * Hkv / H; query row i
// sees keys j <= qOffset + i. q [B, H, Tq, dk], k [B, Hkv, Tk, dk], v [B, Hkv, Tk, dv], out like q
// with dv channels ([B, T, H, d] for all of them when bthd). Any head size.
struct AttentionShape {
  int H, Hkv, Tq, Tk, dk, dv, qOffset;
  bool bthd;
  float scale;
};
// out, and lse [B, H, Tq] unless null.
void attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, int B, const AttentionShape& s);
// Causal self-attention's backward (Tq = Tk, H = Hkv, qOffset = 0).
void attention_backward(const float* dy, const float* q, const float* k, const float* v, const float* out, const float* lse, float* dq,
                        float* dk, float* dv, int B, const AttentionShape& s);
// Rotate-half RoPE of the first dims channels of every [dh] row of x (BH * T rows; t from the layout).
void rope(const float* x, const float* cosT, const float* sinT, float* out, long BH, int H, int T, int dh, int dims, bool inverse, bool bthd);
}  // namespace mlc

namespace mlc {
// pool.cc
void release_cached();
void pool_stats(size_t* live, size_t* cached, size_t* blocks);
}  // namespace mlc
