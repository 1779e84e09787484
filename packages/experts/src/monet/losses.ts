/**
 * MONET's auxiliary losses (docs/monet.md#auxiliary-losses, batch-mean reading) and composed-expert scores:
 *
 *   L_unif = −(1/2HE) Σ log p̄            L_amb = mean_t (1/2H) Σ_h (1 − max g)
 *   G[t, i, j] = Σ_h g1[t,h,i] g2[t,h,j]  (the score of composed expert i·E + j)
 */
import { tf } from '@moelab/core';

/** L_unif = −(1/(2HE)) Σ_{K,h,e} log max(p̄_K[h,e], 1e-9), p̄ = mean over tokens of g. */
export function monetUniformityLoss(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Scalar {
  const [, H, E] = g1.shape;
  const logs = (g: tf.Tensor3D) => tf.sum(tf.log(tf.maximum(tf.mean(g, 0), 1e-9)));
  return tf.mul(tf.add(logs(g1), logs(g2)), -1 / (2 * H * E)) as tf.Scalar;
}

/** L_amb = mean over tokens of (1/(2H)) Σ_h [(1 − max_e g1[h,e]) + (1 − max_e g2[h,e])]. */
export function monetAmbiguityLoss(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Scalar {
  const H = g1.shape[1];
  const m = tf.add(tf.sum(tf.max(g1, 2), 1), tf.sum(tf.max(g2, 2), 1)); // [n]
  return tf.mean(tf.sub(1, tf.div(m, 2 * H))) as tf.Scalar;
}

/** G[t, i, j] = Σ_h g1[t,h,i] g2[t,h,j]: the routing score of composed expert (i, j) (id i·E + j). */
export function monetExpertScores(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor3D {
  return tf.matMul(g1, g2, true, false) as tf.Tensor3D;
}
