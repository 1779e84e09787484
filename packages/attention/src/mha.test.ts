/**
 * The `mha` entry's Hugging Face options against a plain-JavaScript attention written from the
 * equations (no tfjs in the reference): grouped-query attention (HF repeat_kv), both RoPE layouts, q/k
 * RMSNorm per head and over the projection, q/k/v biases without an o bias; GQA equals MHA with each
 * key/value head copied to its group; the KV cache holds kvHeads heads and decodes the full pass's rows.
 * RoPE scaling: the inverse frequencies of linear / llama3 / yarn against values derived by hand, and the
 * module against the reference with those frequencies; the sliding window against the reference with
 * the window's mask and against plain attention over each window's own subsequence (RoPE is relative).
 */
import {
  buildModel,
  forwardContext,
  type MultiHeadAttention,
  type NodeSpec,
  Rng,
  ropeAttentionFactor,
  ropeInvFreq,
  type TransformerLM,
  tf,
} from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { attentionBuilder, inferenceContext, input, maxDiff, registry, useCpuBackend } from '../test/helpers.js';

useCpuBackend();

const build = attentionBuilder<MultiHeadAttention>('mha');

/** A two-layer RMSNorm decoder (d 16, vocab 32, context 12, SwiGLU dense FFN) with the given attention. */
function tinyLm(attention: Record<string, unknown>): TransformerLM {
  const spec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 12,
    stack: { groupSize: 2 },
    block: { type: 'transformer', normType: 'rmsnorm', attention, ffn: { type: 'dense', hidden: 24, glu: true, activation: 'silu' } },
    outNorm: 'rmsnorm',
  } as NodeSpec;
  return buildModel<TransformerLM>(spec, registry, 2);
}

/** The logits of one forward pass over all of `ids` (batch 1). */
const fullPass = (model: TransformerLM, ids: Int32Array) => model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), inferenceContext());

/** The logits of `ids` fed through the cache in consecutive chunks of the given lengths, concatenated. */
function forwardInChunks(model: TransformerLM, ids: Int32Array, lengths: number[], cache: ReturnType<TransformerLM['createCache']>): tf.Tensor {
  const parts: tf.Tensor[] = [];
  let at = 0;
  for (const n of lengths) {
    parts.push(model.forwardCached(tf.tensor2d(ids.subarray(at, at + n), [1, n], 'int32'), inferenceContext(), cache));
    at += n;
  }
  return tf.concat(parts, 1);
}

/** y = x W^T + b for rows x [n, in], W [out, in]. */
function linear(x: Float64Array, n: number, w: tf.Tensor, b?: tf.Tensor): Float64Array {
  const [out, inF] = w.shape as [number, number];
  const W = w.dataSync();
  const B = b?.dataSync();
  const y = new Float64Array(n * out);
  for (let r = 0; r < n; r++)
    for (let o = 0; o < out; o++) {
      let s = B ? B[o]! : 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i]! * W[o * inF + i]!;
      y[r * out + o] = s;
    }
  return y;
}

/** RMSNorm of consecutive groups of `width` values: x / sqrt(mean(x²) + eps) · g (HF's eps inside the root). */
function rmsNorm(x: Float64Array, width: number, g: tf.Tensor, eps: number): Float64Array {
  const G = g.dataSync();
  const y = new Float64Array(x.length);
  for (let s = 0; s < x.length; s += width) {
    let ms = 0;
    for (let c = 0; c < width; c++) ms += x[s + c]! ** 2;
    const r = 1 / Math.sqrt(ms / width + eps);
    for (let c = 0; c < width; c++) y[s + c] = x[s + c]! * r * G[c]!;
  }
  return y;
}

/** RoPE in place on row r (position p) of one head's channels [at, at + dh): pairs per layout, angles p·inv[i], cos / sin × m. */
function rope(x: Float64Array, at: number, p: number, dims: number, inv: Float64Array, m: number, layout: 'half' | 'interleaved'): void {
  for (let i = 0; i < dims / 2; i++) {
    const th = p * inv[i]!;
    const [a, b] = layout === 'half' ? [at + i, at + i + dims / 2] : [at + 2 * i, at + 2 * i + 1];
    const xa = x[a]!;
    const xb = x[b]!;
    x[a] = m * (xa * Math.cos(th) - xb * Math.sin(th));
    x[b] = m * (xb * Math.cos(th) + xa * Math.sin(th));
  }
}

/** The attention of one sequence x [T, d] (Float64), written from the equations. */
function reference(att: MultiHeadAttention, x: Float64Array, T: number, eps: number): Float64Array {
  const { heads: H, kvHeads: Hkv, headDim: dh, ropeDims, ropeBase, ropeLayout, qkNorm, ropeScaling, slidingWindow } = att;
  const inv = ropeInvFreq(ropeDims, ropeBase, ropeScaling);
  const mr = ropeAttentionFactor(ropeScaling);
  const w = slidingWindow ?? Number.POSITIVE_INFINITY;
  let q = linear(x, T, att.q.weight, att.q.bias);
  let k = linear(x, T, att.k.weight, att.k.bias);
  const v = linear(x, T, att.v.weight, att.v.bias);
  if (qkNorm === 'head') {
    q = rmsNorm(q, dh, att.qNorm!.weight, eps);
    k = rmsNorm(k, dh, att.kNorm!.weight, eps);
  } else if (qkNorm === 'projection') {
    q = rmsNorm(q, H * dh, att.qNorm!.weight, eps);
    k = rmsNorm(k, Hkv * dh, att.kNorm!.weight, eps);
  }
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) rope(q, (t * H + h) * dh, t, ropeDims, inv, mr, ropeLayout);
    for (let h = 0; h < Hkv; h++) rope(k, (t * Hkv + h) * dh, t, ropeDims, inv, mr, ropeLayout);
  }
  const mixed = new Float64Array(T * H * dh);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / Hkv)); // repeat_kv: query head h reads kv head g
    for (let i = 0; i < T; i++) {
      const s = new Float64Array(i + 1);
      const j0 = Math.max(0, i - w + 1); // the sliding window: keys i - w < j <= i
      let m = Number.NEGATIVE_INFINITY;
      for (let j = j0; j <= i; j++) {
        let dot = 0;
        for (let c = 0; c < dh; c++) dot += q[(i * H + h) * dh + c]! * k[(j * Hkv + g) * dh + c]!;
        s[j] = dot / Math.sqrt(dh);
        m = Math.max(m, s[j]!);
      }
      let z = 0;
      for (let j = j0; j <= i; j++) z += s[j] = Math.exp(s[j]! - m);
      for (let c = 0; c < dh; c++) {
        let acc = 0;
        for (let j = j0; j <= i; j++) acc += (s[j]! / z) * v[(j * Hkv + g) * dh + c]!;
        mixed[(i * H + h) * dh + c] = acc;
      }
    }
  }
  return linear(mixed, T, att.o.weight, att.o.bias);
}

function checkAgainstReference(spec: Record<string, unknown>, d: number, T: number, eps = 1e-6, prepare?: (att: MultiHeadAttention) => void): void {
  const att = build(spec, d, 3);
  prepare?.(att);
  const x = input(2, T, d);
  const got = att.forward(x, forwardContext(new Rng(0), false)).dataSync();
  const xs = Float64Array.from(x.dataSync());
  let worst = 0;
  for (let b = 0; b < 2; b++) {
    const want = reference(att, xs.subarray(b * T * d, (b + 1) * T * d), T, eps);
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[b * T * d + i]! - want[i]!));
  }
  expect(worst).toBeLessThan(2e-5);
}

describe('mha: Hugging Face options', () => {
  it('grouped-query attention equals the reference with repeat_kv (kvHeads 2 of 4, and 1 = multi-query)', () => {
    checkAgainstReference({ heads: 4, kvHeads: 2 }, 16, 7);
    checkAgainstReference({ heads: 4, kvHeads: 1, headDim: 6 }, 16, 5);
  });

  it('GQA equals MHA whose key/value projections repeat each kv head for its group', () => {
    const gqa = build({ heads: 4, kvHeads: 2 }, 16, 1);
    const full = build({ heads: 4 }, 16, 2);
    const rep = (w: tf.Tensor) => tf.concat([0, 0, 1, 1].map((g) => tf.slice(w, [g * 4, 0], [4, -1])));
    full.q.weight.assign(gqa.q.weight);
    full.o.weight.assign(gqa.o.weight);
    full.k.weight.assign(rep(gqa.k.weight) as tf.Tensor2D);
    full.v.weight.assign(rep(gqa.v.weight) as tf.Tensor2D);
    const x = input(1, 6, 16);
    const ctx = forwardContext(new Rng(0), false);
    expect(maxDiff(gqa.forward(x, ctx), full.forward(x, ctx))).toBeLessThan(1e-6);
    expect(gqa.k.weight.shape).toEqual([8, 16]);
    expect(gqa.parameterCount()).toBe(full.parameterCount() - 2 * 8 * 16);
  });

  it('interleaved RoPE pairs (2i, 2i+1), rotate-half pairs (i, i + dims/2); partial RoPE too', () => {
    checkAgainstReference({ heads: 2, ropeLayout: 'interleaved' }, 16, 6);
    checkAgainstReference({ heads: 2, headDim: 8, ropeDims: 4, ropeLayout: 'interleaved', kvHeads: 1 }, 16, 5);
    checkAgainstReference({ heads: 2, ropeLayout: 'half', ropeBase: 500 }, 16, 6);
    const a = build({ heads: 2, ropeLayout: 'interleaved' }, 16, 4);
    const b = build({ heads: 2, ropeLayout: 'half' }, 16, 4);
    expect(
      maxDiff(a.forward(input(1, 5, 16), forwardContext(new Rng(0), false)), b.forward(input(1, 5, 16), forwardContext(new Rng(0), false))),
    ).toBeGreaterThan(1e-3);
  });

  it('q/k RMSNorm per head (Qwen3) and over the whole projection (OLMoE), with their eps', () => {
    const head = build({ heads: 4, kvHeads: 2, qkNorm: 'head', qkNormEps: 1e-5 }, 16, 5);
    expect(head.qNorm!.weight.shape).toEqual([4]);
    expect(head.kNorm!.weight.shape).toEqual([4]);
    const proj = build({ heads: 4, kvHeads: 2, qkNorm: 'projection' }, 16, 5);
    expect(proj.qNorm!.weight.shape).toEqual([16]);
    expect(proj.kNorm!.weight.shape).toEqual([8]);
    // Non-trivial gains, so that a norm applied to the wrong channels shows.
    const gains = (att: MultiHeadAttention) => {
      for (const n of [att.qNorm!, att.kNorm!]) n.weight.assign(tf.tensor1d(new Rng(9).normalArray(n.weight.size, 1)) as tf.Tensor1D);
    };
    checkAgainstReference({ heads: 4, kvHeads: 2, qkNorm: 'head', qkNormEps: 1e-5 }, 16, 6, 1e-5, gains);
    checkAgainstReference({ heads: 4, kvHeads: 2, qkNorm: 'projection' }, 16, 6, 1e-6, gains);
    checkAgainstReference({ heads: 4, kvHeads: 2, qkNorm: 'projection', qkNormEps: 0.5 }, 16, 6, 0.5, gains);
  });

  it('qkvBias puts biases on q, k, v but not o (Qwen2); bias puts them on all four', () => {
    const qwen = build({ heads: 2, qkvBias: true }, 8);
    expect([qwen.q.bias, qwen.k.bias, qwen.v.bias].every((b) => b !== undefined)).toBe(true);
    expect(qwen.o.bias).toBeUndefined();
    for (const l of [qwen.q, qwen.k, qwen.v]) l.bias!.assign(tf.tensor1d(new Rng(1).normalArray(l.bias!.size, 1)) as tf.Tensor1D);
    const x = input(1, 4, 8);
    const xs = Float64Array.from(x.dataSync());
    const want = reference(qwen, xs, 4, 1e-6);
    const got = qwen.forward(x, forwardContext(new Rng(0), false)).dataSync();
    expect(Math.max(...want.map((w, i) => Math.abs(w - got[i]!)))).toBeLessThan(2e-5);
    const all = build({ heads: 2, bias: true }, 8);
    expect(all.o.bias).toBeDefined();
    expect(build({ heads: 2, bias: true, qkvBias: false }, 8).q.bias).toBeUndefined();
  });

  it('refuses kvHeads that do not divide heads, naming the option', () => {
    expect(() => build({ heads: 4, kvHeads: 3 })).toThrow(/\$\.block\.attention\.kvHeads: kvHeads 3 does not divide heads 4/);
  });

  it('cached decoding of a GQA + interleaved + q/k-norm model equals the full pass, caching kvHeads heads', () => {
    const model = tinyLm({ type: 'mha', heads: 4, kvHeads: 2, ropeLayout: 'interleaved', qkNorm: 'head', qkvBias: true });
    const ids = Int32Array.from({ length: 10 }, (_, i) => (i * 7 + 3) % 32);
    const cache = model.createCache();
    expect(maxDiff(forwardInChunks(model, ids, [6, 1, 1, 1, 1], cache), fullPass(model, ids))).toBeLessThan(1e-4);
    expect(cache.layers[0]!.get('k')!.shape).toEqual([1, 2, 10, 4]);
    cache.dispose();
  });
});

const close = (got: ArrayLike<number>, want: number[]) => {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!), `index ${i}`).toBeLessThan(1e-12 * Math.max(1, Math.abs(want[i]!)));
};

describe('mha: RoPE scaling and sliding window', () => {
  it('inverse frequencies of linear, llama3 and yarn equal values derived by hand', () => {
    // dims 6, base 10^4: ω = [1, 10^(-4/3), 10^(-8/3)].
    const w1 = 10 ** (-4 / 3);
    const w2 = 10 ** (-8 / 3);
    close(ropeInvFreq(6, 1e4), [1, w1, w2]);
    close(ropeInvFreq(6, 1e4, { type: 'linear', factor: 4 }), [0.25, w1 / 4, w2 / 4]);
    // llama3, s 8, L 2048, l 1, h 32: wavelengths 2π (< 64: kept), 135.4 (between 64 and 2048: smoothed with
    // γ = (2048 / 135.4 − 1) / 31), 2916 (> 2048: divided by s).
    const gamma = (2048 / ((2 * Math.PI) / w1) - 1) / 31;
    close(ropeInvFreq(6, 1e4, { type: 'llama3', factor: 8, originalContext: 2048, lowFreqFactor: 1, highFreqFactor: 32 }), [
      1,
      (1 - gamma) * (w1 / 8) + gamma * w1,
      w2 / 8,
    ]);
    expect(ropeInvFreq(6, 1e4, { type: 'llama3', factor: 8, originalContext: 2048, lowFreqFactor: 1, highFreqFactor: 32 })[1]).toBeCloseTo(0.0243130525, 9);
    // yarn, dims 8, base 10^4, L 64, s 4: d(32) = 8 ln(64 / 64π) / (2 ln 10^4) = −0.497 -> floor -> 0, d(1) = 1.008 -> ceil 2,
    // so the ramp over i = 0..3 is [0, 1/2, 1, 1]: ω' = [1, 0.1 (1/8 + 1/2), 0.01 / 4, 0.001 / 4]; m = 1 + 0.1 ln 4.
    const yarn = { type: 'yarn' as const, factor: 4, originalContext: 64 };
    close(ropeInvFreq(8, 1e4, yarn), [1, 0.0625, 0.0025, 0.00025]);
    expect(ropeAttentionFactor(yarn)).toBeCloseTo(1 + 0.1 * Math.log(4), 14);
    expect(ropeAttentionFactor({ ...yarn, attentionFactor: 0.7 })).toBe(0.7);
    expect(ropeAttentionFactor({ type: 'linear', factor: 4 })).toBe(1);
    // Without truncation the ramp runs from 0 to 1.008: i = 1 is (1/1.008) interpolated.
    const r = 1 / ((8 * Math.log(64 / (2 * Math.PI))) / (2 * Math.log(1e4)));
    close(ropeInvFreq(8, 1e4, { ...yarn, truncate: false }), [1, 0.025 * r + 0.1 * (1 - r), 0.0025, 0.00025]);
  });

  it('the module rotates with the scaled frequencies (and yarn scales cos and sin): equal to the reference', () => {
    checkAgainstReference({ heads: 4, kvHeads: 2, ropeScaling: { type: 'linear', factor: 3 } }, 16, 7);
    checkAgainstReference({ heads: 2, ropeScaling: { type: 'llama3', factor: 8, originalContext: 16, highFreqFactor: 4 } }, 16, 7);
    checkAgainstReference({ heads: 2, ropeLayout: 'interleaved', ropeScaling: { type: 'yarn', factor: 4, originalContext: 8 } }, 16, 7);
    const plain = build({ heads: 2 }, 16, 3);
    const yarn = build({ heads: 2, ropeScaling: { type: 'yarn', factor: 4, originalContext: 8 } }, 16, 3);
    const x = input(1, 6, 16);
    expect(maxDiff(plain.forward(x, inferenceContext()), yarn.forward(x, inferenceContext()))).toBeGreaterThan(1e-3);
  });

  it('sliding window: equal to the reference with the window mask, and each row to plain attention over its own window', () => {
    checkAgainstReference({ heads: 4, kvHeads: 2, slidingWindow: 3 }, 16, 8);
    checkAgainstReference({ heads: 2, slidingWindow: 1 }, 16, 5);
    const T = 9;
    const w = 4;
    const windowed = build({ heads: 2, slidingWindow: w }, 16, 6);
    const plain = build({ heads: 2 }, 16, 6);
    const x = input(1, T, 16);
    const got = windowed.forward(x, inferenceContext());
    for (const i of [0, 2, 3, 5, 8]) {
      const lo = Math.max(0, i - w + 1);
      const sub = tf.slice(x, [0, lo, 0], [1, i - lo + 1, 16]);
      const want = tf.slice(plain.forward(sub, inferenceContext()), [0, i - lo, 0], [1, 1, 16]);
      expect(maxDiff(tf.slice(got, [0, i, 0], [1, 1, 16]), want), `row ${i}`).toBeLessThan(1e-5);
    }
    // A window at least as long as the sequence changes nothing.
    const wide = build({ heads: 2, slidingWindow: T }, 16, 6);
    expect(maxDiff(wide.forward(x, inferenceContext()), plain.forward(x, inferenceContext()))).toBe(0);
  });

  it('cached decoding with a sliding window and yarn RoPE equals the full pass', () => {
    const model = tinyLm({ type: 'mha', heads: 4, kvHeads: 2, slidingWindow: 3, ropeScaling: { type: 'yarn', factor: 2, originalContext: 6 } });
    const ids = Int32Array.from({ length: 10 }, (_, i) => (i * 5 + 1) % 32);
    const cache = model.createCache();
    expect(maxDiff(forwardInChunks(model, ids, [5, 2, 1, 1, 1], cache), fullPass(model, ids))).toBeLessThan(1e-4);
    cache.dispose();
  });

  it('refuses llama3 / yarn without originalContext and a non-integer window, naming the option', () => {
    expect(() => build({ heads: 2, ropeScaling: { type: 'yarn', factor: 4 } })).toThrow(
      /^\$\.block\.attention\.ropeScaling\.originalContext: yarn RoPE scaling needs originalContext/,
    );
    expect(() => build({ heads: 2, ropeScaling: { type: 'ntk', factor: 4 } })).toThrow(/ropeScaling\.type: expected one of "linear", "llama3", "yarn"/);
    expect(() => build({ heads: 2, slidingWindow: 0 })).toThrow(/slidingWindow/);
  });
});
