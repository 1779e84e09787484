// The Node-API face of moelab-cuda (one source for the device and the emulation build). Device
// buffers travel to JavaScript as plain numbers (their address: below 2^53 on every supported
// platform, checked at allocation) and are freed explicitly by the backend's disposeData; every
// kernel entry takes those numbers plus sizes: the kernels with many operands take descriptors
// (an object of buffers named as the kernel contract's inputs and outputs, and an object of
// sizes; see src/native.ts), the small ones positional arguments. Errors surface as one-line JS
// exceptions.
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

// A descriptor argument: an object of named device buffers (addresses; null for an absent
// optional one) and sizes, read by name. A missing or mistyped field is a one-line error naming
// the function and the field.
class Fields {
 public:
  Fields(const Napi::CallbackInfo& info, size_t at, const char* fn) : fn_(fn) {
    if (at >= info.Length() || !info[at].IsObject()) fail("argument " + std::to_string(at) + " must be an object");
    o_ = info[at].As<Napi::Object>();
  }
  // A buffer that must be named (its address may be 0: an empty tensor).
  template <class T = float>
  T* buf(const char* k) const {
    Napi::Value v = o_.Get(k);
    if (v.IsUndefined()) fail(std::string("buffer '") + k + "' is missing");
    return to_ptr<T>(k, v);
  }
  // A buffer that may be absent or null.
  template <class T = float>
  T* opt(const char* k) const {
    return to_ptr<T>(k, o_.Get(k));
  }
  long num(const char* k) const { return static_cast<long>(number(k).Int64Value()); }
  double dbl(const char* k) const { return number(k).DoubleValue(); }
  float f32(const char* k) const { return static_cast<float>(dbl(k)); }
  bool flag(const char* k) const { return o_.Get(k).ToBoolean().Value(); }
  bool has(const char* k) const {
    Napi::Value v = o_.Get(k);
    return !v.IsUndefined() && !v.IsNull();
  }
  // An array of at most 6 integers.
  int ints(const char* k, long* out) const {
    Napi::Value v = o_.Get(k);
    if (!v.IsArray() && !v.IsTypedArray()) fail(std::string("field '") + k + "' must be an array of integers");
    Napi::Object a = v.As<Napi::Object>();
    const uint32_t n = a.Get("length").As<Napi::Number>().Uint32Value();
    if (n > 6) fail(std::string("field '") + k + "' has rank " + std::to_string(n) + ", above 6");
    for (uint32_t i = 0; i < n; i++) out[i] = static_cast<long>(a.Get(i).As<Napi::Number>().Int64Value());
    return static_cast<int>(n);
  }
  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error("moelab-cuda " + std::string(fn_) + ": " + what); }

 private:
  Napi::Number number(const char* k) const {
    Napi::Value v = o_.Get(k);
    if (!v.IsNumber()) fail(std::string("field '") + k + "' must be a number");
    return v.As<Napi::Number>();
  }
  template <class T>
  T* to_ptr(const char* k, const Napi::Value& v) const {
    if (v.IsUndefined() || v.IsNull()) return nullptr;
    if (!v.IsNumber()) fail(std::string("buffer '") + k + "' must be a device address");
    return reinterpret_cast<T*>(static_cast<uintptr_t>(v.As<Napi::Number>().DoubleValue()));
  }
  Napi::Object o_;
  const char* fn_;
};

// An index space argument {shape, a, b?}: the shape (rank <= 6) and two operands' strides over it.
Strides6 index_space(const Napi::CallbackInfo& info, size_t at, const char* fn, long* n) {
  const Fields f(info, at, fn);
  Strides6 s{};
  s.rank = f.ints("shape", s.shape);
  if (f.ints("a", s.a) != s.rank) f.fail("strides 'a' must have the shape's rank");
  if (f.has("b") && f.ints("b", s.b) != s.rank) f.fail("strides 'b' must have the shape's rank");
  long count = 1;
  for (int d = 0; d < s.rank; d++) count *= s.shape[d];
  *n = count;
  return s;
}

// 'forward' or 'backward'.
bool is_backward(const Napi::CallbackInfo& info, const char* fn) {
  const std::string pass = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  if (pass != "forward" && pass != "backward")
    throw std::runtime_error(std::string("moelab-cuda ") + fn + ": pass must be 'forward' or 'backward', got '" + pass + "'");
  return pass == "backward";
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

// gemm({A, B, C, bias?}, {ta, tb, batch, M, N, K, strideA, strideB, act, alpha})
void Gemm(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const Fields b(info, 0, "gemm"), d(info, 1, "gemm");
  mlc::gemm(d.flag("ta"), d.flag("tb"), d.num("batch"), d.num("M"), d.num("N"), d.num("K"), b.buf("A"), d.num("strideA"), b.buf("B"),
            d.num("strideB"), b.buf("C"), b.opt("bias"), d.num("act"), d.f32("alpha"));
  GUARD_END
}
// binary(a, b, out, {shape, a, b}, op, isInt)
void Binary(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  long n;
  const Strides6 s = index_space(info, 3, "binary", &n);
  mlc::binary_op(ptr<void>(info, 0), ptr<void>(info, 1), ptr<void>(info, 2), n, s, num(info, 4), flag(info, 5));
  GUARD_END
}
// stridedCopy(x, out, {shape, a: x strides, b: out strides}, elemBytes)
void StridedCopy(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  long n;
  const Strides6 s = index_space(info, 2, "stridedCopy", &n);
  if (n > 0) mlc::strided_copy(ptr<void>(info, 0), ptr<void>(info, 1), n, s, num(info, 3));
  GUARD_END
}
// select(cond, t, e, out, {shape, a: the condition's strides}, elemBytes)
void Select(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  long n;
  const Strides6 s = index_space(info, 4, "select", &n);
  if (n > 0) mlc::select(ptr<uint8_t>(info, 0), ptr<void>(info, 1), ptr<void>(info, 2), ptr<void>(info, 3), n, s, num(info, 5));
  GUARD_END
}
// tile(x, out, {shape: out's shape, a: x's strides, b: x's shape}, elemBytes)
void Tile(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  long n;
  const Strides6 s = index_space(info, 2, "tile", &n);
  for (int d = 0; d < s.rank; d++)
    if (s.b[d] <= 0 && n > 0) throw std::runtime_error("moelab-cuda tile: the tiled shape has an empty axis");
  if (n > 0) mlc::tile(ptr<void>(info, 0), ptr<void>(info, 1), n, s, num(info, 3));
  GUARD_END
}
// scan(x, out, {outer, R, inner, product, exclusive, reverse, isInt})
void Scan(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const Fields d(info, 2, "scan");
  mlc::scan(ptr<void>(info, 0), ptr<void>(info, 1), d.num("outer"), d.num("R"), d.num("inner"), d.flag("product"), d.flag("exclusive"),
            d.flag("reverse"), d.flag("isInt"));
  GUARD_END
}
// range(out, n, start, step, isInt)
void Range(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  mlc::range(ptr<void>(info, 0), num(info, 1), dbl(info, 2), dbl(info, 3), flag(info, 4));
  GUARD_END
}
// attention(pass, buffers, {B, H, Hkv, Tq, Tk, dk, dv, qOffset, bthd, scale}); buffers: forward
// {q, k, v, out, lse?}, backward {dy, q, k, v, out, lse, dq, dk, dv}.
void Attention(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const bool backward = is_backward(info, "attention");
  const Fields b(info, 1, "attention"), d(info, 2, "attention");
  auto i = [&](const char* k) { return static_cast<int>(d.num(k)); };
  const mlc::AttentionShape s{i("H"), i("Hkv"), i("Tq"), i("Tk"), i("dk"), i("dv"), i("qOffset"), d.flag("bthd"), d.f32("scale")};
  if (backward)
    mlc::attention_backward(b.buf("dy"), b.buf("q"), b.buf("k"), b.buf("v"), b.buf("out"), b.buf("lse"), b.buf("dq"), b.buf("dk"),
                            b.buf("dv"), i("B"), s);
  else mlc::attention_forward(b.buf("q"), b.buf("k"), b.buf("v"), b.buf("out"), b.opt("lse"), i("B"), s);
  GUARD_END
}
// rope({x, cos, sin, out}, {BH, H, T, dh, dims, inverse, bthd})
void Rope(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const Fields b(info, 0, "rope"), d(info, 1, "rope");
  mlc::rope(b.buf("x"), b.buf("cos"), b.buf("sin"), b.buf("out"), d.num("BH"), d.num("H"), d.num("T"), d.num("dh"), d.num("dims"),
            d.flag("inverse"), d.flag("bthd"));
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
// softmaxTopK(pass, buffers, {T, E, k, renormalize}); buffers: forward {scores, bias?, weight,
// expert}, backward {dy, scores, weight, expert, dscores}.
void SoftmaxTopK(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const bool backward = is_backward(info, "softmaxTopK");
  const Fields b(info, 1, "softmaxTopK"), d(info, 2, "softmaxTopK");
  if (backward)
    mlc::softmax_topk_backward(b.buf("dy"), b.buf("scores"), b.buf("weight"), b.buf<int>("expert"), b.buf("dscores"), d.num("T"), d.num("E"),
                               d.num("k"), d.flag("renormalize"));
  else
    mlc::softmax_topk_forward(b.buf("scores"), b.opt("bias"), b.buf("weight"), b.buf<int>("expert"), d.num("T"), d.num("E"), d.num("k"),
                              d.flag("renormalize"));
  GUARD_END
}
// layerNorm(pass, buffers, {rows, D, eps}); buffers: forward {x, gamma, beta?, y, mean, rstd},
// backward {dy, x, gamma, mean, rstd, dx, dgamma, dbeta?}.
void LayerNorm(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const bool backward = is_backward(info, "layerNorm");
  const Fields b(info, 1, "layerNorm"), d(info, 2, "layerNorm");
  if (backward)
    mlc::layer_norm_backward(b.buf("dy"), b.buf("x"), b.buf("gamma"), b.buf("mean"), b.buf("rstd"), b.buf("dx"), b.buf("dgamma"),
                             b.opt("dbeta"), d.num("rows"), d.num("D"));
  else
    mlc::layer_norm_forward(b.buf("x"), b.buf("gamma"), b.opt("beta"), b.buf("y"), b.buf("mean"), b.buf("rstd"), d.num("rows"), d.num("D"),
                            d.f32("eps"));
  GUARD_END
}
// adamw({p, g, m, v, pOut, mOut, vOut}, {n, beta1, oneMinusBeta1, beta2, oneMinusBeta2, eps, bc1, bc2, lr, lrTimesDecay, decay})
void AdamW(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const Fields b(info, 0, "adamw"), d(info, 1, "adamw");
  const mlc::AdamWScalars s{d.f32("beta1"), d.f32("oneMinusBeta1"), d.f32("beta2"), d.f32("oneMinusBeta2"), d.f32("eps"),
                            d.f32("bc1"),   d.f32("bc2"),           d.f32("lr"),    d.f32("lrTimesDecay"),  d.flag("decay")};
  mlc::adamw(b.buf("p"), b.buf("g"), b.buf("m"), b.buf("v"), b.buf("pOut"), b.buf("mOut"), b.buf("vOut"), d.num("n"), s);
  GUARD_END
}
// One packed expert weight: {name}Codes, {name}Scale, {name}Zero.
mlc::PackedWeight packed_weight(const Fields& b, const std::string& name, bool present) {
  if (!present) return mlc::PackedWeight{nullptr, nullptr, nullptr};
  return mlc::PackedWeight{b.buf<const int>((name + "Codes").c_str()), b.buf<const float>((name + "Scale").c_str()),
                           b.buf<const float>((name + "Zero").c_str())};
}
// moeExperts(pass, buffers, {T, d, h, E, N, act, bits?, group?}): core's MoelabMoeMLP, MoelabMoeGLU
// (w3 given) and MoelabMoePacked (bits given; w3Codes given for gated experts), buffers named as
// the contract's inputs and outputs: x, w1, w3?, w2 (or w1Codes, w1Scale, w1Zero, ...),
// tokenIndex, expertIndex, weight, hidden; forward out, backward dy, dx, dw1, dw3, dw2, dweight
// (packed: dx, dweight).
void MoeExperts(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const bool backward = is_backward(info, "moeExperts");
  const Fields b(info, 1, "moeExperts"), d(info, 2, "moeExperts");
  auto i = [&](const char* k) { return static_cast<int>(d.num(k)); };
  const int T = i("T"), dm = i("d"), h = i("h"), E = i("E"), N = i("N"), act = i("act");
  const float* x = b.buf("x");
  const int* tok = b.buf<int>("tokenIndex");
  const int* expert = b.buf<int>("expertIndex");
  const float* weight = b.buf("weight");
  std::string err;
  if (d.has("bits")) {
    const mlc::PackedExperts p{packed_weight(b, "w1", true), packed_weight(b, "w3", b.has("w3Codes")), packed_weight(b, "w2", true), i("bits"),
                               i("group")};
    err = backward ? mlc::moe_packed_backward(p, b.buf("dy"), x, tok, expert, weight, b.buf("hidden"), b.buf("dx"), b.buf("dweight"), T, dm,
                                              h, E, N, act)
                   : mlc::moe_packed_forward(p, x, tok, expert, weight, b.buf("out"), b.buf("hidden"), T, dm, h, E, N, act);
  } else if (b.has("w3")) {
    err = backward ? mlc::moe_glu_backward(b.buf("dy"), x, b.buf("w1"), b.buf("w3"), b.buf("w2"), tok, expert, weight, b.buf("hidden"),
                                           b.buf("dx"), b.buf("dw1"), b.buf("dw3"), b.buf("dw2"), b.buf("dweight"), T, dm, h, E, N, act)
                   : mlc::moe_glu_forward(x, b.buf("w1"), b.buf("w3"), b.buf("w2"), tok, expert, weight, b.buf("out"), b.buf("hidden"), T, dm,
                                          h, E, N, act);
  } else {
    err = backward ? mlc::moe_mlp_backward(b.buf("dy"), x, b.buf("w1"), b.buf("w2"), tok, expert, weight, b.buf("hidden"), b.buf("dx"),
                                           b.buf("dw1"), b.buf("dw2"), b.buf("dweight"), T, dm, h, E, N, act)
                   : mlc::moe_mlp_forward(x, b.buf("w1"), b.buf("w2"), tok, expert, weight, b.buf("out"), b.buf("hidden"), T, dm, h, E, N,
                                          act);
  }
  throw_if(info.Env(), err);
  GUARD_END
}
// moeLinear(pass, buffers, {R, din, dout, E, N, outRows}): core's MoelabMoeLinear, buffers x, w,
// inRow, outRow, expertIndex, weight; forward out, backward dy, dx, dw, dweight.
void MoeLinear(const Napi::CallbackInfo& info) {
  GUARD_BEGIN
  const bool backward = is_backward(info, "moeLinear");
  const Fields b(info, 1, "moeLinear"), d(info, 2, "moeLinear");
  auto i = [&](const char* k) { return static_cast<int>(d.num(k)); };
  const float* x = b.buf("x");
  const float* w = b.buf("w");
  const int* inRow = b.buf<int>("inRow");
  const int* outRow = b.buf<int>("outRow");
  const int* expert = b.buf<int>("expertIndex");
  const float* weight = b.buf("weight");
  throw_if(info.Env(), backward ? mlc::moe_linear_backward(b.buf("dy"), x, w, inRow, outRow, expert, weight, b.buf("dx"), b.buf("dw"),
                                                           b.buf("dweight"), i("R"), i("din"), i("dout"), i("E"), i("N"), i("outRows"))
                                : mlc::moe_linear_forward(x, w, inRow, outRow, expert, weight, b.buf("out"), i("R"), i("din"), i("dout"),
                                                          i("E"), i("N"), i("outRows")));
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
  fn("tile", Tile);
  fn("scan", Scan);
  fn("range", Range);
  fn("attention", Attention);
  fn("rope", Rope);
  fn("gather", Gather);
  fn("segmentSum", SegmentSum);
  fn("softmax", Softmax);
  fn("topk", TopK);
  fn("softmaxTopK", SoftmaxTopK);
  fn("layerNorm", LayerNorm);
  fn("adamw", AdamW);
  fn("moeExperts", MoeExperts);
  fn("moeLinear", MoeLinear);
#if defined(MLC_EMULATE)
  exports.Set("emulated", true);
#else
  exports.Set("emulated", false);
#endif
  return exports;
}
}  // namespace

NODE_API_MODULE(moelab_cuda, Init)
