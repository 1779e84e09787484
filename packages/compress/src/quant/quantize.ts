/**
 * Weight-only quantization of one parameter (MoQE: Kim, Fahim, Awadalla 2023, arXiv 2310.02410).
 * A parameter is a batch of matrices W [din, dout] (x W convention); for every scale group g (a
 * block of `group` consecutive input rows, or all of them: channel-wise) and output channel j:
 *
 *   symmetric  (default): s = max_i |W_ij| / qmax,  qmax = 2^(b-1) - 1,
 *                         q = clamp(round(W_ij / s), -qmax, qmax),  W^ = s q
 *   asymmetric:           s = (max_i W_ij - min_i W_ij) / (2^b - 1),  z = -min_i W_ij / s,
 *                         u = clamp(round(W_ij / s + z), 0, 2^b - 1),  W^ = s (u - z)
 *
 * (max and min over the rows i of the group). Both are stored the same way: unsigned codes u, a
 * scale s and a zero point z per group and channel, W^ = s (u - z) (symmetric: u = q + qmax,
 * z = qmax), so one dequantizer and one native kernel serve both, and symmetric W^ is exactly s q.
 * Every element obeys |W - W^| <= s/2 (rounding to the nearest level; nothing is clipped because
 * the levels span the group's range).
 *
 * Layout: an expert bank [E, din, dout] is E matrices; any other rank-3+ parameter [..., a, b] is a
 * batch of [a, b] matrices; a rank-2 parameter (a Linear weight [out, in], an embedding [V, d]) is
 * quantized as its transpose, so its scales are per row (per output channel of a Linear).
 * Codes are packed LSB first, row by row, each row padded to whole int32 words (the kernel
 * contract's MOE_PACKED_KERNEL layout, docs/compression.md#quantization).
 */
import { MoelabError, PACKED_BITS, type PackedBits, packedGroups, packedRowWords } from '@moelab/core';

/** The supported code widths. */
export const QUANT_BITS: readonly PackedBits[] = [8, 4, 3, 2];
export const QUANT_SCHEMES = ['symmetric', 'asymmetric'] as const;
export type QuantScheme = (typeof QUANT_SCHEMES)[number];

export interface QuantOptions {
  bits: PackedBits;
  /** Input rows per scale group; 0 = one group per output channel (channel-wise). */
  group: number;
  scheme: QuantScheme;
}

/** One quantized parameter: a batch of [din, dout] matrices as codes + scales + zeros. */
export interface PackedTensor {
  /** The parameter's own shape. */
  shape: number[];
  /** Whether the matrices are the transpose of the parameter (rank-2 parameters). */
  transposed: boolean;
  batch: number;
  din: number;
  dout: number;
  bits: PackedBits;
  group: number;
  scheme: QuantScheme;
  /** [batch, din, words] int32, words = ceil(dout * bits / 32). */
  codes: Int32Array;
  /** [batch, G, dout], G = ceil(din / group) (1 when channel-wise). */
  scale: Float32Array;
  /** [batch, G, dout]. */
  zero: Float32Array;
}

/** Throws a one-line MoelabError unless `bits` is a supported width. */
export function checkBits(bits: number, where?: string): PackedBits {
  if (!(PACKED_BITS as readonly number[]).includes(bits)) throw new MoelabError(`bits must be one of ${QUANT_BITS.join(', ')} (got ${bits})`, where);
  return bits as PackedBits;
}

/** Throws a one-line MoelabError unless `group` is 0 (channel-wise) or a positive integer. */
export function checkGroup(group: number, where?: string): number {
  if (!Number.isInteger(group) || group < 0)
    throw new MoelabError(`group must be 0 (one scale per output channel) or a positive integer (got ${group})`, where);
  return group;
}

/** The matrix view [batch, din, dout] of a parameter shape (see the file header). */
export function matrixView(shape: readonly number[]): { batch: number; din: number; dout: number; transposed: boolean } {
  if (shape.length < 2) throw new MoelabError(`only matrices are quantized (shape [${shape.join(', ')}] has rank ${shape.length})`);
  if (shape.length === 2) return { batch: 1, din: shape[1]!, dout: shape[0]!, transposed: true };
  const din = shape[shape.length - 2]!;
  const dout = shape[shape.length - 1]!;
  return { batch: shape.slice(0, -2).reduce((a, b) => a * b, 1), din, dout, transposed: false };
}

/** Element [b, i, j] of the matrix view of `data` (row-major in the parameter's shape). */
function viewIndex(transposed: boolean, din: number, dout: number): (b: number, i: number, j: number) => number {
  return transposed ? (_b, i, j) => j * din + i : (b, i, j) => (b * din + i) * dout + j;
}

/** Quantize a parameter (`data` row-major in `shape`). */
export function quantizeTensor(data: Float32Array, shape: readonly number[], opts: QuantOptions): PackedTensor {
  const bits = checkBits(opts.bits);
  const group = checkGroup(opts.group);
  const { batch, din, dout, transposed } = matrixView(shape);
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) throw new MoelabError(`data has ${data.length} values but shape [${shape.join(', ')}] needs ${size}`);
  const G = packedGroups(din, group);
  const rows = G === 1 ? din : group;
  const words = packedRowWords(dout, bits);
  const codes = new Int32Array(batch * din * words);
  const scale = new Float32Array(batch * G * dout);
  const zero = new Float32Array(batch * G * dout);
  const at = viewIndex(transposed, din, dout);
  const symmetric = opts.scheme === 'symmetric';
  const qmax = symmetric ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  for (let b = 0; b < batch; b++) {
    for (let g = 0; g < G; g++) {
      const i0 = g * rows;
      const i1 = Math.min(din, i0 + rows);
      for (let j = 0; j < dout; j++) {
        let lo = Infinity;
        let hi = -Infinity;
        for (let i = i0; i < i1; i++) {
          const w = data[at(b, i, j)]!;
          if (w < lo) lo = w;
          if (w > hi) hi = w;
        }
        // The stored (float32) scale is the one the codes are rounded against, so the bound holds
        // for what is dequantized.
        // A constant asymmetric group (hi = lo) takes the step |lo| and the code 0: W^ = lo exactly.
        const s = Math.fround(symmetric ? Math.max(Math.abs(lo), Math.abs(hi)) / qmax : hi > lo ? (hi - lo) / qmax : Math.abs(lo));
        const z = symmetric ? qmax : s === 0 ? 0 : Math.fround(-lo / s);
        const k = (b * G + g) * dout + j;
        scale[k] = s;
        zero[k] = z;
        for (let i = i0; i < i1; i++) {
          const w = data[at(b, i, j)]!;
          // s = 0 only for an all-zero group: any code gives W^ = 0.
          const u = s === 0 ? z : symmetric ? clamp(Math.round(w / s), -qmax, qmax) + qmax : clamp(Math.round(w / s + z), 0, qmax);
          const bit = j * bits;
          const base = (b * din + i) * words;
          const word = base + (bit >>> 5);
          const shift = bit & 31;
          codes[word] = (codes[word] ?? 0) | (u << shift);
          if (shift + bits > 32) codes[word + 1] = (codes[word + 1] ?? 0) | (u >>> (32 - shift));
        }
      }
    }
  }
  return { shape: shape.slice(), transposed, batch, din, dout, bits, group: G === 1 ? 0 : group, scheme: opts.scheme, codes, scale, zero };
}

const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(v, hi));

/** Code u of element [b, i, j]. */
export function codeAt(p: PackedTensor, b: number, i: number, j: number): number {
  const words = packedRowWords(p.dout, p.bits);
  const base = (b * p.din + i) * words;
  const bit = j * p.bits;
  const word = bit >>> 5;
  const shift = bit & 31;
  let v = p.codes[base + word]! >>> shift;
  if (shift + p.bits > 32) v |= p.codes[base + word + 1]! << (32 - shift);
  return v & ((1 << p.bits) - 1);
}

/** W^ in the parameter's own shape: scale * (u - zero) per element. */
export function dequantizeTensor(p: PackedTensor): Float32Array {
  const { batch, din, dout } = p;
  const G = packedGroups(din, p.group);
  const rows = G === 1 ? din : p.group;
  const out = new Float32Array(batch * din * dout);
  const at = viewIndex(p.transposed, din, dout);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < din; i++) {
      const k0 = (b * G + Math.floor(i / rows)) * dout;
      for (let j = 0; j < dout; j++) out[at(b, i, j)] = Math.fround(p.scale[k0 + j]! * (codeAt(p, b, i, j) - p.zero[k0 + j]!));
    }
  return out;
}

/**
 * The scale step s of every element, in the parameter's own shape (the bound |W - W^| <= s/2 of
 * each element).
 */
export function elementScales(p: PackedTensor): Float32Array {
  const { batch, din, dout } = p;
  const G = packedGroups(din, p.group);
  const rows = G === 1 ? din : p.group;
  const out = new Float32Array(batch * din * dout);
  const at = viewIndex(p.transposed, din, dout);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < din; i++) for (let j = 0; j < dout; j++) out[at(b, i, j)] = p.scale[(b * G + Math.floor(i / rows)) * dout + j]!;
  return out;
}

/**
 * Bytes a packed parameter holds resident: codes, scales and zero points (a symmetric zero point
 * is the constant qmax, but the kernel reads it per group, so it is counted too).
 */
export function packedBytes(p: PackedTensor): number {
  return 4 * (p.codes.length + p.scale.length + p.zero.length);
}

/** Relative Frobenius error ||W - W^|| / ||W||. */
export function relativeError(w: Float32Array, wHat: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < w.length; i++) {
    num += (w[i]! - wHat[i]!) ** 2;
    den += w[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}
