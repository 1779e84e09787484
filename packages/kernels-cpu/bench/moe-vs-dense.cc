// The fused MoE kernels against the dense FFN's GEMMs of the same shapes, interleaved, by the
// calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID) with one thread, so that time slices taken by
// other processes do not count (cache contention still does); with more threads, wall time.
// Shapes of `moelab bench`: T 4096, d 256; MLP experts E 64 x h 128, top-4, against a dense ReLU FFN
// of 1024; SwiGLU experts E 64 x h 128, top-4, against a dense SwiGLU FFN of 512. Prints useful
// GFLOP/s (2mnk per GEMM, forward + backward = 3 x forward) and each MoE row over its dense row.
//
//   cd packages/kernels-cpu/src/native
//   g++ -O3 -march=native -ffp-contract=fast -std=gnu++17 -DMOELAB_HAVE_OPENBLAS=1 -I. \
//     ../../bench/moe-vs-dense.cc gemm.cc pool.cc moe.cc moe_glu.cc quant.cc -lopenblas -pthread -o /tmp/moe-vs-dense
//   /tmp/moe-vs-dense [threads=1] [rounds=9] [builtin]     (perf record works on it as is)
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gemm.h"
#include "kernels.h"
#include "pool.h"

using namespace moelab;

static bool g_threadClock = false;

static double now_ms() {
  if (g_threadClock) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static std::vector<float> normal(long n, float sd, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

int main(int argc, char** argv) {
  // As registerMoelabCpuBackend does: freed blocks stay in the heap (no fresh mmap per scratch block).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_MMAP_MAX, 0);
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 9;
  const bool builtin = argc > 3 && std::string(argv[3]) == "builtin";
  set_pool_threads(threads);
  set_gemm(!builtin);
  g_threadClock = threads == 1;
  const int T = 4096, d = 256, E = 64, k = 4, h = 128, Hd = 1024, Hg = 512;
  const long N = static_cast<long>(T) * k;

  // k distinct random experts per token, slot-major like the routers' plans.
  std::vector<int> tok(N), exp(N);
  std::vector<float> wt(N, 0.3f);
  std::mt19937 g(3);
  std::vector<int> perm(E);
  for (int t = 0; t < T; t++) {
    for (int e = 0; e < E; e++) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), g);
    for (int s = 0; s < k; s++) {
      tok[static_cast<long>(s) * T + t] = t;
      exp[static_cast<long>(s) * T + t] = perm[s];
    }
  }
  std::vector<float> x = normal(static_cast<long>(T) * d, 1.f, 1), dy = normal(static_cast<long>(T) * d, 1.f, 2);
  std::vector<float> w1 = normal(static_cast<long>(E) * d * h, 0.06f, 4), w2 = normal(static_cast<long>(E) * h * d, 0.06f, 5),
                     w3 = normal(static_cast<long>(E) * d * h, 0.06f, 6);
  std::vector<float> out(static_cast<long>(T) * d), hid(N * 2 * h), dx(static_cast<long>(T) * d), dw1(w1.size()),
      dw2(w2.size()), dw3(w3.size()), dwt(N);
  std::vector<float> W1 = normal(static_cast<long>(d) * Hd, 0.06f, 7), W2 = normal(static_cast<long>(Hd) * d, 0.06f, 8),
                     W3 = normal(static_cast<long>(d) * Hd, 0.06f, 9);
  const long TH = static_cast<long>(T) * Hd;
  std::vector<float> H(TH), A(TH), B(TH), dH(TH), dB(TH), Y(static_cast<long>(T) * d), dX(static_cast<long>(T) * d),
      dW1(W1.size()), dW2(W2.size()), dW3(W3.size());

  // Dense ReLU FFN: y = relu(x W1) W2 and its backward.
  auto dense = [&] {
    sgemm(false, false, T, Hd, d, x.data(), W1.data(), H.data());
    for (long i = 0; i < TH; i++) A[i] = H[i] > 0.f ? H[i] : 0.f;
    sgemm(false, false, T, d, Hd, A.data(), W2.data(), Y.data());
    sgemm(false, true, T, Hd, d, dy.data(), W2.data(), dH.data());
    for (long i = 0; i < TH; i++) dH[i] = H[i] > 0.f ? dH[i] : 0.f;
    sgemm(true, false, Hd, d, T, A.data(), dy.data(), dW2.data());
    sgemm(false, true, T, d, Hd, dH.data(), W1.data(), dX.data());
    sgemm(true, false, d, Hd, T, x.data(), dH.data(), dW1.data());
  };
  // Dense SwiGLU FFN: y = (silu(x W1) * x W3) W2 and its backward.
  auto denseGlu = [&] {
    const long n = static_cast<long>(T) * Hg;
    sgemm(false, false, T, Hg, d, x.data(), W1.data(), H.data());
    sgemm(false, false, T, Hg, d, x.data(), W3.data(), B.data());
    for (long i = 0; i < n; i++) A[i] = H[i] / (1.f + std::exp(-H[i])) * B[i];
    sgemm(false, false, T, d, Hg, A.data(), W2.data(), Y.data());
    sgemm(false, true, T, Hg, d, dy.data(), W2.data(), dH.data());
    for (long i = 0; i < n; i++) {
      const float s = 1.f / (1.f + std::exp(-H[i]));
      dB[i] = dH[i] * H[i] * s;
      dH[i] = dH[i] * B[i] * s * (1.f + H[i] * (1.f - s));
    }
    sgemm(true, false, Hg, d, T, A.data(), dy.data(), dW2.data());
    sgemm(false, true, T, d, Hg, dH.data(), W1.data(), dX.data());
    sgemm(false, true, T, d, Hg, dB.data(), W3.data(), dX.data());
    sgemm(true, false, d, Hg, T, x.data(), dH.data(), dW1.data());
    sgemm(true, false, d, Hg, T, x.data(), dB.data(), dW3.data());
  };
  auto mlp = [&] {
    moe_mlp_forward(x.data(), w1.data(), w2.data(), tok.data(), exp.data(), wt.data(), out.data(), hid.data(), T, d, h,
                    E, N, kMoeRelu);
    moe_mlp_backward(dy.data(), x.data(), w1.data(), w2.data(), tok.data(), exp.data(), wt.data(), hid.data(),
                     dx.data(), dw1.data(), dw2.data(), dwt.data(), T, d, h, E, N, kMoeRelu);
  };
  auto glu = [&] {
    moe_glu_forward(x.data(), w1.data(), w3.data(), w2.data(), tok.data(), exp.data(), wt.data(), out.data(),
                    hid.data(), T, d, h, E, N, kMoeSilu);
    moe_glu_backward(dy.data(), x.data(), w1.data(), w3.data(), w2.data(), tok.data(), exp.data(), wt.data(),
                     hid.data(), dx.data(), dw1.data(), dw3.data(), dw2.data(), dwt.data(), T, d, h, E, N, kMoeSilu);
  };
  struct Row {
    const char* name;
    std::function<void()> run;
    double flops;  // forward + backward
    int dense;     // index of the row it is compared with, or -1
    std::vector<double> ms;
  };
  std::vector<Row> rows = {
      {"dense FFN relu h1024", dense, 3 * 4.0 * T * d * Hd, -1, {}},
      {"MoE MLP E64x128 k4", mlp, 3 * 4.0 * N * d * h, 0, {}},
      {"dense SwiGLU h512", denseGlu, 3 * 6.0 * T * d * Hg, -1, {}},
      {"MoE SwiGLU E64x128 k4", glu, 3 * 6.0 * N * d * h, 2, {}},
  };
  for (Row& r : rows) r.run();  // warm-up (first-touch of every buffer)
  for (int i = 0; i < rounds; i++)
    for (Row& r : rows) {
      const double t0 = now_ms();
      r.run();
      r.ms.push_back(now_ms() - t0);
    }
  std::printf("%s GEMM, %d thread%s, %s, %d rounds\n", gemm_name(), threads, threads == 1 ? "" : "s",
              g_threadClock ? "thread CPU time" : "wall time", rounds);
  std::vector<double> best(rows.size()), med(rows.size());
  for (size_t i = 0; i < rows.size(); i++) {
    Row& r = rows[i];
    std::sort(r.ms.begin(), r.ms.end());
    best[i] = r.flops / r.ms.front() / 1e6;
    med[i] = r.flops / r.ms[r.ms.size() / 2] / 1e6;
    std::printf("%-24s min %8.2f ms  median %8.2f ms  GFLOP/s %6.1f (min) %6.1f (median)", r.name, r.ms.front(),
                r.ms[r.ms.size() / 2], best[i], med[i]);
    if (r.dense >= 0) std::printf("  vs dense %.2fx (min) %.2fx (median)", best[i] / best[r.dense], med[i] / med[r.dense]);
    std::printf("\n");
  }
}
