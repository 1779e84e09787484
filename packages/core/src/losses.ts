/**
 * Losses shared by models and routers. Routers import the balancing losses from here so that every
 * router uses one definition of each (the formulas are in docs/routers.md#balancing-losses).
 */
import type { DispatchPlan } from './nn/dispatch.js';
import { tf } from './tf.js';

/** Mean next-token cross-entropy. logits [B, T, V] predict targets [B, T] (int32). */
export function crossEntropy(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape[logits.rank - 1]!;
  const flat = tf.reshape(logits, [-1, V]);
  const N = flat.shape[0]!;
  // Pick log p[target] with one gather over the flattened [N*V] log-probabilities (a one-hot product
  // costs N*V multiplies and allocations on every backend).
  const pos = tf.add(tf.mul(tf.range(0, N, 1, 'int32'), tf.scalar(V, 'int32')), tf.cast(tf.reshape(targets, [N]), 'int32'));
  const picked = tf.gather(tf.reshape(tf.logSoftmax(flat), [N * V]), pos);
  return tf.neg(tf.mean(picked)) as tf.Scalar;
}

/**
 * Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4), Megablocks form for top-k:
 * E * sum_e f_e * P_e, with f_e the fraction of assignments to expert e (all k slots, before drops)
 * and P_e the mean router probability of e. Equals 1 (times k-independent scale) when perfectly balanced.
 */
export function switchBalanceLoss(probs: tf.Tensor2D, plan: DispatchPlan): tf.Scalar {
  const E = probs.shape[1];
  const f = new Float32Array(E);
  const total = plan.size || 1;
  for (let e = 0; e < E; e++) f[e] = plan.counts[e]! / total;
  const P = tf.mean(probs, 0);
  return tf.mul(E, tf.sum(tf.mul(P, tf.tensor1d(f)))) as tf.Scalar;
}

/** Router z-loss (ST-MoE, Zoph et al. 2022): mean over tokens of logsumexp(logits)^2. */
export function zLoss(logits: tf.Tensor2D): tf.Scalar {
  return tf.mean(tf.square(tf.logSumExp(logits, 1))) as tf.Scalar;
}

/** Entropy (nats) of a distribution along the last axis, averaged over the rest. */
export function meanEntropy(probs: tf.Tensor): tf.Scalar {
  const p = tf.clipByValue(probs, 1e-12, 1);
  return tf.neg(tf.mean(tf.sum(tf.mul(probs, tf.log(p)), -1))) as tf.Scalar;
}

/**
 * Entropy balancing regulariser of sigma-MoE / MoEUT (docs/moeut.md#the-entropy-regulariser): for each averaging group g
 * of `logits` [G, n, E], p̄_g = mean over its n rows of softmax(logits), and the result is
 * mean_g sum_e p̄_g,e log p̄_g,e = -mean_g H(p̄_g) (negative; minimum -log E). log p̄ is computed stably
 * as logsumexp over the rows of log_softmax minus log n, as the official code does.
 */
export function entropyBalanceReg(logits: tf.Tensor3D): tf.Scalar {
  const n = logits.shape[1];
  const logMean = tf.sub(tf.logSumExp(tf.logSoftmax(logits, -1), 1), Math.log(n));
  return tf.mean(tf.sum(tf.mul(logMean, tf.exp(logMean)), -1)) as tf.Scalar;
}
