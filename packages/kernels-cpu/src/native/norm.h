// Fused LayerNorm over the last axis of x viewed as [rows, D].
#pragma once

namespace moelab {

// y = (x - mean) * rstd * gamma + beta (beta may be null), rstd = 1 / sqrt(var + eps) with the
// biased variance; mean and rstd [rows] are saved for the backward pass.
void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                        long rows, int D, float eps);
// dx [rows, D], dgamma [D], dbeta [D] (skipped when null) from dy and the forward's mean / rstd.
void layer_norm_backward(const float* dy, const float* x, const float* gamma, const float* mean, const float* rstd,
                         float* dx, float* dgamma, float* dbeta, long rows, int D);

}  // namespace moelab
