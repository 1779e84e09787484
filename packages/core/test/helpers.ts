import { attention } from '@moelab/attention';
import { corePlugin, createRegistry, type Rng, tf } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';

export function testRegistry() {
  return createRegistry(corePlugin, routers, experts, attention);
}

/** Synthetic token source: arithmetic sequences mod V (learnable quickly). */
export function patternSource(V: number) {
  return {
    batch(rng: Rng, B: number, T: number): Int32Array {
      const a = new Int32Array(B * (T + 1));
      for (let b = 0; b < B; b++) {
        const s = rng.int(V);
        const step = 1 + rng.int(2);
        for (let t = 0; t <= T; t++) a[b * (T + 1) + t] = (s + step * t) % V;
      }
      return a;
    },
  };
}

/**
 * Finite-difference check of d f / d v along a random direction, for each variable.
 * Returns the relative errors |analytic - numeric| / max(|analytic|, |numeric|, floor).
 */
export function directionalGradCheck(f: () => tf.Scalar, vars: tf.Variable[], rng: Rng, eps = 1e-2): number[] {
  const { grads } = tf.variableGrads(f, vars);
  const errs: number[] = [];
  for (const v of vars) {
    const dir = tf.tensor(rng.normalArray(v.size), v.shape);
    const analytic = tf.sum(tf.mul(grads[v.name]!, dir)).dataSync()[0]!;
    const orig = v.clone();
    v.assign(tf.add(orig, tf.mul(dir, eps)));
    const fp = tf.tidy(() => f().dataSync()[0]!);
    v.assign(tf.sub(orig, tf.mul(dir, eps)));
    const fm = tf.tidy(() => f().dataSync()[0]!);
    v.assign(orig);
    const numeric = (fp - fm) / (2 * eps);
    errs.push(Math.abs(analytic - numeric) / Math.max(Math.abs(analytic), Math.abs(numeric), 1e-3));
    dir.dispose();
    orig.dispose();
  }
  for (const g of Object.values(grads)) g.dispose();
  return errs;
}
