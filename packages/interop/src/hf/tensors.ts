/**
 * Parameter correspondences between a moelab decoder and its Hugging Face layout. Each link pairs one
 * moelab tensor with the HF tensors that hold the same numbers:
 *
 * - `same`: one HF tensor, identical data and shape (Linear weights are [out, in] on both sides);
 * - `experts`: the moelab expert bank tensor W [E, a, b] (x W_e, input-major) and E HF Linear weights
 *   [b, a] (W_e^T, output-major): HF_e = transpose(W[e]).
 *
 * Both directions are exact (a transpose moves numbers, it does not round them), so moelab -> HF -> moelab
 * is bit-exact in float32.
 */
import type { HfArchitecture } from './architectures.js';
import type { DecoderShape } from './shape.js';

export interface TensorLink {
  kind: 'same' | 'experts';
  /** `same` only: HF row r holds moelab row rowOrder[r] (first axis); an interleaved-RoPE q / k projection. */
  rowOrder?: Int32Array;
  moelab: string;
  moelabShape: number[];
  /** One HF name for `same`, E for `experts` (expert order). */
  hf: string[];
  /** Shape of each HF tensor. */
  hfShape: number[];
}

/** Every parameter of a decoder of this shape in this architecture, in model order. */
export function tensorLinks(s: DecoderShape, arch: HfArchitecture): TensorLink[] {
  const out: TensorLink[] = [];
  const same = (moelab: string, hf: string, shape: number[]) => out.push({ kind: 'same', moelab, moelabShape: shape, hf: [hf], hfShape: shape });
  const d = s.dModel;
  const qDim = s.heads * s.headDim;
  const kvDim = s.kvHeads * s.headDim;
  // Interleaved RoPE: rows of each head reordered evens-then-odds, so HF's rotate_half pairs what moelab paired.
  const order = (heads: number, width: number) => {
    const o = new Int32Array(heads * width);
    const half = s.headDim / 2;
    for (let h = 0; h < heads; h++) for (let c = 0; c < width; c++) o[h * width + c] = h * width + (c < half ? 2 * c : 2 * (c - half) + 1);
    return o;
  };
  const permuted = (moelab: string, hf: string, shape: number[], rowOrder: Int32Array) =>
    out.push({ kind: 'same', moelab, moelabShape: shape, hf: [hf], hfShape: shape, rowOrder });
  same('embedding.weight', 'model.embed_tokens.weight', [s.vocabSize, d]);
  for (let i = 0; i < s.layers; i++) {
    const m = `transformer.layers.${i}.`;
    const h = `model.layers.${i}.`;
    same(`${m}ln1.weight`, `${h}input_layernorm.weight`, [d]);
    for (const [p, rows, bias] of [
      ['q_proj', qDim, s.qkvBias],
      ['k_proj', kvDim, s.qkvBias],
      ['v_proj', kvDim, s.qkvBias],
      ['o_proj', d, s.oBias],
    ] as const) {
      const rowOrder = s.ropeInterleaved && (p === 'q_proj' || p === 'k_proj') ? order(rows / s.headDim, s.headDim) : undefined;
      const link = (mName: string, hName: string, shape: number[]) => (rowOrder ? permuted(mName, hName, shape, rowOrder) : same(mName, hName, shape));
      link(`${m}attention.${p}.weight`, `${h}self_attn.${p}.weight`, [rows, p === 'o_proj' ? qDim : d]);
      if (bias) link(`${m}attention.${p}.bias`, `${h}self_attn.${p}.bias`, [rows]);
    }
    if (s.qkNorm !== 'none') {
      const perHead = s.qkNorm === 'head';
      for (const [n, width] of [
        ['q_norm', perHead ? s.headDim : qDim],
        ['k_norm', perHead ? s.headDim : kvDim],
      ] as const) {
        if (s.ropeInterleaved) permuted(`${m}attention.${n}.weight`, `${h}self_attn.${n}.weight`, [width], order(width / s.headDim, s.headDim));
        else same(`${m}attention.${n}.weight`, `${h}self_attn.${n}.weight`, [width]);
      }
    }
    same(`${m}ln2.weight`, `${h}post_attention_layernorm.weight`, [d]);
    const f = s.ffn;
    if (f.kind === 'dense') {
      for (const [mw, hw, shape] of [
        ['w1', 'gate_proj', [f.hidden, d]],
        ['w3', 'up_proj', [f.hidden, d]],
        ['w2', 'down_proj', [d, f.hidden]],
      ] as const) {
        same(`${m}ffn.${mw}.weight`, `${h}mlp.${hw}.weight`, [...shape]);
        if (f.bias) same(`${m}ffn.${mw}.bias`, `${h}mlp.${hw}.bias`, [shape[0]]);
      }
      continue;
    }
    const n = arch.moeNames!;
    const blk = `${h}${n.block}.`;
    same(`${m}ffn.router.weight`, `${blk}gate.weight`, [f.experts, d]);
    const bank = (moelab: string, count: number, hfName: (e: number) => string, a: number, b: number) =>
      out.push({
        kind: 'experts',
        moelab,
        moelabShape: [count, a, b],
        hf: Array.from({ length: count }, (_, e) => hfName(e)),
        hfShape: [b, a],
      });
    bank(`${m}ffn.experts.w1`, f.experts, (e) => `${blk}experts.${e}.${n.gate}.weight`, d, f.hidden);
    bank(`${m}ffn.experts.w3`, f.experts, (e) => `${blk}experts.${e}.${n.up}.weight`, d, f.hidden);
    bank(`${m}ffn.experts.w2`, f.experts, (e) => `${blk}experts.${e}.${n.down}.weight`, f.hidden, d);
    if (f.sharedHidden !== undefined) {
      const sh = f.sharedHidden;
      bank(`${m}ffn.shared.w1`, 1, () => `${blk}shared_expert.gate_proj.weight`, d, sh);
      bank(`${m}ffn.shared.w3`, 1, () => `${blk}shared_expert.up_proj.weight`, d, sh);
      bank(`${m}ffn.shared.w2`, 1, () => `${blk}shared_expert.down_proj.weight`, sh, d);
      same(`${m}ffn.shared_expert_gate.weight`, `${blk}shared_expert_gate.weight`, [1, d]);
    }
  }
  same('out_norm.weight', 'model.norm.weight', [d]);
  if (!s.tieEmbeddings) same('lm_head.weight', 'lm_head.weight', [s.vocabSize, d]);
  return out;
}

/** The HF tensors of one link from its moelab tensor's data. */
export function toHfTensors(link: TensorLink, data: Float32Array): Float32Array[] {
  if (link.kind === 'same') return [link.rowOrder ? reorderRows(data, link.rowOrder, false) : data];
  const [E, a, b] = link.moelabShape as [number, number, number];
  return Array.from({ length: E }, (_, e) => transpose(data.subarray(e * a * b, (e + 1) * a * b), a, b));
}

/** The moelab tensor of one link from its HF tensors' data (in link.hf order). */
export function toMoelabTensor(link: TensorLink, parts: Float32Array[]): Float32Array {
  if (link.kind === 'same') return link.rowOrder ? reorderRows(parts[0]!, link.rowOrder, true) : parts[0]!;
  const [E, a, b] = link.moelabShape as [number, number, number];
  const out = new Float32Array(E * a * b);
  for (let e = 0; e < E; e++) out.set(transpose(parts[e]!, b, a), e * a * b);
  return out;
}

/** Row-major [rows, cols] -> [cols, rows]. */
export function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const y = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) y[c * rows + r] = x[r * cols + c]!;
  return y;
}

/** Rows of x (row count = order.length) gathered by `order` (out[r] = x[order[r]]), or scattered back (`inverse`). */
function reorderRows(x: Float32Array, order: Int32Array, inverse: boolean): Float32Array {
  const width = x.length / order.length;
  const y = new Float32Array(x.length);
  for (let r = 0; r < order.length; r++) {
    const [to, from] = inverse ? [order[r]!, r] : [r, order[r]!];
    y.set(x.subarray(from * width, (from + 1) * width), to * width);
  }
  return y;
}
