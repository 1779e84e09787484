/**
 * Seeded random test data, shared by the kernel packages' tests (`@moelab/kernels-cpu/testing/random`).
 * Side-effect free: importing it registers no backend and touches no tfjs state, unlike
 * `testing/helpers.ts`, so another backend's tests can use it without loading moelab-cpu.
 */
import { packedGroups, packedRowWords } from '@moelab/core/kernels';

/** Deterministic PRNG (mulberry32) in [0, 1), so a failing case can be reproduced from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values uniform in [-scale, scale). */
export function randArray(r: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

/** n integers uniform in [0, limit). */
export function randInts(r: () => number, n: number, limit: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * limit);
  return out;
}

/** Largest |a-b| / (1 + |b|) over the elements (NaN counts as infinitely far unless both are NaN; different lengths: infinity). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    if (Number.isNaN(x) && Number.isNaN(y)) continue;
    const d = Math.abs(x - y) / (1 + Math.abs(y));
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}

/**
 * A random packed (weight-only quantized) weight [E, din, dout] in core's MoelabMoePacked layout,
 * built bit by bit from random `bits`-bit codes u, with its dequantized floats
 * dense = scale[e, i / group, j] (u - zero[e, i / group, j]). Codes [E, din, words], scale / zero [E, G, dout].
 */
export function randPackedWeight(r: () => number, E: number, din: number, dout: number, bits: number, group: number) {
  const words = packedRowWords(dout, bits);
  const G = packedGroups(din, group);
  const rows = G === 1 ? din : group;
  const codes = new Int32Array(E * din * words);
  const scale = Float32Array.from({ length: E * G * dout }, () => 0.05 + 0.2 * r());
  const zero = Float32Array.from({ length: E * G * dout }, () => (2 ** bits - 1) * r());
  const dense = new Float32Array(E * din * dout);
  for (let e = 0; e < E; e++)
    for (let i = 0; i < din; i++)
      for (let j = 0; j < dout; j++) {
        const u = Math.floor(r() * 2 ** bits);
        for (let b = 0; b < bits; b++) {
          if (!((u >> b) & 1)) continue;
          const bit = j * bits + b;
          const w = (e * din + i) * words + (bit >> 5);
          codes[w] = (codes[w] ?? 0) | (1 << (bit & 31));
        }
        const k = (e * G + Math.floor(i / rows)) * dout + j;
        dense[(e * din + i) * dout + j] = Math.fround(scale[k]! * (u - zero[k]!));
      }
  return { codes, scale, zero, dense, codesShape: [E, din, words], scaleShape: [E, G, dout] };
}
