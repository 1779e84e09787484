// Node-API bindings. Arguments are TypedArrays owned by tfjs (inputs) or freshly allocated by the
// JS side (outputs); we use their memory in place and check every length before touching it, so a
// shape mistake on the JS side becomes an exception, not a wild write.
#include <napi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <string>

#include "attention.h"
#include "gemm.h"
#include "kernels.h"
#include "norm.h"
#include "pool.h"

using namespace moelab;

namespace {

template <class T, napi_typedarray_type kType>
T* typedValue(Napi::Env env, Napi::Value v, long minLen, const std::string& what, bool nullable = false) {
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType)
    throw Napi::TypeError::New(env, "moelab-cpu: argument " + what + " has the wrong array type");
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  if (static_cast<long>(arr.ElementLength()) < minLen)
    throw Napi::RangeError::New(env, "moelab-cpu: argument " + what + " has " + std::to_string(arr.ElementLength()) +
                                         " elements, needs " + std::to_string(minLen));
  return arr.Data();
}
template <class T, napi_typedarray_type kType>
T* typed(const Napi::CallbackInfo& info, size_t i, long minLen, const char* what, bool nullable = false) {
  return typedValue<T, kType>(info.Env(), info[i], minLen, what, nullable);
}
float* F32(const Napi::CallbackInfo& info, size_t i, long n, const char* what, bool nullable = false) {
  return typed<float, napi_float32_array>(info, i, n, what, nullable);
}
int32_t* I32(const Napi::CallbackInfo& info, size_t i, long n, const char* what, bool nullable = false) {
  return typed<int32_t, napi_int32_array>(info, i, n, what, nullable);
}
long Int(const Napi::CallbackInfo& info, size_t i) {
  long v = static_cast<long>(info[i].As<Napi::Number>().Int64Value());
  if (v < 0) throw Napi::RangeError::New(info.Env(), "moelab-cpu: negative size argument");
  return v;
}
void checkIdx(const Napi::CallbackInfo& info, const int* idx, long n, long limit, const char* what) {
  std::string err = check_index(idx, n, limit, what);
  if (!err.empty()) throw Napi::RangeError::New(info.Env(), "moelab-cpu: " + err);
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("gemm", gemm_name());
  o.Set("haveBlas", have_blas());
  o.Set("threads", pool_threads());
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  long n = Int(info, 0);
  set_pool_threads(static_cast<int>(n < 1 ? 1 : n));
  return Napi::Number::New(info.Env(), pool_threads());
}

Napi::Value SetGemm(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), set_gemm(info[0].As<Napi::Boolean>().Value()));
}

// (ta, tb, batch, M, N, K, A, aIdx|null, batchA, B, bIdx|null, batchB, C)
void SgemmBatched(const Napi::CallbackInfo& info) {
  bool ta = info[0].As<Napi::Boolean>().Value(), tb = info[1].As<Napi::Boolean>().Value();
  long batch = Int(info, 2), M = Int(info, 3), N = Int(info, 4), K = Int(info, 5);
  long batchA = Int(info, 8), batchB = Int(info, 11);
  const float* A = F32(info, 6, batchA * M * K, "A");
  const int* aIdx = I32(info, 7, batch, "aIdx", true);
  const float* B = F32(info, 9, batchB * K * N, "B");
  const int* bIdx = I32(info, 10, batch, "bIdx", true);
  float* C = F32(info, 12, batch * M * N, "C");
  if (aIdx) checkIdx(info, aIdx, batch, batchA, "aIdx");
  if (bIdx) checkIdx(info, bIdx, batch, batchB, "bIdx");
  if (!aIdx && batchA < batch) throw Napi::RangeError::New(info.Env(), "moelab-cpu: A batch too small");
  if (!bIdx && batchB < batch) throw Napi::RangeError::New(info.Env(), "moelab-cpu: B batch too small");
  sgemm_batched(ta, tb, static_cast<int>(batch), static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), A,
                M * K, aIdx, B, K * N, bIdx, C, M * N);
}

// (out, M, N, bias|null, act, alpha)
void BiasAct(const Napi::CallbackInfo& info) {
  long M = Int(info, 1), N = Int(info, 2);
  float* out = F32(info, 0, M * N, "out");
  const float* bias = F32(info, 3, N, "bias", true);
  // Optional 7th argument: the source rows (out = act(src + bias) instead of in place).
  const float* src = info.Length() > 6 ? F32(info, 6, M * N, "src", true) : nullptr;
  bias_act(out, M, static_cast<int>(N), bias, info[4].As<Napi::Number>().Int32Value(),
           info[5].As<Napi::Number>().FloatValue(), src);
}

// (x, out, shape Int32Array, perm Int32Array)
void Transpose(const Napi::CallbackInfo& info) {
  auto shapeArr = info[2].As<Napi::Int32Array>();
  int rank = static_cast<int>(shapeArr.ElementLength());
  if (rank > 8) throw Napi::RangeError::New(info.Env(), "moelab-cpu: transpose rank > 8");
  const int* shape = I32(info, 2, rank, "shape");
  const int* perm = I32(info, 3, rank, "perm");
  long total = 1;
  for (int i = 0; i < rank; i++) total *= shape[i];
  checkIdx(info, perm, rank, rank, "perm");
  transpose(F32(info, 0, total, "x"), F32(info, 1, total, "out"), rank, shape, perm);
}

// (a, b, out, shape Int32Array, aStr Int32Array, bStr Int32Array, aLen, bLen)
void MulBroadcast(const Napi::CallbackInfo& info) {
  auto shapeArr = info[3].As<Napi::Int32Array>();
  int rank = static_cast<int>(shapeArr.ElementLength());
  if (rank > 8) throw Napi::RangeError::New(info.Env(), "moelab-cpu: mul rank > 8");
  const int* shape = I32(info, 3, rank, "shape");
  const int* as = I32(info, 4, rank, "aStr");
  const int* bs = I32(info, 5, rank, "bStr");
  long total = 1, aMax = 0, bMax = 0;
  long aStr[8], bStr[8];
  for (int i = 0; i < rank; i++) {
    total *= shape[i];
    aStr[i] = as[i];
    bStr[i] = bs[i];
    if (shape[i] > 0) {
      aMax += (shape[i] - 1) * aStr[i];
      bMax += (shape[i] - 1) * bStr[i];
    }
  }
  const float* a = F32(info, 0, total ? aMax + 1 : 0, "a");
  const float* b = F32(info, 1, total ? bMax + 1 : 0, "b");
  // Optional 7th argument: the op (kernels.h BinaryOp), multiply by default.
  int op = info.Length() > 6 && info[6].IsNumber() ? static_cast<int>(Int(info, 6)) : kBinMul;
  if (op < kBinMul || op > kBinLessEqual) throw Napi::RangeError::New(info.Env(), "moelab-cpu: unknown binary op");
  if (op >= kBinEqual)
    compare_broadcast(op, a, b, typed<uint8_t, napi_uint8_array>(info, 2, total, "out"), rank, shape, aStr, bStr);
  else
    binary_broadcast(op, a, b, F32(info, 2, total, "out"), rank, shape, aStr, bStr);
}

// (x, idx, out, outer, dim, inner) -> -1 or the position of the first bad index
Napi::Value Gather(const Napi::CallbackInfo& info) {
  long outer = Int(info, 3), dim = Int(info, 4), inner = Int(info, 5);
  auto idxArr = info[1].As<Napi::Int32Array>();
  long n = static_cast<long>(idxArr.ElementLength());
  const float* x = F32(info, 0, outer * dim * inner, "x");
  const int* idx = I32(info, 1, n, "indices");
  float* out = F32(info, 2, outer * n * inner, "out");
  return Napi::Number::New(info.Env(), static_cast<double>(gather(x, idx, n, out, outer, dim, inner)));
}

// (x, out, rows, cols)
void Softmax(const Napi::CallbackInfo& info) {
  long rows = Int(info, 2), cols = Int(info, 3);
  softmax(F32(info, 0, rows * cols, "x"), F32(info, 1, rows * cols, "out"), rows, static_cast<int>(cols));
}

// (x, values, indices, rows, cols, k)
void TopK(const Napi::CallbackInfo& info) {
  long rows = Int(info, 3), cols = Int(info, 4), k = Int(info, 5);
  if (k > cols) throw Napi::RangeError::New(info.Env(), "moelab-cpu: topk k > last dimension");
  topk(F32(info, 0, rows * cols, "x"), F32(info, 1, rows * k, "values"), I32(info, 2, rows * k, "indices"), rows,
       static_cast<int>(cols), static_cast<int>(k));
}

// Throws check_gate's message, if any, as a RangeError.
void CheckGate(const Napi::CallbackInfo& info, const char* gate, long k, long E, const int32_t* expert = nullptr,
               long n = 0) {
  std::string err = check_gate(gate, k, E, expert, n);
  if (!err.empty()) throw Napi::RangeError::New(info.Env(), "moelab-cpu: " + err);
}

// (scores, bias|null, weight, expert, T, E, k, renormalize)
void SoftmaxTopK(const Napi::CallbackInfo& info) {
  long T = Int(info, 4), E = Int(info, 5), k = Int(info, 6);
  CheckGate(info, "softmax", k, E);
  softmax_topk_forward(F32(info, 0, T * E, "scores"), F32(info, 1, E, "bias", true), F32(info, 2, k * T, "weight"),
                       I32(info, 3, k * T, "expert"), T, static_cast<int>(E), static_cast<int>(k),
                       info[7].As<Napi::Boolean>().Value());
}

// (dy, scores, weight, expert, dscores, T, E, k, renormalize)
void SoftmaxTopKGrad(const Napi::CallbackInfo& info) {
  long T = Int(info, 5), E = Int(info, 6), k = Int(info, 7);
  CheckGate(info, "softmax", k, E);
  const int32_t* expert = I32(info, 3, k * T, "expert");
  CheckGate(info, "softmax", k, E, expert, k * T);
  softmax_topk_backward(F32(info, 0, k * T, "dy"), F32(info, 1, T * E, "scores"), F32(info, 2, k * T, "weight"), expert,
                        F32(info, 4, T * E, "dscores"), T, static_cast<int>(E), static_cast<int>(k),
                        info[8].As<Napi::Boolean>().Value());
}

// (scores, weight, expert, T, E, k)
void SigmoidTopK(const Napi::CallbackInfo& info) {
  long T = Int(info, 3), E = Int(info, 4), k = Int(info, 5);
  CheckGate(info, "sigmoid", k, E);
  sigmoid_topk_forward(F32(info, 0, T * E, "scores"), F32(info, 1, k * T, "weight"), I32(info, 2, k * T, "expert"), T,
                       static_cast<int>(E), static_cast<int>(k));
}

// (dy, weight, expert, dscores, T, E, k)
void SigmoidTopKGrad(const Napi::CallbackInfo& info) {
  long T = Int(info, 4), E = Int(info, 5), k = Int(info, 6);
  CheckGate(info, "sigmoid", k, E);
  const int32_t* expert = I32(info, 2, k * T, "expert");
  CheckGate(info, "sigmoid", k, E, expert, k * T);
  sigmoid_topk_backward(F32(info, 0, k * T, "dy"), F32(info, 1, k * T, "weight"), expert, F32(info, 3, T * E, "dscores"),
                        T, static_cast<int>(E), static_cast<int>(k));
}

// (p, g, m, v, pOut, mOut, vOut, n, [beta1, 1-beta1, beta2, 1-beta2, eps, bc1, bc2, lr, lr*wd], decay)
void AdamW(const Napi::CallbackInfo& info) {
  long n = Int(info, 7);
  auto sc = info[8].As<Napi::Array>();
  if (sc.Length() != 9) throw Napi::RangeError::New(info.Env(), "moelab-cpu: adamw needs 9 scalars");
  auto f = [&](uint32_t i) { return sc.Get(i).As<Napi::Number>().FloatValue(); };
  AdamWScalars s{f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), info[9].As<Napi::Boolean>().Value()};
  adamw(F32(info, 0, n, "p"), F32(info, 1, n, "g"), F32(info, 2, n, "m"), F32(info, 3, n, "v"), F32(info, 4, n, "pOut"),
        F32(info, 5, n, "mOut"), F32(info, 6, n, "vOut"), n, s);
}

// (x, gamma, beta|null, y, mean, rstd, rows, D, eps)
void LayerNormForward(const Napi::CallbackInfo& info) {
  long rows = Int(info, 6), D = Int(info, 7);
  layer_norm_forward(F32(info, 0, rows * D, "x"), F32(info, 1, D, "gamma"), F32(info, 2, D, "beta", true),
                     F32(info, 3, rows * D, "y"), F32(info, 4, rows, "mean"), F32(info, 5, rows, "rstd"), rows,
                     static_cast<int>(D), info[8].As<Napi::Number>().FloatValue());
}

// (dy, x, gamma, mean, rstd, dx, dgamma, dbeta|null, rows, D)
void LayerNormBackward(const Napi::CallbackInfo& info) {
  long rows = Int(info, 8), D = Int(info, 9);
  layer_norm_backward(F32(info, 0, rows * D, "dy"), F32(info, 1, rows * D, "x"), F32(info, 2, D, "gamma"),
                      F32(info, 3, rows, "mean"), F32(info, 4, rows, "rstd"), F32(info, 5, rows * D, "dx"),
                      F32(info, 6, D, "dgamma"), F32(info, 7, D, "dbeta", true), rows, static_cast<int>(D));
}

// (x, out, outer, R, inner, kind)
void Reduce(const Napi::CallbackInfo& info) {
  long outer = Int(info, 2), R = Int(info, 3), inner = Int(info, 4), kind = Int(info, 5);
  if (kind > kReduceSumOfSquares) throw Napi::RangeError::New(info.Env(), "moelab-cpu: unknown reduction");
  reduce(F32(info, 0, outer * R * inner, "x"), F32(info, 1, outer * inner, "out"), outer, R, inner, static_cast<int>(kind));
}

// (x, ids, out, n, inner, numSegments)
void SegmentSum(const Napi::CallbackInfo& info) {
  long n = Int(info, 3), inner = Int(info, 4), ns = Int(info, 5);
  segment_sum(F32(info, 0, n * inner, "x"), I32(info, 1, n, "segmentIds"), n, inner, F32(info, 2, ns * inner, "out"),
              ns);
}

// (x, w1, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act)
void MoeMlpForward(const Napi::CallbackInfo& info) {
  long T = Int(info, 8), d = Int(info, 9), h = Int(info, 10), E = Int(info, 11), N = Int(info, 12);
  int act = info[13].As<Napi::Number>().Int32Value();
  const float* x = F32(info, 0, T * d, "x");
  const float* w1 = F32(info, 1, E * d * h, "w1");
  const float* w2 = F32(info, 2, E * h * d, "w2");
  const int* tok = I32(info, 3, N, "tokenIndex");
  const int* exp = I32(info, 4, N, "expertIndex");
  const float* weight = F32(info, 5, N, "weight");
  float* out = F32(info, 6, T * d, "out");
  float* hidden = F32(info, 7, N * h, "hidden");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_mlp_forward(x, w1, w2, tok, exp, weight, out, hidden, static_cast<int>(T), static_cast<int>(d),
                  static_cast<int>(h), static_cast<int>(E), N, act);
}

// (dout, x, w1, w2, tok, exp, weight, hidden, dx, dw1, dw2, dweight, T, d, h, E, N, act)
void MoeMlpBackward(const Napi::CallbackInfo& info) {
  long T = Int(info, 12), d = Int(info, 13), h = Int(info, 14), E = Int(info, 15), N = Int(info, 16);
  int act = info[17].As<Napi::Number>().Int32Value();
  const float* dout = F32(info, 0, T * d, "dy");
  const float* x = F32(info, 1, T * d, "x");
  const float* w1 = F32(info, 2, E * d * h, "w1");
  const float* w2 = F32(info, 3, E * h * d, "w2");
  const int* tok = I32(info, 4, N, "tokenIndex");
  const int* exp = I32(info, 5, N, "expertIndex");
  const float* weight = F32(info, 6, N, "weight");
  const float* hidden = F32(info, 7, N * h, "hidden");
  float* dx = F32(info, 8, T * d, "dx");
  float* dw1 = F32(info, 9, E * d * h, "dw1");
  float* dw2 = F32(info, 10, E * h * d, "dw2");
  float* dweight = F32(info, 11, N, "dweight");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_mlp_backward(dout, x, w1, w2, tok, exp, weight, hidden, dx, dw1, dw2, dweight, static_cast<int>(T),
                   static_cast<int>(d), static_cast<int>(h), static_cast<int>(E), N, act);
}

// (x, w1, w3, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act)
void MoeGluForward(const Napi::CallbackInfo& info) {
  long T = Int(info, 9), d = Int(info, 10), h = Int(info, 11), E = Int(info, 12), N = Int(info, 13);
  int act = info[14].As<Napi::Number>().Int32Value();
  const float* x = F32(info, 0, T * d, "x");
  const float* w1 = F32(info, 1, E * d * h, "w1");
  const float* w3 = F32(info, 2, E * d * h, "w3");
  const float* w2 = F32(info, 3, E * h * d, "w2");
  const int* tok = I32(info, 4, N, "tokenIndex");
  const int* exp = I32(info, 5, N, "expertIndex");
  const float* weight = F32(info, 6, N, "weight");
  float* out = F32(info, 7, T * d, "out");
  float* hidden = F32(info, 8, N * 2 * h, "hidden");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_glu_forward(x, w1, w3, w2, tok, exp, weight, out, hidden, static_cast<int>(T), static_cast<int>(d),
                  static_cast<int>(h), static_cast<int>(E), N, act);
}

// (dout, x, w1, w3, w2, tok, exp, weight, hidden, dx, dw1, dw3, dw2, dweight, T, d, h, E, N, act)
void MoeGluBackward(const Napi::CallbackInfo& info) {
  long T = Int(info, 14), d = Int(info, 15), h = Int(info, 16), E = Int(info, 17), N = Int(info, 18);
  int act = info[19].As<Napi::Number>().Int32Value();
  const float* dout = F32(info, 0, T * d, "dy");
  const float* x = F32(info, 1, T * d, "x");
  const float* w1 = F32(info, 2, E * d * h, "w1");
  const float* w3 = F32(info, 3, E * d * h, "w3");
  const float* w2 = F32(info, 4, E * h * d, "w2");
  const int* tok = I32(info, 5, N, "tokenIndex");
  const int* exp = I32(info, 6, N, "expertIndex");
  const float* weight = F32(info, 7, N, "weight");
  const float* hidden = F32(info, 8, N * 2 * h, "hidden");
  float* dx = F32(info, 9, T * d, "dx");
  float* dw1 = F32(info, 10, E * d * h, "dw1");
  float* dw3 = F32(info, 11, E * d * h, "dw3");
  float* dw2 = F32(info, 12, E * h * d, "dw2");
  float* dweight = F32(info, 13, N, "dweight");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_glu_backward(dout, x, w1, w3, w2, tok, exp, weight, hidden, dx, dw1, dw3, dw2, dweight, static_cast<int>(T),
                   static_cast<int>(d), static_cast<int>(h), static_cast<int>(E), N, act);
}

// One packed expert weight [E, din, dout] from the object { codes: Int32Array, scale, zero:
// Float32Array } at info[i] (layout in quant.h); null = absent (ungated experts have no w3).
PackedWeights packedArg(const Napi::CallbackInfo& info, size_t i, long E, long din, long dout, int bits, long group,
                        const char* name) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
    throw Napi::RangeError::New(info.Env(), "moelab-cpu: packed experts take 2, 3, 4 or 8 bits");
  const std::string n(name);
  if (!info[i].IsObject())
    throw Napi::TypeError::New(info.Env(), "moelab-cpu: argument " + n + " must be an object { codes, scale, zero }");
  Napi::Object o = info[i].As<Napi::Object>();
  const long g = group <= 0 || group >= din ? din : group;
  const long G = (din + g - 1) / g;
  const long words = packed_code_bytes(static_cast<int>(E), static_cast<int>(din), static_cast<int>(dout), bits) / 4;
  PackedWeights w{};
  w.codes = reinterpret_cast<const uint8_t*>(typedValue<int32_t, napi_int32_array>(info.Env(), o.Get("codes"), words, n + " codes"));
  w.scale = typedValue<float, napi_float32_array>(info.Env(), o.Get("scale"), E * G * dout, n + " scale");
  w.zero = typedValue<float, napi_float32_array>(info.Env(), o.Get("zero"), E * G * dout, n + " zero");
  w.bits = bits;
  w.group = static_cast<int>(g);
  w.din = static_cast<int>(din);
  w.dout = static_cast<int>(dout);
  return w;
}

// Packed experts, gated when w3 is given (each weight an object { codes, scale, zero }):
// (x, w1, w3 | null, w2, tok, exp, weight, out, hidden, T, d, h, E, N, act, bits, group)
void MoePackedForward(const Napi::CallbackInfo& info) {
  long T = Int(info, 9), d = Int(info, 10), h = Int(info, 11), E = Int(info, 12), N = Int(info, 13);
  int act = info[14].As<Napi::Number>().Int32Value();
  int bits = static_cast<int>(Int(info, 15));
  long group = Int(info, 16);
  const bool gated = !(info[2].IsNull() || info[2].IsUndefined());
  const float* x = F32(info, 0, T * d, "x");
  PackedWeights w1 = packedArg(info, 1, E, d, h, bits, group, "w1");
  PackedWeights w3 = gated ? packedArg(info, 2, E, d, h, bits, group, "w3") : PackedWeights{};
  PackedWeights w2 = packedArg(info, 3, E, h, d, bits, group, "w2");
  const int* tok = I32(info, 4, N, "tokenIndex");
  const int* exp = I32(info, 5, N, "expertIndex");
  const float* weight = F32(info, 6, N, "weight");
  float* out = F32(info, 7, T * d, "out");
  float* hidden = F32(info, 8, N * h * (gated ? 2 : 1), "hidden");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  if (gated)
    moe_glu_packed_forward(x, w1, w3, w2, tok, exp, weight, out, hidden, static_cast<int>(T), static_cast<int>(d),
                           static_cast<int>(h), static_cast<int>(E), N, act);
  else
    moe_mlp_packed_forward(x, w1, w2, tok, exp, weight, out, hidden, static_cast<int>(T), static_cast<int>(d),
                           static_cast<int>(h), static_cast<int>(E), N, act);
}

// (dy, x, w1, w3 | null, w2, tok, exp, weight, hidden, dx, dweight, T, d, h, E, N, act, bits, group)
void MoePackedBackward(const Napi::CallbackInfo& info) {
  long T = Int(info, 11), d = Int(info, 12), h = Int(info, 13), E = Int(info, 14), N = Int(info, 15);
  int act = info[16].As<Napi::Number>().Int32Value();
  int bits = static_cast<int>(Int(info, 17));
  long group = Int(info, 18);
  const bool gated = !(info[3].IsNull() || info[3].IsUndefined());
  const float* dout = F32(info, 0, T * d, "dy");
  const float* x = F32(info, 1, T * d, "x");
  PackedWeights w1 = packedArg(info, 2, E, d, h, bits, group, "w1");
  PackedWeights w3 = gated ? packedArg(info, 3, E, d, h, bits, group, "w3") : PackedWeights{};
  PackedWeights w2 = packedArg(info, 4, E, h, d, bits, group, "w2");
  const int* tok = I32(info, 5, N, "tokenIndex");
  const int* exp = I32(info, 6, N, "expertIndex");
  const float* weight = F32(info, 7, N, "weight");
  const float* hidden = F32(info, 8, N * h * (gated ? 2 : 1), "hidden");
  float* dx = F32(info, 9, T * d, "dx");
  float* dweight = F32(info, 10, N, "dweight");
  checkIdx(info, tok, N, T, "tokenIndex");
  checkIdx(info, exp, N, E, "expertIndex");
  if (gated)
    moe_glu_packed_backward(dout, x, w1, w3, w2, tok, exp, weight, hidden, dx, dweight, static_cast<int>(T),
                            static_cast<int>(d), static_cast<int>(h), static_cast<int>(E), N, act);
  else
    moe_mlp_packed_backward(dout, x, w1, w2, tok, exp, weight, hidden, dx, dweight, static_cast<int>(T),
                            static_cast<int>(d), static_cast<int>(h), static_cast<int>(E), N, act);
}

// (x, w, inRow, outRow, exp, weight, out, R, din, dout, E, N, outRows)
void MoeLinearForward(const Napi::CallbackInfo& info) {
  long R = Int(info, 7), din = Int(info, 8), dout = Int(info, 9), E = Int(info, 10), N = Int(info, 11),
       outRows = Int(info, 12);
  const float* x = F32(info, 0, R * din, "x");
  const float* w = F32(info, 1, E * din * dout, "w");
  const int* inRow = I32(info, 2, N, "inRow");
  const int* outRow = I32(info, 3, N, "outRow");
  const int* exp = I32(info, 4, N, "expertIndex");
  const float* weight = F32(info, 5, N, "weight");
  float* out = F32(info, 6, outRows * dout, "out");
  checkIdx(info, inRow, N, R, "inRow");
  checkIdx(info, outRow, N, outRows, "outRow");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_linear_forward(x, w, inRow, outRow, exp, weight, out, static_cast<int>(R), static_cast<int>(din),
                     static_cast<int>(dout), static_cast<int>(E), N, static_cast<int>(outRows));
}

// (dy, x, w, inRow, outRow, exp, weight, dx, dw, dweight, R, din, dout, E, N, outRows)
void MoeLinearBackward(const Napi::CallbackInfo& info) {
  long R = Int(info, 10), din = Int(info, 11), dout = Int(info, 12), E = Int(info, 13), N = Int(info, 14),
       outRows = Int(info, 15);
  const float* dy = F32(info, 0, outRows * dout, "dy");
  const float* x = F32(info, 1, R * din, "x");
  const float* w = F32(info, 2, E * din * dout, "w");
  const int* inRow = I32(info, 3, N, "inRow");
  const int* outRow = I32(info, 4, N, "outRow");
  const int* exp = I32(info, 5, N, "expertIndex");
  const float* weight = F32(info, 6, N, "weight");
  float* dx = F32(info, 7, R * din, "dx");
  float* dw = F32(info, 8, E * din * dout, "dw");
  float* dweight = F32(info, 9, N, "dweight");
  checkIdx(info, inRow, N, R, "inRow");
  checkIdx(info, outRow, N, outRows, "outRow");
  checkIdx(info, exp, N, E, "expertIndex");
  moe_linear_backward(dy, x, w, inRow, outRow, exp, weight, dx, dw, dweight, static_cast<int>(R),
                      static_cast<int>(din), static_cast<int>(dout), static_cast<int>(E), N,
                      static_cast<int>(outRows));
}

// (q, k, v, out, lse, BH, T, dk, dv, scale, H, bthd)
void CausalAttentionForward(const Napi::CallbackInfo& info) {
  long BH = Int(info, 5), T = Int(info, 6), dk = Int(info, 7), dv = Int(info, 8), H = Int(info, 10);
  float scale = info[9].As<Napi::Number>().FloatValue();
  if (H < 1 || BH % H != 0) throw Napi::RangeError::New(info.Env(), "moelab-cpu: attention heads must divide B*H");
  causal_attention_forward(F32(info, 0, BH * T * dk, "q"), F32(info, 1, BH * T * dk, "k"), F32(info, 2, BH * T * dv, "v"),
                           F32(info, 3, BH * T * dv, "out"), F32(info, 4, BH * T, "lse"), static_cast<int>(BH),
                           static_cast<int>(H), static_cast<int>(T), static_cast<int>(dk), static_cast<int>(dv), scale,
                           info[11].As<Napi::Boolean>().Value());
}

// (q, k, v, out, B, H, Hkv, m, n, Tk, dk, dv, scale)
void CachedAttentionForward(const Napi::CallbackInfo& info) {
  long B = Int(info, 4), H = Int(info, 5), Hkv = Int(info, 6), m = Int(info, 7), n = Int(info, 8), Tk = Int(info, 9),
       dk = Int(info, 10), dv = Int(info, 11);
  float scale = info[12].As<Napi::Number>().FloatValue();
  if (m > n || n > Tk) throw Napi::RangeError::New(info.Env(), "moelab-cpu: cached attention needs new rows <= length <= cached positions");
  if (Hkv < 1 || H % Hkv != 0) throw Napi::RangeError::New(info.Env(), "moelab-cpu: cached attention kv heads must divide the query heads");
  cached_attention_forward(F32(info, 0, B * H * m * dk, "q"), F32(info, 1, B * Hkv * Tk * dk, "k"),
                           F32(info, 2, B * Hkv * Tk * dv, "v"), F32(info, 3, B * H * m * dv, "out"), static_cast<int>(B),
                           static_cast<int>(H), static_cast<int>(Hkv), static_cast<int>(m), static_cast<int>(n),
                           static_cast<int>(Tk), static_cast<int>(dk), static_cast<int>(dv), scale);
}

// (dy, q, k, v, out, lse, dq, dk, dv, BH, T, dk, dv, scale, H, bthd)
void CausalAttentionBackward(const Napi::CallbackInfo& info) {
  long BH = Int(info, 9), T = Int(info, 10), dk = Int(info, 11), dv = Int(info, 12), H = Int(info, 14);
  float scale = info[13].As<Napi::Number>().FloatValue();
  if (H < 1 || BH % H != 0) throw Napi::RangeError::New(info.Env(), "moelab-cpu: attention heads must divide B*H");
  causal_attention_backward(F32(info, 0, BH * T * dv, "dy"), F32(info, 1, BH * T * dk, "q"), F32(info, 2, BH * T * dk, "k"),
                            F32(info, 3, BH * T * dv, "v"), F32(info, 4, BH * T * dv, "out"), F32(info, 5, BH * T, "lse"),
                            F32(info, 6, BH * T * dk, "dq"), F32(info, 7, BH * T * dk, "dk"), F32(info, 8, BH * T * dv, "dv"),
                            static_cast<int>(BH), static_cast<int>(H), static_cast<int>(T), static_cast<int>(dk),
                            static_cast<int>(dv), scale, info[15].As<Napi::Boolean>().Value());
}

// (x, cos, sin, out, BH, T, dh, dims, inverse, H, bthd)
void Rope(const Napi::CallbackInfo& info) {
  long BH = Int(info, 4), T = Int(info, 5), dh = Int(info, 6), dims = Int(info, 7), H = Int(info, 9);
  if (dims % 2 != 0 || dims > dh) throw Napi::RangeError::New(info.Env(), "moelab-cpu: rope dims must be even and <= head size");
  if (H < 1 || BH % H != 0) throw Napi::RangeError::New(info.Env(), "moelab-cpu: rope heads must divide B*H");
  rope(F32(info, 0, BH * T * dh, "x"), F32(info, 1, T * dims, "cos"), F32(info, 2, T * dims, "sin"),
       F32(info, 3, BH * T * dh, "out"), BH, static_cast<int>(H), static_cast<int>(T), static_cast<int>(dh),
       static_cast<int>(dims), info[8].As<Napi::Boolean>().Value(), info[10].As<Napi::Boolean>().Value());
}

// (mmapThresholdBytes, trimThresholdBytes) -> whether glibc took the settings.
// Every tensor is a fresh ArrayBuffer (calloc). glibc serves blocks above its mmap threshold
// (dynamic, starting at 128 KiB) with a fresh mmap, so each large tensor costs one page fault per
// 4 KiB on first touch, and returns freed heap above the trim threshold to the kernel. A training
// step of the anchor's LM took ~195k page faults and ~1 s of system time that way. A fixed higher
// mmap threshold and trim threshold keep freed tensor memory in the heap for reuse; M_MMAP_MAX = 0
// extends that to blocks above the highest threshold glibc accepts (32 MiB: an MoE layer's hidden
// activations are bigger). glibc still falls back to mmap when the heap cannot grow.
Napi::Value TuneMalloc(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  long mmapBytes = Int(info, 0), trimBytes = Int(info, 1);
  bool ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmapBytes)) == 1;
  ok = mallopt(M_TRIM_THRESHOLD, static_cast<int>(trimBytes)) == 1 && ok;
  ok = mallopt(M_MMAP_MAX, 0) == 1 && ok;
  return Napi::Boolean::New(info.Env(), ok);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("setGemm", Napi::Function::New(env, SetGemm));
  exports.Set("sgemmBatched", Napi::Function::New(env, SgemmBatched));
  exports.Set("biasAct", Napi::Function::New(env, BiasAct));
  exports.Set("transpose", Napi::Function::New(env, Transpose));
  exports.Set("mulBroadcast", Napi::Function::New(env, MulBroadcast));
  exports.Set("gather", Napi::Function::New(env, Gather));
  exports.Set("softmax", Napi::Function::New(env, Softmax));
  exports.Set("topk", Napi::Function::New(env, TopK));
  exports.Set("softmaxTopK", Napi::Function::New(env, SoftmaxTopK));
  exports.Set("softmaxTopKGrad", Napi::Function::New(env, SoftmaxTopKGrad));
  exports.Set("sigmoidTopK", Napi::Function::New(env, SigmoidTopK));
  exports.Set("sigmoidTopKGrad", Napi::Function::New(env, SigmoidTopKGrad));
  exports.Set("layerNormForward", Napi::Function::New(env, LayerNormForward));
  exports.Set("layerNormBackward", Napi::Function::New(env, LayerNormBackward));
  exports.Set("adamw", Napi::Function::New(env, AdamW));
  exports.Set("reduce", Napi::Function::New(env, Reduce));
  exports.Set("segmentSum", Napi::Function::New(env, SegmentSum));
  exports.Set("moeMlpForward", Napi::Function::New(env, MoeMlpForward));
  exports.Set("moeMlpBackward", Napi::Function::New(env, MoeMlpBackward));
  exports.Set("moeGluForward", Napi::Function::New(env, MoeGluForward));
  exports.Set("moeGluBackward", Napi::Function::New(env, MoeGluBackward));
  exports.Set("moePackedForward", Napi::Function::New(env, MoePackedForward));
  exports.Set("moePackedBackward", Napi::Function::New(env, MoePackedBackward));
  exports.Set("moeLinearForward", Napi::Function::New(env, MoeLinearForward));
  exports.Set("moeLinearBackward", Napi::Function::New(env, MoeLinearBackward));
  exports.Set("causalAttentionForward", Napi::Function::New(env, CausalAttentionForward));
  exports.Set("causalAttentionBackward", Napi::Function::New(env, CausalAttentionBackward));
  exports.Set("cachedAttentionForward", Napi::Function::New(env, CachedAttentionForward));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("tuneMalloc", Napi::Function::New(env, TuneMalloc));
  return exports;
}

}  // namespace

NODE_API_MODULE(moelab_cpu, Init)
