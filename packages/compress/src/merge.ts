/**
 * M-SMoE expert merging, the "merge" half of MC-SMoE (Li et al., ICLR 2024, arXiv 2310.01334; official
 * code UNITES-Lab/MC-SMoE), docs/compression.md#expert-merging-mc-smoe. Per layer:
 *
 * 1. Usage frequency f_e = count[e] / Σ count and router-logit similarity
 *      sim(i, j) = (cos(z_{·,i}, z_{·,j}) + 1) / 2   over the calibration tokens (from `logitGram`).
 * 2. The G most used experts are the dominant ones (one per group); every other expert joins the group
 *    of its most similar dominant expert.
 * 3. Inside a group every member is permuted onto the dominant expert: the hidden-unit permutation π
 *    maximising Σ_i ⟨W1_ref[:, i], W1_e[:, π(i)]⟩ + ⟨W3_ref[:, i], W3_e[:, π(i)]⟩ + ⟨W2_ref[i, :], W2_e[π(i), :]⟩
 *    (a linear assignment, solved exactly). Permuting W1/W3 columns and W2 rows together leaves the
 *    expert's function unchanged (invariant I0.3).
 * 4. Frequency-weighted average W_G = Σ_{e∈G} f_e W_e / Σ_{e∈G} f_e (uniform when the group was never used).
 * 5. Binding: the router keeps all E rows and every member slot holds W_G (`bindExperts`), so a token
 *    routed to two members of a group gets the merged expert with the sum of both gate weights.
 * The "compress" half (low-rank + sparse decomposition and distillation) is not implemented.
 *
 * Alignment needs experts stored as `w1` [E, d, h], `w2` [E, h, d] (and `w3` [E, d, h] when gated): the
 * `mlp` and `glu` banks. Other banks merge without alignment (`align: false`).
 */
import { MoelabError, type Registry, tf } from '@moelab/core';
import type { RoutingObserver } from './observer.js';
import { bindExperts, moeLayers, type SpecModel } from './surgery.js';

/**
 * Linear assignment maximising Σ_i score[i][π(i)] for a square matrix (shortest augmenting paths with
 * potentials, O(n³)). Returns π as an array: row i ↦ column π[i].
 */
export function maxAssignment(score: ArrayLike<number>, n: number): Int32Array {
  // Minimise cost = −score. 1-based arrays, as in the classic formulation.
  const INF = Number.POSITIVE_INFINITY;
  const u = new Float64Array(n + 1);
  const v = new Float64Array(n + 1);
  const p = new Int32Array(n + 1);
  const way = new Int32Array(n + 1);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    const minv = new Float64Array(n + 1).fill(INF);
    const used = new Uint8Array(n + 1);
    do {
      used[j0] = 1;
      const i0 = p[j0]!;
      let delta = INF;
      let j1 = 0;
      for (let j = 1; j <= n; j++) {
        if (used[j]) continue;
        const cur = -score[(i0 - 1) * n + (j - 1)]! - u[i0]! - v[j]!;
        if (cur < minv[j]!) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j]! < delta) {
          delta = minv[j]!;
          j1 = j;
        }
      }
      for (let j = 0; j <= n; j++) {
        if (used[j]) {
          u[p[j]!]! += delta;
          v[j]! -= delta;
        } else minv[j]! -= delta;
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0]!;
      p[j0] = p[j1]!;
      j0 = j1;
    } while (j0);
  }
  const out = new Int32Array(n);
  for (let j = 1; j <= n; j++) out[p[j]! - 1] = j - 1;
  return out;
}

/** Expert weights of one layer as plain arrays: w1 [E][d·h], w2 [E][h·d], w3 when gated. */
interface Bank {
  w1: tf.Variable;
  w2: tf.Variable;
  w3?: tf.Variable;
}

function mlpBank(experts: unknown, path: string): Bank {
  const b = experts as Partial<Bank>;
  const ok = (v: unknown): v is tf.Variable => v instanceof tf.Variable && v.shape.length === 3;
  if (!ok(b.w1) || !ok(b.w2) || (b.w3 !== undefined && !ok(b.w3)))
    throw new MoelabError('expert alignment needs an mlp / glu expert bank (w1 [E, d, h], w2 [E, h, d], w3); merge with align: false', path);
  return b as Bank;
}

/**
 * The permutation of expert `e`'s hidden units that best matches expert `ref` (step 3 of the file
 * comment): π with hidden unit i of the aligned expert = hidden unit π[i] of e.
 */
export function alignmentPermutation(bank: Bank, ref: number, e: number): Int32Array {
  const [, d, h] = bank.w1.shape as [number, number, number];
  const score = tf.tidy(() => {
    const pick = (w: tf.Variable, i: number) => tf.squeeze(tf.gather(w, [i]), [0]) as tf.Tensor2D;
    // ⟨W1_ref[:, i], W1_e[:, j]⟩ = (W1_refᵀ W1_e)[i, j]; W2 rows: (W2_ref W2_eᵀ)[i, j].
    let s = tf.matMul(pick(bank.w1, ref), pick(bank.w1, e), true, false);
    if (bank.w3) s = tf.add(s, tf.matMul(pick(bank.w3, ref), pick(bank.w3, e), true, false));
    s = tf.add(s, tf.matMul(pick(bank.w2, ref), pick(bank.w2, e), false, true));
    return s.dataSync() as Float32Array;
  });
  void d;
  return maxAssignment(score, h);
}

/** Expert `e`'s tensors with their hidden units permuted by π (W1/W3 columns, W2 rows). */
export function permuteExpert(bank: Bank, e: number, perm: Int32Array): { w1: tf.Tensor2D; w2: tf.Tensor2D; w3?: tf.Tensor2D } {
  return tf.tidy(() => {
    const idx = tf.tensor1d(perm, 'int32');
    const pick = (w: tf.Variable) => tf.squeeze(tf.gather(w, [e]), [0]) as tf.Tensor2D;
    return {
      w1: tf.gather(pick(bank.w1), idx, 1) as tf.Tensor2D,
      w2: tf.gather(pick(bank.w2), idx, 0) as tf.Tensor2D,
      ...(bank.w3 ? { w3: tf.gather(pick(bank.w3), idx, 1) as tf.Tensor2D } : {}),
    };
  });
}

/** Dominant experts and groups of one layer (step 2): groups[g][0] is the dominant expert. */
export function groupExperts(freq: ArrayLike<number>, similarity: ArrayLike<number>, E: number, G: number): number[][] {
  if (!(Number.isInteger(G) && G >= 1 && G <= E)) throw new MoelabError(`the number of groups must be an integer in [1, ${E}], got ${G}`, '--groups');
  const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => freq[b]! - freq[a]! || a - b);
  const dominant = order.slice(0, G);
  const groups = dominant.map((e) => [e]);
  for (const e of order.slice(G)) {
    let best = 0;
    for (let g = 1; g < G; g++) if (similarity[e * E + dominant[g]!]! > similarity[e * E + dominant[best]!]!) best = g;
    groups[best]!.push(e);
  }
  return groups;
}

export interface MergeOptions {
  /** Groups (distinct merged experts) per layer. */
  groups: number;
  /** Permutation-align members before averaging (default true). */
  align?: boolean;
  /** Only these layers (default: every MoE layer). */
  layers?: string[];
}

export interface MergeReport {
  /** Layer path → groups (first member = dominant expert). */
  groups: Map<string, number[][]>;
}

/**
 * Merge the experts of every (chosen) MoE layer into `groups` groups, in place on `source.model`
 * (the spec does not change: binding keeps every router row and expert slot).
 */
export function mergeExperts(registry: Registry, observer: RoutingObserver, source: SpecModel, o: MergeOptions, seed = 0): MergeReport {
  const layers = moeLayers(source.model);
  if (layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to merge');
  for (const p of o.layers ?? [])
    if (!layers.some((l) => l.path === p)) throw new MoelabError(`no moe layer "${p}"; moe layers: ${layers.map((l) => l.path).join(', ')}`, '--layers');
  const chosen = o.layers ? layers.filter((l) => o.layers!.includes(l.path)) : layers;
  const report: MergeReport = { groups: new Map() };
  for (const l of chosen) {
    const s = observer.layer(l.path);
    const E = l.numExperts;
    if (s.tokens === 0) throw new MoelabError('the calibration pass saw no tokens in this layer', l.path);
    const total = s.count.reduce((a, b) => a + b, 0);
    const freq = s.count.map((c) => (total > 0 ? c / total : 0));
    const cos = s.logitCosine();
    if (!cos) throw new MoelabError("merging needs the router's logits (the similarity of experts), which this layer's router does not report", l.path);
    const sim = cos.map((c) => (c + 1) / 2);
    const groups = groupExperts(freq, sim, E, o.groups);
    report.groups.set(l.path, groups);
    const bank = o.align === false ? undefined : mlpBank(l.layer.experts, l.path);
    // Aligned copies of each member, keyed by tensor short name (w1, w2, w3).
    const aligned = new Map<number, Record<string, tf.Tensor2D>>();
    if (bank)
      for (const g of groups)
        for (const e of g.slice(1)) aligned.set(e, permuteExpert(bank, e, alignmentPermutation(bank, g[0]!, e)) as Record<string, tf.Tensor2D>);
    bindExperts(
      registry,
      source,
      l.path,
      groups,
      (gi, name, slices) => {
        const g = groups[gi]!;
        const short = name.slice(name.lastIndexOf('.') + 1);
        const ws = g.map((e) => freq[e]!);
        const wsum = ws.reduce((a, b) => a + b, 0);
        const weights = wsum > 0 ? ws.map((w) => w / wsum) : g.map(() => 1 / g.length);
        let acc: tf.Tensor | undefined;
        g.forEach((e, i) => {
          const t = aligned.get(e)?.[short] ?? slices[i]!;
          const term = tf.mul(t, weights[i]!);
          acc = acc ? tf.add(acc, term) : term;
        });
        return acc!;
      },
      seed,
    );
    for (const t of aligned.values()) for (const v of Object.values(t)) v.dispose();
  }
  return report;
}
