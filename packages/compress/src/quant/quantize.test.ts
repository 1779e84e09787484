import { Rng } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import {
  checkBits,
  codeAt,
  dequantizeTensor,
  elementScales,
  matrixView,
  packedBytes,
  QUANT_BITS,
  type QuantScheme,
  quantizeTensor,
  relativeError,
} from './quantize.js';

const random = (n: number, seed = 1) => Float32Array.from(new Rng(seed).normalArray(n, 1));

describe('quantizeTensor', () => {
  for (const scheme of ['symmetric', 'asymmetric'] as QuantScheme[])
    for (const group of [0, 4, 5])
      it(`every element is within half a step of the original (${scheme}, group ${group}, every width)`, () => {
        const w = random(3 * 12 * 10, 7);
        for (const bits of QUANT_BITS) {
          const p = quantizeTensor(w, [3, 12, 10], { bits, group, scheme });
          const wHat = dequantizeTensor(p);
          const s = elementScales(p);
          let worst = 0;
          for (let i = 0; i < w.length; i++) {
            // float32 slack: the dequantized value is rounded once more.
            const excess = Math.abs(w[i]! - wHat[i]!) - s[i]! / 2 - 1e-6 * Math.abs(w[i]!);
            worst = Math.max(worst, excess);
          }
          expect(worst, `${bits} bits`).toBeLessThanOrEqual(0);
          // Not vacuous: the steps are positive and the error is not zero.
          expect(Math.min(...s)).toBeGreaterThan(0);
          expect(relativeError(w, wHat)).toBeGreaterThan(0);
        }
      });

  it('the relative error strictly increases as bits go 8 -> 4 -> 3 -> 2 (random 32 x 16)', () => {
    const w = random(32 * 16, 3);
    const errors = QUANT_BITS.map((bits) => relativeError(w, dequantizeTensor(quantizeTensor(w, [1, 32, 16], { bits, group: 0, scheme: 'symmetric' }))));
    for (let k = 1; k < errors.length; k++) expect(errors[k]!).toBeGreaterThan(errors[k - 1]!);
    // The magnitudes of absmax channel-wise quantization of a Gaussian matrix.
    expect(errors[0]).toBeLessThan(0.01);
    expect(errors[3]).toBeGreaterThan(0.3);
  });

  it('smaller groups never lose accuracy on this matrix, and asymmetric 2 bits beats symmetric (4 levels vs 3)', () => {
    const w = random(64 * 8, 11);
    const err = (group: number, scheme: QuantScheme, bits: 2 | 4 = 4) =>
      relativeError(w, dequantizeTensor(quantizeTensor(w, [1, 64, 8], { bits, group, scheme })));
    expect(err(16, 'symmetric')).toBeLessThan(err(0, 'symmetric'));
    expect(err(2, 'asymmetric', 2)).toBeLessThan(err(2, 'symmetric', 2));
  });

  it('symmetric codes are u = q + qmax with q = round(W / s), and zero maps to zero', () => {
    const w = Float32Array.from([0, 1, -1, 0.6, -0.25, 0.7]); // one column of 6 rows
    const p = quantizeTensor(w, [1, 6, 1], { bits: 3, group: 0, scheme: 'symmetric' });
    expect(p.scale[0]).toBeCloseTo(1 / 3, 7);
    expect([0, 1, 2, 3, 4, 5].map((i) => codeAt(p, 0, i, 0) - 3)).toEqual([0, 3, -3, 2, -1, 2]);
    expect(dequantizeTensor(p)[0]).toBe(0);
  });

  it('constant and all-zero groups come back exactly (both schemes)', () => {
    const w = Float32Array.from([0.3, 0.3, 0, 0, -2, -2]); // [3 rows, 2 columns]: column 0 = 0.3, 0, -2
    for (const scheme of ['symmetric', 'asymmetric'] as QuantScheme[]) {
      const p = quantizeTensor(Float32Array.from([0.3, 0, 0.3, 0, 0.3, 0]), [1, 3, 2], { bits: 2, group: 0, scheme });
      expect(Array.from(dequantizeTensor(p))).toEqual([0.3, 0, 0.3, 0, 0.3, 0].map(Math.fround));
      const q = quantizeTensor(w, [1, 2, 3], { bits: 4, group: 1, scheme });
      expect(Array.from(dequantizeTensor(q))).toEqual(Array.from(w));
    }
  });

  it('packs codes LSB first per row, rows padded to int32 words (3 bits crossing a word boundary)', () => {
    // 11 codes of 3 bits = 33 bits: code 10 straddles words 0 and 1.
    const dout = 11;
    const w = new Float32Array(2 * dout);
    for (let j = 0; j < dout; j++) {
      w[j] = -1;
      w[dout + j] = (j % 8) / 7; // each column's maximum: the top code, 7
    }
    const p = quantizeTensor(w, [1, 2, dout], { bits: 3, group: 0, scheme: 'asymmetric' });
    expect(p.codes.length).toBe(2 * 2); // two rows of ceil(33 / 32) = 2 words
    for (let j = 0; j < dout; j++) {
      expect(codeAt(p, 0, 0, j)).toBe(0);
      expect(codeAt(p, 0, 1, j)).toBe(7);
    }
    // Row 1 is all 7s: bits 0..32 set, so word 0 is all ones and word 1 holds bit 32.
    expect(p.codes[2]).toBe(-1);
    expect(p.codes[3]).toBe(1);
  });

  it('rank-2 parameters get one scale per row (a Linear weight [out, in]: per output channel)', () => {
    const w = Float32Array.from([1, 2, 3, 4, 10, 20, 30, 40]); // [2, 4]
    const view = matrixView([2, 4]);
    expect(view).toEqual({ batch: 1, din: 4, dout: 2, transposed: true });
    const p = quantizeTensor(w, [2, 4], { bits: 8, group: 0, scheme: 'symmetric' });
    expect(Array.from(p.scale)).toEqual([Math.fround(4 / 127), Math.fround(40 / 127)]);
    const wHat = dequantizeTensor(p);
    for (let i = 0; i < 8; i++) expect(Math.abs(wHat[i]! - w[i]!)).toBeLessThanOrEqual(p.scale[i < 4 ? 0 : 1]! / 2);
  });

  it('holds what the bits say: 4-bit codes of a [4, 64, 64] bank are 1/8 of float32, plus scales', () => {
    const p = quantizeTensor(random(4 * 64 * 64), [4, 64, 64], { bits: 4, group: 0, scheme: 'symmetric' });
    expect(p.codes.length * 4).toBe((4 * 64 * 64 * 4) / 8);
    expect(packedBytes(p)).toBe(4 * 64 * 64 * 0.5 + 2 * 4 * 4 * 64);
  });

  it('bad input: unsupported bits, a negative group, a vector, the wrong amount of data', () => {
    expect(() => checkBits(5)).toThrow('bits must be one of 8, 4, 3, 2 (got 5)');
    expect(() => quantizeTensor(random(8), [2, 4], { bits: 16 as 8, group: 0, scheme: 'symmetric' })).toThrow('bits must be one of 8, 4, 3, 2 (got 16)');
    expect(() => quantizeTensor(random(8), [2, 4], { bits: 4, group: -1, scheme: 'symmetric' })).toThrow(/group must be 0/);
    expect(() => quantizeTensor(random(8), [8], { bits: 4, group: 0, scheme: 'symmetric' })).toThrow('only matrices are quantized (shape [8] has rank 1)');
    expect(() => quantizeTensor(random(7), [2, 4], { bits: 4, group: 0, scheme: 'symmetric' })).toThrow('data has 7 values but shape [2, 4] needs 8');
  });
});
