/**
 * Pieces the attention mixtures share: named parameter groups, K/V head expansion, causal attention over
 * merged heads, soft routing statistics.
 */
import { applyRope, causalAttention, fusedCausalAttention, hasFusedAttention, Module, mergeHeads, type RoutingStats, splitHeads, tf } from '@moelab/core';

/** A module holding named parameters (stored [in, out] or as the official code lays them out). */
export class ParamGroup extends Module {
  add(name: string, values: Float32Array, shape: number[]): tf.Variable {
    return this.param(name, values, shape);
  }

  /** Register a nested group (its parameters are named `<name>.<param>`). */
  addChild<M extends Module>(name: string, m: M): M {
    return this.child(name, m);
  }

  get(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`no parameter "${name}" in ${this.path || 'this group'}`);
    return v;
  }
}

/** Index of the KV head that query head j·H + i reads: g(j)·H_kv + ⌊i/r⌋ (g(j) = j, or 0 when shared). */
function kvHeadIndex(experts: number, heads: number, kvHeads: number, shared: boolean): Int32Array | null {
  const r = heads / kvHeads;
  const idx = new Int32Array(experts * heads);
  for (let j = 0; j < experts; j++) for (let i = 0; i < heads; i++) idx[j * heads + i] = (shared ? 0 : j) * kvHeads + Math.floor(i / r);
  return idx.every((v, i) => v === i) ? null : idx;
}

/**
 * Key/value heads laid out for the query heads that read them (GQA and shared K/V): `t` [B, T, G·H_kv·dh]
 * (G = experts groups of H_kv heads, or G = 1 when `shared`) becomes [B, T, experts·heads·dh], query head
 * i of expert j reading KV head ⌊i/r⌋ of its group (r = heads / H_kv). One gather (a native kernel on
 * moelab-cpu; its gradient sums the copies back).
 */
export function expandKvHeads(t: tf.Tensor, experts: number, heads: number, kvHeads: number, shared: boolean): tf.Tensor {
  const idx = kvHeadIndex(experts, heads, kvHeads, shared);
  if (!idx) return t;
  const [B, T, D] = t.shape as [number, number, number];
  const dh = D / ((shared ? 1 : experts) * kvHeads);
  const g = tf.gather(tf.reshape(t, [B * T, D / dh, dh]), tf.tensor1d(idx, 'int32'), 1);
  return tf.reshape(g, [B, T, experts * heads * dh]);
}

/** The same expansion for cached key/value heads in the [B, G·H_kv, T, dh] layout (inference). */
export function gatherKvHeads(t: tf.Tensor, experts: number, heads: number, kvHeads: number, shared: boolean): tf.Tensor {
  const idx = kvHeadIndex(experts, heads, kvHeads, shared);
  return idx ? tf.gather(t, tf.tensor1d(idx, 'int32'), 1) : t;
}

/**
 * Causal attention of `heads` heads laid out side by side, q, k [B, T, heads·dk] and v [B, T, heads·dv]
 * -> [B, T, heads·dv], q and k rotated on the first `ropeDims` channels of each head (positions from 0):
 * the backend's fused kernels where it has them, else split the heads, rotate, attend and merge.
 */
export function mergedCausalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, heads: number, ropeDims: number, ropeBase: number): tf.Tensor {
  if (hasFusedAttention(ropeDims)) return fusedCausalAttention(q, k, v, heads, ropeDims, ropeBase);
  const rotated = (t: tf.Tensor) => applyRope(splitHeads(t, heads), ropeDims, ropeBase);
  return mergeHeads(causalAttention(rotated(q), rotated(k), splitHeads(v, heads)));
}

/**
 * Statistics of a soft (or top-k-masked soft) mixture g [rows, N]: `counts` are Σ_t g_tj (expected
 * assignments), `load` the mean weight per expert, `entropy` the mean entropy of g_t in nats.
 */
export function routingStatsOf(layer: string, g: tf.Tensor2D, expertsPerToken: number): RoutingStats {
  const [rows, N] = g.shape;
  const a = g.dataSync();
  const counts = new Array<number>(N).fill(0);
  let h = 0;
  for (let t = 0; t < rows; t++)
    for (let j = 0; j < N; j++) {
      const p = a[t * N + j]!;
      counts[j]! += p;
      if (p > 0) h -= p * Math.log(p);
    }
  const total = counts.reduce((x, y) => x + y, 0) || 1;
  return { layer, numExperts: N, tokens: rows, counts, load: counts.map((c) => c / total), dropRate: 0, entropy: h / Math.max(1, rows), expertsPerToken };
}
