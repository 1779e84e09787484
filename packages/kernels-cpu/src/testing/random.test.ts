import { describe, expect, it } from 'vitest';
import { maxRelDiff, randArray, randInts, rng } from './random.js';

describe('testing/random', () => {
  it('rng is deterministic per seed and stays in [0, 1)', () => {
    const a = rng(7);
    const b = rng(7);
    const xs = Array.from({ length: 1000 }, () => a());
    expect(xs).toEqual(Array.from({ length: 1000 }, () => b()));
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...xs)).toBeLessThan(1);
    expect(rng(8)()).not.toBe(rng(7)());
  });

  it('randArray and randInts respect their ranges', () => {
    const f = randArray(rng(1), 500, 3);
    expect(f).toBeInstanceOf(Float32Array);
    expect(Math.max(...f.map(Math.abs))).toBeLessThanOrEqual(3);
    const i = randInts(rng(2), 500, 5);
    expect(i).toBeInstanceOf(Int32Array);
    expect(new Set(i)).toEqual(new Set([0, 1, 2, 3, 4]));
  });

  it('maxRelDiff: relative to 1 + |b|, NaN pairs equal, a lone NaN or a length mismatch infinite', () => {
    expect(maxRelDiff([1, 2], [1, 3])).toBeCloseTo(0.25);
    expect(maxRelDiff([Number.NaN, 0], [Number.NaN, 0])).toBe(0);
    expect(maxRelDiff([Number.NaN], [1])).toBe(Number.POSITIVE_INFINITY);
    expect(maxRelDiff([1], [1, 2])).toBe(Number.POSITIVE_INFINITY);
  });
});
