// Plain C++ entry points of the native kernels (no Node-API types: addon.cc does the marshalling).
// Every kernel reads its inputs and writes only into the output buffers it is given, which the
// JS side allocates for each call (uninitialised, possibly recycled: see storage.ts); inputs may
// share storage with other tensors. The one exception is adamw, which the JS side calls in place
// only on buffers nobody else can see.
#pragma once
#include <cstdint>
#include <string>

#include "quant.h"

namespace moelab {

// The enums below are the native codes of @moelab/core's kernel contract (its
// src/kernels/contract.ts: MOE_ACTIVATION_CODE, FUSED_MATMUL_ACTIVATION_CODE +
// UNARY_ACTIVATION_CODE, BINARY_OP_CODE, REDUCE_CODE), enumerator = prefix + the key in
// PascalCase, every value explicit. kernels-cpu's contract.test.ts parses this header and fails
// on any difference, in either direction.

// Activations of the fused MoE ops.
enum MoeActivation { kMoeIdentity = 0, kMoeRelu = 1, kMoeGelu = 2, kMoeSilu = 3, kMoeRelu2 = 4 };
// The bias + activation pass: the activations of _FusedMatMul (tfjs names: linear, relu, relu6,
// sigmoid, elu, leakyrelu), then elementwise unaries that reuse the threaded pass.
enum BiasActivation { kActLinear = 0, kActRelu = 1, kActRelu6 = 2, kActSigmoid = 3, kActElu = 4, kActLeakyrelu = 5,
  // The elementwise Relu / Step kernels (tfjs semantics: NaN stays NaN; Step gives alpha for x <= 0).
  kActReluNan = 6, kActStep = 7,
  // The elementwise Exp and Sigmoid kernels (in double, like tfjs-cpu's JS callbacks).
  kActExpDouble = 8, kActSigmoidDouble = 9 };

// out[M,N] += bias (bias of length N, or null) then activation, in place on a fresh output; with
// src, out is first filled from src row by row (an elementwise unary into a fresh output).
void bias_act(float* out, long M, int N, const float* bias, int act, float alpha, const float* src = nullptr);

// out = transpose(x, perm) for rank <= 8.
void transpose(const float* x, float* out, int rank, const int* shape, const int* perm);

enum BinaryOp { kBinMul = 0, kBinAdd = 1, kBinSub = 2, kBinDiv = 3, kBinSquaredDifference = 4,
  // Comparisons: a 0/1 byte per element (tfjs bool storage).
  kBinEqual = 5, kBinNotEqual = 6, kBinGreater = 7, kBinGreaterEqual = 8, kBinLess = 9, kBinLessEqual = 10 };
// out = a (op) b with broadcasting: outShape has `rank` (<= 8) dims, aStr/bStr are element strides
// of a/b over the output dims (0 where that input is broadcast). mul_broadcast is op = kBinMul.
void binary_broadcast(int op, const float* a, const float* b, float* out, int rank, const int* outShape,
                      const long* aStr, const long* bStr);
void compare_broadcast(int op, const float* a, const float* b, uint8_t* out, int rank, const int* outShape,
                       const long* aStr, const long* bStr);
void mul_broadcast(const float* a, const float* b, float* out, int rank, const int* outShape, const long* aStr,
                   const long* bStr);

// out[o, i, :] = x[o, idx[i], :] for x viewed as [outer, dim, inner]. Returns the first bad index
// position, or -1 when every index is in [0, dim).
long gather(const float* x, const int* idx, long nIdx, float* out, long outer, long dim, long inner);

// Row-wise softmax of x[rows, cols].
void softmax(const float* x, float* out, long rows, int cols);

// Top-k per row of x[rows, cols]: values descending, ties broken by the lower index (tfjs order).
void topk(const float* x, float* values, int32_t* indices, long rows, int cols, int k);

// out[numSegments, inner] = sum of rows of x[n, inner] by ids (ids outside [0, numSegments) dropped).
void segment_sum(const float* x, const int* ids, long n, long inner, float* out, long numSegments);

enum ReduceKind { kReduceSum = 0, kReduceMean = 1, kReduceMax = 2, kReduceSumOfSquares = 3 };
// out[o, c] = reduce over r of x[o, r, c] for x viewed as [outer, R, inner] (tfjs-cpu's order and
// double accumulation, so results are bit-identical to it).
void reduce(const float* x, float* out, long outer, long R, long inner, int kind);

// One AdamW step (decoupled decay) elementwise, float32 throughout, the same operations in the same
// order as core's op-by-op update: m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2,
// p' = p - lr (m'/bc1) / (sqrt(v'/bc2) + eps) [- p lr wd when decay].
struct AdamWScalars {
  float beta1, oneMinusBeta1, beta2, oneMinusBeta2, eps, bc1, bc2, lr, lrTimesDecay;
  bool decay;
};
// In place when pOut == p, mOut == m and vOut == v (all three; g never aliases them); any other
// overlap between inputs and outputs is not allowed.
void adamw(const float* p, const float* g, const float* m, const float* v, float* pOut, float* mOut, float* vOut, long n,
           const AdamWScalars& s);

// The softmax top-k gate (router.cc; core's SOFTMAX_TOPK_KERNEL): scores [T,E], bias [E] or null
// (selection only); weight and expert [k,T] slot-major, expert -1 / weight 0 in a slot a row with
// fewer than k finite scores leaves empty. The backward writes all of dscores [T,E].
void softmax_topk_forward(const float* scores, const float* bias, float* weight, int32_t* expert, long T, int E, int k,
                          bool renormalize);
void softmax_topk_backward(const float* dy, const float* scores, const float* weight, const int32_t* expert,
                           float* dscores, long T, int E, int k, bool renormalize);
// The sigmoid top-k gate (router.cc; core's SIGMOID_TOPK_KERNEL, sigma-MoE / MoEUT): the same
// selection on scores [T,E] without a bias, weight = sigmoid of each chosen score, in double
// rounded once (moelab-cpu's Sigmoid kernel). The backward writes all of dscores [T,E]: zero but the
// chosen entries, dscores[t, e_s] = dy_s (w_s (1 - w_s)) in float32 (tfjs's sigmoid gradient).
void sigmoid_topk_forward(const float* scores, float* weight, int32_t* expert, long T, int E, int k);
void sigmoid_topk_backward(const float* dy, const float* weight, const int32_t* expert, float* dscores, long T, int E,
                           int k);
// A top-k gate's k (1 <= k <= E) and, for a backward, its n expert indices (each in [-1, E): -1 is a
// slot without a choice; expert may be null). `gate` names it ("softmax", "sigmoid"). Returns an
// error message, or "" when all is in range.
std::string check_gate(const char* gate, long k, long E, const int32_t* expert, long n);

// Validate assignment indices; returns an error message or "" when all are in range.
std::string check_index(const int* idx, long n, long limit, const char* what);

// out[T,d] = sum over assignments n of weight[n] * act(x[tok[n]] @ w1[e_n]) @ w2[e_n].
// hidden[N,h] receives the pre-activation of each assignment (for relu and identity the activation
// itself, whose sign is all the backward needs) in expert-sorted order (saved for the backward
// pass, which re-derives the same order).
void moe_mlp_forward(const float* x, const float* w1, const float* w2, const int* tok, const int* exp,
                     const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act);
void moe_mlp_backward(const float* dout, const float* x, const float* w1, const float* w2, const int* tok,
                      const int* exp, const float* weight, const float* hidden, float* dx, float* dw1, float* dw2,
                      float* dweight, int T, int d, int h, int E, long N, int act);

// Gated (GLU) experts: out[T,d] = sum over assignments n of weight[n] * (act(x[tok[n]] @ w1[e_n]) *
// (x[tok[n]] @ w3[e_n])) @ w2[e_n]; w1, w3 [E,d,h], w2 [E,h,d]. hidden[N,2h] receives each
// assignment's two pre-activations [x w1 | x w3] in expert-sorted order (saved for the backward).
void moe_glu_forward(const float* x, const float* w1, const float* w3, const float* w2, const int* tok, const int* exp,
                     const float* weight, float* out, float* hidden, int T, int d, int h, int E, long N, int act);
void moe_glu_backward(const float* dout, const float* x, const float* w1, const float* w3, const float* w2,
                      const int* tok, const int* exp, const float* weight, const float* hidden, float* dx, float* dw1,
                      float* dw3, float* dw2, float* dweight, int T, int d, int h, int E, long N, int act);

// The same two ops on packed (weight-only quantized) experts, layout in quant.h: w1 (and w3) are
// [E,d,h], w2 [E,h,d]. The forward outputs and `hidden` are those of the float ops; the backward
// returns dx and dweight only (packed weights are frozen).
void moe_mlp_packed_forward(const float* x, const PackedWeights& w1, const PackedWeights& w2, const int* tok,
                            const int* exp, const float* weight, float* out, float* hidden, int T, int d, int h, int E,
                            long N, int act);
void moe_mlp_packed_backward(const float* dout, const float* x, const PackedWeights& w1, const PackedWeights& w2,
                             const int* tok, const int* exp, const float* weight, const float* hidden, float* dx,
                             float* dweight, int T, int d, int h, int E, long N, int act);
void moe_glu_packed_forward(const float* x, const PackedWeights& w1, const PackedWeights& w3, const PackedWeights& w2,
                            const int* tok, const int* exp, const float* weight, float* out, float* hidden, int T,
                            int d, int h, int E, long N, int act);
void moe_glu_packed_backward(const float* dout, const float* x, const PackedWeights& w1, const PackedWeights& w3,
                             const PackedWeights& w2, const int* tok, const int* exp, const float* weight,
                             const float* hidden, float* dx, float* dweight, int T, int d, int h, int E, long N,
                             int act);

// out[outRow[n]] += weight[n] * x[inRow[n]] @ w[e_n]; out is [outRows, dout].
void moe_linear_forward(const float* x, const float* w, const int* inRow, const int* outRow, const int* exp,
                        const float* weight, float* out, int R, int din, int dout, int E, long N, int outRows);
void moe_linear_backward(const float* dy, const float* x, const float* w, const int* inRow, const int* outRow,
                         const int* exp, const float* weight, float* dx, float* dw, float* dweight, int R, int din,
                         int dout, int E, long N, int outRows);

}  // namespace moelab
