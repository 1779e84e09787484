// The C entry points of the WebAssembly module: kernels-cpu's kernels (compiled from its
// src/native sources) behind flat functions of pointers and sizes. Every function takes its
// arguments in the order of kernels-cpu's NativeAddon interface (src/native.ts), arrays as
// offsets into the module's memory (0 for null), so that src/module.ts can marshal them
// generically. Functions that validate indices return a message (a static string) or null.
//
// Out of memory: operator new below reports the failed size to JavaScript (moelab_oom throws a
// JS exception, which unwinds the wasm stack); src/module.ts restores the stack pointer and turns
// it into a MoelabError. Nothing aborts the module.
#include <emscripten.h>
#if defined(__EMSCRIPTEN_PTHREADS__)
#include <emscripten/threading.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

#include "attention.h"
#include "gemm.h"
#include "kernels.h"
#include "norm.h"
#include "pool.h"

using namespace moelab;

EM_JS(void, moelab_oom, (double bytes), { throw new Module.MoelabOutOfMemory(bytes); });

namespace {
#if defined(__EMSCRIPTEN_PTHREADS__)
// Threaded build: a worker thread cannot report a failed allocation (a JavaScript exception there
// would leave the caller waiting for its task forever), so the calling thread keeps the top
// kReserve bytes of the 4 GiB address space free for the workers' scratch (per-thread GEMM packs,
// ~2.1 MiB each, and attention rows): what the calling thread allocates must end below it.
constexpr uint64_t kReserve = 64ull << 20;
bool leaves_reserve(const void* p, size_t n) {
  return !emscripten_is_main_runtime_thread() ||
         reinterpret_cast<uintptr_t>(p) + static_cast<uint64_t>(n) <= (4ull << 30) - kReserve;
}
#else
bool leaves_reserve(const void*, size_t) { return true; }
#endif

void* malloc_checked(size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p && !leaves_reserve(p, n)) {
    std::free(p);
    p = nullptr;
  }
  return p;
}
}  // namespace

void* operator new(size_t n) {
  void* p = malloc_checked(n);
  if (!p) moelab_oom(static_cast<double>(n));
  return p;
}
void* operator new[](size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace {
MOELAB_THREAD_LOCAL std::string g_error;
const char* fail(const std::string& msg) {
  g_error = msg;
  return g_error.c_str();
}
const char* check(const int* idx, long n, long limit, const char* what) {
  std::string err = check_index(idx, n, limit, what);
  return err.empty() ? nullptr : fail(err);
}
const char* check_gate_args(const char* gate, int k, int E, const int32_t* expert = nullptr, long n = 0) {
  std::string err = check_gate(gate, k, E, expert, n);
  return err.empty() ? nullptr : fail(err);
}
}  // namespace

#define EXPORT extern "C" EMSCRIPTEN_KEEPALIVE

EXPORT void* moelab_malloc(double bytes) {
  // A double so that sizes above 2 GiB arrive intact; the module's memory ends at 4 GiB.
  if (!(bytes >= 0) || bytes > 4294967295.0) return nullptr;
  return malloc_checked(static_cast<size_t>(bytes));
}
EXPORT void moelab_free(void* p) { std::free(p); }
EXPORT int moelab_threads() { return pool_threads(); }
// A double: the count outgrows an int32 in a long session.
EXPORT double moelab_worker_tasks() { return static_cast<double>(pool_worker_tasks()); }
EXPORT int moelab_set_threads(int n) {
  set_pool_threads(n < 1 ? 1 : n);
  return pool_threads();
}

EXPORT const char* sgemmBatched(bool ta, bool tb, int batch, int M, int N, int K, const float* A, const int* aIdx,
                                int batchA, const float* B, const int* bIdx, int batchB, float* C) {
  if (aIdx) {
    if (const char* e = check(aIdx, batch, batchA, "aIdx")) return e;
  } else if (batchA < batch) {
    return fail("A batch too small");
  }
  if (bIdx) {
    if (const char* e = check(bIdx, batch, batchB, "bIdx")) return e;
  } else if (batchB < batch) {
    return fail("B batch too small");
  }
  sgemm_batched(ta, tb, batch, M, N, K, A, static_cast<long>(M) * K, aIdx, B, static_cast<long>(K) * N, bIdx, C,
                static_cast<long>(M) * N);
  return nullptr;
}

EXPORT void biasAct(float* out, int M, int N, const float* bias, int act, float alpha, const float* src) {
  bias_act(out, M, N, bias, act, alpha, src);
}

EXPORT void transpose(const float* x, float* out, const int* shape, const int* perm, int rank) {
  moelab::transpose(x, out, rank, shape, perm);
}

EXPORT void mulBroadcast(const float* a, const float* b, void* out, const int* shape, const int* as, const int* bs,
                         int op, int rank) {
  long aStr[8], bStr[8];
  for (int i = 0; i < rank; i++) {
    aStr[i] = as[i];
    bStr[i] = bs[i];
  }
  if (op >= kBinEqual)
    compare_broadcast(op, a, b, static_cast<uint8_t*>(out), rank, shape, aStr, bStr);
  else
    binary_broadcast(op, a, b, static_cast<float*>(out), rank, shape, aStr, bStr);
}

EXPORT double gather(const float* x, const int* idx, float* out, int outer, int dim, int inner, int n) {
  return static_cast<double>(moelab::gather(x, idx, n, out, outer, dim, inner));
}

EXPORT void softmax(const float* x, float* out, int rows, int cols) { moelab::softmax(x, out, rows, cols); }

EXPORT void topk(const float* x, float* values, int32_t* indices, int rows, int cols, int k) {
  moelab::topk(x, values, indices, rows, cols, k);
}

EXPORT const char* softmaxTopK(const float* scores, const float* bias, float* weight, int32_t* expert, int T, int E, int k,
                               bool renormalize) {
  if (const char* e = check_gate_args("softmax", k, E)) return e;
  softmax_topk_forward(scores, bias, weight, expert, T, E, k, renormalize);
  return nullptr;
}

EXPORT const char* softmaxTopKGrad(const float* dy, const float* scores, const float* weight, const int32_t* expert,
                                   float* dscores, int T, int E, int k, bool renormalize) {
  if (const char* e = check_gate_args("softmax", k, E, expert, static_cast<long>(k) * T)) return e;
  softmax_topk_backward(dy, scores, weight, expert, dscores, T, E, k, renormalize);
  return nullptr;
}

EXPORT const char* sigmoidTopK(const float* scores, float* weight, int32_t* expert, int T, int E, int k) {
  if (const char* e = check_gate_args("sigmoid", k, E)) return e;
  sigmoid_topk_forward(scores, weight, expert, T, E, k);
  return nullptr;
}

EXPORT const char* sigmoidTopKGrad(const float* dy, const float* weight, const int32_t* expert, float* dscores, int T, int E,
                                   int k) {
  if (const char* e = check_gate_args("sigmoid", k, E, expert, static_cast<long>(k) * T)) return e;
  sigmoid_topk_backward(dy, weight, expert, dscores, T, E, k);
  return nullptr;
}

EXPORT void layerNormForward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                             int rows, int D, float eps) {
  layer_norm_forward(x, gamma, beta, y, mean, rstd, rows, D, eps);
}

EXPORT void layerNormBackward(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd,
                              float* dx, float* dgamma, float* dbeta, int rows, int D) {
  layer_norm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, D);
}

EXPORT void adamw(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut,
                  int n, const float* sc, bool decay) {
  AdamWScalars s{sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], decay};
  moelab::adamw(p, g, m, v, pOut, mOut, vOut, n, s);
}

EXPORT void reduce(const float* x, float* out, int outer, int R, int inner, int kind) {
  moelab::reduce(x, out, outer, R, inner, kind);
}

EXPORT void segmentSum(const float* x, const int* ids, float* out, int n, int inner, int numSegments) {
  segment_sum(x, ids, n, inner, out, numSegments);
}

EXPORT void causalAttentionForward(const float* q, const float* k, const float* v, float* out, float* lse, int BH,
                                   int T, int dk, int dv, float scale, int H, bool bthd) {
  causal_attention_forward(q, k, v, out, lse, BH, H, T, dk, dv, scale, bthd);
}

EXPORT void cachedAttentionForward(const float* q, const float* k, const float* v, float* out, int B, int H, int Hkv,
                                   int m, int n, int Tk, int dk, int dv, float scale) {
  cached_attention_forward(q, k, v, out, B, H, Hkv, m, n, Tk, dk, dv, scale);
}

EXPORT void causalAttentionBackward(const float* dy, const float* q, const float* k, const float* v, const float* out,
                                    const float* lse, float* dq, float* dk, float* dv, int BH, int T, int dkDim,
                                    int dvDim, float scale, int H, bool bthd) {
  causal_attention_backward(dy, q, k, v, out, lse, dq, dk, dv, BH, H, T, dkDim, dvDim, scale, bthd);
}

EXPORT void rope(const float* x, const float* cos, const float* sin, float* out, int BH, int T, int dh, int dims,
                 bool inverse, int H, bool bthd) {
  moelab::rope(x, cos, sin, out, BH, H, T, dh, dims, inverse, bthd);
}

#define CHECK_ASSIGNMENTS(tok, exp, N, T, E)                                  \
  if (const char* e = check(tok, N, T, "tokenIndex")) return e;              \
  if (const char* e = check(exp, N, E, "expertIndex")) return e;

EXPORT const char* moeMlpForward(const float* x, const float* w1, const float* w2, const int* tok, const int* exp,
                                 const float* weight, float* out, float* hidden, int T, int d, int h, int E, int N,
                                 int act) {
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  moe_mlp_forward(x, w1, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act);
  return nullptr;
}

EXPORT const char* moeMlpBackward(const float* dy, const float* x, const float* w1, const float* w2, const int* tok,
                                  const int* exp, const float* weight, const float* hidden, float* dx, float* dw1,
                                  float* dw2, float* dweight, int T, int d, int h, int E, int N, int act) {
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  moe_mlp_backward(dy, x, w1, w2, tok, exp, weight, hidden, dx, dw1, dw2, dweight, T, d, h, E, N, act);
  return nullptr;
}

EXPORT const char* moeGluForward(const float* x, const float* w1, const float* w3, const float* w2, const int* tok,
                                 const int* exp, const float* weight, float* out, float* hidden, int T, int d, int h,
                                 int E, int N, int act) {
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  moe_glu_forward(x, w1, w3, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act);
  return nullptr;
}

EXPORT const char* moeGluBackward(const float* dy, const float* x, const float* w1, const float* w3, const float* w2,
                                  const int* tok, const int* exp, const float* weight, const float* hidden, float* dx,
                                  float* dw1, float* dw3, float* dw2, float* dweight, int T, int d, int h, int E,
                                  int N, int act) {
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  moe_glu_backward(dy, x, w1, w3, w2, tok, exp, weight, hidden, dx, dw1, dw3, dw2, dweight, T, d, h, E, N, act);
  return nullptr;
}

namespace {
PackedWeights packed(const int* codes, const float* scale, const float* zero, int din, int dout, int bits, int group) {
  PackedWeights w{};
  w.codes = reinterpret_cast<const uint8_t*>(codes);
  w.scale = scale;
  w.zero = zero;
  w.bits = bits;
  w.group = group <= 0 || group >= din ? din : group;
  w.din = din;
  w.dout = dout;
  return w;
}
}  // namespace

EXPORT const char* moePackedForward(const float* x, const int* w1c, const float* w1s, const float* w1z, const int* w3c,
                                    const float* w3s, const float* w3z, const int* w2c, const float* w2s,
                                    const float* w2z, const int* tok, const int* exp, const float* weight, float* out,
                                    float* hidden, int T, int d, int h, int E, int N, int act, int bits, int group) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return fail("packed experts take 2, 3, 4 or 8 bits");
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  PackedWeights w1 = packed(w1c, w1s, w1z, d, h, bits, group), w2 = packed(w2c, w2s, w2z, h, d, bits, group);
  if (w3c)
    moe_glu_packed_forward(x, w1, packed(w3c, w3s, w3z, d, h, bits, group), w2, tok, exp, weight, out, hidden, T, d, h,
                           E, N, act);
  else
    moe_mlp_packed_forward(x, w1, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act);
  return nullptr;
}

EXPORT const char* moePackedBackward(const float* dy, const float* x, const int* w1c, const float* w1s,
                                     const float* w1z, const int* w3c, const float* w3s, const float* w3z,
                                     const int* w2c, const float* w2s, const float* w2z, const int* tok,
                                     const int* exp, const float* weight, const float* hidden, float* dx,
                                     float* dweight, int T, int d, int h, int E, int N, int act, int bits, int group) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return fail("packed experts take 2, 3, 4 or 8 bits");
  CHECK_ASSIGNMENTS(tok, exp, N, T, E)
  PackedWeights w1 = packed(w1c, w1s, w1z, d, h, bits, group), w2 = packed(w2c, w2s, w2z, h, d, bits, group);
  if (w3c)
    moe_glu_packed_backward(dy, x, w1, packed(w3c, w3s, w3z, d, h, bits, group), w2, tok, exp, weight, hidden, dx,
                            dweight, T, d, h, E, N, act);
  else
    moe_mlp_packed_backward(dy, x, w1, w2, tok, exp, weight, hidden, dx, dweight, T, d, h, E, N, act);
  return nullptr;
}

EXPORT const char* moeLinearForward(const float* x, const float* w, const int* inRow, const int* outRow,
                                    const int* exp, const float* weight, float* out, int R, int din, int dout, int E,
                                    int N, int outRows) {
  if (const char* e = check(inRow, N, R, "inRow")) return e;
  if (const char* e = check(outRow, N, outRows, "outRow")) return e;
  if (const char* e = check(exp, N, E, "expertIndex")) return e;
  moe_linear_forward(x, w, inRow, outRow, exp, weight, out, R, din, dout, E, N, outRows);
  return nullptr;
}

EXPORT const char* moeLinearBackward(const float* dy, const float* x, const float* w, const int* inRow,
                                     const int* outRow, const int* exp, const float* weight, float* dx, float* dw,
                                     float* dweight, int R, int din, int dout, int E, int N, int outRows) {
  if (const char* e = check(inRow, N, R, "inRow")) return e;
  if (const char* e = check(outRow, N, outRows, "outRow")) return e;
  if (const char* e = check(exp, N, E, "expertIndex")) return e;
  moe_linear_backward(dy, x, w, inRow, outRow, exp, weight, dx, dw, dweight, R, din, dout, E, N, outRows);
  return nullptr;
}
