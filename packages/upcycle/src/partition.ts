/**
 * Partitions of an FFN's h neurons into E equal groups (docs/upcycling.md#splitting-an-ffn):
 *
 *   contiguous:       neuron j -> group ⌊j / (h/E)⌋ (MoEfication's "random" split as coded)
 *   random:           a seeded random permutation cut into E blocks (LLaMA-MoE's Independent-Random)
 *   balanced-kmeans:  k-means on the L2-normalised neuron vectors (rows of W1 in [out, in] layout) whose
 *                     assignment step gives every cluster exactly h/E neurons (MoEfication's parameter
 *                     clustering, LLaMA-MoE's Independent-Clustering)
 *
 * The balanced assignment is greedy — all (neuron, cluster) pairs by increasing distance, each taken when
 * the neuron is free and the cluster not full — an approximation of the exact min-cost assignment the
 * reference code solves (KMeansConstrained); every group has exactly h/E neurons either way.
 */
import { MoelabError, Rng } from '@moelab/core';
import type { WeightTensor } from './weights.js';

export type Partition = number[][];

export function contiguousPartition(h: number, E: number): Partition {
  const s = h / E;
  return Array.from({ length: E }, (_, e) => Array.from({ length: s }, (_, j) => e * s + j));
}

export function randomPartition(h: number, E: number, seed: number, label: string): Partition {
  const rng = Rng.derive(seed, 'partition', label);
  const perm = Array.from({ length: h }, (_, j) => j);
  for (let j = h - 1; j > 0; j--) {
    const r = rng.int(j + 1);
    [perm[j], perm[r]] = [perm[r]!, perm[j]!];
  }
  const s = h / E;
  return Array.from({ length: E }, (_, e) => perm.slice(e * s, (e + 1) * s).sort((a, b) => a - b));
}

/** Rows of `w` [h, d] L2-normalised, as h vectors. */
export function normalisedRows(w: WeightTensor): Float64Array[] {
  const [h, d] = w.shape as [number, number];
  return Array.from({ length: h }, (_, j) => {
    const v = Float64Array.from(w.data.subarray(j * d, (j + 1) * d));
    const n = Math.hypot(...v) || 1;
    return v.map((x) => x / n);
  });
}

/** Balanced k-means of `points` into E clusters of exactly points.length / E members. */
export function balancedKMeans(points: Float64Array[], E: number, seed: number, label: string, maxIter = 20): Partition {
  const h = points.length;
  const d = points[0]!.length;
  const size = h / E;
  const order = randomPartition(h, h, seed, `${label}/init`).map((g) => g[0]!);
  let centres = order.slice(0, E).map((j) => Float64Array.from(points[j]!));
  let assign = new Int32Array(h).fill(-1);
  for (let it = 0; it < maxIter; it++) {
    const pairs: [number, number, number][] = [];
    for (let j = 0; j < h; j++)
      for (let c = 0; c < E; c++) {
        let s = 0;
        for (let a = 0; a < d; a++) s += (points[j]![a]! - centres[c]![a]!) ** 2;
        pairs.push([s, j, c]);
      }
    pairs.sort((x, y) => x[0] - y[0] || x[1] - y[1] || x[2] - y[2]);
    const next = new Int32Array(h).fill(-1);
    const fill = new Int32Array(E);
    for (const [, j, c] of pairs) {
      if (next[j] !== -1 || fill[c]! >= size) continue;
      next[j] = c;
      fill[c]!++;
    }
    const stable = next.every((c, j) => c === assign[j]);
    assign = next;
    centres = Array.from({ length: E }, () => new Float64Array(d));
    for (let j = 0; j < h; j++) for (let a = 0; a < d; a++) centres[assign[j]!]![a]! += points[j]![a]! / size;
    if (stable) break;
  }
  const groups: Partition = Array.from({ length: E }, () => []);
  for (let j = 0; j < h; j++) groups[assign[j]!]!.push(j);
  return groups;
}

/** Every neuron in exactly one group, all groups of size h/E; otherwise an error (a bug guard). */
export function checkPartition(p: Partition, h: number): void {
  const seen = new Uint8Array(h);
  for (const g of p)
    for (const j of g) {
      if (seen[j]) throw new MoelabError(`neuron ${j} is in two groups`);
      seen[j] = 1;
    }
  if (seen.some((s) => !s)) throw new MoelabError('a neuron is in no group');
  if (p.some((g) => g.length !== p[0]!.length)) throw new MoelabError('groups of unequal size');
}
