#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "pool.h"

#if defined(__wasm_simd128__)
#include "gemm_wasm_simd.h"
#endif

#ifdef MOELAB_HAVE_OPENBLAS
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#endif

namespace moelab {
namespace {

// ---------------------------------------------------------------------------------------------
// Builtin GEMM: GotoBLAS-style blocking (pack a KCxNC panel of B, an MCxKC block of A, run a 6x16
// register-blocked micro-kernel over the packed data). GCC vector extensions let -march=native pick
// AVX2/FMA (or SSE / NEON) without intrinsics. Block sizes target a 32 KiB L1 (one 16xKC B sliver),
// a 512 KiB L2 (the packed A block) and a shared L3 (the packed B panel).
// In WebAssembly (the kernels-wasm build) the micro-kernel is gemm_wasm_simd.h's SIMD128 one.
// ---------------------------------------------------------------------------------------------
constexpr int KC = 256, MC = 120, NC = 2048;
#if defined(__wasm_simd128__)
using wasm_gemm::micro_kernel;
using wasm_gemm::MR;
using wasm_gemm::NR;
#else
typedef float v8 __attribute__((vector_size(32)));
constexpr int MR = 6, NR = 16;

// Broadcast by element list, not `v8{} + f`: the latter must keep a real add (0 + -0.0 is +0.0)
// and costs an extra instruction per row per k in the micro-kernel.
static inline v8 bcast(const float* p) {
  float f = *p;
  return v8{f, f, f, f, f, f, f, f};
}
#endif  // !__wasm_simd128__
static_assert(MC % MR == 0, "the packed A block holds whole slivers");

struct Packs {
  float* a = nullptr;
  float* b = nullptr;
  Packs() {
    a = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * MC * KC));
    b = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * KC * NC));
  }
  ~Packs() {
    std::free(a);
    std::free(b);
  }
};
// One pair of pack buffers per thread, allocated on first use and kept (bounded: ~2.1 MiB each),
// so repeated calls do not touch the allocator.
Packs& packs() {
  MOELAB_THREAD_LOCAL Packs p;
  return p;
}

// Pack op(A)[i0:i0+mc, p0:p0+kc] into MR-row slivers, k-major inside a sliver; pad rows with 0.
void pack_a(bool ta, const float* A, int lda, int i0, int mc, int p0, int kc, float* dst) {
  for (int ir = 0; ir < mc; ir += MR) {
    int mr = std::min(MR, mc - ir);
#if defined(__wasm_simd128__)
    if (!ta && mr == MR) {
      wasm_gemm::pack_a_rows(A, lda, i0 + ir, p0, kc, dst);
      dst += static_cast<long>(MR) * kc;
      continue;
    }
#endif
    for (int k = 0; k < kc; k++) {
      for (int i = 0; i < mr; i++) {
        int row = i0 + ir + i, col = p0 + k;
        dst[i] = ta ? A[static_cast<long>(col) * lda + row] : A[static_cast<long>(row) * lda + col];
      }
      for (int i = mr; i < MR; i++) dst[i] = 0.f;
      dst += MR;
    }
  }
}

// Pack op(B)[p0:p0+kc, j0:j0+nc] into NR-column slivers, k-major inside a sliver; pad columns with 0.
void pack_b(bool tb, const float* B, int ldb, int p0, int kc, int j0, int nc, float* dst) {
  for (int jr = 0; jr < nc; jr += NR) {
    int nr = std::min(NR, nc - jr);
#if defined(__wasm_simd128__)
    if (tb && nr == NR) {
      wasm_gemm::pack_b_transposed(B, ldb, p0, kc, j0 + jr, dst);
      dst += static_cast<long>(NR) * kc;
      continue;
    }
#endif
    if (!tb && nr == NR) {
      for (int k = 0; k < kc; k++) {
        std::memcpy(dst, B + static_cast<long>(p0 + k) * ldb + j0 + jr, sizeof(float) * NR);
        dst += NR;
      }
      continue;
    }
    for (int k = 0; k < kc; k++) {
      for (int j = 0; j < nr; j++) {
        int row = p0 + k, col = j0 + jr + j;
        dst[j] = tb ? B[static_cast<long>(col) * ldb + row] : B[static_cast<long>(row) * ldb + col];
      }
      for (int j = nr; j < NR; j++) dst[j] = 0.f;
      dst += NR;
    }
  }
}

#if !defined(__wasm_simd128__)
// C[0:mr, 0:nr] = alpha * (a-sliver . b-sliver) + beta * C. The full 6x16 tile is the hot path;
// edge tiles go through a small stack buffer.
inline void micro_kernel(int kc, const float* __restrict a, const float* __restrict b, float* C, int ldc,
                         float alpha, float beta, int mr, int nr) {
  v8 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {}, c40 = {}, c41 = {},
     c50 = {}, c51 = {};
  for (int k = 0; k < kc; k++) {
    v8 b0 = *reinterpret_cast<const v8*>(b);
    v8 b1 = *reinterpret_cast<const v8*>(b + 8);
    v8 a0 = bcast(a + 0);
    c00 += a0 * b0;
    c01 += a0 * b1;
    v8 a1 = bcast(a + 1);
    c10 += a1 * b0;
    c11 += a1 * b1;
    v8 a2 = bcast(a + 2);
    c20 += a2 * b0;
    c21 += a2 * b1;
    v8 a3 = bcast(a + 3);
    c30 += a3 * b0;
    c31 += a3 * b1;
    v8 a4 = bcast(a + 4);
    c40 += a4 * b0;
    c41 += a4 * b1;
    v8 a5 = bcast(a + 5);
    c50 += a5 * b0;
    c51 += a5 * b1;
    a += MR;
    b += NR;
  }
  alignas(32) float tile[MR * NR];
  v8* t = reinterpret_cast<v8*>(tile);
  t[0] = c00; t[1] = c01; t[2] = c10; t[3] = c11; t[4] = c20; t[5] = c21;
  t[6] = c30; t[7] = c31; t[8] = c40; t[9] = c41; t[10] = c50; t[11] = c51;
  for (int i = 0; i < mr; i++) {
    float* crow = C + static_cast<long>(i) * ldc;
    const float* trow = tile + i * NR;
    if (beta == 0.f) {
      for (int j = 0; j < nr; j++) crow[j] = alpha * trow[j];
    } else if (beta == 1.f) {
      for (int j = 0; j < nr; j++) crow[j] += alpha * trow[j];
    } else {
      for (int j = 0; j < nr; j++) crow[j] = alpha * trow[j] + beta * crow[j];
    }
  }
}

#endif  // !__wasm_simd128__

void builtin_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                   int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float& c = C[static_cast<long>(i) * ldc + j];
        c = beta == 0.f ? 0.f : beta * c;
      }
    return;
  }
  Packs& p = packs();
  for (int j0 = 0; j0 < N; j0 += NC) {
    int nc = std::min(NC, N - j0);
    for (int p0 = 0; p0 < K; p0 += KC) {
      int kc = std::min(KC, K - p0);
      float b_eff = p0 == 0 ? beta : 1.f;
      pack_b(tb, B, ldb, p0, kc, j0, nc, p.b);
      for (int i0 = 0; i0 < M; i0 += MC) {
        int mc = std::min(MC, M - i0);
        pack_a(ta, A, lda, i0, mc, p0, kc, p.a);
        for (int jr = 0; jr < nc; jr += NR) {
          int nr = std::min(NR, nc - jr);
          const float* bp = p.b + static_cast<long>(jr) * kc;
          for (int ir = 0; ir < mc; ir += MR) {
            int mr = std::min(MR, mc - ir);
            micro_kernel(kc, p.a + static_cast<long>(ir) * kc, bp,
                         C + static_cast<long>(i0 + ir) * ldc + j0 + jr, ldc, alpha, b_eff, mr, nr);
          }
        }
      }
    }
  }
}

#ifdef MOELAB_HAVE_OPENBLAS
bool g_use_blas = true;
// Our pool parallelises; OpenBLAS must stay single-threaded inside each task (its own threads
// spin-wait and collapse under contention, see pool.h).
struct BlasInit {
  BlasInit() { openblas_set_num_threads(1); }
} g_blas_init;
#else
bool g_use_blas = false;
#endif

}  // namespace

bool have_blas() {
#ifdef MOELAB_HAVE_OPENBLAS
  return true;
#else
  return false;
#endif
}

const char* gemm_name() { return g_use_blas ? "openblas" : "builtin"; }

const char* set_gemm(bool use_blas) {
  g_use_blas = use_blas && have_blas();
  return gemm_name();
}

void sgemm_st(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
              int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
#ifdef MOELAB_HAVE_OPENBLAS
  if (g_use_blas) {
    if (K <= 0) {  // OpenBLAS handles it, but keep the beta==0 contract explicit
      builtin_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
    // One output row or column is a matrix-vector product. sgemv streams the matrix once; sgemm
    // would first pack all of it (a decoding step's 1 x 128 x 128 projection: ~5x slower).
    if (M == 1 || N == 1) {
      if (beta == 0.f) {  // write-only C: clear it so that sgemv's 0 * C cannot turn old NaNs into results
        if (M == 1) std::memset(C, 0, sizeof(float) * N);
        else for (int m = 0; m < M; m++) C[static_cast<long>(m) * ldc] = 0.f;
      }
      if (M == 1) {  // C[1, N] = op(B)^T a, a = row 0 of op(A)
        const int incA = ta ? lda : 1;
        if (tb) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, incA, beta, C, 1);
        else cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, incA, beta, C, 1);
      } else {  // C[M, 1] = op(A) b, b = column 0 of op(B)
        const int incB = tb ? 1 : ldb;
        if (ta) cblas_sgemv(CblasRowMajor, CblasTrans, K, M, alpha, A, lda, B, incB, beta, C, ldc);
        else cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, alpha, A, lda, B, incB, beta, C, ldc);
      }
      return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  builtin_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm_batched(bool ta, bool tb, int batch, int M, int N, int K, const float* A, long strideA,
                   const int* aIdx, const float* B, long strideB, const int* bIdx, float* C, long strideC) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  const int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  auto aPtr = [&](int b) { return A + (aIdx ? static_cast<long>(aIdx[b]) * strideA : b * strideA); };
  auto bPtr = [&](int b) { return B + (bIdx ? static_cast<long>(bIdx[b]) * strideB : b * strideB); };
  const double flops = 2.0 * batch * M * N * std::max(K, 1);
  const int nt = pool_threads();
  if (nt == 1 || flops < kMinParallelFlops) {
    for (int b = 0; b < batch; b++)
      sgemm_st(ta, tb, M, N, K, 1.f, aPtr(b), lda, bPtr(b), ldb, 0.f, C + b * strideC, ldc);
    return;
  }
  // A long reduction into a small output (weight gradients: d_in x d_out summed over all tokens):
  // split K, each task writes its own partial product, then the partials are summed. Splitting M
  // or N instead would hand each task a thin block that packs poorly.
  if (batch == 1 && K >= 4 * std::max(M, N)) {
    const int parts = std::min(nt * 2, K / 256);
    if (parts > 1) {
      const int kStep = (K + parts - 1) / parts;
      const long MN = static_cast<long>(M) * N;
      std::vector<float> partial(static_cast<size_t>(parts - 1) * MN);
      parallel_for(parts, [&](int p) {
        const int k0 = p * kStep, kc = std::min(kStep, K - k0);
        float* dst = p == 0 ? C : partial.data() + (p - 1) * MN;
        if (kc <= 0) {
          std::fill(dst, dst + MN, 0.f);
          return;
        }
        const float* a = aPtr(0) + (ta ? static_cast<long>(k0) * lda : k0);
        const float* bb = bPtr(0) + (tb ? k0 : static_cast<long>(k0) * ldb);
        sgemm_st(ta, tb, M, N, kc, 1.f, a, lda, bb, ldb, 0.f, dst, ldc);
      });
      parallel_range(MN, 16384, [&](long i0, long i1) {
        for (int p = 1; p < parts; p++) {
          const float* src = partial.data() + (p - 1) * MN;
          for (long i = i0; i < i1; i++) C[i] += src[i];
        }
      });
      return;
    }
  }
  // Several tasks per thread so a thread that loses its core to another process is compensated
  // by the others (dynamic claiming), but none smaller than ~32 rows/columns (packing overhead).
  const int want = nt * 3;
  int splitM = 1, splitN = 1;
  if (batch < want) {
    int per = (want + batch - 1) / batch;
    // Split the longer side first: a weight gradient (M = d_in small, N = d_out large, K = tokens)
    // split by rows would give every task a thin, inefficient block.
    if (M >= N) {
      splitM = std::max(1, std::min(per, M / 32));
      if (splitM < per) splitN = std::max(1, std::min((per + splitM - 1) / splitM, N / 64));
    } else {
      splitN = std::max(1, std::min(per, N / 64));
      if (splitN < per) splitM = std::max(1, std::min((per + splitN - 1) / splitN, M / 32));
    }
  }
  const int mStep = (M + splitM - 1) / splitM;
  const int nStep = ((N + splitN - 1) / splitN + 15) / 16 * 16;
  const int tilesN = (N + nStep - 1) / nStep;
  const int perBatch = splitM * tilesN;
  parallel_for(batch * perBatch, [&](int task) {
    int b = task / perBatch, r = task % perBatch;
    int m0 = (r / tilesN) * mStep, n0 = (r % tilesN) * nStep;
    int mc = std::min(mStep, M - m0), nc = std::min(nStep, N - n0);
    if (mc <= 0 || nc <= 0) return;
    const float* a = aPtr(b) + (ta ? m0 : static_cast<long>(m0) * lda);
    const float* bb = bPtr(b) + (tb ? static_cast<long>(n0) * ldb : n0);
    sgemm_st(ta, tb, mc, nc, K, 1.f, a, lda, bb, ldb, 0.f, C + b * strideC + static_cast<long>(m0) * ldc + n0, ldc);
  });
}

}  // namespace moelab
