import { type Rng, tf } from '@moelab/core';

export { directionalGradCheck } from '@moelab/core';

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
