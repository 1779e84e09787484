/**
 * Fast Feedforward networks (Belcak & Wattenhofer 2023, arXiv 2308.14711; official package
 * `pbelcak/fastfeedforward`), with the load-balancing loss and Master Leaf of the follow-up
 * (Charalampopoulos et al. 2024, arXiv 2405.16836). An `ffn` entry: a balanced binary tree of depth D
 * whose 2^D − 1 nodes are single sigmoid neurons and whose L = 2^D leaves are small MLPs of width ℓ.
 * Docs: docs/peer-fff.md#fast-feedforward-networks.
 *
 *   p_n(x)    = sigmoid(node_weights[n]·x + node_biases[n])          probability of going RIGHT at node n
 *   P_l(x)    = Π over the root→leaf-l path of (p_n or 1 − p_n)         Σ_l P_l = 1
 *   leaf_l(x) = act(x W1_l + b1_l) W2_l + b2_l
 *   training:   y = Σ_l P_l(x) leaf_l(x)                              (soft mixture over every leaf)
 *   inference:  descend from node 0, right iff node_weights[n]·x + node_biases[n] ≥ 0; y = leaf_l(x)
 *
 * Nodes are stored breadth first (children of n: 2n+1 left, 2n+2 right), leaves left to right.
 * Options: `trainHardened` rounds every decision in training (non-differentiable tree),
 * `regionLeak` swaps p ↔ 1 − p per token and node with that probability (training only), `leafDropout`
 * after the leaf activation (training only).
 *
 * Aux losses (training only, pushed to ctx.aux):
 * - `fff_harden` (coef h): mean over nodes of the batch-mean Bernoulli entropy H(p_n(x)), p clamped
 *   to [1e-6, 1 − 1e-6], computed before rounding / leaks (the follow-up's reduction; the paper sums).
 * - `fff_balance` (coef α): L · Σ_l f_l · P̄_l, f_l = fraction of tokens whose hard path reaches
 *   leaf l (constant), P̄_l = mean soft probability of leaf l (carries the gradient).
 *
 * Master Leaf: an always-active leaf of width 8 (`magic_w1 [1, d, 8]`, `magic_b1 [1, 8]`,
 * `magic_w2 [1, 8, d]`, `magic_b2 [1, d]`) mixed in both modes as y = κ y_FFF + (1 − κ) y_master with
 * κ = sigmoid(master_mix), master_mix initialised to 0.5 (the follow-up's `k`; our name).
 *
 * Code vs paper: the official `eval_forward` omits `b2s`; we include it unless
 * `officialEvalOmitsLeafOutputBias` is set. With hardened decisions and `b2s` included, training and
 * inference outputs coincide. D = 0 is one dense FFN of width ℓ in both modes (the official eval raises).
 *
 * Expert masking: `ctx.expertMask.get(layerPath)` holds leaf ids; a masked leaf's P_l is zeroed in
 * training (no renormalisation) and tokens that reach it in inference get no tree output.
 *
 * Parameter names follow the official state_dict: `node_weights [2^D − 1, d]`, `node_biases [2^D − 1, 1]`,
 * `w1s [L, d, ℓ]`, `b1s [L, ℓ]`, `w2s [L, ℓ, d]`, `b2s [L, d]` (the official non-trainable `depth` scalar is
 * not stored: D is in the config; with D = 0 there are no node tensors).
 */
import {
  ACTIVATIONS,
  type Activation,
  activate,
  Config,
  combine,
  DispatchPlan,
  defineEntry,
  dropout,
  type FeedForward,
  type ForwardContext,
  gatherPadded,
  Module,
  MoelabError,
  type Rng,
  type RoutingStats,
  Type,
  tf,
  ungatherPadded,
} from '@moelab/core';

export interface FFFOptions {
  depth: number;
  leafWidth: number;
  activation: Activation;
  leafDropout: number;
  hardeningCoef: number;
  balanceCoef: number;
  regionLeak: number;
  trainHardened: boolean;
  masterLeaf: boolean;
  masterLeafWidth: number;
  officialEvalOmitsLeafOutputBias: boolean;
}

export const defaultFFFOptions: FFFOptions = {
  depth: 3,
  leafWidth: 32,
  activation: 'relu',
  leafDropout: 0,
  hardeningCoef: 3,
  balanceCoef: 0,
  regionLeak: 0,
  trainHardened: false,
  masterLeaf: false,
  masterLeafWidth: 8,
  officialEvalOmitsLeafOutputBias: false,
};

/** What one soft (training) pass computed, for inspection and tests. */
export interface FFFSoftRouting {
  /** p_n(x) [n, nodes] before rounding and leaks. */
  nodeProbs: tf.Tensor2D;
  /** P_l(x) [n, L] as used by the mixture (after rounding / leaks / masking). */
  leafProbs: tf.Tensor2D;
  /** Batch-mean Bernoulli entropy per node [nodes]. */
  entropies: tf.Tensor1D;
}

export class FFFLayer extends Module implements FeedForward {
  readonly nodeWeights?: tf.Variable;
  readonly nodeBiases?: tf.Variable;
  readonly w1s: tf.Variable;
  readonly b1s: tf.Variable;
  readonly w2s: tf.Variable;
  readonly b2s: tf.Variable;
  readonly magicW1?: tf.Variable;
  readonly magicB1?: tf.Variable;
  readonly magicW2?: tf.Variable;
  readonly magicB2?: tf.Variable;
  readonly masterMix?: tf.Variable;
  readonly options: FFFOptions;
  /** Leaf reached by each token of the last forward call (hard descent). */
  lastLeaves?: Int32Array;
  lastSoft?: FFFSoftRouting;

  constructor(
    readonly dModel: number,
    options: Partial<FFFOptions>,
    rng: Rng,
  ) {
    super();
    const o = { ...defaultFFFOptions, ...options };
    this.options = o;
    const { depth: D, leafWidth: l } = o;
    if (!Number.isInteger(D) || D < 0) throw new MoelabError(`fff depth must be a non-negative integer (got ${D})`);
    const d = dModel;
    const L = 2 ** D;
    const nodes = L - 1;
    const u = (n: number, fanIn: number) => rng.uniformArray(n, -1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn));
    if (nodes > 0) {
      this.nodeWeights = this.param('node_weights', u(nodes * d, d), [nodes, d]);
      this.nodeBiases = this.param('node_biases', u(nodes, d), [nodes, 1]);
    }
    this.w1s = this.param('w1s', u(L * d * l, d), [L, d, l]);
    this.b1s = this.param('b1s', u(L * l, d), [L, l]);
    this.w2s = this.param('w2s', u(L * l * d, l), [L, l, d]);
    this.b2s = this.param('b2s', u(L * d, l), [L, d]);
    if (o.masterLeaf) {
      const m = o.masterLeafWidth;
      this.magicW1 = this.param('magic_w1', u(d * m, d), [1, d, m]);
      this.magicB1 = this.param('magic_b1', u(m, d), [1, m]);
      this.magicW2 = this.param('magic_w2', u(m * d, m), [1, m, d]);
      this.magicB2 = this.param('magic_b2', u(d, m), [1, d]);
      this.masterMix = this.param('master_mix', new Float32Array([0.5]), []);
    }
  }

  get depth(): number {
    return this.options.depth;
  }
  get numLeaves(): number {
    return 2 ** this.options.depth;
  }
  get numNodes(): number {
    return 2 ** this.options.depth - 1;
  }

  /** (2^D − 1)(d + 1) + L·(dℓ + ℓ + ℓd + d) (+ the master leaf 2·d·m + m + d + 1), docs/peer-fff.md#fast-feedforward-networks. */
  static parameterCount(d: number, depth: number, leafWidth: number, masterLeafWidth = 0): number {
    const L = 2 ** depth;
    const m = masterLeafWidth;
    return (L - 1) * (d + 1) + L * (2 * d * leafWidth + leafWidth + d) + (m > 0 ? 2 * d * m + m + d + 1 : 0);
  }

  /** Node logits s [n, nodes] (nodes > 0). */
  private nodeLogits(x: tf.Tensor2D): tf.Tensor2D {
    return tf.add(tf.matMul(x, this.nodeWeights!, false, true), tf.reshape(this.nodeBiases!, [-1])) as tf.Tensor2D;
  }

  /** Leaf index reached by each token by hard descent (right iff s ≥ 0). */
  hardLeaves(x: tf.Tensor2D): Int32Array {
    const n = x.shape[0];
    const leaves = new Int32Array(n);
    if (this.numNodes === 0) return leaves;
    const node = new Int32Array(n);
    for (let level = 0; level < this.depth; level++) {
      const s = tf.tidy(() => {
        const idx = tf.tensor1d(node, 'int32');
        const rows = tf.gather(this.nodeWeights!, idx);
        return tf.add(tf.sum(tf.mul(rows, x), 1), tf.gather(tf.reshape(this.nodeBiases!, [-1]), idx)).dataSync();
      });
      for (let t = 0; t < n; t++) node[t] = 2 * node[t]! + 1 + (s[t]! >= 0 ? 1 : 0);
    }
    for (let t = 0; t < n; t++) leaves[t] = node[t]! - this.numNodes;
    return leaves;
  }

  /** Soft leaf probabilities from node probabilities p [n, nodes], level by level (children of level position j: 2j, 2j+1). */
  static leafProbabilities(p: tf.Tensor2D | null, n: number, depth: number, transform?: (pl: tf.Tensor2D, level: number) => tf.Tensor2D): tf.Tensor2D {
    let P = tf.ones([n, 1]) as tf.Tensor2D;
    for (let i = 0; i < depth; i++) {
      const w = 2 ** i;
      let pl = tf.slice(p!, [0, w - 1], [n, w]) as tf.Tensor2D;
      if (transform) pl = transform(pl, i);
      P = tf.reshape(tf.stack([tf.mul(P, tf.sub(1, pl)), tf.mul(P, pl)], 2), [n, 2 * w]) as tf.Tensor2D;
    }
    return P;
  }

  private masterLeafOutput(x: tf.Tensor2D): tf.Tensor2D {
    const m = this.options.masterLeafWidth;
    const h = activate(tf.add(tf.matMul(x, tf.reshape(this.magicW1!, [this.dModel, m])), tf.reshape(this.magicB1!, [m])), this.options.activation);
    return tf.add(tf.matMul(h, tf.reshape(this.magicW2!, [m, this.dModel])), tf.reshape(this.magicB2!, [this.dModel])) as tf.Tensor2D;
  }

  private keepMask(ctx: ForwardContext): Float32Array | undefined {
    const masked = ctx.expertMask?.get(this.path);
    if (!masked || masked.size === 0) return undefined;
    const keep = new Float32Array(this.numLeaves).fill(1);
    for (const id of masked) {
      if (!Number.isInteger(id) || id < 0 || id >= this.numLeaves)
        throw new MoelabError(`expert mask id ${id} is out of range [0, ${this.numLeaves}) for this fff layer (leaves)`, this.path);
      keep[id] = 0;
    }
    return keep;
  }

  /** Training forward: the soft mixture over all leaves. Pushes the hardening and balance losses. */
  private softForward(x: tf.Tensor2D, ctx: ForwardContext, leaves: Int32Array, keep?: Float32Array): tf.Tensor2D {
    const { depth: D, leafWidth: l, regionLeak, trainHardened } = this.options;
    const n = x.shape[0];
    const L = this.numLeaves;
    const d = this.dModel;
    let p: tf.Tensor2D | null = null;
    let entropies: tf.Tensor1D = tf.zeros([0]);
    let P: tf.Tensor2D;
    if (this.numNodes > 0) {
      const s = this.nodeLogits(x);
      p = tf.sigmoid(s) as tf.Tensor2D;
      const pc = tf.clipByValue(p, 1e-6, 1 - 1e-6);
      entropies = tf.mean(tf.neg(tf.add(tf.mul(pc, tf.log(pc)), tf.mul(tf.sub(1, pc), tf.log(tf.sub(1, pc))))), 0) as tf.Tensor1D;
      const soft = FFFLayer.leafProbabilities(p, n, D);
      // hard decisions from the logits (s ≥ 0, as the inference descent), constants
      const hard = trainHardened
        ? tf.tensor2d(
            Float32Array.from(s.dataSync(), (v) => (v >= 0 ? 1 : 0)),
            [n, this.numNodes],
          )
        : null;
      const transform =
        regionLeak > 0 || hard
          ? (pl: tf.Tensor2D, level: number) => {
              const w = 2 ** level;
              let q = hard ? (tf.slice(hard, [0, w - 1], [n, w]) as tf.Tensor2D) : pl;
              if (regionLeak > 0) {
                const swap = new Float32Array(n * w);
                for (let a = 0; a < swap.length; a++) swap[a] = ctx.rng.next() < regionLeak ? 1 : 0;
                const sw = tf.tensor2d(swap, [n, w]);
                q = tf.add(q, tf.mul(sw, tf.sub(1, tf.mul(q, 2)))) as tf.Tensor2D; // swap ? 1 − q : q
              }
              return q;
            }
          : undefined;
      P = transform ? FFFLayer.leafProbabilities(p, n, D, transform) : soft;
      const f = new Float32Array(L);
      for (const leaf of leaves) f[leaf]! += 1 / n;
      ctx.aux.push({ name: 'fff_harden', layer: this.path, value: tf.mean(entropies) as tf.Scalar, coef: this.options.hardeningCoef });
      ctx.aux.push({
        name: 'fff_balance',
        layer: this.path,
        value: tf.mul(tf.sum(tf.mul(tf.tensor1d(f), tf.mean(soft, 0))), L) as tf.Scalar,
        coef: this.options.balanceCoef,
      });
    } else {
      P = tf.ones([n, 1]) as tf.Tensor2D;
    }
    if (keep) P = tf.mul(P, tf.tensor1d(keep)) as tf.Tensor2D;
    this.lastSoft = p ? { nodeProbs: p, leafProbs: P, entropies } : undefined;
    const w1 = tf.reshape(tf.transpose(this.w1s, [1, 0, 2]), [d, L * l]);
    let h = activate(tf.add(tf.matMul(x, w1), tf.reshape(this.b1s, [L * l])), this.options.activation);
    h = dropout(h, this.options.leafDropout, ctx.rng, ctx.training);
    const hp = tf.reshape(tf.mul(tf.reshape(h, [n, L, l]), tf.expandDims(P, 2)), [n, L * l]);
    return tf.add(tf.matMul(hp, tf.reshape(this.w2s, [L * l, d])), tf.matMul(P, this.b2s)) as tf.Tensor2D;
  }

  /** Inference forward: each token evaluates only the leaf its hard descent reaches. */
  private hardForward(x: tf.Tensor2D, leaves: Int32Array, keep?: Float32Array): tf.Tensor2D {
    const n = x.shape[0];
    const tok: number[] = [];
    const ex: number[] = [];
    for (let t = 0; t < n; t++) {
      if (keep && keep[leaves[t]!] === 0) continue;
      tok.push(t);
      ex.push(leaves[t]!);
    }
    if (tok.length === 0) return tf.mul(x, 0) as tf.Tensor2D;
    const plan = new DispatchPlan(Int32Array.from(tok), Int32Array.from(ex), n, this.numLeaves);
    const { xs, assignmentRow } = gatherPadded(x, plan);
    const h = activate(tf.add(tf.matMul(xs, this.w1s as tf.Tensor3D), tf.expandDims(this.b1s, 1)), this.options.activation) as tf.Tensor3D;
    let ys = tf.matMul(h, this.w2s as tf.Tensor3D) as tf.Tensor3D;
    if (!this.options.officialEvalOmitsLeafOutputBias) ys = tf.add(ys, tf.expandDims(this.b2s, 1)) as tf.Tensor3D;
    return combine(ungatherPadded(ys, assignmentRow), null, plan);
  }

  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const shape = x.shape;
    const flat = tf.reshape(x, [-1, this.dModel]) as tf.Tensor2D;
    const keep = this.keepMask(ctx);
    const leaves = this.hardLeaves(flat);
    this.lastLeaves = leaves;
    let out = ctx.training ? this.softForward(flat, ctx, leaves, keep) : this.hardForward(flat, leaves, keep);
    if (this.masterMix) {
      const kappa = tf.sigmoid(this.masterMix);
      out = tf.add(tf.mul(kappa, out), tf.mul(tf.sub(1, kappa), this.masterLeafOutput(flat))) as tf.Tensor2D;
    }
    this.record(ctx, leaves, keep);
    return tf.reshape(out, shape);
  }

  private record(ctx: ForwardContext, leaves: Int32Array, keep?: Float32Array): void {
    const L = this.numLeaves;
    const n = leaves.length;
    const counts = new Array<number>(L).fill(0);
    const tok: number[] = [];
    const ex: number[] = [];
    leaves.forEach((leaf, t) => {
      if (keep && keep[leaf] === 0) return;
      counts[leaf]!++;
      tok.push(t);
      ex.push(leaf);
    });
    const total = tok.length || 1;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: L,
      tokens: n,
      counts,
      load: counts.map((c) => c / total),
      dropRate: 0,
      // training evaluates every leaf (soft mixture); inference one
      expertsPerToken: ctx.training ? L : 1,
    };
    if (ctx.stats !== false) ctx.routing.push(stats);
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: Int32Array.from(tok), expertIndex: Int32Array.from(ex), tokens: n });
      ctx.assignments.set(this.path, list);
    }
  }

  /** Inference parameters per token: D nodes on the path, one leaf, the master leaf. */
  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    const d = this.dModel;
    const l = this.options.leafWidth;
    const m = this.masterMix ? this.options.masterLeafWidth : 0;
    return this.depth * (d + 1) + 2 * d * l + l + d + (m > 0 ? 2 * d * m + m + d + 1 : 0);
  }

  /** Inference MACs per token: D node dot products, one leaf, the master leaf. Training costs L leaves. */
  override macsPerToken(_seqLen: number): number {
    const d = this.dModel;
    const m = this.masterMix ? this.options.masterLeafWidth : 0;
    return this.depth * d + 2 * d * this.options.leafWidth + 2 * d * m;
  }
}

export const fffFFN = defineEntry({
  kind: 'ffn',
  name: 'fff',
  description: 'Fast Feedforward: binary tree of sigmoid nodes over 2^D leaf MLPs; soft mixture in training, hard descent to one leaf at inference.',
  reference: 'docs/peer-fff.md#fast-feedforward-networks; arXiv 2308.14711, 2405.16836',
  schema: Config({
    depth: Type.Integer({ minimum: 0, maximum: 16, default: defaultFFFOptions.depth, description: 'tree depth D (2^D leaves)' }),
    leafWidth: Type.Integer({ minimum: 1, default: defaultFFFOptions.leafWidth, description: 'hidden width ℓ of each leaf' }),
    activation: Type.Union(
      ACTIVATIONS.map((a) => Type.Literal(a)),
      { default: defaultFFFOptions.activation, description: 'leaf activation (official default ReLU)' },
    ),
    leafDropout: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'dropout after the leaf activation (training)' }),
    hardeningCoef: Type.Number({ minimum: 0, default: defaultFFFOptions.hardeningCoef, description: 'h: weight of the mean node entropy (paper 3.0)' }),
    balanceCoef: Type.Number({ minimum: 0, default: 0, description: 'α: weight of the follow-up load-balancing loss L·Σ f_l P̄_l' }),
    regionLeak: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'probability of swapping p ↔ 1 − p per node (training)' }),
    trainHardened: Type.Boolean({ default: false, description: 'round every node decision in training (non-differentiable tree)' }),
    masterLeaf: Type.Boolean({ default: false, description: 'follow-up Master Leaf: always-on dense leaf mixed by a learned sigmoid' }),
    masterLeafWidth: Type.Integer({ minimum: 1, default: 8 }),
    officialEvalOmitsLeafOutputBias: Type.Boolean({ default: false, description: 'reproduce the official eval_forward, which drops b2s' }),
  }),
  create: (c, ctx) => new FFFLayer(ctx.need('dModel'), c, ctx.rng),
});
