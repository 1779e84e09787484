// Fused LayerNorm over the last axis (see norm.h).
#include "norm.h"

#include <algorithm>
#include <cmath>

#include "pool.h"

namespace moelab {

void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                        long rows, int D, float eps) {
  parallel_range(rows, std::max(1L, 16384L / std::max(1, D)), [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * D;
      double s = 0;
      for (int c = 0; c < D; c++) s += xr[c];
      const float mu = static_cast<float>(s / D);
      double v = 0;
      for (int c = 0; c < D; c++) {
        const double t = xr[c] - mu;
        v += t * t;
      }
      const float rs = 1.f / std::sqrt(static_cast<float>(v / D) + eps);
      float* yr = y + r * D;
      for (int c = 0; c < D; c++) yr[c] = (xr[c] - mu) * rs * gamma[c] + (beta ? beta[c] : 0.f);
      mean[r] = mu;
      rstd[r] = rs;
    }
  });
}

void layer_norm_backward(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd,
                         float* dx, float* dgamma, float* dbeta, long rows, int D) {
  // dx = rstd (g dy - mean_c(g dy) - xhat mean_c(g dy xhat)), per row.
  parallel_range(rows, std::max(1L, 16384L / std::max(1, D)), [&](long r0, long r1) {
    for (long r = r0; r < r1; r++) {
      const float* xr = x + r * D;
      const float* gr = dy + r * D;
      const float mu = mean[r], rs = rstd[r];
      double a = 0, b = 0;
      for (int c = 0; c < D; c++) {
        const float g = gr[c] * gamma[c];
        a += g;
        b += static_cast<double>(g) * ((xr[c] - mu) * rs);
      }
      const float ma = static_cast<float>(a / D), mb = static_cast<float>(b / D);
      float* dr = dx + r * D;
      for (int c = 0; c < D; c++) dr[c] = rs * (gr[c] * gamma[c] - ma - (xr[c] - mu) * rs * mb);
    }
  });
  // dgamma = sum_r dy xhat, dbeta = sum_r dy: threads own column blocks.
  constexpr int kCols = 256;
  const int blocks = (D + kCols - 1) / kCols;
  parallel_for(blocks, [&](int blk) {
    const int c0 = blk * kCols, c1 = std::min(D, c0 + kCols);
    double sg[kCols] = {0}, sb[kCols] = {0};
    for (long r = 0; r < rows; r++) {
      const float* xr = x + r * D;
      const float* gr = dy + r * D;
      const float mu = mean[r], rs = rstd[r];
      for (int c = c0; c < c1; c++) {
        sg[c - c0] += gr[c] * ((xr[c] - mu) * rs);
        sb[c - c0] += gr[c];
      }
    }
    for (int c = c0; c < c1; c++) {
      dgamma[c] = static_cast<float>(sg[c - c0]);
      if (dbeta) dbeta[c] = static_cast<float>(sb[c - c0]);
    }
  });
}

}  // namespace moelab
