import { attention } from '@moelab/attention';
import { corePlugin, createRegistry, type Rng } from '@moelab/core';
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

export { directionalGradCheck } from '@moelab/core';
