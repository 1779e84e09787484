/**
 * Weight maps and the generic tensor operators every upcycler is composed of (docs/upcycling.md#operators):
 *
 *   copy(θ)                    bit-exact copy
 *   average(θ_1..θ_N; λ)       Σ_i λ_i θ_i, λ_i = 1/N by default (elementwise; shapes must match)
 *   stack(θ_1..θ_E)            [E, ...] expert tensor from per-model tensors
 *   sliceNeurons(FFN, idx)     columns idx of W1/W3 and rows idx of W2 (in [in, out] layout), sorted idx
 *   fresh(shape, std)          a new tensor drawn from N(0, std²) with the upcycle's seeded RNG
 *
 * Tensors are plain `{ shape, data: Float32Array }` (what safetensors reads and writes): upcycling is
 * offline surgery on arrays, no tfjs variables and no gradients. Layout notes: moelab's `Linear.weight`
 * is [out, in] (PyTorch), expert banks store [E, in, out]; `transpose2d` converts between them.
 */
import { MoelabError } from '@moelab/core';

/** One tensor of a weight map. */
export interface WeightTensor {
  shape: number[];
  data: Float32Array;
}

/** Tensor name -> tensor, in state-dict naming (`transformer.layers.0.ffn.w1.weight`). */
export type WeightMap = Map<string, WeightTensor>;

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** A bit-exact copy (a new array). */
export function copyTensor(t: WeightTensor): WeightTensor {
  return { shape: t.shape.slice(), data: new Float32Array(t.data) };
}

/** Σ_i λ_i θ_i (λ_i = 1/N by default), accumulated in float64. `where` names the tensor in errors. */
export function averageTensors(ts: readonly WeightTensor[], weights?: readonly number[], where?: string): WeightTensor {
  if (ts.length === 0) throw new MoelabError('average of no tensors', where);
  const lambda = weights ?? ts.map(() => 1 / ts.length);
  if (lambda.length !== ts.length) throw new MoelabError(`average: ${lambda.length} weights for ${ts.length} tensors`, where);
  const shape = ts[0]!.shape;
  for (const t of ts)
    if (!sameShape(t.shape, shape)) throw new MoelabError(`cannot average tensors of shapes ${JSON.stringify(shape)} and ${JSON.stringify(t.shape)}`, where);
  const n = numel(shape);
  const acc = new Float64Array(n);
  ts.forEach((t, i) => {
    const l = lambda[i]!;
    for (let j = 0; j < n; j++) acc[j]! += l * t.data[j]!;
  });
  // N identical inputs with uniform weights must give the input back bit for bit (I13): float64 sums of
  // N equal float32 values divided by N round back to the same float32 for N ≤ 2^24.
  return { shape: shape.slice(), data: Float32Array.from(acc) };
}

/** [E, ...shape] from E tensors of one shape. */
export function stackTensors(ts: readonly WeightTensor[], where?: string): WeightTensor {
  if (ts.length === 0) throw new MoelabError('stack of no tensors', where);
  const shape = ts[0]!.shape;
  const n = numel(shape);
  const out = new Float32Array(n * ts.length);
  ts.forEach((t, i) => {
    if (!sameShape(t.shape, shape)) throw new MoelabError(`cannot stack tensors of shapes ${JSON.stringify(shape)} and ${JSON.stringify(t.shape)}`, where);
    out.set(t.data, i * n);
  });
  return { shape: [ts.length, ...shape], data: out };
}

/** Entry `e` of a stacked tensor [E, ...]. */
export function unstack(t: WeightTensor, e: number): WeightTensor {
  const inner = t.shape.slice(1);
  const n = numel(inner);
  return { shape: inner, data: t.data.slice(e * n, (e + 1) * n) };
}

/** [r, c] -> [c, r]. */
export function transpose2d(t: WeightTensor, where?: string): WeightTensor {
  if (t.shape.length !== 2) throw new MoelabError(`expected a matrix, got shape ${JSON.stringify(t.shape)}`, where);
  const [r, c] = t.shape as [number, number];
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j]!;
  return { shape: [c, r], data: out };
}

/** Columns `idx` of a matrix [r, c] -> [r, idx.length]. */
export function gatherColumns(t: WeightTensor, idx: ArrayLike<number>): WeightTensor {
  const [r, c] = t.shape as [number, number];
  const k = idx.length;
  const out = new Float32Array(r * k);
  for (let i = 0; i < r; i++) for (let j = 0; j < k; j++) out[i * k + j] = t.data[i * c + idx[j]!]!;
  return { shape: [r, k], data: out };
}

/** Rows `idx` of a matrix [r, c] -> [idx.length, c]. */
export function gatherRows(t: WeightTensor, idx: ArrayLike<number>): WeightTensor {
  const c = t.shape[1]!;
  const out = new Float32Array(idx.length * c);
  for (let j = 0; j < idx.length; j++) out.set(t.data.subarray(idx[j]! * c, (idx[j]! + 1) * c), j * c);
  return { shape: [idx.length, c], data: out };
}

/** Zeros of a shape. */
export function zerosTensor(shape: readonly number[]): WeightTensor {
  return { shape: shape.slice(), data: new Float32Array(numel(shape)) };
}

/** Mean relative L2 distance of tensors to their mean: ‖θ_i − θ̄‖ / ‖θ̄‖ averaged over i (0 for identical tensors). */
export function relativeSpread(ts: readonly WeightTensor[]): number {
  const mean = averageTensors(ts);
  let norm = 0;
  for (const v of mean.data) norm += v * v;
  norm = Math.sqrt(norm);
  if (norm === 0) return 0;
  let s = 0;
  for (const t of ts) {
    let d = 0;
    for (let j = 0; j < t.data.length; j++) d += (t.data[j]! - mean.data[j]!) ** 2;
    s += Math.sqrt(d) / norm;
  }
  return s / ts.length;
}
