/**
 * Finite-difference gradient checks, for tests of modules and plugins: autodiff through custom kernels,
 * custom gradients (TopK, SparseMixer) and masking is easy to get subtly wrong, and a directional check
 * catches it at the cost of two extra forward passes per variable.
 */
import type { Rng } from './rng.js';
import { tf } from './tf.js';

/**
 * Central-difference check of d f / d v along a random direction, for each variable of `vars`.
 * Returns the relative errors |analytic − numeric| / max(|analytic|, |numeric|, floor), one per variable.
 * `f` must be deterministic (same value for the same parameters). Variables are restored afterwards.
 */
export function directionalGradCheck(f: () => tf.Scalar, vars: tf.Variable[], rng: Rng, eps = 1e-2, floor = 1e-3): number[] {
  const { grads, value } = tf.variableGrads(f, vars);
  value.dispose();
  const errs: number[] = [];
  for (const v of vars) {
    const dir = tf.tensor(rng.normalArray(v.size), v.shape);
    const analytic = tf.tidy(() => tf.sum(tf.mul(grads[v.name]!, dir)).dataSync()[0]!);
    const orig = v.clone();
    v.assign(tf.tidy(() => tf.add(orig, tf.mul(dir, eps))));
    const fp = tf.tidy(() => f().dataSync()[0]!);
    v.assign(tf.tidy(() => tf.sub(orig, tf.mul(dir, eps))));
    const fm = tf.tidy(() => f().dataSync()[0]!);
    v.assign(orig);
    const numeric = (fp - fm) / (2 * eps);
    errs.push(Math.abs(analytic - numeric) / Math.max(Math.abs(analytic), Math.abs(numeric), floor));
    dir.dispose();
    orig.dispose();
  }
  for (const g of Object.values(grads)) g.dispose();
  return errs;
}
