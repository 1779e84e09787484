import { type Rng, tf } from '@moelab/core';

/**
 * Finite-difference check of d f / d v along a random direction, for each variable (central difference).
 * Returns the relative errors |analytic − numeric| / max(|analytic|, |numeric|, floor).
 */
export function directionalGradCheck(f: () => tf.Scalar, vars: tf.Variable[], rng: Rng, eps = 1e-2, floor = 1e-3): number[] {
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
    errs.push(Math.abs(analytic - numeric) / Math.max(Math.abs(analytic), Math.abs(numeric), floor));
    dir.dispose();
    orig.dispose();
  }
  for (const g of Object.values(grads)) g.dispose();
  return errs;
}

/** Max |a − b| over two equally shaped tensors. */
export function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  expectSameShape(a, b);
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

function expectSameShape(a: tf.Tensor, b: tf.Tensor): void {
  if (a.shape.join() !== b.shape.join()) throw new Error(`shape mismatch ${a.shape} vs ${b.shape}`);
}

/** Synthetic token source: arithmetic sequences mod V (learnable in a few steps). */
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
