/**
 * The dispatch plan: which expert processes which token, as a list of assignments
 * (tokenIndex[n], expertIndex[n]) in priority order. Top-k routers emit T*k assignments (slot-major:
 * every token's first choice before any second choice, the Switch/GShard capacity priority); expert
 * choice emits E*c. Indices are plain Int32Arrays: routing decisions are discrete and never need gradients.
 */
import { MoelabError } from '../errors.js';
import { tf } from '../tf.js';

export class DispatchPlan {
  readonly counts: Int32Array;
  private _order?: Int32Array;
  private _offsets?: Int32Array;

  constructor(
    readonly tokenIndex: Int32Array,
    readonly expertIndex: Int32Array,
    readonly numTokens: number,
    readonly numExperts: number,
  ) {
    if (tokenIndex.length !== expertIndex.length)
      throw new MoelabError(`tokenIndex has ${tokenIndex.length} entries but expertIndex has ${expertIndex.length}`, 'dispatch plan');
    const counts = new Int32Array(numExperts);
    for (let n = 0; n < expertIndex.length; n++) {
      const e = expertIndex[n]!;
      if (e < 0 || e >= numExperts) throw new MoelabError(`expert index ${e} out of range [0, ${numExperts}) (entry ${n})`, 'dispatch plan');
      counts[e]!++;
    }
    this.counts = counts;
  }

  get size(): number {
    return this.tokenIndex.length;
  }

  /** Assignment ids sorted by expert (stable: keeps priority order within an expert). */
  get order(): Int32Array {
    if (!this._order) {
      const off = this.offsets;
      const pos = Int32Array.from(off.subarray(0, this.numExperts));
      const order = new Int32Array(this.size);
      for (let n = 0; n < this.size; n++) order[pos[this.expertIndex[n]!]!++] = n;
      this._order = order;
    }
    return this._order;
  }

  /** offsets[e] = first position of expert e in `order`; offsets[E] = size. */
  get offsets(): Int32Array {
    if (!this._offsets) {
      const off = new Int32Array(this.numExperts + 1);
      for (let e = 0; e < this.numExperts; e++) off[e + 1] = off[e]! + this.counts[e]!;
      this._offsets = off;
    }
    return this._offsets;
  }

  /** Keep only the assignments where keep[n] is true (used by capacity limits and expert masks). */
  filter(keep: Uint8Array): { plan: DispatchPlan; kept: Int32Array } {
    let m = 0;
    for (let n = 0; n < keep.length; n++) if (keep[n]) m++;
    const kept = new Int32Array(m);
    const tok = new Int32Array(m);
    const ex = new Int32Array(m);
    let j = 0;
    for (let n = 0; n < keep.length; n++) {
      if (!keep[n]) continue;
      kept[j] = n;
      tok[j] = this.tokenIndex[n]!;
      ex[j] = this.expertIndex[n]!;
      j++;
    }
    return { plan: new DispatchPlan(tok, ex, this.numTokens, this.numExperts), kept };
  }

  /**
   * Padded layout for batched expert GEMMs: slot s of expert e (s < capacity) reads row
   * `index[e * cap + s]` of a source with an extra zero row at the end (index = numTokens for padding).
   * `assignmentRow[n]` is where assignment n's result lands in the flattened [E * cap] output.
   */
  padded(): { capacity: number; gatherIndex: Int32Array; assignmentRow: Int32Array } {
    let cap = 0;
    for (let e = 0; e < this.numExperts; e++) cap = Math.max(cap, this.counts[e]!);
    cap = Math.max(cap, 1);
    const gatherIndex = new Int32Array(this.numExperts * cap).fill(this.numTokens);
    const assignmentRow = new Int32Array(this.size);
    const fill = new Int32Array(this.numExperts);
    for (let n = 0; n < this.size; n++) {
      const e = this.expertIndex[n]!;
      const row = e * cap + fill[e]!++;
      gatherIndex[row] = this.tokenIndex[n]!;
      assignmentRow[n] = row;
    }
    return { capacity: cap, gatherIndex, assignmentRow };
  }

  tokenIndexTensor(): tf.Tensor1D {
    return tf.tensor1d(this.tokenIndex, 'int32');
  }
}

/**
 * Capacity limit with drops: expert e keeps at most `capacity` assignments, in priority order: the plan's
 * list order, or the assignment ids in `priority` (see `dropPriority`). Returns a keep mask (plan order).
 */
export function capacityMask(plan: DispatchPlan, capacity: number, priority?: Int32Array): Uint8Array {
  const keep = new Uint8Array(plan.size);
  const used = new Int32Array(plan.numExperts);
  for (let i = 0; i < plan.size; i++) {
    const n = priority ? priority[i]! : i;
    const e = plan.expertIndex[n]!;
    if (used[e]! < capacity) {
      used[e]!++;
      keep[n] = 1;
    }
  }
  return keep;
}

/** Switch/GShard capacity: ceil(capacityFactor * assignments / experts). */
export function expertCapacity(assignments: number, numExperts: number, capacityFactor: number): number {
  return Math.max(1, Math.ceil((capacityFactor * assignments) / numExperts));
}

/** Which assignments survive a capacity limit (docs/routers.md#capacity-and-dropping). */
export type DropPolicy = 'position' | 'position-interleaved' | 'probs' | 'batch-prioritized' | 'random';

/**
 * Priority order of a plan's assignments under a drop policy (assignment ids, highest priority first).
 * - `position`: the plan's order (routers emit slot-major: all first choices, then all second choices).
 * - `position-interleaved`: token order, all choices of a token together (Megablocks, Megatron `position`).
 * - `probs`: highest combine weight first, regardless of choice rank (Megatron / DeepSpeed top-k default).
 * - `batch-prioritized`: choice rank first, then tokens by their top-1 weight, descending (V-MoE BPR).
 * - `random`: choice rank first, then a random token order (DeepSpeed RTS); `random` gives the numbers.
 * `weights` are the assignments' combine weights (null = all equal).
 */
export function dropPriority(plan: DispatchPlan, policy: DropPolicy, weights: ArrayLike<number> | null, random?: () => number): Int32Array | undefined {
  const N = plan.size;
  if (policy === 'position') return undefined;
  const ids = Int32Array.from({ length: N }, (_, n) => n);
  const rank = new Int32Array(N);
  const seen = new Int32Array(plan.numTokens);
  for (let n = 0; n < N; n++) rank[n] = seen[plan.tokenIndex[n]!]!++;
  const w = (n: number) => (weights ? weights[n]! : 1);
  let cmp: (a: number, b: number) => number;
  if (policy === 'position-interleaved') cmp = (a, b) => plan.tokenIndex[a]! - plan.tokenIndex[b]! || rank[a]! - rank[b]!;
  else if (policy === 'probs') cmp = (a, b) => w(b) - w(a) || a - b;
  else {
    const key = new Float64Array(plan.numTokens);
    if (policy === 'batch-prioritized') {
      key.fill(Number.NEGATIVE_INFINITY);
      for (let n = 0; n < N; n++) key[plan.tokenIndex[n]!] = Math.max(key[plan.tokenIndex[n]!]!, w(n));
    } else {
      if (!random) throw new Error('dropPriority: the random policy needs a random source');
      for (let t = 0; t < plan.numTokens; t++) key[t] = random();
    }
    cmp = (a, b) => rank[a]! - rank[b]! || key[plan.tokenIndex[b]!]! - key[plan.tokenIndex[a]!]! || a - b;
  }
  return Int32Array.from(Array.from(ids).sort(cmp));
}
