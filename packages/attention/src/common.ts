/** Pieces the attention mixtures share: named parameter groups, K/V head expansion, soft routing statistics. */
import { Module, type RoutingStats, tf } from '@moelab/core';

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

/**
 * Key/value heads laid out for the query heads that read them: `t` [B, T, G·H_kv·dh] (G groups of H_kv
 * heads) becomes [B, T, G·reps·H_kv·r·dh], group g repeated `reps` times and every head repeated `r`
 * times in place, so that query head i of expert j reads KV head ⌊i/r⌋ of its group (GQA).
 */
export function expandKvHeads(t: tf.Tensor, groups: number, kvHeads: number, reps: number, r: number, dh: number): tf.Tensor {
  const [B, T] = t.shape as [number, number];
  let out = t;
  // tfjs differentiates tile up to rank 4: the two repeats are done separately.
  if (reps > 1) out = tf.tile(tf.reshape(out, [B * T, groups, kvHeads, dh]), [1, reps, 1, 1]);
  if (r > 1) out = tf.tile(tf.reshape(out, [B * T * groups * reps * kvHeads, 1, dh]), [1, r, 1]);
  return tf.reshape(out, [B, T, groups * reps * kvHeads * r * dh]);
}

/**
 * The same expansion for cached key/value heads in the [B, G·H_kv, T, dh] layout (inference only): query
 * head j·H + i (expert j of `experts`) reads KV head g(j)·H_kv + ⌊i/r⌋, g(j) = j when every expert has its
 * own K/V (`shared` false) and 0 when they share one set.
 */
export function gatherKvHeads(t: tf.Tensor, experts: number, heads: number, kvHeads: number, shared: boolean): tf.Tensor {
  const r = heads / kvHeads;
  const idx = new Int32Array(experts * heads);
  for (let j = 0; j < experts; j++) for (let i = 0; i < heads; i++) idx[j * heads + i] = (shared ? 0 : j) * kvHeads + Math.floor(i / r);
  if (idx.every((v, i) => v === i)) return t;
  return tf.gather(t, tf.tensor1d(idx, 'int32'), 1);
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
