/**
 * A small seeded random number generator (xoshiro128**), so that the same seed gives the same run on
 * every backend: parameter initialisation, data order and dropout never use tfjs's global RNG.
 */
import { mayAllocate } from './memory.js';

export class Rng {
  private s: Uint32Array;

  constructor(seed: number | string) {
    let h = typeof seed === 'number' ? seed >>> 0 : hashString(seed);
    const s = new Uint32Array(4);
    // splitmix32 to spread the seed over the 128-bit state
    for (let i = 0; i < 4; i++) {
      h = (h + 0x9e3779b9) >>> 0;
      let z = h;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (s[0] === 0 && s[1] === 0 && s[2] === 0 && s[3] === 0) s[0] = 1;
    this.s = s;
  }

  /** A child generator whose stream depends only on this seed and `label` (not on how much was drawn). */
  static derive(seed: number, ...labels: (string | number)[]): Rng {
    return new Rng(hashString(`${seed}/${labels.join('/')}`));
  }

  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  normal(): number {
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  // The array makers ask the parameter budget first (memory.ts): a build over its limit gets empty arrays.
  normalArray(n: number, std = 1, mean = 0): Float32Array {
    if (!mayAllocate(n)) return new Float32Array(0);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + std * this.normal();
    return a;
  }

  uniformArray(n: number, lo: number, hi: number): Float32Array {
    if (!mayAllocate(n)) return new Float32Array(0);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * this.next();
    return a;
  }

  /** Normal truncated to [-2 std, 2 std] by resampling (the usual transformer init). */
  truncNormalArray(n: number, std = 1): Float32Array {
    if (!mayAllocate(n)) return new Float32Array(0);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let z = this.normal();
      while (z < -2 || z > 2) z = this.normal();
      a[i] = z * std;
    }
    return a;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function hashString(s: string): number {
  // FNV-1a 32-bit
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}
