/**
 * Quantized checkpoints: target selection (routed experts by default; router and attention only
 * when named), the safetensors round trip, and loading packed (the `MoelabMoePacked` kernel when
 * the backend has it, its dequantize-then-float fallback otherwise) or dequantized.
 */
import {
  buildModel,
  forwardContext,
  hasKernel,
  type LanguageModel,
  type Module,
  MOE_PACKED_KERNEL,
  type NodeSpec,
  readSafetensors,
  Rng,
  tf,
  writeSafetensors,
} from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { testRegistry } from '../../test/registry.js';
import { isQuantized, loadQuantizedState, quantizedSize, quantizedTensors, quantizeModel, readQuantized, selectTargets } from './format.js';
import { packedBankOf } from './packed.js';
import { dequantizeTensor } from './quantize.js';

const registry = testRegistry();
type Model = Module & LanguageModel;

function tinyMoE(expert: NodeSpec = { type: 'mlp', hidden: 12, activation: 'gelu' }, seed = 5): Model {
  const spec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 16,
    stack: { groupSize: 2, repeats: 1 },
    block: {
      type: 'transformer',
      norm: 'pre',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert },
    },
  } as NodeSpec;
  return buildModel<Model>(spec, registry, seed);
}

const tokens = () =>
  tf.tensor2d(
    [
      [1, 5, 9, 2, 7, 3, 30, 12],
      [4, 4, 8, 15, 16, 23, 0, 31],
    ],
    undefined,
    'int32',
  );
const logits = (m: Model) => tf.tidy(() => m.forward(tokens(), forwardContext(new Rng(0), false)).dataSync() as Float32Array);

/** Round trip through the bytes of model.safetensors. */
function fileOf(m: Model, opts: Parameters<typeof quantizeModel>[1]) {
  const q = quantizeModel(m, opts);
  const { tensors, metadata } = quantizedTensors(q);
  return { q, file: readSafetensors(writeSafetensors(tensors, metadata), 'model.safetensors') };
}

describe('quantization targets', () => {
  it('default: the routed experts only (never the router, attention, embeddings or norms)', () => {
    const m = tinyMoE();
    const t = selectTargets(m);
    expect(t.length).toBe(4); // w1, w2 of two layers
    expect(t.every((n) => /\.ffn\.experts\.w[12]$/.test(n))).toBe(true);
    m.dispose();
  });

  it('the router and attention only when a glob names them; a glob matching nothing is an error with close names', () => {
    const m = tinyMoE();
    const router = selectTargets(m, ['**.router.*']);
    expect(router.length).toBeGreaterThan(0);
    expect(router.every((n) => n.includes('.router.'))).toBe(true);
    const all = selectTargets(m, ['**']);
    expect(all.some((n) => n.includes('attention'))).toBe(true);
    expect(all.some((n) => n.includes('.ln1.') || n.startsWith('out_norm'))).toBe(false); // vectors are never quantized
    expect(all).toContain('lm_head.weight');
    expect(() => selectTargets(m, ['**.experts.w9'])).toThrow(/targets: target "\*\*\.experts\.w9" matches no parameter/);
    expect(() => selectTargets(m, ['**.ln?.weight'])).toThrow(/matches no matrix \(only vectors, which are never quantized\)/);
    m.dispose();
  });

  it('bad options are one-line errors', () => {
    const m = tinyMoE();
    expect(() => quantizeModel(m, { bits: 5 as 4 })).toThrow('bits: bits must be one of 8, 4, 3, 2 (got 5)');
    expect(() => quantizeModel(m, { group: 1.5 })).toThrow(/group: group must be 0/);
    expect(() => quantizeModel(m, { scheme: 'log' as 'symmetric' })).toThrow('scheme: scheme must be one of symmetric, asymmetric (got "log")');
    m.dispose();
  });
});

describe('quantized checkpoints', () => {
  it('round trip: the packed tensors and metadata read back exactly; float parameters untouched', () => {
    const m = tinyMoE();
    const { q, file } = fileOf(m, { bits: 3, group: 4, scheme: 'asymmetric' });
    expect(isQuantized(file)).toBe(true);
    const back = readQuantized(file);
    expect([...back.packed.keys()].sort()).toEqual([...q.packed.keys()].sort());
    for (const [name, p] of q.packed) {
      const r = back.packed.get(name)!;
      expect({ ...r, codes: 0, scale: 0, zero: 0 }).toEqual({ ...p, codes: 0, scale: 0, zero: 0 });
      expect(r.codes).toEqual(p.codes);
      expect(r.scale).toEqual(p.scale);
      expect(r.zero).toEqual(p.zero);
    }
    expect([...back.float.keys()].sort()).toEqual([...q.float.keys()].sort());
    // Groups of 4 rows: per 4 weights of a channel 12 bits of codes (rows padded to words) and a
    // float scale and zero point: smaller than float32, but far from 3/32 of it.
    const { packedBytes, floatBytes } = quantizedSize(q.packed);
    expect(packedBytes).toBeLessThan(floatBytes);
    m.dispose();
  });

  for (const expert of [
    { type: 'mlp', hidden: 12, activation: 'gelu' },
    { type: 'glu', hidden: 12 },
  ] as NodeSpec[]) {
    const kind = (expert as { type: string }).type;
    it(`a ${kind} model loads packed and dequantized to the same logits as the dequantized weights (${hasKernel(MOE_PACKED_KERNEL) ? 'native kernel' : 'fallback'})`, () => {
      const src = tinyMoE(expert);
      const { q, file } = fileOf(src, { bits: 4, group: 0, scheme: 'symmetric' });
      // The reference: the source model with its expert weights replaced by W^.
      for (const [name, v] of src.stateDict()) {
        const p = q.packed.get(name);
        if (p) v.assign(tf.tensor(dequantizeTensor(p), v.shape));
      }
      const want = logits(src);
      const dq = tinyMoE(expert, 99);
      const r1 = loadQuantizedState(dq, file, { packed: false });
      expect(r1.packedBanks).toEqual([]);
      expect(r1.dequantized.length).toBe(q.packed.size);
      const packed = tinyMoE(expert, 99);
      const r2 = loadQuantizedState(packed, file, { packed: true });
      expect(r2.packedBanks.length).toBe(2);
      const bank = packed.modules().find((mod) => packedBankOf(mod));
      expect(bank?.params.size).toBe(0); // the float expert weights are gone
      for (const got of [logits(dq), logits(packed)]) {
        let worst = 0;
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
        expect(worst).toBeLessThan(1e-4);
      }
      // Not vacuous: quantization changed the logits.
      const original = tinyMoE(expert);
      const l0 = logits(original);
      expect(Math.max(...l0.map((v, i) => Math.abs(v - want[i]!)))).toBeGreaterThan(1e-4);
      for (const m of [src, dq, packed, original]) m.dispose();
    });
  }

  it('the packed model trains its other parameters through the packed experts (gradient w.r.t. activations)', () => {
    const m = tinyMoE({ type: 'glu', hidden: 12 });
    const ref = tinyMoE({ type: 'glu', hidden: 12 }, 99);
    const { file } = fileOf(m, { bits: 8, group: 0, scheme: 'symmetric' });
    loadQuantizedState(ref, file, { packed: false });
    const packed = tinyMoE({ type: 'glu', hidden: 12 }, 99);
    loadQuantizedState(packed, file, { packed: true });
    const gradOf = (model: Model) =>
      tf.tidy(() => {
        const head = model.namedParameters().find(([n]) => n === 'lm_head.weight')![1];
        const { grads } = tf.variableGrads(() => tf.sum(tf.square(model.forward(tokens(), forwardContext(new Rng(0), false)))) as tf.Scalar, [head]);
        return grads[head.name]!.dataSync() as Float32Array;
      });
    const a = gradOf(ref);
    const b = gradOf(packed);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(a[i]!)));
    expect(worst).toBeLessThan(1e-3);
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(0);
    for (const x of [m, ref, packed]) x.dispose();
  });

  it('bad files: missing codes, wrong shapes, unknown version, quantized tensors without metadata; the model is left untouched', () => {
    const m = tinyMoE();
    const { file } = fileOf(m, { bits: 4 });
    const name = [...file.tensors.keys()].find((n) => n.endsWith('.qcodes'))!;
    const drop = { tensors: new Map(file.tensors), metadata: file.metadata };
    drop.tensors.delete(name);
    expect(() => readQuantized(drop)).toThrow(new RegExp(`tensor "${name.replace(/\./g, '\\.')}" is missing`));
    const bad = { tensors: new Map(file.tensors), metadata: file.metadata };
    const t = file.tensors.get(name)!;
    bad.tensors.set(name, { ...t, shape: [t.shape[0]!, t.shape[1]!, t.shape[2]! + 1], data: new Int32Array(t.data.length + t.shape[0]! * t.shape[1]!) });
    expect(() => readQuantized(bad)).toThrow(/has shape \[.*\], expected \[.*\]/);
    expect(() => readQuantized({ tensors: file.tensors, metadata: { 'moelab.quantization': '{"version":7,"tensors":{}}' } })).toThrow(
      'model.safetensors: quantization format version 7 is not supported (this moelab reads version 1)',
    );
    expect(() => readQuantized({ tensors: file.tensors, metadata: {} })).toThrow(/is quantized but the file has no "moelab.quantization" metadata/);
    // A model of another shape: one error, and the target model keeps its float weights.
    const other = buildModel<Model>(
      {
        type: 'transformer-lm',
        vocabSize: 32,
        dModel: 16,
        contextLength: 16,
        stack: { groupSize: 2, repeats: 1 },
        block: {
          type: 'transformer',
          norm: 'pre',
          attention: { type: 'mha', heads: 2 },
          ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } },
        },
      } as NodeSpec,
      registry,
      1,
    );
    const before = other.stateDict().length;
    expect(() => loadQuantizedState(other, file, { packed: true })).toThrow(/tensors do not match the model — wrong shape/);
    expect(other.stateDict().length).toBe(before);
    expect(other.modules().some((mod) => packedBankOf(mod))).toBe(false);
    m.dispose();
    other.dispose();
  });
});
