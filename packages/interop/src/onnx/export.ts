/**
 * A moelab language model as an ONNX inference graph (opset 17, IR version 8): `input_ids [B, T]`
 * int64 -> `logits [B, T, V]` float32, the same function as the model's forward pass in eval mode.
 * docs/interop.md#onnx-export lists what maps to which ONNX operators.
 *
 *   h_0 = E[ids]·scale (+ P[0:T]);   h_{l+1} = Block_{s(l)}(h_l);   logits = Norm(h_L) W_head^T (+ b)
 *
 * The graph is built from the model's JSON spec (every node resolved through the registry, defaults
 * filled in) and its weights by parameter name; each node kind has a handler here. A node kind without
 * one, or an option the graph cannot express, is refused with a one-line MoelabError naming the node
 * kind and its JSON path. Top-k routing is sparse: TopK picks each token's experts, GatherElements
 * their weights, and each expert runs only on the rows routed to it (NonZero, Gather) whose outputs
 * ScatterElements adds back (reduction "add"); `denseExperts` instead runs every expert on every row
 * and weights them by the scattered gate matrix (an option, not the default). It covers every dispatch
 * in the graph: routed FFN experts, FFF leaves, SwitchHead's value / output experts and MoA's query /
 * output experts; PEER (a Gather of the retrieved experts), BAM and MONET (every expert already runs) have none.
 * Weights over protobuf's 2 GiB limit (or any, with `externalData: true`) go to a side file, ONNX
 * external data (external-data.ts).
 */
import { MoelabError, type NodeSpec, type Registry, type RopeScaling, resolveConfig, ropeTableData } from '@moelab/core';
import { normalQuantile } from '@moelab/experts';
import type { TensorSource } from '../hf/convert.js';
import { type OnnxExternalData, toExternalData } from './external-data.js';
import { int64Tensor, OnnxGraph } from './graph.js';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64, type OnnxValueInfo } from './proto.js';

/** The ONNX operator set the exported graphs use (ONNX Runtime 1.13+ runs it). */
export const ONNX_OPSET = 17;
/** The ONNX IR version of opset 17 (ONNX 1.12). */
export const ONNX_IR_VERSION = 8;
/** Protobuf messages cannot exceed 2 GiB: weights beyond it go to ONNX external data (a side file). */
export const ONNX_MAX_BYTES = 2 ** 31 - 1;
/** Initializer bytes above which `externalData: 'auto'` writes a side file: the protobuf limit less 64 MiB for the graph itself. */
export const ONNX_INLINE_WEIGHTS_MAX_BYTES = ONNX_MAX_BYTES - (64 << 20);

export interface OnnxExportOptions {
  /** Run every expert on every token and weight them by the (sparse) gate matrix instead of dispatching: routed FFN experts, FFF leaves, SwitchHead and MoA. Default false. */
  denseExperts?: boolean;
  /** Written as the model's producer_version. */
  producerVersion?: string;
  /** Written into the graph's doc_string (e.g. the checkpoint it came from). */
  docString?: string;
  /**
   * Where the weights go: `'auto'` (default) keeps them inside the `.onnx` file unless they take more
   * than `externalDataAbove` bytes, then writes them to a side file (ONNX external data); `true` always
   * uses the side file; `false` never does (a model over the protobuf limit is then refused).
   */
  externalData?: boolean | 'auto';
  /** The threshold of `'auto'` in bytes of weights; default and upper bound {@link ONNX_INLINE_WEIGHTS_MAX_BYTES}. */
  externalDataAbove?: number;
  /** The side file's name, relative to the `.onnx` file (a plain file name). Default `model.onnx.data`. */
  externalDataLocation?: string;
}

export interface OnnxExport {
  /** The `.onnx` file. */
  bytes: Uint8Array;
  /** With external data: the side file to write beside the `.onnx` file under `externalData.location`. */
  externalData?: OnnxExternalData;
  opset: number;
  /** Counts, for a summary line. */
  nodes: number;
  initializers: number;
  parameters: number;
}

type Cfg = Record<string, unknown>;

/** Values every block reads: the sequence length, the positions, the causal mask. */
interface Shared {
  /** [1] int64: T. */
  tVec: string;
  /** [T] int64: 0 … T − 1. */
  positions: string;
  /** [T, T] float: 0 on and below the diagonal, -1e9 above. */
  mask: string;
}

/** Handler of one attention kind: (x, sources for q / k / v, parameter prefix, config, JSON path) -> [B, T, d]. */
type AttentionHandler = (ex: Exporter, src: { q: string; k: string; v: string }, prefix: string, c: Cfg, path: string) => string;
/** Handler of one ffn kind: (x, router input, prefix, config, path) -> [B, T, d]. */
type FfnHandler = (ex: Exporter, x: string, routerIn: string, prefix: string, c: Cfg, path: string) => string;
/** A router's choice for rows X [N, d]: expert indices [N, k] int64 and their combine weights [N, k]. */
interface Routing {
  indices: string;
  weights: string;
  k: number;
}
type RouterHandler = (ex: Exporter, x: string, prefix: string, c: Cfg, path: string, experts: number) => Routing;
/** An expert bank: expert e on rows [M, d] -> [M, d], and every expert on rows [N, d] -> [E, N, d]. */
interface ExpertBankGraph {
  count: number;
  one(x: string, e: number): string;
  all(x: string): string;
}
/** MONET's routing of rows [N, d]: per group, the gates g_K [N, H, E] (zero off the selected shards). */
interface MonetRoutingGraph {
  g1: string;
  g2: string;
  heads: number;
  experts: number;
  /** JSON path of the routing layer's node, for errors. */
  path: string;
}
type ExpertHandler = (ex: Exporter, prefix: string, c: Cfg, path: string, count: number) => ExpertBankGraph;

function refuse(kind: string, type: string, path: string, table: Record<string, unknown>): never {
  throw new MoelabError(`${kind} "${type}" has no ONNX export (${kind}s the ONNX export holds: ${Object.keys(table).join(', ')})`, path);
}

/** The exporter's state: the graph, the weights it reads, the shared values. */
class Exporter {
  readonly g = new OnnxGraph();
  parameters = 0;
  private readonly used = new Set<string>();
  shared!: Shared;
  /** The distinct-block index of the layer being emitted (its `layerIndex` in core's builder). */
  layerIndex = 0;
  /** The routing of the last MONET routing layer emitted, for the layers that share it (moelab's forward carry). */
  monetRouting?: MonetRoutingGraph;
  private ropeTables = new Map<string, { cos: string; sin: string }>();

  constructor(
    readonly registry: Registry,
    readonly weights: TensorSource,
    readonly options: OnnxExportOptions,
    readonly dModel: number,
    readonly contextLength: number,
  ) {}

  resolve(kind: Parameters<typeof resolveConfig>[1], node: unknown, path: string): { type: string; config: Cfg } {
    return resolveConfig(this.registry, kind, node as NodeSpec, path);
  }

  /** A weight's data, checked against the shape the spec implies. */
  read(name: string, shape: number[]): Float32Array {
    const got = this.weights.shape(name);
    if (!got) throw new MoelabError(`tensor "${name}" is missing (the ONNX graph of this spec needs it)`, this.weights.where(name));
    if (got.length !== shape.length || got.some((s, i) => s !== shape[i]))
      throw new MoelabError(`tensor "${name}" has shape [${got}], the ONNX graph of this spec needs [${shape}]`, this.weights.where(name));
    if (!this.used.has(name)) {
      this.used.add(name);
      this.parameters += shape.reduce((a, b) => a * b, 1);
    }
    return this.weights.read(name);
  }

  /** A weight as an initializer of the same shape. */
  param(name: string, shape: number[]): string {
    return this.g.float(name, shape, () => this.read(name, shape));
  }

  /** A Linear's weight [out, in] transposed to [in, out] for MatMul. */
  linearWeight(name: string, inF: number, outF: number): string {
    return this.g.float(`${name}^T`, [inF, outF], () => transpose2d(this.read(name, [outF, inF]), outF, inF));
  }

  /** y = x W^T (+ b) of the Linear at `prefix`. */
  linear(x: string, prefix: string, inF: number, outF: number, bias: boolean): string {
    const y = this.g.matmul(x, this.linearWeight(`${prefix}.weight`, inF, outF));
    return bias ? this.g.add(y, this.param(`${prefix}.bias`, [outF])) : y;
  }

  /** x / √(mean(x²) + ε) · g over the last axis. */
  rmsNorm(x: string, gain: string, eps: number): string {
    const g = this.g;
    const ms = g.reduceMean(g.mul(x, x), [-1], true);
    const inv = g.op('Reciprocal', [g.op('Sqrt', [g.add(ms, g.f32(eps))])]);
    return g.mul(g.mul(x, inv), gain);
  }

  /** A `norm` node (layernorm, rmsnorm) over the model dimension. */
  norm(x: string, node: unknown, path: string, prefix: string, dim = this.dModel): string {
    const n = this.resolve('norm', node, path);
    if (n.type === 'rmsnorm') return this.rmsNorm(x, this.param(`${prefix}.weight`, [dim]), n.config.eps as number);
    if (n.type === 'layernorm') {
      const inputs = [x, this.param(`${prefix}.weight`, [dim])];
      if (n.config.bias) inputs.push(this.param(`${prefix}.bias`, [dim]));
      return this.g.op('LayerNormalization', inputs, { axis: { i: -1 }, epsilon: { f: n.config.eps as number } });
    }
    return refuse('norm', n.type, path, { layernorm: 1, rmsnorm: 1 });
  }

  activation(x: string, act: string, path: string): string {
    const g = this.g;
    switch (act) {
      case 'relu':
        return g.op('Relu', [x]);
      case 'relu2': {
        const r = g.op('Relu', [x]);
        return g.mul(r, r);
      }
      case 'gelu':
        return g.mul(g.mul(x, g.f32(0.5)), g.add(g.f32(1), g.op('Erf', [g.mul(x, g.f32(Math.SQRT1_2))])));
      case 'gelu-tanh': {
        const inner = g.mul(g.f32(Math.sqrt(2 / Math.PI)), g.add(x, g.mul(g.f32(0.044715), g.mul(x, g.mul(x, x)))));
        return g.mul(g.mul(x, g.f32(0.5)), g.add(g.f32(1), g.op('Tanh', [inner])));
      }
      case 'silu':
        return g.mul(x, g.sigmoid(x));
      case 'identity':
        return x;
    }
    throw new MoelabError(`activation "${act}" has no ONNX export`, path);
  }

  /** cos / sin tables [contextLength, dims] (core's ropeTableData: float64 angles, context scaling) sliced to [T, dims]. */
  rope(dims: number, base: number, scaling?: RopeScaling): { cos: string; sin: string } {
    const key = `${dims}.${base}${scaling ? `.${JSON.stringify(scaling)}` : ''}`;
    let t = this.ropeTables.get(key);
    if (!t) {
      const C = this.contextLength;
      const { cos, sin } = ropeTableData(C, dims, base, 0, scaling);
      const g = this.g;
      const id = this.ropeTables.size;
      const cut = (name: string, data: Float32Array) =>
        g.op('Slice', [g.float(name, [C, dims], () => data), g.i64([0]), this.shared.tVec, g.i64([0])], {}, 'rope_table');
      // Plain tables are named by dims and base; scaled ones get a running number (their key is the whole scaling).
      const name = scaling ? `${dims}.${base}.scaled${id}` : `${dims}.${base}`;
      t = { cos: cut(`rope.cos.${name}`, cos), sin: cut(`rope.sin.${name}`, sin) };
      this.ropeTables.set(key, t);
    }
    return t;
  }

  /** RoPE of the first `dims` channels of x [B, H, T, dh] (rope.ts: rotate-half, or interleaved via a channel reorder). */
  applyRope(x: string, dh: number, dims: number, base: number, layout: string, scaling?: RopeScaling): string {
    if (dims <= 0) return x;
    const g = this.g;
    let back: number[] | undefined;
    if (layout === 'interleaved') {
      const toHalf = Array.from({ length: dh }, (_, c) => c);
      for (let i = 0; i < dims / 2; i++) {
        toHalf[i] = 2 * i;
        toHalf[i + dims / 2] = 2 * i + 1;
      }
      back = new Array<number>(dh);
      for (let c = 0; c < dh; c++) back[toHalf[c]!] = c;
      x = g.gather(x, g.i64(toHalf), 3);
    }
    const { cos, sin } = this.rope(dims, base, scaling);
    const rot = dims === dh ? x : g.slice(x, 3, 0, dims);
    const half = dims / 2;
    const rotated = g.concat([g.op('Neg', [g.slice(rot, 3, half, dims)]), g.slice(rot, 3, 0, half)], 3);
    let out = g.add(g.mul(rot, cos), g.mul(rotated, sin));
    if (dims !== dh) out = g.concat([out, g.slice(x, 3, dims, dh)], 3);
    return back ? g.gather(out, g.i64(back), 3) : out;
  }

  /** softmax(q k^T · scale + causal mask) v for q, k, v [B, H, T, dh] -> [B, H, T, dv]; with `window` w, keys j ≤ i − w are masked too. */
  causalAttention(q: string, k: string, v: string, scale: number, window?: number): string {
    const g = this.g;
    const scores = g.add(g.mul(g.matmul(q, g.transpose(k, [0, 1, 3, 2])), g.f32(scale)), window === undefined ? this.shared.mask : this.windowMask(window));
    return g.matmul(g.softmax(scores), v);
  }

  private windowMasks = new Map<number, string>();

  /** [T, T]: 0 where 0 ≤ i − j < w, −1e9 elsewhere (core's causalMask with a sliding window). */
  windowMask(w: number): string {
    let m = this.windowMasks.get(w);
    if (!m) {
      const g = this.g;
      const lag = g.sub(g.unsqueeze(this.shared.positions, [1]), g.unsqueeze(this.shared.positions, [0])); // i − j
      const hidden = g.op('Or', [g.op('Less', [lag, g.i64(0)]), g.op('GreaterOrEqual', [lag, g.i64(w)])]);
      m = g.op('Where', [hidden, g.f32(-1e9), g.f32(0)], {}, `window_mask_${w}`);
      this.windowMasks.set(w, m);
    }
    return m;
  }

  /** [B, T, H·dh] -> [B, H, T, dh]. */
  splitHeads(x: string, heads: number, dh: number): string {
    return this.g.transpose(this.g.reshape(x, [0, 0, heads, dh]), [0, 2, 1, 3]);
  }

  /** [B, H, T, dh] -> [B, T, H·dh]. */
  mergeHeads(x: string, heads: number, dh: number): string {
    return this.g.reshape(this.g.transpose(x, [0, 2, 1, 3]), [0, 0, heads * dh]);
  }

  /** The bank's expert-e slice [rows, cols] of a [E, rows, cols] weight, as an initializer. */
  expertSlice(name: string, E: number, rows: number, cols: number, e: number): string {
    return this.g.float(`${name}[${e}]`, [rows, cols], () => this.read(name, [E, rows, cols]).slice(e * rows * cols, (e + 1) * rows * cols));
  }
}

function transpose2d(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c]!;
  return out;
}

// ---- attention ---------------------------------------------------------------------------------

/** `mha` (packages/attention/src/mha.ts): GQA, RoPE (either layout, partial, context-scaled tables), q/k/v and o biases, q/k RMSNorm, sliding window. */
const mhaAttention: AttentionHandler = (ex, src, prefix, c, _path) => {
  const g = ex.g;
  const d = ex.dModel;
  const H = c.heads as number;
  const Hkv = (c.kvHeads as number | undefined) ?? H;
  const dh = (c.headDim as number | undefined) ?? d / H;
  const dims = (c.ropeDims as number | undefined) ?? dh;
  const qkvBias = (c.qkvBias as boolean | undefined) ?? (c.bias as boolean);
  let q = ex.linear(src.q, `${prefix}.q_proj`, d, H * dh, qkvBias);
  let k = ex.linear(src.k, `${prefix}.k_proj`, d, Hkv * dh, qkvBias);
  const v = ex.linear(src.v, `${prefix}.v_proj`, d, Hkv * dh, qkvBias);
  const eps = c.qkNormEps as number;
  if (c.qkNorm === 'projection') {
    q = ex.rmsNorm(q, ex.param(`${prefix}.q_norm.weight`, [H * dh]), eps);
    k = ex.rmsNorm(k, ex.param(`${prefix}.k_norm.weight`, [Hkv * dh]), eps);
  }
  let qh = g.reshape(q, [0, 0, H, dh]);
  let kh = g.reshape(k, [0, 0, Hkv, dh]);
  if (c.qkNorm === 'head') {
    qh = ex.rmsNorm(qh, ex.param(`${prefix}.q_norm.weight`, [dh]), eps);
    kh = ex.rmsNorm(kh, ex.param(`${prefix}.k_norm.weight`, [dh]), eps);
  }
  qh = g.transpose(qh, [0, 2, 1, 3]);
  kh = g.transpose(kh, [0, 2, 1, 3]);
  let vh = ex.splitHeads(v, Hkv, dh);
  if (Hkv !== H) {
    // GQA: query head h reads key / value head floor(h / (H / Hkv)).
    const group = g.i64(Array.from({ length: H }, (_, h) => Math.floor(h / (H / Hkv))));
    kh = g.gather(kh, group, 1);
    vh = g.gather(vh, group, 1);
  }
  const base = c.ropeBase as number;
  const layout = c.ropeLayout as string;
  const scaling = c.ropeScaling as RopeScaling | undefined;
  const out = ex.causalAttention(
    ex.applyRope(qh, dh, dims, base, layout, scaling),
    ex.applyRope(kh, dh, dims, base, layout, scaling),
    vh,
    1 / Math.sqrt(dh),
    c.slidingWindow as number | undefined,
  );
  return ex.linear(ex.mergeHeads(out, H, dh), `${prefix}.o_proj`, H * dh, d, c.bias as boolean);
};

/**
 * `switchhead` (packages/attention/src/switchhead.ts; MoEUT): q, k dense and scaled by dh^-¼ each, RoPE
 * (rotate-half) on the first n_rot channels, attention without a further 1/√dh; per head, value experts
 * chosen by top-k of σ(k_src sel_v^T) and output experts by top-k of σ(q_src sel_o^T), both dispatched.
 * With experts: 1, dense v / o and a sigmoid output gate per head.
 */
const switchHeadAttention: AttentionHandler = (ex, src, prefix, c, _path) => {
  const g = ex.g;
  const d = ex.dModel;
  const H = c.heads as number;
  const dh = (c.headDim as number | undefined) ?? d / H;
  const E = c.experts as number;
  const K = c.k as number;
  const nr = Math.floor((c.rotateFraction as number) * dh);
  const nRotate = nr - (nr % 2);
  const scale = g.f32(dh ** -0.25);
  const q = ex.splitHeads(g.mul(ex.linear(src.q, `${prefix}.q`, d, H * dh, false), scale), H, dh);
  const k = ex.splitHeads(g.mul(ex.linear(src.k, `${prefix}.k`, d, H * dh, false), scale), H, dh);
  const Xq = g.reshape(src.q, [-1, d]);
  const Xk = g.reshape(src.k, [-1, d]);
  const Xv = g.reshape(src.v, [-1, d]);
  const rows = g.op('Shape', [Xq], { start: { i: 0 }, end: { i: 1 } }); // [N]
  const base = c.ropeBase as number;
  const attend = (v: string) => ex.causalAttention(ex.applyRope(q, dh, nRotate, base, 'half'), ex.applyRope(k, dh, nRotate, base, 'half'), v, 1);
  if (E === 1) {
    const v = g.matmul(src.v, ex.linearWeight(`${prefix}.v`, d, H * dh));
    const res = g.transpose(attend(ex.splitHeads(v, H, dh)), [0, 2, 1, 3]); // [B, T, H, dh]
    const gate = g.sigmoid(g.reshape(g.matmul(src.q, ex.linearWeight(`${prefix}.sel_o`, d, H)), [0, 0, H, 1]));
    return g.matmul(g.reshape(g.mul(res, gate), [0, 0, H * dh]), ex.linearWeight(`${prefix}.o`, H * dh, d));
  }
  // Per-head choices [N, H, K] of expert h·E + e, with sigmoid gates.
  const offsets = g.reshape(g.i64(Array.from({ length: H }, (_, h) => h * E)), [1, H, 1]);
  const choose = (x: string, sel: string) => {
    const logits = g.reshape(g.matmul(x, ex.linearWeight(`${prefix}.${sel}`, d, H * E)), [0, H, E]);
    const [values, indices] = topk(g, logits, K);
    const weights = g.sigmoid(values);
    // denseExperts: the gates as a dense [N, H, E] matrix, zero off the top-k.
    const dense = () => g.op('ScatterElements', [g.zeros(g.op('Shape', [logits])), indices, weights], { axis: { i: 2 } });
    return { experts: g.add(indices, offsets), weights, dense };
  };
  const vShape = g.concat([g.op('Shape', [src.v], { start: { i: 0 }, end: { i: 2 } }), g.i64([H * dh])], 0);
  if (ex.options.denseExperts) {
    // Every value expert on every row: [H·E, N, dh] weighted by the gates and summed over e.
    const gv = g.unsqueeze(g.transpose(choose(Xk, 'sel_v').dense(), [1, 2, 0]), [3]); // [H, E, N, 1]
    const all = g.reshape(g.matmul(Xv, ex.param(`${prefix}.v`, [H * E, d, dh])), [H, E, -1, dh]);
    const v = g.op('Reshape', [g.transpose(g.reduceSum(g.mul(all, gv), [1], false), [1, 0, 2]), vShape]); // [B, T, H·dh]
    const res = g.reshape(g.transpose(attend(ex.splitHeads(v, H, dh)), [0, 2, 1, 3]), [-1, H, 1, dh]); // [N, H, 1, dh]
    // Every output expert on every head's result, weighted: [N, H, E, dh] -> [H·E, N, dh] · [H·E, dh, d].
    const weighted = g.transpose(g.reshape(g.mul(res, g.unsqueeze(choose(Xq, 'sel_o').dense(), [3])), [-1, H * E, dh]), [1, 0, 2]);
    const out = g.reduceSum(g.matmul(weighted, ex.param(`${prefix}.o`, [H * E, dh, d])), [0], false);
    return g.op('Reshape', [out, g.op('Shape', [src.q])]);
  }
  const bank = (name: string, rowsIn: number, colsOut: number) => ({
    count: H * E,
    one: (x: string, e: number) => g.matmul(x, ex.expertSlice(`${prefix}.${name}`, H * E, rowsIn, colsOut, e)),
  });
  // Assignment a = (n·H + h)·K + j: values read row n of v_src and fill row n·H + h; outputs the reverse.
  const vSel = choose(Xk, 'sel_v');
  const headRow = (pos: string) => g.div(pos, g.i64(K));
  const tokenRow = (pos: string) => g.div(pos, g.i64(H * K));
  const vZeros = g.zeros(g.concat([g.mul(rows, g.i64([H])), g.i64([dh])], 0));
  const vh = dispatch(g, Xv, vZeros, bank('v', d, dh), { ...vSel, src: tokenRow, dst: headRow }); // [N·H, dh]
  const v = g.op('Reshape', [vh, vShape]);
  const res = g.reshape(g.transpose(attend(ex.splitHeads(v, H, dh)), [0, 2, 1, 3]), [-1, dh]); // [N·H, dh]
  const oSel = choose(Xq, 'sel_o');
  const out = dispatch(g, res, g.zeros(g.concat([rows, g.i64([d])], 0)), bank('o', dh, d), { ...oSel, src: headRow, dst: tokenRow });
  return g.op('Reshape', [out, g.op('Shape', [src.q])]);
};

/**
 * `moa` (packages/attention/src/moa.ts, arXiv 2210.05144): a softmax router over E head experts picks k
 * per token (TopK, GatherElements, raw or renormalised); each chosen expert's query projection makes one
 * query slot (dispatched), the k slots attend as k heads to ONE shared key / value head, and the output
 * experts map the slots back weighted by the gates (dispatched). RoPE (optional) on queries and the key.
 */
const moaAttention: AttentionHandler = (ex, src, prefix, c, _path) => {
  const g = ex.g;
  const d = ex.dModel;
  const E = c.experts as number;
  const k = c.k as number;
  const dh = (c.headDim as number | undefined) ?? d / k;
  const router = c.router as Cfg;
  const Xq = g.reshape(src.q, [-1, d]);
  const probs = g.softmax(g.matmul(Xq, ex.param(`${prefix}.q_proj.w_gate`, [d, E])));
  const [, indices] = topk(g, probs, k);
  let gates = g.op('GatherElements', [probs, indices], { axis: { i: 1 } });
  if (router.weighting === 'renormalise') gates = renormalize(g, gates);
  const bank = (name: string, rows: number, cols: number) => ({
    count: E,
    one: (x: string, e: number) => g.matmul(x, ex.expertSlice(`${prefix}.q_proj.${name}.w`, E, rows, cols, e)),
  });
  const dims = c.rope ? dh : 0;
  const base = c.ropeBase as number;
  const kv = (which: string, x: string) => g.unsqueeze(g.matmul(x, ex.linearWeight(`${prefix}.${which}.weight`, d, dh)), [1]); // [B, 1, T, dh]
  /** The k query slots [.., dh] (N·k rows, or [N, k, dh]) attending to the shared key / value head -> [N·k, dh]. */
  const attendSlots = (q: string) => {
    const qh = g.transpose(g.op('Reshape', [q, g.concat([g.op('Shape', [src.q], { start: { i: 0 }, end: { i: 2 } }), g.i64([k, dh])], 0)]), [0, 2, 1, 3]);
    const res = ex.causalAttention(
      ex.applyRope(qh, dh, dims, base, 'half'),
      ex.applyRope(kv('k_proj', src.k), dh, dims, base, 'half'),
      kv('v_proj', src.v),
      1 / Math.sqrt(dh),
    );
    return g.reshape(g.transpose(res, [0, 2, 1, 3]), [-1, dh]);
  };
  if (ex.options.denseExperts) {
    // One-hot [N, k, E] of each slot's expert; every query expert on every row ([N, E, dh]), picked per slot.
    const slotExpert = g.op(
      'ScatterElements',
      [g.zeros(g.concat([g.op('Shape', [indices]), g.i64([E])], 0)), g.unsqueeze(indices, [2]), g.fill(g.concat([g.op('Shape', [indices]), g.i64([1])], 0), 1)],
      {
        axis: { i: 2 },
      },
    );
    const allQ = g.transpose(g.matmul(Xq, ex.param(`${prefix}.q_proj.experts.w`, [E, d, dh])), [1, 0, 2]);
    const slots = g.reshape(attendSlots(g.matmul(slotExpert, allQ)), [-1, k, dh]); // [N, k, dh]
    // Every output expert on the gate-weighted sum of the slots routed to it: [E, N, dh] · [E, dh, d], summed.
    const perExpert = g.transpose(g.matmul(g.transpose(g.mul(slotExpert, g.unsqueeze(gates, [2])), [0, 2, 1]), slots), [1, 0, 2]); // [E, N, dh]
    const out = g.reduceSum(g.matmul(perExpert, ex.param(`${prefix}.q_proj.output_experts.w`, [E, dh, d])), [0], false);
    return g.op('Reshape', [out, g.op('Shape', [src.q])]);
  }
  // Assignment a = n·k + j is query slot a of token n.
  const slot = (pos: string) => pos;
  const token = (pos: string) => g.div(pos, g.i64(k));
  const slotShape = g.op('Shape', [indices]); // [N, k]
  const slots = g.concat([g.unsqueeze(g.op('Size', [indices]), [0]), g.i64([dh])], 0); // [N·k, dh]
  const q = dispatch(g, Xq, g.zeros(slots), bank('experts', d, dh), { experts: indices, weights: g.fill(slotShape, 1), src: token, dst: slot });
  const flatSlots = attendSlots(q); // [N·k, dh]
  const out = dispatch(g, flatSlots, g.zeros(g.op('Shape', [Xq])), bank('output_experts', dh, d), { experts: indices, weights: gates, src: slot, dst: token });
  return g.op('Reshape', [out, g.op('Shape', [src.q])]);
};

/**
 * `bam-soft-moa` (packages/attention/src/bam.ts, arXiv 2408.08274): N complete attention experts (own or
 * shared K / V, GQA, RoPE) mixed per token by g = softmax(u W_r); with routing top-k, g is kept on its
 * k largest entries (TopK, GatherElements, ScatterElements), raw or renormalised. Every expert is
 * evaluated, as in moelab: the routing makes the weights sparse, not the compute.
 */
const bamAttention: AttentionHandler = (ex, src, prefix, c, _path) => {
  const g = ex.g;
  const d = ex.dModel;
  const N = c.experts as number;
  const H = c.heads as number;
  const Hkv = (c.kvHeads as number | undefined) ?? H;
  const dh = (c.headDim as number | undefined) ?? d / H;
  const dims = c.rope ? dh : 0;
  const base = c.ropeBase as number;
  let mix = g.softmax(g.matmul(src.q, ex.param(`${prefix}.router.weight`, [d, N]))); // [B, T, N]
  const routing = c.routing as Cfg;
  if (routing.type === 'topk') {
    const [, idx] = topk(g, mix, routing.k as number);
    mix = g.op('ScatterElements', [g.zeros(g.op('Shape', [mix])), idx, g.op('GatherElements', [mix, idx], { axis: { i: 2 } })], { axis: { i: 2 } });
    if (routing.weighting !== 'raw') mix = renormalize(g, mix);
  }
  const group = Hkv === H ? undefined : g.i64(Array.from({ length: H }, (_, h) => Math.floor(h / (H / Hkv))));
  const heads = (x: string, name: string, n: number) => {
    const t = ex.splitHeads(g.matmul(x, ex.param(name, [d, n * dh])), n, dh);
    return group && n === Hkv ? g.gather(t, group, 1) : t;
  };
  const kvPrefix = (j: number) => (c.kv === 'shared' ? `${prefix}.shared_kv` : `${prefix}.experts.${j}`);
  let out = '';
  for (let j = 0; j < N; j++) {
    const q = ex.applyRope(heads(src.q, `${prefix}.experts.${j}.wq`, H), dh, dims, base, 'half');
    const k = ex.applyRope(heads(src.k, `${kvPrefix(j)}.wk`, Hkv), dh, dims, base, 'half');
    const v = heads(src.v, `${kvPrefix(j)}.wv`, Hkv);
    const y = g.matmul(ex.mergeHeads(ex.causalAttention(q, k, v, 1 / Math.sqrt(dh)), H, dh), ex.param(`${prefix}.experts.${j}.wo`, [H * dh, d]));
    const term = g.mul(y, g.slice(mix, 2, j, j + 1));
    out = j === 0 ? term : g.add(out, term);
  }
  return out;
};

/**
 * `mae` (packages/attention/src/mae.ts, arXiv 2005.06537): the heads of a causal multi-head attention
 * (RoPE rotate-half on the first ropeDims channels) reweighted per token by c = h (1 − g) / (h − 1),
 * g = softmax(W_g u), before W_o. u is the query input (`granularity: "token"`) or its running mean over
 * the positions so far (`"sequence"`: a `MatMul` with the [T, T] averaging matrix, (j ≤ i) / (i + 1)).
 */
const maeAttention: AttentionHandler = (ex, src, prefix, c, _path) => {
  const g = ex.g;
  const d = ex.dModel;
  const H = c.heads as number;
  const dh = (c.headDim as number | undefined) ?? d / H;
  const dims = (c.ropeDims as number | undefined) ?? dh;
  const base = c.ropeBase as number;
  const heads = (x: string, name: string) => ex.splitHeads(ex.linear(x, `${prefix}.${name}`, d, H * dh, false), H, dh);
  const rope = (t: string) => ex.applyRope(t, dh, dims, base, 'half');
  const out = ex.causalAttention(rope(heads(src.q, 'q_proj')), rope(heads(src.k, 'k_proj')), heads(src.v, 'v_proj'), 1 / Math.sqrt(dh));
  let u = src.q;
  if (c.granularity === 'sequence') {
    const pos = ex.shared.positions;
    const seen = g.op('Cast', [g.op('LessOrEqual', [g.unsqueeze(pos, [0]), g.unsqueeze(pos, [1])])], { to: { i: ONNX_FLOAT } }); // [T, T]: j ≤ i
    u = g.matmul(g.div(seen, g.reduceSum(seen, [1], true)), u); // row i: the mean of rows 0..i
  }
  const gates = g.softmax(ex.linear(u, `${prefix}.gate`, d, H, false)); // [B, T, H]
  const scale = g.unsqueeze(g.transpose(g.mul(g.sub(g.f32(1), gates), g.f32(H / (H - 1))), [0, 2, 1]), [3]); // [B, H, T, 1]
  const weighted = g.mul(out, scale); // head j of every token scaled by its c_j
  return ex.linear(ex.mergeHeads(weighted, H, dh), `${prefix}.o_proj`, H * dh, d, false);
};

const ATTENTION: Record<string, AttentionHandler> = {
  mha: mhaAttention,
  switchhead: switchHeadAttention,
  moa: moaAttention,
  'bam-soft-moa': bamAttention,
  mae: maeAttention,
};

// ---- routers -----------------------------------------------------------------------------------

/** TopK over the last axis: [values, int64 indices]. */
function topk(g: OnnxGraph, x: string, k: number): [string, string] {
  const [values, indices] = g.node('TopK', [x, g.i64([k])], { axis: { i: -1 }, largest: { i: 1 }, sorted: { i: 1 } }, 2, 'topk');
  return [values!, indices!];
}

/** Divide each row's k weights by their sum. */
function renormalize(g: OnnxGraph, w: string): string {
  return g.div(w, g.reduceSum(w, [-1], true));
}

/**
 * Softmax top-k family (softmax-topk.ts): p = softmax(W x), S = top-k(W x [+ b]), g = γ·p_S (/ Σ p_S).
 * Noise, jitter and the balance losses are training-only.
 */
function softmaxTopK(fixed: { k?: number; renormalize?: boolean }): RouterHandler {
  return (ex, x, prefix, c, _path, E) => {
    const g = ex.g;
    const k = fixed.k ?? (c.k as number);
    const renorm = fixed.renormalize ?? (c.renormalize as boolean);
    const logits = ex.linear(x, prefix, ex.dModel, E, false);
    const probs = g.softmax(logits);
    const select = c.expertBias ? g.add(logits, ex.param(`${prefix}.e_score_correction_bias`, [E])) : logits;
    const [, indices] = topk(g, select, k);
    let weights = g.op('GatherElements', [probs, indices], { axis: { i: 1 } });
    if (renorm) weights = renormalize(g, weights);
    const scale = (c.scale as number | undefined) ?? 1;
    if (scale !== 1) weights = g.mul(weights, g.f32(scale));
    return { indices, weights, k };
  };
}

/** sigma-topk (sigma-topk.ts): S = top-k(W x), g_e = σ((W x)_e), not renormalised. Expert dropout is training-only. */
const sigmaTopK: RouterHandler = (ex, x, prefix, c, _path, E) => {
  const g = ex.g;
  const k = c.k as number;
  const logits = g.matmul(x, ex.linearWeight(`${prefix}.expert_sel`, ex.dModel, E));
  const [values, indices] = topk(g, logits, k);
  return { indices, weights: g.sigmoid(values), k };
};

/** deepseek-v3 / topk-sigmoid-normalised (deepseek-v3.ts): s = σ(W x), S = top-k(s [+ b]), g = γ·s_S (/ Σ s_S). */
function sigmoidTopK(fixed: { normalize?: boolean; scale?: number }): RouterHandler {
  return (ex, x, prefix, c, path, E) => {
    const g = ex.g;
    if (((c.groups as number | undefined) ?? 1) > 1)
      throw new MoelabError(`group-limited selection (groups ${c.groups}) has no ONNX export; set groups: 1`, `${path}.groups`);
    const k = c.k as number;
    const s = g.sigmoid(ex.linear(x, prefix, ex.dModel, E, false));
    const select = c.expertBias ? g.add(s, ex.param(`${prefix}.e_score_correction_bias`, [E])) : s;
    const [, indices] = topk(g, select, k);
    let weights = g.op('GatherElements', [s, indices], { axis: { i: 1 } });
    if (fixed.normalize ?? (c.normalize as boolean)) weights = renormalize(g, weights);
    const scale = fixed.scale ?? (c.scale as number);
    if (scale !== 1) weights = g.mul(weights, g.f32(scale));
    return { indices, weights, k };
  };
}

const ROUTERS: Record<string, RouterHandler> = {
  'softmax-topk': softmaxTopK({}),
  'noisy-topk': softmaxTopK({ renormalize: true }),
  switch: softmaxTopK({ k: 1, renormalize: false }),
  mixtral: softmaxTopK({ renormalize: true }),
  olmoe: softmaxTopK({ renormalize: false }),
  'qwen2-moe': softmaxTopK({ renormalize: false }),
  'sigma-topk': sigmaTopK,
  'deepseek-v3': sigmoidTopK({}),
  'topk-sigmoid-normalised': sigmoidTopK({ normalize: true, scale: 1 }),
};

// ---- experts -----------------------------------------------------------------------------------

/** Two-layer experts act(x W1[e]) (⊙ x W3[e]) W2[e] from banks [E, d, h] / [E, h, d] named `in`, `gate`, `out` under `prefix`. */
function twoLayerBank(
  ex: Exporter,
  prefix: string,
  E: number,
  h: number,
  act: string,
  path: string,
  names: { in: string; gate?: string; out: string },
): ExpertBankGraph {
  const g = ex.g;
  const d = ex.dModel;
  const w = (n: string) => `${prefix}.${n}`;
  return {
    count: E,
    one(x, e) {
      let hid = ex.activation(g.matmul(x, ex.expertSlice(w(names.in), E, d, h, e)), act, path);
      if (names.gate) hid = g.mul(hid, g.matmul(x, ex.expertSlice(w(names.gate), E, d, h, e)));
      return g.matmul(hid, ex.expertSlice(w(names.out), E, h, d, e));
    },
    all(x) {
      // [N, d] · [E, d, h] broadcasts to [E, N, h].
      let hid = ex.activation(g.matmul(x, ex.param(w(names.in), [E, d, h])), act, path);
      if (names.gate) hid = g.mul(hid, g.matmul(x, ex.param(w(names.gate), [E, d, h])));
      return g.matmul(hid, ex.param(w(names.out), [E, h, d]));
    },
  };
}

/** mlp / glu experts (packages/experts/src/mlp.ts): act(x W1[e]) (⊙ x W3[e]) W2[e], banks w1, w3 [E, d, h], w2 [E, h, d]. */
function mlpExperts(glu: boolean | undefined): ExpertHandler {
  return (ex, prefix, c, path, E) =>
    twoLayerBank(ex, prefix, E, c.hidden as number, c.activation as string, path, { in: 'w1', gate: (glu ?? c.glu) ? 'w3' : undefined, out: 'w2' });
}

/** sigma-moe experts (packages/experts/src/sigma-moe.ts): act(x keys[e]) values[e]. */
const sigmaMoEExperts: ExpertHandler = (ex, prefix, c, path, E) =>
  twoLayerBank(ex, prefix, E, c.size as number, c.activation as string, path, { in: 'keys', out: 'values' });

const EXPERTS: Record<string, ExpertHandler> = { mlp: mlpExperts(undefined), glu: mlpExperts(true), 'sigma-moe': sigmaMoEExperts };

function expertBank(ex: Exporter, node: unknown, path: string, prefix: string, count: number): ExpertBankGraph {
  const r = ex.resolve('expert', node, path);
  const handler = EXPERTS[r.type];
  if (!handler) return refuse('expert', r.type, path, EXPERTS);
  return handler(ex, prefix, r.config, path, count);
}

/**
 * Sparse dispatch: assignment a (a flat list A [M] of expert ids with weights W [M]) reads row src(a)
 * of `input` [R, din] and adds W[a] · expert_{A[a]}(row) to row dst(a) of `out` [R', dout]. Each expert
 * gathers only its assignments (Equal, NonZero, Gather), runs on them, and ScatterElements (reduction
 * add) puts the weighted outputs back. `src` / `dst` map the int64 positions [M] to row indices.
 */
export function dispatch(
  g: OnnxGraph,
  input: string,
  out: string,
  experts: { count: number; one(x: string, e: number): string },
  assignment: { experts: string; weights: string; src(pos: string): string; dst(pos: string): string },
): string {
  const A = g.reshape(assignment.experts, [-1]);
  const W = g.reshape(assignment.weights, [-1]);
  for (let e = 0; e < experts.count; e++) {
    const pos = g.reshape(g.op('NonZero', [g.op('Equal', [A, g.i64(e)])]), [-1]);
    const y = g.mul(experts.one(g.gather(input, assignment.src(pos), 0), e), g.unsqueeze(g.gather(W, pos, 0), [1]));
    const at = g.op('Expand', [g.unsqueeze(assignment.dst(pos), [1]), g.op('Shape', [y])]);
    out = g.op('ScatterElements', [out, at, y], { axis: { i: 0 }, reduction: { s: 'add' } });
  }
  return out;
}

/**
 * Σ over the routed (row, expert) pairs of weight · expert(row), for rows X [N, d]: dispatched (each
 * expert gathers its rows and scatters its outputs back, added) or, with denseExperts, every expert
 * on every row weighted by the gate matrix (zero off the top-k).
 */
function combineExperts(ex: Exporter, X: string, routing: Routing, bank: ExpertBankGraph): string {
  const g = ex.g;
  const { indices, weights, k } = routing;
  const E = bank.count;
  if (ex.options.denseExperts) {
    const gates = g.op('ScatterElements', [g.zeros(g.concat([g.op('Shape', [X], { start: { i: 0 }, end: { i: 1 } }), g.i64([E])], 0)), indices, weights], {
      axis: { i: 1 },
    });
    const y = bank.all(X); // [E, N, d]
    return g.reduceSum(g.mul(y, g.unsqueeze(g.transpose(gates, [1, 0]), [2])), [0], false);
  }
  // Assignment a = row·k + slot.
  const row = (pos: string) => g.div(pos, g.i64(k));
  return dispatch(g, X, g.zeros(g.op('Shape', [X])), bank, { experts: indices, weights, src: row, dst: row });
}

// ---- feed-forward ------------------------------------------------------------------------------

/** `dense` (core ffn.ts): W2 act(W1 x) or W2 (act(W1 x) ⊙ W3 x). */
const denseFfn: FfnHandler = (ex, x, _routerIn, prefix, c, path) => {
  const d = ex.dModel;
  const h = c.hidden as number;
  const bias = c.bias as boolean;
  let hid = ex.activation(ex.linear(x, `${prefix}.w1`, d, h, bias), c.activation as string, path);
  if (c.glu) hid = ex.g.mul(hid, ex.linear(x, `${prefix}.w3`, d, h, bias));
  return ex.linear(hid, `${prefix}.w2`, h, d, bias);
};

/** `moe` (core moe.ts): routed experts + optional shared experts (σ-gated with sharedGate: sigmoid). Dropless only. */
const moeFfn: FfnHandler = (ex, x, routerIn, prefix, c, path) => {
  const g = ex.g;
  const d = ex.dModel;
  requireDropless(c, path);
  const E = c.experts as number;
  const router = ex.resolve('router', c.router, `${path}.router`);
  const routerHandler = ROUTERS[router.type];
  if (!routerHandler) return refuse('router', router.type, `${path}.router`, ROUTERS);
  const X = g.reshape(x, [-1, d]);
  const R = routerIn === x ? X : g.reshape(routerIn, [-1, d]);
  const routing = routerHandler(ex, R, `${prefix}.router`, router.config, `${path}.router`, E);
  const bank = expertBank(ex, c.expert, `${path}.expert`, `${prefix}.experts`, E);
  let out = combineExperts(ex, X, routing, bank);
  if (c.shared !== undefined) {
    const sharedCount = ((ex.resolve('expert', c.shared, `${path}.shared`).config.count as number | undefined) ?? 1) as number;
    const shared = expertBank(ex, c.shared, `${path}.shared`, `${prefix}.shared`, sharedCount);
    let s = shared.one(X, 0);
    for (let i = 1; i < sharedCount; i++) s = g.add(s, shared.one(X, i));
    if (c.sharedGate === 'sigmoid') s = g.mul(s, g.sigmoid(ex.linear(R, `${prefix}.shared_expert_gate`, d, 1, false)));
    out = g.add(out, s);
  }
  return g.op('Reshape', [out, g.op('Shape', [x])]);
};

/** Refuse a capacity factor at inference: its drops depend on the other tokens of the batch. */
function requireDropless(c: Cfg, path: string): void {
  const cf = (c.evalCapacityFactor as number | undefined) ?? (c.capacityFactor as number);
  if (cf > 0)
    throw new MoelabError(
      `capacity factor ${cf} at inference drops assignments depending on the other tokens of the batch; the ONNX graph is dropless (set evalCapacityFactor: 0)`,
      `${path}.${c.evalCapacityFactor !== undefined ? 'evalCapacityFactor' : 'capacityFactor'}`,
    );
}

/** `sigma-moe` FFN (MoEUT, packages/experts/src/sigma-moe.ts): sigma-topk on the router input (flat `expert_sel`), experts `keys` / `values`. */
const sigmaMoEFfn: FfnHandler = (ex, x, routerIn, prefix, c, path) => {
  const g = ex.g;
  const d = ex.dModel;
  requireDropless(c, path);
  const E = c.experts as number;
  const X = g.reshape(x, [-1, d]);
  const R = routerIn === x ? X : g.reshape(routerIn, [-1, d]);
  const routing = sigmaTopK(ex, R, prefix, { k: c.k }, path, E);
  const bank = twoLayerBank(ex, prefix, E, c.expertSize as number, c.activation as string, path, { in: 'keys', out: 'values' });
  return g.op('Reshape', [combineExperts(ex, X, routing, bank), g.op('Shape', [x])]);
};

/**
 * `peer` (packages/experts/src/peer.ts, arXiv 2407.04153): queries q = BN(W_q x) (BatchNorm with its
 * running statistics, as in eval), per head the product-key search (TopK of each half's sub-key scores,
 * TopK of the k² sums: exact), softmax over the k scores, then the retrieved single-neuron experts by
 * Gather of their down / up embeddings: Σ softmax · σ(u_e·x) v_e.
 */
const peerFfn: FfnHandler = (ex, x, _routerIn, prefix, c, path) => {
  const g = ex.g;
  const d = ex.dModel;
  const N = c.experts as number;
  const h = c.heads as number;
  const k = c.k as number;
  const dk = c.keyDim as number;
  const S = Math.round(Math.sqrt(N));
  const F = h * dk;
  const X = g.reshape(x, [-1, d]);
  let q = ex.linear(X, `${prefix}.query_proj`, d, F, false);
  if (c.queryBatchNorm) {
    const bn = (n: string) => ex.param(`${prefix}.query_bn.${n}`, [F]);
    const std = g.op('Sqrt', [g.add(bn('running_var'), g.f32(c.bnEps as number))]);
    q = g.add(g.mul(g.div(g.sub(q, bn('running_mean')), std), bn('weight')), bn('bias'));
  }
  const halves = g.reshape(q, [-1, 2, dk / 2]); // [n·h, 2, dk/2]
  const subKeys = ex.read(`${prefix}.sub_keys`, [2, S, dk / 2]);
  const half = (i: number) => {
    const keys = g.float(`${prefix}.sub_keys[${i}]^T`, [dk / 2, S], () => transpose2d(subKeys.slice(i * S * (dk / 2), (i + 1) * S * (dk / 2)), S, dk / 2));
    return topk(g, g.matmul(g.reshape(g.slice(halves, 1, i, i + 1), [-1, dk / 2]), keys), k); // [n·h, k] scores, sub-key ids
  };
  const [v1, i1] = half(0);
  const [v2, i2] = half(1);
  const pairs = g.reshape(g.add(g.unsqueeze(v1, [2]), g.unsqueeze(v2, [1])), [-1, k * k]);
  const [scores, pick] = topk(g, pairs, k);
  const ids = g.add(
    g.mul(g.op('GatherElements', [i1, g.div(pick, g.i64(k))], { axis: { i: 1 } }), g.i64(S)),
    g.op('GatherElements', [i2, g.op('Mod', [pick, g.i64(k)])], { axis: { i: 1 } }),
  );
  const flatIds = g.reshape(ids, [-1, h * k]); // [n, h·k]
  const gates = g.reshape(g.softmax(scores), [-1, h * k]);
  const down = g.gather(ex.param(`${prefix}.w_down_embed.weight`, [N, d]), flatIds, 0); // [n, h·k, d]
  const up = g.gather(ex.param(`${prefix}.w_up_embed.weight`, [N, d]), flatIds, 0);
  const dots = g.reshape(g.matmul(down, g.unsqueeze(X, [2])), [-1, h * k]);
  const act = g.mul(ex.activation(dots, c.activation as string, path), gates);
  const out = g.matmul(g.unsqueeze(act, [1]), up); // [n, 1, d]
  return g.op('Reshape', [out, g.op('Shape', [x])]);
};

/**
 * MONET's router in eval mode for group K (packages/experts/src/monet/router.ts): z = W_K x as [N, H, E],
 * zn = (z − μ_h)·(v_h + ε)^-½ with the BatchNorm running statistics, sel = zn ≥ min(max_e zn, σ),
 * g_K = softmax(z − 1e9·[not sel]) (`GreaterOrEqual`, `Where`, `Softmax`); with k ≥ E, σ = −∞ and g_K = softmax(z).
 */
function monetGates(ex: Exporter, R: string, prefix: string, K: 1 | 2, H: number, E: number, sigma: number, eps: number): string {
  const g = ex.g;
  const z = g.reshape(ex.linear(R, `${prefix}.w${K}`, ex.dModel, H * E, false), [-1, H, E]);
  if (sigma === Number.NEGATIVE_INFINITY) return g.softmax(z);
  const norm = `${prefix}.norm${K}`;
  const mean = g.float(`${norm}.running_mean`, [H, 1], () => ex.read(`${norm}.running_mean`, [H]));
  // 1/√(v + ε) in float64, as the router computes it, stored once as float32.
  const invStd = g.float(`${norm}.inv_std`, [H, 1], () => Float32Array.from(ex.read(`${norm}.running_var`, [H]), (v) => 1 / Math.sqrt(v + eps)));
  const zn = g.mul(g.sub(z, mean), invStd);
  const max = g.op('ReduceMax', [zn], { axes: { ints: [-1] }, keepdims: { i: 1 } });
  const selected = g.op('GreaterOrEqual', [zn, g.op('Min', [max, g.f32(sigma)])]);
  return g.softmax(g.add(z, g.op('Where', [selected, g.f32(0), g.f32(-1e9)])));
}

/**
 * `monet-hd` / `monet-vd` (packages/experts/src/monet, arXiv 2412.04139, docs/monet.md) in eval mode.
 * A layer whose index is a multiple of routerGroup routes (monetGates, on the router input); the others
 * reuse the gates of the last routing layer emitted. The experts are evaluated factored, as in moelab,
 * with batched MatMuls over [N, H, E] gates and [N, E, m] shard activations a = act(U x + b_u):
 *   HD: y = g2^T (g1 a),  out = V y + (Σ_h g2) b
 *   VD: r1 = g1^T (g2 a2),  r2 = g2^T (g1 a1),  w_K = Σ_h g_K,
 *       out = [V11 (w1 ⊙ a1) + V12 r1 + w1 b1 ;  V21 r2 + V22 (w2 ⊙ a2) + w2 b2]
 * Every shard's bottom runs on every token (the sparsity is in how shards combine), so there is no
 * dispatch and `denseExperts` changes nothing here.
 */
function monetFfn(decomposition: 'horizontal' | 'vertical'): FfnHandler {
  return (ex, x, routerIn, prefix, c, path) => {
    const g = ex.g;
    const d = ex.dModel;
    const E = c.experts as number;
    const m = c.expertDim as number;
    const H = c.heads as number;
    const k = c.k as number;
    const G = c.routerGroup as number;
    const X = g.reshape(x, [-1, d]);
    let routing = ex.monetRouting;
    if (ex.layerIndex % G === 0) {
      const R = routerIn === x ? X : g.reshape(routerIn, [-1, d]);
      const sigma = k >= E ? Number.NEGATIVE_INFINITY : normalQuantile(1 - k / E);
      const gates = (K: 1 | 2) => monetGates(ex, R, `${prefix}.router`, K, H, E, sigma, c.bnEps as number);
      routing = { g1: gates(1), g2: gates(2), heads: H, experts: E, path };
      ex.monetRouting = routing;
    } else if (!routing) {
      throw new MoelabError(`this monet layer shares its router (routerGroup ${G}) but no earlier layer of the stack routes`, `${path}.routerGroup`);
    } else if (routing.heads !== H || routing.experts !== E) {
      throw new MoelabError(
        `this monet layer (heads ${H}, experts ${E}) shares the routing of ${routing.path} (heads ${routing.heads}, experts ${routing.experts}); they must match`,
        path,
      );
    }
    const { g1, g2 } = routing;
    const act = (v: string) => ex.activation(v, c.activation as string, path);
    const shards = (name: string, width: number) => g.reshape(act(ex.linear(X, `${prefix}.moe.${name}`, d, E * width, true)), [-1, E, width]);
    const flat = (t: string, width: number) => g.reshape(t, [-1, E * width]);
    const mixT = (gate: string, t: string) => g.matmul(g.transpose(gate, [0, 2, 1]), t); // Σ_h gate[h, e] t[h]
    const w1 = g.reduceSum(g1, [1], false); // [N, E]
    const w2 = g.reduceSum(g2, [1], false);
    let out: string;
    if (decomposition === 'horizontal') {
      const y = mixT(g2, g.matmul(g1, shards('u', m))); // [N, E, m]
      out = g.add(ex.linear(flat(y, m), `${prefix}.moe.v`, E * m, d, false), g.matmul(w2, ex.param(`${prefix}.moe.b`, [E, d])));
    } else {
      const hm = m / 2;
      const half = d / 2;
      const a1 = shards('u1', hm);
      const a2 = shards('u2', hm);
      const r1 = mixT(g1, g.matmul(g2, a2));
      const r2 = mixT(g2, g.matmul(g1, a1));
      const v = (name: string, t: string) => ex.linear(flat(t, hm), `${prefix}.moe.${name}`, E * hm, half, false);
      const bias = (w: string, name: string) => g.matmul(w, ex.param(`${prefix}.moe.${name}`, [E, half]));
      const top = g.add(g.add(v('v11', g.mul(a1, g.unsqueeze(w1, [2]))), v('v12', r1)), bias(w1, 'b1'));
      const bottom = g.add(g.add(v('v21', r2), v('v22', g.mul(a2, g.unsqueeze(w2, [2])))), bias(w2, 'b2'));
      out = g.concat([top, bottom], 1);
    }
    return g.op('Reshape', [out, g.op('Shape', [x])]);
  };
}

/**
 * `fff` (packages/experts/src/fff.ts, arXiv 2308.14711 and 2405.16836) at inference: hard descent from
 * the root, node ← 2·node + 1 + [w_node·x + b_node ≥ 0] at each of the D levels (`Gather` of the node's
 * weights, `ReduceSum`, `GreaterOrEqual`, `Cast`), leaf = node − (2^D − 1); each token runs only its
 * leaf's MLP act(x W1[l] + b1[l]) W2[l] (+ b2[l]), dispatched like routed experts with weight 1
 * (denseExperts: every leaf on every row, one-hot weighted). The Master Leaf is mixed in as
 * κ·y + (1 − κ)·master(x), κ = σ(master_mix).
 */
const fffFfn: FfnHandler = (ex, x, _routerIn, prefix, c, path) => {
  const g = ex.g;
  const d = ex.dModel;
  const D = c.depth as number;
  const l = c.leafWidth as number;
  const L = 2 ** D;
  const nodes = L - 1;
  const act = (v: string) => ex.activation(v, c.activation as string, path);
  const X = g.reshape(x, [-1, d]);
  const rows = g.op('Shape', [X], { start: { i: 0 }, end: { i: 1 } }); // [1]: N
  /** A [rows, cols] weight stored as [1, rows, cols] (or [1, cols]) by the layer, as a plain initializer. */
  const squeezed = (name: string, stored: number[], dims: number[]) => g.float(`${prefix}.${name}`, dims, () => ex.read(`${prefix}.${name}`, stored));
  let node = g.op('ConstantOfShape', [rows], { value: { t: int64Tensor('value', [1], [0]) } }); // [N] int64: the root
  if (nodes > 0) {
    const W = ex.param(`${prefix}.node_weights`, [nodes, d]);
    const b = squeezed('node_biases', [nodes, 1], [nodes]);
    for (let level = 0; level < D; level++) {
      const s = g.add(g.reduceSum(g.mul(g.gather(W, node, 0), X), [1], false), g.gather(b, node, 0));
      const right = g.op('Cast', [g.op('GreaterOrEqual', [s, g.f32(0)])], { to: { i: ONNX_INT64 } });
      node = g.add(g.add(g.mul(node, g.i64(2)), g.i64(1)), right);
    }
  }
  const leaf = g.unsqueeze(g.sub(node, g.i64(nodes)), [1]); // [N, 1]
  const withB2 = !c.officialEvalOmitsLeafOutputBias;
  const bias = (name: string, width: number, e: number) =>
    g.float(`${prefix}.${name}[${e}]`, [width], () => ex.read(`${prefix}.${name}`, [L, width]).slice(e * width, (e + 1) * width));
  const bank: ExpertBankGraph = {
    count: L,
    one(xr, e) {
      const h = act(g.add(g.matmul(xr, ex.expertSlice(`${prefix}.w1s`, L, d, l, e)), bias('b1s', l, e)));
      const y = g.matmul(h, ex.expertSlice(`${prefix}.w2s`, L, l, d, e));
      return withB2 ? g.add(y, bias('b2s', d, e)) : y;
    },
    all(xr) {
      const h = act(g.add(g.matmul(xr, ex.param(`${prefix}.w1s`, [L, d, l])), g.unsqueeze(ex.param(`${prefix}.b1s`, [L, l]), [1]))); // [L, N, l]
      const y = g.matmul(h, ex.param(`${prefix}.w2s`, [L, l, d]));
      return withB2 ? g.add(y, g.unsqueeze(ex.param(`${prefix}.b2s`, [L, d]), [1])) : y;
    },
  };
  let out = combineExperts(ex, X, { indices: leaf, weights: g.fill(g.op('Shape', [leaf]), 1), k: 1 }, bank);
  if (c.masterLeaf) {
    const m = c.masterLeafWidth as number;
    const h = act(g.add(g.matmul(X, squeezed('magic_w1', [1, d, m], [d, m])), squeezed('magic_b1', [1, m], [m])));
    const master = g.add(g.matmul(h, squeezed('magic_w2', [1, m, d], [m, d])), squeezed('magic_b2', [1, d], [d]));
    const kappa = g.sigmoid(ex.param(`${prefix}.master_mix`, []));
    out = g.add(g.mul(kappa, out), g.mul(g.sub(g.f32(1), kappa), master));
  }
  return g.op('Reshape', [out, g.op('Shape', [x])]);
};

const FFNS: Record<string, FfnHandler> = {
  dense: denseFfn,
  moe: moeFfn,
  'sigma-moe': sigmaMoEFfn,
  peer: peerFfn,
  'monet-hd': monetFfn('horizontal'),
  'monet-vd': monetFfn('vertical'),
  fff: fffFfn,
};

// ---- blocks and the model ----------------------------------------------------------------------

function attention(ex: Exporter, node: unknown, path: string, prefix: string, src: { q: string; k: string; v: string }): string {
  const r = ex.resolve('attention', node, path);
  const handler = ATTENTION[r.type];
  if (!handler) return refuse('attention', r.type, path, ATTENTION);
  return handler(ex, src, prefix, r.config, path);
}

function ffn(ex: Exporter, node: unknown, path: string, prefix: string, x: string, routerIn: string): string {
  const r = ex.resolve('ffn', node, path);
  const handler = FFNS[r.type];
  if (!handler) return refuse('ffn', r.type, path, FFNS);
  return handler(ex, x, routerIn, prefix, r.config, path);
}

/** A `transformer` block (core transformer.ts): sequential pre / post / peri-norm, or parallel with one or two norms. */
function block(ex: Exporter, node: unknown, path: string, prefix: string, x: string): string {
  const r = ex.resolve('block', node, path);
  if (r.type !== 'transformer') return refuse('block', r.type, path, { transformer: 1 });
  const c = r.config;
  const g = ex.g;
  const norm = (v: string, which: string) => ex.norm(v, c.normType, `${path}.normType`, `${prefix}.${which}`);
  const att = (src: { q: string; k: string; v: string }) => attention(ex, c.attention, `${path}.attention`, `${prefix}.attention`, src);
  const ff = (v: string, routerIn = v) => ffn(ex, c.ffn, `${path}.ffn`, `${prefix}.ffn`, v, routerIn);
  if (c.layout === 'parallel') {
    const u = norm(x, 'ln1');
    const u2 = c.norms === 2 ? norm(x, 'ln2') : u;
    return g.add(g.add(x, att({ q: u, k: u, v: u })), ff(u2));
  }
  switch (c.norm) {
    case 'pre': {
      const a = norm(x, 'ln1');
      const h = g.add(x, att({ q: a, k: a, v: a }));
      return g.add(h, ff(norm(h, 'ln2')));
    }
    case 'post': {
      const h = norm(g.add(x, att({ q: x, k: x, v: x })), 'ln1');
      return norm(g.add(h, ff(h)), 'ln2');
    }
    case 'peri': {
      const xn = norm(x, 'ln1');
      const h = g.add(x, att({ q: xn, k: xn, v: x }));
      return g.add(h, ff(h, norm(h, 'ln2')));
    }
  }
  throw new MoelabError(`norm placement "${c.norm}" has no ONNX export`, `${path}.norm`);
}

function valueInfo(name: string, elemType: number, dims: (number | string)[]): OnnxValueInfo {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((v) => (typeof v === 'number' ? { dimValue: v } : { dimParam: v })) } } },
  };
}

/**
 * The ONNX file of a model: its spec (resolved through `registry`) and its weights by parameter name
 * (e.g. `memorySource` over `stateTensors(model)`, or a checkpoint's safetensors). Throws a one-line
 * MoelabError naming the node kind and JSON path of anything the graph cannot express.
 */
export function exportOnnx(spec: NodeSpec, registry: Registry, weights: TensorSource, options: OnnxExportOptions = {}): OnnxExport {
  const m = resolveConfig(registry, 'model', spec, '$');
  if (m.type !== 'transformer-lm') refuse('model', m.type, '$', { 'transformer-lm': 1 });
  const c = m.config as Cfg;
  const d = c.dModel as number;
  const V = c.vocabSize as number;
  const C = c.contextLength as number;
  const ex = new Exporter(registry, weights, options, d, C);
  const g = ex.g;

  const ids = 'input_ids';
  const tVec = g.op('Shape', [ids], { start: { i: 1 }, end: { i: 2 } }, 'seq_len');
  // Causal mask [T, T]: -1e9 where key position j > query position i (as core's causalMask).
  const pos = g.op('Range', [g.i64(0), g.op('Squeeze', [tVec, g.i64([0])]), g.i64(1)], {}, 'positions');
  const future = g.op('Greater', [g.unsqueeze(pos, [0]), g.unsqueeze(pos, [1])]);
  const mask = g.op('Where', [future, g.f32(-1e9), g.f32(0)], {}, 'causal_mask');
  ex.shared = { tVec, positions: pos, mask };

  let h = g.gather(ex.param('embedding.weight', [V, d]), ids, 0);
  if ((c.embeddingScale as number) !== 1) h = g.mul(h, g.f32(c.embeddingScale as number));
  if (c.positionEmbedding === 'learned') h = g.add(h, g.op('Slice', [ex.param('position_embedding.weight', [C, d]), g.i64([0]), tVec, g.i64([0])]));

  const stack = c.stack as { groupSize: number; repeats: number; order: string };
  const blocks = c.blocks as unknown[] | undefined;
  const schedule: number[] = [];
  if (stack.order === 'abab') for (let r = 0; r < stack.repeats; r++) for (let i = 0; i < stack.groupSize; i++) schedule.push(i);
  else for (let i = 0; i < stack.groupSize; i++) for (let r = 0; r < stack.repeats; r++) schedule.push(i);
  for (const i of schedule) {
    const node = blocks ? blocks[i] : c.block;
    ex.layerIndex = i;
    h = block(ex, node, blocks ? `$.blocks[${i}]` : '$.block', `transformer.layers.${i}`, h);
  }

  const hn = ex.norm(h, c.outNorm, '$.outNorm', 'out_norm');
  let logits: string;
  if (c.tieEmbeddings) logits = g.matmul(hn, g.transpose(ex.param('embedding.weight', [V, d]), [1, 0]));
  else logits = ex.linear(hn, 'lm_head', d, V, c.headBias as boolean);
  g.nodes.push({ name: 'logits_out', opType: 'Identity', input: [logits], output: ['logits'], attribute: [] });

  const inline = [...g.initializers.values()];
  const size = inline.reduce((a, t) => a + t.rawData.byteLength, 0);
  const mode = options.externalData ?? 'auto';
  const above = Math.min(options.externalDataAbove ?? ONNX_INLINE_WEIGHTS_MAX_BYTES, ONNX_INLINE_WEIGHTS_MAX_BYTES);
  if (mode === false && size > ONNX_INLINE_WEIGHTS_MAX_BYTES)
    throw new MoelabError(
      `the weights take ${(size / 2 ** 30).toFixed(2)} GiB; one ONNX protobuf file holds at most 2 GiB: allow external data (externalData: 'auto' or true)`,
      'externalData',
    );
  const split = mode === true || (mode === 'auto' && size > above) ? toExternalData(inline, options.externalDataLocation ?? 'model.onnx.data') : undefined;
  const bytes = encodeOnnxModel({
    irVersion: ONNX_IR_VERSION,
    producerName: 'moelab',
    producerVersion: options.producerVersion ?? '',
    opsetImport: [{ domain: '', version: ONNX_OPSET }],
    graph: {
      name: 'moelab',
      node: g.nodes,
      initializer: split ? split.tensors : inline,
      input: [valueInfo(ids, ONNX_INT64, ['batch', 'sequence'])],
      output: [valueInfo('logits', ONNX_FLOAT, ['batch', 'sequence', V])],
    },
    ...(options.docString ? { docString: options.docString } : {}),
    metadataProps: [
      { key: 'moelab.spec', value: JSON.stringify(spec) },
      { key: 'moelab.contextLength', value: String(C) },
    ],
  });
  if (bytes.byteLength > ONNX_MAX_BYTES)
    throw new MoelabError(`the ONNX graph takes ${(bytes.byteLength / 2 ** 30).toFixed(2)} GiB without its external weights, over protobuf's 2 GiB`, '$');
  return {
    bytes,
    ...(split ? { externalData: split.data } : {}),
    opset: ONNX_OPSET,
    nodes: g.nodes.length,
    initializers: g.initializers.size,
    parameters: ex.parameters,
  };
}
