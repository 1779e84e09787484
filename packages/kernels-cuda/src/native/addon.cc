// The Node-API face of moelab-cuda (one source for the device and the emulation build). Device
// buffers travel to JavaScript as plain numbers (their address: below 2^53 on every supported
// platform, checked at allocation) and are freed explicitly by the backend's disposeData; every
// kernel entry takes those numbers plus sizes. Errors surface as one-line JS exceptions.
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels.h"

namespace {
using mlc::Strides6;

double addr(const void* p) { return static_cast<double>(reinterpret_cast<uintptr_t>(p)); }
template <class T = float>
T* ptr(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsNull() || info[i].IsUndefined()) return nullptr;
  return reinterpret_cast<T*>(static_cast<uintptr_t>(info[i].As<Napi::Number>().DoubleValue()));
}
long num(const Napi::CallbackInfo& info, size_t i) { return static_cast<long>(info[i].As<Napi::Number>().Int64Value()); }
double dbl(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().DoubleValue(); }
bool flag(const Napi::CallbackInfo& info, size_t i) { return info[i].ToBoolean().Value(); }

Strides6 strides(const Napi::CallbackInfo& info, size_t shapeAt, size_t aAt, size_t bAt) {
  Strides6 s{};
  auto shape = info[shapeAt].As<Napi::Int32Array>();
  s.rank = static_cast<int>(shape.ElementLength());
  if (s.rank > 6) throw std::runtime_error("moelab-cuda: rank above 6");
  auto a = info[aAt].As<Napi::Int32Array>();
  for (int d = 0; d < s.rank; d++) {
    s.shape[d] = shape[d];
    s.a[d] = a[d];
    s.b[d] = bAt ? info[bAt].As<Napi::Int32Array>()[d] : 0;
  }
  return s;
}

void throw_if(const Napi::Env& env, const std::string& message) {
  if (!message.empty()) throw Napi::Error::New(env, message);
}

#define GUARD_BEGIN try {
#define GUARD_END                                      \
  }                                                    \
  catch (const Napi::Error&) {                         \
    throw;                                             \
  }                                                    \
  catch (const std::exception& e) {                    \
    throw Napi::Error::New(info.Env(), e.what());      \
  }

Napi::Value Status(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  return Napi::String::New(info.Env(), mlc::device_status());
  GUARD_END
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const mlc::DeviceInfo d = mlc::device_info();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("emulated", d.emulated);
  o.Set("name", d.name);
  o.Set("major", d.major);
  o.Set("minor", d.minor);
  o.Set("totalBytes", static_cast<double>(d.totalBytes));
  o.Set("freeBytes", static_cast<double>(d.freeBytes));
  o.Set("driverVersion", d.driverVersion);
  o.Set("runtimeVersion", d.runtimeVersion);
  return o;
  GUARD_END
}

Napi::Value SetTf32(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), mlc::set_tf32(flag(info, 0))); }

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const size_t bytes = static_cast<size_t>(num(info, 0));
  if (bytes == 0) return Napi::Number::New(info.Env(), 0);
  void* p = mlc::pool_alloc(bytes);
  if (reinterpret_cast<uintptr_t>(p) >= (static_cast<uintptr_t>(1) << 53)) {
    mlc::pool_free(p, bytes);
    throw std::runtime_error("moelab-cuda: a device address above 2^53 cannot be passed to JavaScript");
  }
  return Napi::Number::New(info.Env(), addr(p));
  GUARD_END
}

void Free(const Napi::CallbackInfo& info) { mlc::pool_free(ptr<void>(info, 0), static_cast<size_t>(num(info, 1))); }

void Upload(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  auto a = info[1].As<Napi::TypedArray>();
  mlc::copy_to_device(ptr<void>(info, 0), static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength());
  GUARD_END
}
void Download(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  auto a = info[1].As<Napi::TypedArray>();
  mlc::copy_to_host(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), ptr<void>(info, 0), a.ByteLength());
  GUARD_END
}
void Copy(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::copy_device(ptr<void>(info, 0), ptr<void>(info, 1), static_cast<size_t>(num(info, 2)));
  GUARD_END
}
void Sync(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::synchronize();
  GUARD_END
}
Napi::Value Memory(const Napi::CallbackInfo& info) {
  size_t live, cached, blocks;
  mlc::pool_stats(&live, &cached, &blocks);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("liveBytes", static_cast<double>(live));
  o.Set("cachedBytes", static_cast<double>(cached));
  o.Set("liveBuffers", static_cast<double>(blocks));
  return o;
}
void ReleaseCached(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::synchronize();
  mlc::release_cached();
  GUARD_END
}

// gemm(ta, tb, batch, M, N, K, A, strideA, B, strideB, C, bias|null, act, alpha)
void Gemm(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::gemm(flag(info, 0), flag(info, 1), num(info, 2), num(info, 3), num(info, 4), num(info, 5), ptr(info, 6), num(info, 7),
            ptr(info, 8), num(info, 9), ptr(info, 10), ptr(info, 11), num(info, 12), static_cast<float>(dbl(info, 13)));
  GUARD_END
}
// binary(a, b, out, n, shape, aStrides, bStrides, op, isInt)
void Binary(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::binary_op(ptr<void>(info, 0), ptr<void>(info, 1), ptr<void>(info, 2), num(info, 3), strides(info, 4, 5, 6), num(info, 7), flag(info, 8));
  GUARD_END
}
// stridedCopy(x, out, n, shape, xStrides, outStrides, elemBytes)
void StridedCopy(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::strided_copy(ptr<void>(info, 0), ptr<void>(info, 1), num(info, 2), strides(info, 3, 4, 5), num(info, 6));
  GUARD_END
}
// select(cond, t, e, out, n)
void Select(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::select(ptr<uint8_t>(info, 0), ptr<void>(info, 1), ptr<void>(info, 2), ptr<void>(info, 3), num(info, 4));
  GUARD_END
}
// range(out, n, start, step, isInt)
void Range(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::range(ptr<void>(info, 0), num(info, 1), dbl(info, 2), dbl(info, 3), flag(info, 4));
  GUARD_END
}
mlc::AttentionShape attention_shape(const Napi::CallbackInfo& info, size_t at) {
  auto o = info[at].As<Napi::Object>();
  auto i = [&](const char* k) { return o.Get(k).As<Napi::Number>().Int32Value(); };
  return mlc::AttentionShape{i("H"), i("Hkv"), i("Tq"), i("Tk"), i("dk"), i("dv"), i("qOffset"), o.Get("bthd").ToBoolean().Value(),
                             static_cast<float>(o.Get("scale").As<Napi::Number>().DoubleValue())};
}
// attentionForward(q, k, v, out, lse|null, B, shape)
void AttentionForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::attention_forward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), num(info, 5), attention_shape(info, 6));
  GUARD_END
}
// attentionBackward(dy, q, k, v, out, lse, dq, dk, dv, B, shape)
void AttentionBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::attention_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), ptr(info, 5), ptr(info, 6), ptr(info, 7),
                          ptr(info, 8), num(info, 9), attention_shape(info, 10));
  GUARD_END
}
// rope(x, cos, sin, out, BH, H, T, dh, dims, inverse, bthd)
void Rope(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::rope(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), num(info, 4), num(info, 5), num(info, 6), num(info, 7), num(info, 8),
            flag(info, 9), flag(info, 10));
  GUARD_END
}
// unary(x, out, n, op, alpha)
void Unary(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::unary(ptr(info, 0), ptr(info, 1), num(info, 2), num(info, 3), static_cast<float>(dbl(info, 4)));
  GUARD_END
}
void Fill(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::fill(ptr(info, 0), num(info, 1), static_cast<float>(dbl(info, 2)));
  GUARD_END
}
// cast(x, out, n, kind): 0 int32 -> float32, 1 float32 -> int32, 2 bool -> float32
void Cast(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const long n = num(info, 2);
  switch (num(info, 3)) {
    case 0: mlc::cast_int_to_float(ptr<int>(info, 0), ptr(info, 1), n); break;
    case 1: mlc::cast_float_to_int(ptr(info, 0), ptr<int>(info, 1), n); break;
    default: mlc::cast_bool_to_float(ptr<uint8_t>(info, 0), ptr(info, 1), n); break;
  }
  GUARD_END
}
void Reduce(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::reduce(ptr(info, 0), ptr(info, 1), num(info, 2), num(info, 3), num(info, 4), num(info, 5));
  GUARD_END
}
// gather(x, idx, out, outer, dim, inner, nIdx, isInt) -> first bad index position or -1
Napi::Value Gather(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  long bad = flag(info, 7) ? mlc::gather_int(ptr<int>(info, 0), ptr<int>(info, 1), ptr<int>(info, 2), num(info, 3), num(info, 4),
                                             num(info, 5), num(info, 6))
                           : mlc::gather(ptr(info, 0), ptr<int>(info, 1), ptr(info, 2), num(info, 3), num(info, 4), num(info, 5),
                                         num(info, 6));
  return Napi::Number::New(info.Env(), static_cast<double>(bad));
  GUARD_END
}
void SegmentSum(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::segment_sum(ptr(info, 0), ptr<int>(info, 1), ptr(info, 2), num(info, 3), num(info, 4), num(info, 5));
  GUARD_END
}
void Softmax(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::softmax(ptr(info, 0), ptr(info, 1), num(info, 2), num(info, 3));
  GUARD_END
}
void TopK(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::topk(ptr(info, 0), ptr(info, 1), ptr<int>(info, 2), num(info, 3), num(info, 4), num(info, 5));
  GUARD_END
}
// softmaxTopK(scores, bias|null, weight, expert, T, E, k, renormalize)
void SoftmaxTopK(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::softmax_topk_forward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr<int>(info, 3), num(info, 4), num(info, 5), num(info, 6), flag(info, 7));
  GUARD_END
}
// softmaxTopKGrad(dy, scores, weight, expert, dscores, T, E, k, renormalize)
void SoftmaxTopKGrad(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::softmax_topk_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr<int>(info, 3), ptr(info, 4), num(info, 5), num(info, 6), num(info, 7),
                             flag(info, 8));
  GUARD_END
}
void LayerNormForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::layer_norm_forward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), ptr(info, 5), num(info, 6), num(info, 7),
                          static_cast<float>(dbl(info, 8)));
  GUARD_END
}
void LayerNormBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::layer_norm_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), ptr(info, 5), ptr(info, 6),
                           ptr(info, 7), num(info, 8), num(info, 9));
  GUARD_END
}
// adamw(p, g, m, v, pOut, mOut, vOut, n, [beta1, 1-beta1, beta2, 1-beta2, eps, bc1, bc2, lr, lr*wd], decay)
void AdamW(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  auto sc = info[8].As<Napi::Array>();
  auto f = [&](uint32_t i) { return static_cast<float>(sc.Get(i).As<Napi::Number>().DoubleValue()); };
  const mlc::AdamWScalars s{f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), flag(info, 9)};
  mlc::adamw(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), ptr(info, 5), ptr(info, 6), num(info, 7), s);
  GUARD_END
}
// moeMlpForward(x, w1, w2, tok, expert, weight, out, hidden, T, d, h, E, N, act)
void MoeMlpForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_mlp_forward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr<int>(info, 3), ptr<int>(info, 4), ptr(info, 5),
                                            ptr(info, 6), ptr(info, 7), num(info, 8), num(info, 9), num(info, 10), num(info, 11),
                                            num(info, 12), num(info, 13)));
  GUARD_END
}
// moeMlpBackward(dy, x, w1, w2, tok, expert, weight, hidden, dx, dw1, dw2, dweight, T, d, h, E, N, act)
void MoeMlpBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_mlp_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr<int>(info, 4), ptr<int>(info, 5),
                                             ptr(info, 6), ptr(info, 7), ptr(info, 8), ptr(info, 9), ptr(info, 10), ptr(info, 11),
                                             num(info, 12), num(info, 13), num(info, 14), num(info, 15), num(info, 16), num(info, 17)));
  GUARD_END
}
// moeGluForward(x, w1, w3, w2, tok, expert, weight, out, hidden, T, d, h, E, N, act)
void MoeGluForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_glu_forward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr<int>(info, 4), ptr<int>(info, 5),
                                            ptr(info, 6), ptr(info, 7), ptr(info, 8), num(info, 9), num(info, 10), num(info, 11),
                                            num(info, 12), num(info, 13), num(info, 14)));
  GUARD_END
}
// moeGluBackward(dy, x, w1, w3, w2, tok, expert, weight, hidden, dx, dw1, dw3, dw2, dweight, T, d, h, E, N, act)
void MoeGluBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_glu_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr(info, 3), ptr(info, 4), ptr<int>(info, 5),
                                             ptr<int>(info, 6), ptr(info, 7), ptr(info, 8), ptr(info, 9), ptr(info, 10), ptr(info, 11),
                                             ptr(info, 12), ptr(info, 13), num(info, 14), num(info, 15), num(info, 16), num(info, 17),
                                             num(info, 18), num(info, 19)));
  GUARD_END
}
// The packed weights argument: [w1Codes, w1Scale, w1Zero, w3Codes|null, w3Scale|null, w3Zero|null, w2Codes, w2Scale, w2Zero, bits, group].
mlc::PackedExperts packed_experts(const Napi::CallbackInfo& info, size_t at) {
  auto a = info[at].As<Napi::Array>();
  auto p = [&](uint32_t i) -> uintptr_t {
    Napi::Value v = a.Get(i);
    return v.IsNull() || v.IsUndefined() ? 0 : static_cast<uintptr_t>(v.As<Napi::Number>().DoubleValue());
  };
  auto w = [&](uint32_t i) {
    return mlc::PackedWeight{reinterpret_cast<const int*>(p(i)), reinterpret_cast<const float*>(p(i + 1)), reinterpret_cast<const float*>(p(i + 2))};
  };
  return mlc::PackedExperts{w(0), w(3), w(6), a.Get(9u).As<Napi::Number>().Int32Value(), a.Get(10u).As<Napi::Number>().Int32Value()};
}
// moePackedForward(packed, x, tok, expert, weight, out, hidden, T, d, h, E, N, act)
void MoePackedForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_packed_forward(packed_experts(info, 0), ptr(info, 1), ptr<int>(info, 2), ptr<int>(info, 3), ptr(info, 4),
                                               ptr(info, 5), ptr(info, 6), num(info, 7), num(info, 8), num(info, 9), num(info, 10),
                                               num(info, 11), num(info, 12)));
  GUARD_END
}
// moePackedBackward(packed, dy, x, tok, expert, weight, hidden, dx, dweight, T, d, h, E, N, act)
void MoePackedBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_packed_backward(packed_experts(info, 0), ptr(info, 1), ptr(info, 2), ptr<int>(info, 3), ptr<int>(info, 4),
                                                ptr(info, 5), ptr(info, 6), ptr(info, 7), ptr(info, 8), num(info, 9), num(info, 10),
                                                num(info, 11), num(info, 12), num(info, 13), num(info, 14)));
  GUARD_END
}
// moeLinearForward(x, w, inRow, outRow, expert, weight, out, R, din, dout, E, N, outRows)
void MoeLinearForward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_linear_forward(ptr(info, 0), ptr(info, 1), ptr<int>(info, 2), ptr<int>(info, 3), ptr<int>(info, 4),
                                               ptr(info, 5), ptr(info, 6), num(info, 7), num(info, 8), num(info, 9), num(info, 10),
                                               num(info, 11), num(info, 12)));
  GUARD_END
}
// moeLinearBackward(dy, x, w, inRow, outRow, expert, weight, dx, dw, dweight, R, din, dout, E, N, outRows)
void MoeLinearBackward(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  throw_if(info.Env(), mlc::moe_linear_backward(ptr(info, 0), ptr(info, 1), ptr(info, 2), ptr<int>(info, 3), ptr<int>(info, 4),
                                                ptr<int>(info, 5), ptr(info, 6), ptr(info, 7), ptr(info, 8), ptr(info, 9), num(info, 10),
                                                num(info, 11), num(info, 12), num(info, 13), num(info, 14), num(info, 15)));
  GUARD_END
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, auto f) { exports.Set(name, Napi::Function::New(env, f, name)); };
  fn("status", Status);
  fn("info", Info);
  fn("setTf32", SetTf32);
  fn("alloc", Alloc);
  fn("free", Free);
  fn("upload", Upload);
  fn("download", Download);
  fn("copy", Copy);
  fn("sync", Sync);
  fn("memory", Memory);
  fn("releaseCached", ReleaseCached);
  fn("gemm", Gemm);
  fn("binary", Binary);
  fn("unary", Unary);
  fn("fill", Fill);
  fn("cast", Cast);
  fn("reduce", Reduce);
  fn("stridedCopy", StridedCopy);
  fn("select", Select);
  fn("range", Range);
  fn("attentionForward", AttentionForward);
  fn("attentionBackward", AttentionBackward);
  fn("rope", Rope);
  fn("moeGluForward", MoeGluForward);
  fn("moeGluBackward", MoeGluBackward);
  fn("moePackedForward", MoePackedForward);
  fn("moePackedBackward", MoePackedBackward);
  fn("gather", Gather);
  fn("segmentSum", SegmentSum);
  fn("softmax", Softmax);
  fn("topk", TopK);
  fn("softmaxTopK", SoftmaxTopK);
  fn("softmaxTopKGrad", SoftmaxTopKGrad);
  fn("layerNormForward", LayerNormForward);
  fn("layerNormBackward", LayerNormBackward);
  fn("adamw", AdamW);
  fn("moeMlpForward", MoeMlpForward);
  fn("moeMlpBackward", MoeMlpBackward);
  fn("moeLinearForward", MoeLinearForward);
  fn("moeLinearBackward", MoeLinearBackward);
#if defined(MLC_EMULATE)
  exports.Set("emulated", true);
#else
  exports.Set("emulated", false);
#endif
  return exports;
}
}  // namespace

NODE_API_MODULE(moelab_cuda, Init)
