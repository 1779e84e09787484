/**
 * S'MoRE, Structural Mixture of Residual Experts (Zeng et al., NeurIPS 2025, arXiv 2504.06426; official
 * code github.com/ZimpleX/SMoRE-LLM, `SMoREFFN` in `peft/src/peft/tuners/hier_moe/layer.py`): a map
 * Δ: R^{d_in} → R^{d_out} built from L pools of low-rank residual experts (pool 0 = leaves, pool L-1 = top).
 *
 * Hidden sizes:  d_0 = 0,  d_{l+1} = d_l + s_l · r_l.
 *
 * Routing, top-down. x̂ = W_dn x + b_dn. A node of pool l whose ancestors hold keys k_{L-1} … k_{l+1}
 * (empty for the top pool) asks its gate for children:
 *
 *   q = MLP_l([x̂ ; k_{L-1} ; … ; k_{l+1}]),   π = softmax(q K_lᵀ),   MLP_l = Linear → ReLU → Linear
 *   switch gate: children = TopK(π, f_l), α = π[children] (renormalised to sum 1 when f_l > 1)
 *   dense gate:  every expert is a child, α = π
 *
 * A child passes its raw key K_l[child] down. One expert can sit under several parents; every
 * occurrence is its own node, so pool l holds F_l = Π_{l' ≥ l} f_{l'} nodes per token.
 *
 * Aggregation, bottom-up. A node holding expert e of pool l, with u = c_l (B_l^e (A_l^e x + a_l^e) + b_l^e):
 *
 *   "all" (paper eq. 3):     state = σ(u)                                   (l = 0)
 *                            state = σ(u + W_l Σ_{children n} α_n state_n + w_l)   (l ≥ 1)
 *   "child_v2" (S'MoRE*):    state = u                                      (l = 0)
 *                            state = u + W_l σ(Σ_n α_n state_n) + w_l       (l ≥ 1)
 *   Δ(x) = W_proj Σ_{top nodes t} α_t state_t + b_proj
 *
 * Switch-gate balance loss, per pool: γ · s_l · Σ_i f_i P_i, with f_i = selections of expert i / routing
 * decisions (a decision is one (token, ancestor path); Σ_i f_i = f_l) and P_i the mean of π_i over the
 * decisions; summed over the pools. With uniform gate scores it equals γ · Σ_l f_l.
 *
 * Parameters keep the official state_dict names (adapter name `default`), so the authors' weights and
 * golden fixtures load as they are: `moe_downproj_x.default.{weight,bias}`, `moe_gate.default.<l>.keys`,
 * `moe_gate.default.<l>.mlp.{0,2}.{weight,bias}`, `moe_A.default.<l>` [s_l, r_l, d_in], `moe_A_bias`,
 * `moe_B.default.<l>` [s_l, d_{l+1}, r_l], `moe_B_bias`, `moe_W.default.<l>` [d_{l+1}, d_l] (l ≥ 1),
 * `moe_W_bias`, `moe_W_final.default` [d_out, d_L], `moe_W_final_bias.default`. docs/finetune.md#smore.
 */
import { type Activation, activate, type AuxLoss, type ForwardContext, Module, MoelabError, type Rng, tf } from '@moelab/core';

/** The expert non-linearity σ: the released configs use tanh. */
export const SMORE_ACTIVATIONS = ['tanh', 'identity', 'relu', 'gelu', 'silu'] as const;
export type SMoREActivation = (typeof SMORE_ACTIVATIONS)[number];

/**
 * How the adapter starts (the official `init_type` values we offer):
 * - `w_final_zero`: A, B, W kaiming-uniform, W_proj = 0, so Δ = 0 exactly (the output equals the base);
 * - `eq_1_layer`: B_l^i zero except an identity block at rows [i·r_l, (i+1)·r_l), W_l = [0; I_{d_l}],
 *   W_proj = 0 (with σ = identity the tree is algebraically one flat pool, paper Prop. 3.2);
 * - `normal`: everything random, W_proj included (Δ ≠ 0 at init; for tests and studies).
 */
export const SMORE_INITS = ['w_final_zero', 'eq_1_layer', 'normal'] as const;
export type SMoREInit = (typeof SMORE_INITS)[number];

export interface SMoREOptions {
  dIn: number;
  dOut: number;
  /** Per pool, leaves first: rank r_l of each expert. */
  ranks: number[];
  /** Per pool: number of experts s_l. */
  experts: number[];
  /** Per pool: fan-out f_l (children picked per routing decision; dense gates use s_l). */
  fanout: number[];
  /** Per pool: gate key width m_l (`d_g` in the official config). */
  gateDims: number[];
  /** Width of the down-projected router input x̂ (`dim_downproj_x`). */
  dDown: number;
  gate: 'switch' | 'dense';
  /** σ of the expert nodes. */
  activation: SMoREActivation;
  /** Where σ sits: `all` (paper eq. 3) or `child_v2` (S'MoRE*, on the aggregated children only). */
  activationPosition: 'all' | 'child_v2';
  /** Per pool: c_l = α_l / r_l (1 when no alpha is given). */
  scaling: number[];
  /** γ of the switch-gate balance loss. */
  balanceWeight: number;
  init: SMoREInit;
}

/** d_0 … d_L of eq. 4: d_0 = 0, d_{l+1} = d_l + s_l r_l. */
export function smoreHiddenSizes(ranks: readonly number[], experts: readonly number[]): number[] {
  const d = [0];
  for (let l = 0; l < ranks.length; l++) d.push(d[l]! + experts[l]! * ranks[l]!);
  return d;
}

/** Width of pool l's gate input: d_down + Σ_{l' > l} m_{l'}. */
export function smoreGateInputDim(o: Pick<SMoREOptions, 'dDown' | 'gateDims'>, l: number): number {
  let dim = o.dDown;
  for (let j = l + 1; j < o.gateDims.length; j++) dim += o.gateDims[j]!;
  return dim;
}

/**
 * Trainable parameters of one S'MoRE adapter (every bias the official module creates included):
 *
 *   P_exp = Σ_l s_l (r_l d_in + r_l) + Σ_l s_l (d_{l+1} r_l + d_{l+1}) + Σ_{l≥1} (d_{l+1} d_l + d_{l+1}) + d_out d_L + d_out
 *   P_rt  = d_in d_down + d_down + Σ_l (dim_l m_l + m_l + m_l² + m_l + s_l m_l)
 */
export function smoreParameterCount(o: Pick<SMoREOptions, 'dIn' | 'dOut' | 'ranks' | 'experts' | 'gateDims' | 'dDown'>): {
  experts: number;
  router: number;
  total: number;
} {
  const d = smoreHiddenSizes(o.ranks, o.experts);
  const L = o.ranks.length;
  let experts = 0;
  for (let l = 0; l < L; l++) {
    const s = o.experts[l]!;
    const r = o.ranks[l]!;
    experts += s * (r * o.dIn + r) + s * (d[l + 1]! * r + d[l + 1]!);
    if (l >= 1) experts += d[l + 1]! * d[l]! + d[l + 1]!;
  }
  experts += o.dOut * d[L]! + o.dOut;
  let router = o.dIn * o.dDown + o.dDown;
  for (let l = 0; l < L; l++) {
    const m = o.gateDims[l]!;
    router += smoreGateInputDim(o, l) * m + m + m * m + m + o.experts[l]! * m;
  }
  return { experts, router, total: experts + router };
}

/**
 * The tree one call built, per pool (leaves first): each node's expert, token and weight α (nodes
 * parent-major: the children of parent p are p·f_l … p·f_l + f_l − 1), and each routing decision's
 * gate distribution π ([decisions, s_l] row-major; decision p is parent p).
 */
export interface SMoRETree {
  tokens: number;
  pools: { expert: Int32Array; token: Int32Array; alpha: Float32Array; probs: Float32Array }[];
}

function sigma(x: tf.Tensor, act: SMoREActivation): tf.Tensor {
  return act === 'tanh' ? tf.tanh(x) : activate(x, act as Activation);
}

/** Parameter names of pool l (official state_dict names, adapter `default`). */
const names = {
  A: (l: number) => `moe_A.default.${l}`,
  Ab: (l: number) => `moe_A_bias.default.${l}`,
  B: (l: number) => `moe_B.default.${l}`,
  Bb: (l: number) => `moe_B_bias.default.${l}`,
  W: (l: number) => `moe_W.default.${l}`,
  Wb: (l: number) => `moe_W_bias.default.${l}`,
  keys: (l: number) => `moe_gate.default.${l}.keys`,
  g0w: (l: number) => `moe_gate.default.${l}.mlp.0.weight`,
  g0b: (l: number) => `moe_gate.default.${l}.mlp.0.bias`,
  g2w: (l: number) => `moe_gate.default.${l}.mlp.2.weight`,
  g2b: (l: number) => `moe_gate.default.${l}.mlp.2.bias`,
};

export function checkSMoREOptions(o: SMoREOptions, where = '$'): void {
  const L = o.ranks.length;
  if (L === 0) throw new MoelabError("S'MoRE needs at least one pool (ranks is empty)", `${where}.ranks`);
  for (const [key, list] of [
    ['experts', o.experts],
    ['fanout', o.fanout],
    ['gateDims', o.gateDims],
    ['scaling', o.scaling],
  ] as const)
    if (list.length !== L) throw new MoelabError(`${key} has ${list.length} entries but ranks has ${L} (one per pool, leaves first)`, `${where}.${key}`);
  for (let l = 0; l < L; l++) {
    for (const [key, v] of [
      ['ranks', o.ranks[l]!],
      ['experts', o.experts[l]!],
      ['fanout', o.fanout[l]!],
      ['gateDims', o.gateDims[l]!],
    ] as const)
      if (!Number.isInteger(v) || v < 1) throw new MoelabError(`must be a positive integer, got ${v}`, `${where}.${key}[${l}]`);
    if (o.fanout[l]! > o.experts[l]!) throw new MoelabError(`fan-out ${o.fanout[l]} exceeds the ${o.experts[l]} experts of pool ${l}`, `${where}.fanout[${l}]`);
    if (o.gate === 'dense' && o.fanout[l] !== o.experts[l])
      throw new MoelabError(`a dense gate picks every expert: fanout[${l}] must equal experts[${l}] = ${o.experts[l]}`, `${where}.fanout[${l}]`);
  }
}

/** One S'MoRE adapter Δ(x) (the formulas are in this file's header). */
export class SMoRE extends Module {
  readonly L: number;
  /** d_0 … d_L. */
  readonly d: number[];
  private readonly v = new Map<string, tf.Variable>();

  /** `where` names the options in error messages (e.g. `$.adapter`). */
  constructor(
    readonly options: SMoREOptions,
    rng: Rng,
    where = '$',
  ) {
    super();
    checkSMoREOptions(options, where);
    const o = options;
    const L = o.ranks.length;
    this.L = L;
    const d = smoreHiddenSizes(o.ranks, o.experts);
    this.d = d;
    const kaiming = (n: number, fanIn: number) => rng.uniformArray(n, -1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn));
    const zeros = (n: number) => new Float32Array(n);
    const add = (name: string, values: Float32Array, shape: number[]) => {
      this.v.set(name, this.param(name, values, shape));
    };
    const normal = o.init === 'normal';
    const eq1 = o.init === 'eq_1_layer';
    // Router: a Linear to d_down, then per pool a two-layer MLP and its keys (U(0, 1), the official MLP-router init).
    add('moe_downproj_x.default.weight', kaiming(o.dDown * o.dIn, o.dIn), [o.dDown, o.dIn]);
    add('moe_downproj_x.default.bias', kaiming(o.dDown, o.dIn), [o.dDown]);
    for (let l = 0; l < L; l++) {
      const m = o.gateDims[l]!;
      const dim = smoreGateInputDim(o, l);
      add(names.keys(l), rng.uniformArray(o.experts[l]! * m, 0, 1), [o.experts[l]!, m]);
      add(names.g0w(l), kaiming(m * dim, dim), [m, dim]);
      add(names.g0b(l), kaiming(m, dim), [m]);
      add(names.g2w(l), kaiming(m * m, m), [m, m]);
      add(names.g2b(l), kaiming(m, m), [m]);
    }
    // Experts: A kaiming-uniform per slice, biases 0; B and W per init.
    for (let l = 0; l < L; l++) {
      const s = o.experts[l]!;
      const r = o.ranks[l]!;
      const dn = d[l + 1]!;
      add(names.A(l), kaiming(s * r * o.dIn, o.dIn), [s, r, o.dIn]);
      add(names.Ab(l), normal ? kaiming(s * r, o.dIn) : zeros(s * r), [s, r]);
      let B: Float32Array;
      if (eq1) {
        // Expert i writes its r_l outputs to rows [d_l + i r_l, d_l + (i+1) r_l): the identity block in the
        // newest part of the state, below the d_l rows that W_l carries up from the children.
        B = zeros(s * dn * r);
        for (let i = 0; i < s; i++) for (let j = 0; j < r; j++) B[i * dn * r + (d[l]! + i * r + j) * r + j] = 1;
      } else B = kaiming(s * dn * r, r);
      add(names.B(l), B, [s, dn, r]);
      add(names.Bb(l), normal ? kaiming(s * dn, r) : zeros(s * dn), [s, dn]);
      if (l >= 1) {
        let W: Float32Array;
        if (eq1) {
          W = zeros(dn * d[l]!);
          for (let j = 0; j < d[l]!; j++) W[j * d[l]! + j] = 1;
        } else W = kaiming(dn * d[l]!, d[l]!);
        add(names.W(l), W, [dn, d[l]!]);
        add(names.Wb(l), normal ? kaiming(dn, d[l]!) : zeros(dn), [dn]);
      }
    }
    add('moe_W_final.default', normal ? kaiming(o.dOut * d[L]!, d[L]!) : zeros(o.dOut * d[L]!), [o.dOut, d[L]!]);
    add('moe_W_final_bias.default', normal ? kaiming(o.dOut, d[L]!) : zeros(o.dOut), [o.dOut]);
  }

  private p(name: string): tf.Variable {
    return this.v.get(name)!;
  }

  /** Two-layer gate MLP of pool l on its input [P, dim_l]: q [P, m_l]. */
  private query(l: number, input: tf.Tensor2D): tf.Tensor2D {
    const h = tf.relu(tf.add(tf.matMul(input, this.p(names.g0w(l)), false, true), this.p(names.g0b(l))));
    return tf.add(tf.matMul(h, this.p(names.g2w(l)), false, true), this.p(names.g2b(l))) as tf.Tensor2D;
  }

  /**
   * Δ(x) for x [..., d_in] → [..., d_out]. In training mode with a switch gate, the balance loss is pushed
   * to `ctx.aux` as `smore_balance` (weight γ; the value is the sum over pools of s_l Σ_i f_i P_i).
   */
  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const { delta, balance } = this.compute(x);
    if (balance) {
      if (ctx.training && this.options.balanceWeight !== 0) {
        const aux: AuxLoss = { name: 'smore_balance', layer: this.path, value: balance, coef: this.options.balanceWeight };
        ctx.aux.push(aux);
      } else balance.dispose();
    }
    return delta;
  }

  /** The tree of x's tokens (which experts each node holds, and α), without computing Δ. */
  route(x: tf.Tensor): SMoRETree {
    let tree: SMoRETree | undefined;
    tf.tidy(() => {
      tree = this.routeTokens(tf.reshape(x, [-1, this.options.dIn]) as tf.Tensor2D, true).tree;
    });
    return tree!;
  }

  /**
   * Δ and the unweighted balance loss Σ_l s_l Σ_i f_i P_i (null for a dense gate).
   */
  compute(x: tf.Tensor): { delta: tf.Tensor; balance: tf.Scalar | null } {
    const o = this.options;
    const lead = x.shape.slice(0, -1);
    const flat = tf.reshape(x, [-1, o.dIn]) as tf.Tensor2D;
    const { tree, alphas, balance } = this.routeTokens(flat);
    const N = tree.tokens;
    // All experts of pool l on every token: U_l [N·s_l, d_{l+1}], row t·s_l + e.
    const expertOut = (l: number): tf.Tensor2D => {
      const s = o.experts[l]!;
      const r = o.ranks[l]!;
      const dn = this.d[l + 1]!;
      const A = tf.reshape(this.p(names.A(l)), [s * r, o.dIn]);
      const ax = tf.add(tf.matMul(flat, A, false, true), tf.reshape(this.p(names.Ab(l)), [s * r])); // [N, s r]
      const perExpert = tf.transpose(tf.reshape(ax, [N, s, r]), [1, 0, 2]) as tf.Tensor3D; // [s, N, r]
      const bx = tf.matMul(perExpert, this.p(names.B(l)) as tf.Tensor3D, false, true); // [s, N, d]
      const u = tf.add(tf.transpose(bx, [1, 0, 2]), tf.reshape(this.p(names.Bb(l)), [1, s, dn])); // [N, s, d]
      const scaled = o.scaling[l] === 1 ? u : tf.mul(u, o.scaling[l]!);
      return tf.reshape(scaled, [N * s, dn]) as tf.Tensor2D;
    };
    let state: tf.Tensor2D | null = null;
    for (let l = 0; l < this.L; l++) {
      const pool = tree.pools[l]!;
      const s = o.experts[l]!;
      const rows = Int32Array.from(pool.expert, (e, n) => pool.token[n]! * s + e);
      const u = tf.gather(expertOut(l), tf.tensor1d(rows, 'int32')) as tf.Tensor2D;
      if (l === 0) state = (o.activationPosition === 'all' ? sigma(u, o.activation) : u) as tf.Tensor2D;
      else {
        const agg = this.aggregate(state!, alphas[l - 1]!, o.fanout[l - 1]!, this.d[l]!);
        const W = this.p(names.W(l));
        const Wb = this.p(names.Wb(l));
        state = (
          o.activationPosition === 'all'
            ? sigma(tf.add(tf.add(u, tf.matMul(agg, W, false, true)), Wb), o.activation)
            : tf.add(tf.add(u, tf.matMul(sigma(agg, o.activation) as tf.Tensor2D, W, false, true)), Wb)
        ) as tf.Tensor2D;
      }
    }
    const top = this.aggregate(state!, alphas[this.L - 1]!, o.fanout[this.L - 1]!, this.d[this.L]!);
    const delta = tf.add(tf.matMul(top, this.p('moe_W_final.default'), false, true), this.p('moe_W_final_bias.default'));
    return { delta: tf.reshape(delta, [...lead, o.dOut]), balance };
  }

  /** Σ over each parent's f consecutive children of α_n · state_n: [P·f, d] → [P, d]. */
  private aggregate(state: tf.Tensor2D, alpha: tf.Tensor1D, f: number, dim: number): tf.Tensor2D {
    const weighted = tf.mul(state, tf.reshape(alpha, [-1, 1]));
    return tf.sum(tf.reshape(weighted, [-1, f, dim]), 1) as tf.Tensor2D;
  }

  /**
   * Top-down routing of N tokens. Nodes of pool l are ordered parent-major: the children of parent p are
   * p·f_l … p·f_l + f_l − 1, so pool L-1 holds token t's nodes at t·f_{L-1} + j. The tree's α and π values
   * are read back only when `record` is set (route()); Δ needs only the node indices.
   */
  private routeTokens(flat: tf.Tensor2D, record = false): { tree: SMoRETree; alphas: tf.Tensor1D[]; balance: tf.Scalar | null } {
    const o = this.options;
    const N = flat.shape[0];
    let gateIn = tf.add(tf.matMul(flat, this.p('moe_downproj_x.default.weight'), false, true), this.p('moe_downproj_x.default.bias')) as tf.Tensor2D;
    let parentToken = Int32Array.from({ length: N }, (_, t) => t);
    const pools: SMoRETree['pools'] = new Array(this.L);
    const alphas: tf.Tensor1D[] = new Array(this.L);
    let balance: tf.Scalar | null = null;
    for (let l = this.L - 1; l >= 0; l--) {
      const s = o.experts[l]!;
      const f = o.fanout[l]!;
      const P = parentToken.length;
      const keys = this.p(names.keys(l));
      const probs = tf.softmax(tf.matMul(this.query(l, gateIn), keys, false, true)) as tf.Tensor2D; // [P, s]
      let idx: Int32Array;
      let alpha: tf.Tensor1D;
      if (o.gate === 'dense') {
        idx = Int32Array.from({ length: P * s }, (_, n) => n % s);
        alpha = tf.reshape(probs, [-1]) as tf.Tensor1D;
      } else {
        const top = tf.topk(probs, f, true);
        idx = top.indices.dataSync() as Int32Array;
        top.values.dispose();
        top.indices.dispose();
        const flatIdx = Int32Array.from(idx, (e, n) => Math.floor(n / f) * s + e);
        let a = tf.reshape(tf.gather(tf.reshape(probs, [-1]), tf.tensor1d(flatIdx, 'int32')), [P, f]) as tf.Tensor2D;
        if (f > 1) a = tf.div(a, tf.sum(a, 1, true));
        alpha = tf.reshape(a, [-1]) as tf.Tensor1D;
        // Balance: s_l Σ_i f_i P_i, f_i = selections of i / decisions, P_i = mean_decisions π_i.
        const counts = new Float32Array(s);
        for (const e of idx) counts[e]! += 1 / P;
        const term = tf.mul(tf.sum(tf.mul(tf.mean(probs, 0), tf.tensor1d(counts))), s) as tf.Scalar;
        balance = balance ? (tf.add(balance, term) as tf.Scalar) : term;
      }
      const token = Int32Array.from({ length: P * f }, (_, n) => parentToken[Math.floor(n / f)]!);
      const none = new Float32Array(0);
      pools[l] = record
        ? { expert: idx, token, alpha: alpha.dataSync() as Float32Array, probs: probs.dataSync() as Float32Array }
        : { expert: idx, token, alpha: none, probs: none };
      alphas[l] = alpha;
      if (l > 0) {
        const parentOf = Int32Array.from({ length: P * f }, (_, n) => Math.floor(n / f));
        const chosenKeys = tf.gather(keys, tf.tensor1d(idx, 'int32')) as tf.Tensor2D;
        gateIn = tf.concat([tf.gather(gateIn, tf.tensor1d(parentOf, 'int32')), chosenKeys], 1) as tf.Tensor2D;
      }
      parentToken = token;
    }
    return { tree: { tokens: N, pools }, alphas, balance };
  }
}
