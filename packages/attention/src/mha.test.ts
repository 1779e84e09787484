/**
 * The `mha` entry's Hugging Face options against a plain-JavaScript attention written from the
 * equations (no tfjs in the reference): grouped-query attention (HF repeat_kv), both RoPE layouts, q/k
 * RMSNorm per head and over the projection, q/k/v biases without an o bias; GQA equals MHA with each
 * key/value head copied to its group; the KV cache holds kvHeads heads and decodes the full pass's rows.
 */
import { buildModel, forwardContext, type MultiHeadAttention, type NodeSpec, Rng, type TransformerLM, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { attentionBuilder, input, maxDiff, registry, useCpuBackend } from '../test/helpers.js';

useCpuBackend();

const build = attentionBuilder<MultiHeadAttention>('mha');

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

/** RoPE in place on row r (position p) of one head's channels [at, at + dh): pairs per layout. */
function rope(x: Float64Array, at: number, p: number, dims: number, base: number, layout: 'half' | 'interleaved'): void {
  for (let i = 0; i < dims / 2; i++) {
    const th = p / base ** ((2 * i) / dims);
    const [a, b] = layout === 'half' ? [at + i, at + i + dims / 2] : [at + 2 * i, at + 2 * i + 1];
    const xa = x[a]!;
    const xb = x[b]!;
    x[a] = xa * Math.cos(th) - xb * Math.sin(th);
    x[b] = xb * Math.cos(th) + xa * Math.sin(th);
  }
}

/** The attention of one sequence x [T, d] (Float64), written from the equations. */
function reference(att: MultiHeadAttention, x: Float64Array, T: number, eps: number): Float64Array {
  const { heads: H, kvHeads: Hkv, headDim: dh, ropeDims, ropeBase, ropeLayout, qkNorm } = att;
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
    for (let h = 0; h < H; h++) rope(q, (t * H + h) * dh, t, ropeDims, ropeBase, ropeLayout);
    for (let h = 0; h < Hkv; h++) rope(k, (t * Hkv + h) * dh, t, ropeDims, ropeBase, ropeLayout);
  }
  const mixed = new Float64Array(T * H * dh);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / Hkv)); // repeat_kv: query head h reads kv head g
    for (let i = 0; i < T; i++) {
      const s = new Float64Array(i + 1);
      let m = Number.NEGATIVE_INFINITY;
      for (let j = 0; j <= i; j++) {
        let dot = 0;
        for (let c = 0; c < dh; c++) dot += q[(i * H + h) * dh + c]! * k[(j * Hkv + g) * dh + c]!;
        s[j] = dot / Math.sqrt(dh);
        m = Math.max(m, s[j]!);
      }
      let z = 0;
      for (let j = 0; j <= i; j++) z += s[j] = Math.exp(s[j]! - m);
      for (let c = 0; c < dh; c++) {
        let acc = 0;
        for (let j = 0; j <= i; j++) acc += (s[j]! / z) * v[(j * Hkv + g) * dh + c]!;
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
    const spec = {
      type: 'transformer-lm',
      vocabSize: 32,
      dModel: 16,
      contextLength: 12,
      stack: { groupSize: 2 },
      block: {
        type: 'transformer',
        normType: 'rmsnorm',
        attention: { type: 'mha', heads: 4, kvHeads: 2, ropeLayout: 'interleaved', qkNorm: 'head', qkvBias: true },
        ffn: { type: 'dense', hidden: 24, glu: true, activation: 'silu' },
      },
      outNorm: 'rmsnorm',
    } as NodeSpec;
    const model = buildModel<TransformerLM>(spec, registry, 2);
    const ids = Int32Array.from({ length: 10 }, (_, i) => (i * 7 + 3) % 32);
    const ctx = () => forwardContext(new Rng(0), false);
    const full = model.forward(tf.tensor2d(ids, [1, 10], 'int32'), ctx());
    const cache = model.createCache();
    const parts = [model.forwardCached(tf.tensor2d(ids.subarray(0, 6), [1, 6], 'int32'), ctx(), cache)];
    for (let t = 6; t < 10; t++) parts.push(model.forwardCached(tf.tensor2d(ids.subarray(t, t + 1), [1, 1], 'int32'), ctx(), cache));
    expect(maxDiff(tf.concat(parts, 1), full)).toBeLessThan(1e-4);
    expect(cache.layers[0]!.get('k')!.shape).toEqual([1, 2, 10, 4]);
    cache.dispose();
  });
});
