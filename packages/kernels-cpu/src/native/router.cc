// The softmax top-k gate of a token-choice router (core's SOFTMAX_TOPK_KERNEL), one row per token:
//
//   p = softmax(z)        S = the k largest of z + b        w_s = p[e_s] / sum_{r in S} p[e_r]  (renormalised)
//                                                           w_s = p[e_s]                        (raw)
//
// Renormalised, w is the softmax of the chosen scores alone: k exps per row, and the backward
// touches only the k chosen entries, dz[e_s] = w_s (dy_s - sum_r w_r dy_r). Raw, the whole row:
// dz[j] = p_j (dy_j - sum_s w_s dy_s) (dy_j = the slot gradient of expert j, 0 if unchosen).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "pool.h"

namespace moelab {

namespace {

// Rows per task: a row costs ~E exps, so keep each task at a few thousand of them.
long rowGrain(int E) { return std::max(1L, 8192L / std::max(1, E)); }

// The k largest of z (+ bias) in one pass, keeping the best k so far sorted: an entry moves ahead
// only of strictly smaller ones, so among equal values the lower index stays ahead (tfjs's order).
// -Infinity and NaN are never chosen. Returns how many were chosen (< k when fewer are finite).
inline int select_topk(const float* z, const float* bias, int E, int k, float* bv, int* bi) {
  int n = 0;
  for (int e = 0; e < E; e++) {
    float v = bias ? z[e] + bias[e] : z[e];
    if (!(v > -INFINITY)) continue;
    if (n == k && !(v > bv[k - 1])) continue;
    int p = n < k ? n++ : k - 1;
    while (p > 0 && v > bv[p - 1]) {
      bv[p] = bv[p - 1];
      bi[p] = bi[p - 1];
      p--;
    }
    bv[p] = v;
    bi[p] = e;
  }
  return n;
}

// Per-task scratch for the best k of a row (on the stack up to k = 64).
struct TopKScratch {
  float best[64];
  int bestI[64];
  float* bv;
  int* bi;
  explicit TopKScratch(int k) : bv(k <= 64 ? best : new float[k]), bi(k <= 64 ? bestI : new int[k]) {}
  ~TopKScratch() {
    if (bv != best) delete[] bv;
    if (bi != bestI) delete[] bi;
  }
  TopKScratch(const TopKScratch&) = delete;
  TopKScratch& operator=(const TopKScratch&) = delete;
};

}  // namespace

void softmax_topk_forward(const float* scores, const float* bias, float* weight, int32_t* expert, long T, int E, int k,
                          bool renormalize) {
  parallel_range(T, rowGrain(E), [&](long t0, long t1) {
    TopKScratch scratch(k);
    float* bv = scratch.bv;
    int* bi = scratch.bi;
    for (long t = t0; t < t1; t++) {
      const float* z = scores + t * E;
      const int n = select_topk(z, bias, E, k, bv, bi);
      if (renormalize) {
        // The softmax of the chosen scores alone: the full row's normaliser cancels.
        float m = -INFINITY;
        for (int s = 0; s < n; s++) m = std::max(m, z[bi[s]]);
        float sum = 0.f;
        for (int s = 0; s < n; s++) {
          float p = std::exp(z[bi[s]] - m);
          weight[s * T + t] = p;
          sum += p;
        }
        for (int s = 0; s < n; s++) weight[s * T + t] /= sum;
      } else if (n > 0) {
        // Without a bias the first choice is the row's largest score.
        float m = z[bi[0]];
        if (bias)
          for (int e = 0; e < E; e++) m = std::max(m, z[e]);
        float sum = 0.f;
        for (int e = 0; e < E; e++) sum += std::exp(z[e] - m);
        for (int s = 0; s < n; s++) weight[s * T + t] = std::exp(z[bi[s]] - m) / sum;
      }
      for (int s = 0; s < n; s++) expert[s * T + t] = bi[s];
      for (int s = n; s < k; s++) {
        weight[s * T + t] = 0.f;
        expert[s * T + t] = -1;
      }
    }
  });
}

void softmax_topk_backward(const float* dy, const float* scores, const float* weight, const int32_t* expert,
                           float* dscores, long T, int E, int k, bool renormalize) {
  parallel_range(T, rowGrain(E), [&](long t0, long t1) {
    for (long t = t0; t < t1; t++) {
      float* g = dscores + t * E;
      float dot = 0.f;
      for (int s = 0; s < k; s++)
        if (expert[s * T + t] >= 0) dot += weight[s * T + t] * dy[s * T + t];
      if (renormalize) {
        std::memset(g, 0, sizeof(float) * E);
        for (int s = 0; s < k; s++) {
          int e = expert[s * T + t];
          if (e >= 0) g[e] = weight[s * T + t] * (dy[s * T + t] - dot);
        }
        continue;
      }
      const float* z = scores + t * E;
      float m = -INFINITY;
      for (int e = 0; e < E; e++) m = std::max(m, z[e]);
      if (!(m > -INFINITY)) {  // nothing chosen in this row: no gradient
        std::memset(g, 0, sizeof(float) * E);
        continue;
      }
      float sum = 0.f;
      for (int e = 0; e < E; e++) {
        g[e] = std::exp(z[e] - m);
        sum += g[e];
      }
      float inv = 1.f / sum;
      for (int e = 0; e < E; e++) g[e] *= -dot * inv;
      for (int s = 0; s < k; s++) {
        int e = expert[s * T + t];
        if (e >= 0) g[e] += weight[s * T + t] * dy[s * T + t];
      }
    }
  });
}

std::string check_gate(const char* gate, long k, long E, const int32_t* expert, long n) {
  if (k < 1 || k > E) return std::string(gate) + " top-k needs 1 <= k <= E";
  for (long i = 0; i < n; i++)
    if (expert[i] < -1 || expert[i] >= E)
      return std::string(gate) + " top-k expert index " + std::to_string(expert[i]) + " out of range [-1, " +
             std::to_string(E) + ")";
  return "";
}

void sigmoid_topk_forward(const float* scores, float* weight, int32_t* expert, long T, int E, int k) {
  parallel_range(T, rowGrain(E), [&](long t0, long t1) {
    TopKScratch scratch(k);
    for (long t = t0; t < t1; t++) {
      const float* z = scores + t * E;
      const int n = select_topk(z, nullptr, E, k, scratch.bv, scratch.bi);
      for (int s = 0; s < n; s++) {
        weight[s * T + t] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z[scratch.bi[s]]))));
        expert[s * T + t] = scratch.bi[s];
      }
      for (int s = n; s < k; s++) {
        weight[s * T + t] = 0.f;
        expert[s * T + t] = -1;
      }
    }
  });
}

void sigmoid_topk_backward(const float* dy, const float* weight, const int32_t* expert, float* dscores, long T, int E,
                           int k) {
  // Memory-bound (one write per score, k reads per row): larger row blocks than the forward's.
  parallel_range(T, std::max(1L, 65536L / std::max(1, E)), [&](long t0, long t1) {
    std::memset(dscores + t0 * E, 0, sizeof(float) * (t1 - t0) * E);
    for (long t = t0; t < t1; t++)
      for (int s = 0; s < k; s++) {
        const int e = expert[s * T + t];
        if (e < 0) continue;
        const float w = weight[s * T + t];
        dscores[t * E + e] = dy[s * T + t] * (w * (1.f - w));
      }
  });
}

}  // namespace moelab
