/**
 * Hugging Face layouts in memory, for each architecture: a moelab model exported to HF names gives the
 * logits of an independent plain-JS forward written from transformers' modeling code (test/hf-reference.ts),
 * the round trip moelab -> HF -> moelab is bit-exact, and a model an architecture cannot express is
 * refused in one line naming the architectures that can hold it.
 */
import { attention } from '@moelab/attention';
import {
  buildModel,
  corePlugin,
  createRegistry,
  forwardContext,
  type LanguageModel,
  loadState,
  type Module,
  type NodeSpec,
  Rng,
  stateTensors,
  tf,
} from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { type HfTensors, hfForward } from '../../test/hf-reference.js';
import { exportTensors, importTensors, memorySource, planExport, planImport } from './convert.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts, attention);
type Model = Module & LanguageModel;

function decoder(attentionSpec: Record<string, unknown>, ffn: Record<string, unknown>, extra: Record<string, unknown> = {}): NodeSpec {
  return {
    type: 'transformer-lm',
    vocabSize: 40,
    dModel: 16,
    contextLength: 16,
    stack: { groupSize: 2 },
    block: { type: 'transformer', normType: { type: 'rmsnorm', eps: 1e-5 }, attention: { type: 'mha', heads: 4, ...attentionSpec }, ffn },
    outNorm: { type: 'rmsnorm', eps: 1e-5 },
    ...extra,
  } as NodeSpec;
}

const glu = { type: 'glu', hidden: 12, activation: 'silu' };
const moe = (router: Record<string, unknown>, more: Record<string, unknown> = {}) => ({ type: 'moe', experts: 4, router, expert: glu, ...more });

const cases: [string, NodeSpec][] = [
  ['mixtral', decoder({ kvHeads: 2 }, moe({ type: 'mixtral' }))],
  [
    'qwen2_moe',
    decoder(
      { kvHeads: 2, qkvBias: true },
      moe({ type: 'qwen2-moe', k: 2 }, { shared: { type: 'glu', hidden: 20, activation: 'silu' }, sharedGate: 'sigmoid' }),
    ),
  ],
  ['qwen3_moe', decoder({ kvHeads: 1, headDim: 6, qkNorm: 'head', qkNormEps: 1e-5 }, moe({ type: 'softmax-topk', k: 2, renormalize: true }))],
  ['olmoe', decoder({ qkNorm: 'projection', qkNormEps: 1e-5 }, moe({ type: 'olmoe', k: 3 }), { tieEmbeddings: true })],
  ['llama', decoder({ kvHeads: 2, bias: true }, { type: 'dense', hidden: 24, glu: true, activation: 'silu', bias: true })],
  ['qwen2', decoder({ kvHeads: 2, qkvBias: true }, { type: 'dense', hidden: 24, glu: true, activation: 'silu' })],
];

/** Every parameter of the model, randomised (biases and norm gains too, so a misplaced one shows). */
function randomise(model: Model, seed: number): Map<string, { shape: number[]; data: Float32Array }> {
  const rng = new Rng(seed);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of stateTensors(model)) {
    const data = Float32Array.from(rng.normalArray(t.data.length, name.includes('router') ? 1 : 0.3), (v) =>
      name.endsWith('norm.weight') || /ln\d\.weight/.test(name) ? 1 + v : v,
    );
    out.set(name, { shape: t.shape, data });
  }
  loadState(model, new Map([...out].map(([n, t]) => [n, { dtype: 'F32' as const, shape: t.shape, data: t.data }])), { source: 'test' });
  return out;
}

const ids = [3, 17, 5, 39, 0, 22, 8, 11, 30];

/** The attention node of a decoder spec (to read or edit its options). */
const attentionOf = (spec: NodeSpec) => (spec as unknown as { block: { attention: Record<string, unknown> } }).block.attention;

describe('Hugging Face layouts', () => {
  for (const [arch, spec] of cases) {
    it(`${arch}: exported tensors give the HF reference forward's logits; moelab -> HF -> moelab is bit-exact`, () => {
      const model = buildModel<Model>(spec, registry, 1);
      const weights = randomise(model, 7);
      const plan = planExport(spec, registry, arch);
      expect(plan.config.model_type).toBe(arch);
      const hf: HfTensors = new Map();
      exportTensors(plan, memorySource(weights), (name, shape, data) => hf.set(name, { shape, data }));
      expect(hf.size).toBe(plan.outputs.length);

      const want = hfForward(plan.config, hf, ids);
      const got = model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst).toBeLessThan(1e-4);

      const back = planImport(JSON.parse(JSON.stringify(plan.config)));
      const imported = new Map<string, { shape: number[]; data: Float32Array }>();
      importTensors(back, memorySource(hf), (name, shape, data) => imported.set(name, { shape, data }));
      expect([...imported.keys()].sort()).toEqual([...weights.keys()].sort());
      for (const [name, t] of weights) {
        const u = imported.get(name)!;
        expect(u.shape, name).toEqual(t.shape);
        expect(
          Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)),
          name,
        ).toBe(true);
      }
      // The imported spec builds the same model: it loads the imported tensors and computes the same logits.
      const again = buildModel<Model>(back.spec, registry, 2);
      loadState(again, new Map([...imported].map(([n, t]) => [n, { dtype: 'F32' as const, ...t }])), { source: 'imported' });
      const logits2 = again.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(logits2, (v, i) => Math.abs(v - got[i]!)))).toBe(0);
    });
  }

  it('interleaved RoPE exports with q/k rows reordered to rotate_half: the same logits in the HF reference and after import', () => {
    for (const [arch, spec] of [
      ['llama', decoder({ kvHeads: 2, ropeLayout: 'interleaved', bias: true }, { type: 'dense', hidden: 24, glu: true, activation: 'silu' })],
      ['qwen3_moe', decoder({ kvHeads: 2, ropeLayout: 'interleaved', qkNorm: 'head', qkNormEps: 1e-5 }, moe({ type: 'softmax-topk', k: 2 }))],
      ['olmoe', decoder({ ropeLayout: 'interleaved', qkNorm: 'projection', qkNormEps: 1e-5 }, moe({ type: 'olmoe', k: 2 }))],
    ] as [string, NodeSpec][]) {
      const model = buildModel<Model>(spec, registry, 1);
      const weights = randomise(model, 11);
      const plan = planExport(spec, registry, arch);
      expect(plan.notes.join(' ')).toMatch(/interleaved RoPE/);
      const hf: HfTensors = new Map();
      exportTensors(plan, memorySource(weights), (name, shape, data) => hf.set(name, { shape, data }));
      const want = hfForward(plan.config, hf, ids);
      const got = model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(want, (w, i) => Math.abs(w - got[i]!))), arch).toBeLessThan(1e-4);
      // Imported, it is a rotate-half model with the same logits; exported again, the same HF bits.
      const back = planImport(plan.config);
      const imported = new Map<string, { shape: number[]; data: Float32Array }>();
      importTensors(back, memorySource(hf), (name, shape, data) => imported.set(name, { shape, data }));
      const again = buildModel<Model>(back.spec, registry, 2);
      loadState(again, new Map([...imported].map(([n, t]) => [n, { dtype: 'F32' as const, ...t }])), { source: 'imported' });
      const got2 = again.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(got2, (v, i) => Math.abs(v - got[i]!))), arch).toBeLessThan(1e-4);
      const hf2: HfTensors = new Map();
      exportTensors(planExport(back.spec, registry, arch), memorySource(imported), (name, shape, data) => hf2.set(name, { shape, data }));
      for (const [name, t] of hf) expect(Array.from(hf2.get(name)!.data), name).toEqual(Array.from(t.data));
    }
  });

  const yarn = { type: 'yarn', factor: 4, originalContext: 4 };
  const windowed: [string, NodeSpec][] = [
    ['mixtral', decoder({ kvHeads: 2, slidingWindow: 4, ropeScaling: yarn }, moe({ type: 'mixtral' }))],
    [
      'qwen2_moe',
      decoder(
        { kvHeads: 2, qkvBias: true, slidingWindow: 3, ropeScaling: { type: 'llama3', factor: 8, originalContext: 8, lowFreqFactor: 1, highFreqFactor: 2 } },
        moe({ type: 'qwen2-moe', k: 2 }, { shared: { type: 'glu', hidden: 20, activation: 'silu' }, sharedGate: 'sigmoid' }),
      ),
    ],
    [
      'qwen3_moe',
      decoder({ kvHeads: 1, headDim: 6, qkNorm: 'head', qkNormEps: 1e-5, slidingWindow: 5 }, moe({ type: 'softmax-topk', k: 2, renormalize: true })),
    ],
    ['llama', decoder({ kvHeads: 2, ropeScaling: { type: 'linear', factor: 2.5 } }, { type: 'dense', hidden: 24, glu: true, activation: 'silu' })],
    [
      'qwen2',
      decoder(
        { kvHeads: 2, qkvBias: true, slidingWindow: 2, ropeScaling: { ...yarn, attentionFactor: 1.3, truncate: false, betaFast: 8, betaSlow: 2 } },
        { type: 'dense', hidden: 24, glu: true, activation: 'silu' },
      ),
    ],
    ['olmoe', decoder({ qkNorm: 'projection', qkNormEps: 1e-5, ropeScaling: { type: 'llama3', factor: 4, originalContext: 4 } }, moe({ type: 'olmoe', k: 2 }))],
  ];
  for (const [arch, spec] of windowed) {
    it(`${arch} with rope_scaling / sliding window: the HF reference's logits, config.json fields, bit-exact round trip`, () => {
      const model = buildModel<Model>(spec, registry, 1);
      const weights = randomise(model, 5);
      const plan = planExport(spec, registry, arch);
      const a = attentionOf(spec);
      const hf: HfTensors = new Map();
      exportTensors(plan, memorySource(weights), (name, shape, data) => hf.set(name, { shape, data }));
      const want = hfForward(plan.config, hf, ids);
      const got = model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(want, (w, i) => Math.abs(w - got[i]!)))).toBeLessThan(1e-4);
      // The same model without its scaling and window computes other logits: the options are not lost on the way.
      const plainSpec = structuredClone(spec);
      delete attentionOf(plainSpec).ropeScaling;
      delete attentionOf(plainSpec).slidingWindow;
      const plain = buildModel<Model>(plainSpec, registry, 1);
      randomise(plain, 5);
      const other = plain.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(want, (w, i) => Math.abs(w - other[i]!)))).toBeGreaterThan(1e-3);

      if (a.slidingWindow !== undefined && arch !== 'mixtral')
        expect(plan.config).toMatchObject({ use_sliding_window: true, sliding_window: a.slidingWindow, max_window_layers: 0 });
      if (arch === 'mixtral') expect(plan.config.sliding_window).toBe(4);
      if (arch === 'llama') expect(plan.config.rope_scaling).toEqual({ rope_type: 'linear', factor: 2.5 });
      if (arch === 'qwen2')
        expect(plan.config.rope_scaling).toEqual({
          rope_type: 'yarn',
          factor: 4,
          original_max_position_embeddings: 4,
          beta_fast: 8,
          beta_slow: 2,
          attention_factor: 1.3,
          truncate: false,
        });

      const back = planImport(JSON.parse(JSON.stringify(plan.config)));
      const ba = attentionOf(back.spec);
      expect(ba.slidingWindow).toBe(a.slidingWindow);
      if (a.ropeScaling) expect(ba.ropeScaling).toMatchObject(a.ropeScaling as object);
      const imported = new Map<string, { shape: number[]; data: Float32Array }>();
      importTensors(back, memorySource(hf), (name, shape, data) => imported.set(name, { shape, data }));
      for (const [name, t] of weights) expect(Buffer.from(imported.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), name).toBe(true);
      const again = buildModel<Model>(back.spec, registry, 2);
      loadState(again, new Map([...imported].map(([n, t]) => [n, { dtype: 'F32' as const, ...t }])), { source: 'imported' });
      const got2 = again.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), forwardContext(new Rng(0), false)).dataSync();
      expect(Math.max(...Array.from(got2, (v, i) => Math.abs(v - got[i]!)))).toBe(0);
      expect(planExport(back.spec, registry, arch).config).toEqual(plan.config);
    });
  }

  it('rope_scaling and sliding windows of real configs import; what moelab cannot hold is one line naming config.json and the field', () => {
    const base = planExport(cases[4]![1], registry).config;
    // Llama 3.1's rope_scaling, as on the Hub.
    const llama31 = { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
    const att = (c: Record<string, unknown>) => attentionOf(planImport(c).spec);
    expect(att({ ...base, rope_scaling: llama31 }).ropeScaling).toEqual({
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalContext: 8192,
    });
    // The older "type" key; yarn's original context defaults to max_position_embeddings; DeepSeek's mscale pair.
    expect(att({ ...base, rope_scaling: { type: 'yarn', factor: 4 } }).ropeScaling).toEqual({
      type: 'yarn',
      factor: 4,
      originalContext: 16,
      betaFast: 32,
      betaSlow: 1,
    });
    const ds = att({ ...base, rope_scaling: { rope_type: 'yarn', factor: 40, mscale: 1, mscale_all_dim: 0.5, original_max_position_embeddings: 4 } });
    expect((ds.ropeScaling as { attentionFactor: number }).attentionFactor).toBeCloseTo((0.1 * Math.log(40) + 1) / (0.05 * Math.log(40) + 1), 12);
    expect(att({ ...base, rope_scaling: { rope_type: 'default' } }).ropeScaling).toBeUndefined();
    expect(() => planImport({ ...base, rope_scaling: { rope_type: 'longrope', short_factor: [1], long_factor: [2] } }, 'x/config.json')).toThrow(
      /^x\/config.json: "rope_scaling.rope_type" = "longrope" is not supported/,
    );
    expect(() => planImport({ ...base, rope_scaling: { rope_type: 'linear', factor: 2, low_freq_factor: 1 } }, 'x/config.json')).toThrow(
      /^x\/config.json: "rope_scaling.low_freq_factor" is not a linear RoPE field moelab reads \(factor\)$/,
    );
    expect(() => planImport({ ...base, rope_scaling: { rope_type: 'llama3', factor: 8 } })).toThrow(/"rope_scaling.low_freq_factor" is missing/);

    // transformers 5 keeps rope_theta and the scaling together in rope_parameters, and may write no top-level rope_theta.
    const { rope_theta: _theta, rope_scaling: _scaling, ...v5 } = base;
    const v5Spec = (p: Record<string, unknown>) => attentionOf(planImport({ ...v5, rope_parameters: p }, 'v5/config.json').spec);
    expect(v5Spec({ rope_type: 'default', rope_theta: 5e5 })).toMatchObject({ ropeBase: 5e5 });
    expect(v5Spec({ rope_type: 'default', rope_theta: 5e5 }).ropeScaling).toBeUndefined();
    expect(v5Spec({ rope_type: 'linear', rope_theta: 1e6, factor: 2 })).toMatchObject({ ropeBase: 1e6, ropeScaling: { type: 'linear', factor: 2 } });
    expect(() => v5Spec({ rope_type: 'default', rope_theta: 1e4, partial_rotary_factor: 0.5 })).toThrow(
      /^v5\/config.json: "rope_parameters.partial_rotary_factor" = 0.5 is not supported/,
    );
    expect(() => v5Spec({ full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } })).toThrow(
      /^v5\/config.json: "rope_parameters.full_attention" is not a default RoPE field moelab reads$/,
    );

    const qwen = planExport(cases[5]![1], registry).config;
    const window = (c: Record<string, unknown>) => att(c).slidingWindow;
    // Qwen2 checkpoints carry sliding_window with use_sliding_window false: no window.
    expect(window({ ...qwen, use_sliding_window: false, sliding_window: 4096, max_window_layers: 28 })).toBeUndefined();
    expect(window({ ...qwen, use_sliding_window: true, sliding_window: 8, max_window_layers: 28 })).toBeUndefined();
    expect(window({ ...qwen, use_sliding_window: true, sliding_window: 8, max_window_layers: 0 })).toBe(8);
    expect(window({ ...qwen, layer_types: ['sliding_attention', 'sliding_attention'], sliding_window: 6 })).toBe(6);
    expect(() => planImport({ ...qwen, use_sliding_window: true, sliding_window: 8, max_window_layers: 1 }, 'q/config.json')).toThrow(
      /^q\/config.json: "max_window_layers" = 1: layers 1.. slide and the first 1 do not; moelab builds every layer alike/,
    );
    expect(() => planImport({ ...qwen, layer_types: ['full_attention', 'sliding_attention'], sliding_window: 6 }, 'q/config.json')).toThrow(
      /^q\/config.json: "layer_types" mixes full and sliding-window layers/,
    );
    const mixtral = planExport(cases[0]![1], registry).config;
    expect(window({ ...mixtral, sliding_window: 4096 })).toBe(4096);
    expect(() => planImport({ ...mixtral, sliding_window: 'wide' }, 'm/config.json')).toThrow(
      /^m\/config.json: "sliding_window" must be a non-negative integer/,
    );
    // Llama and OLMoE have no sliding window: export refuses, naming the architectures that have one.
    expect(() => planExport(decoder({ slidingWindow: 4 }, { type: 'dense', hidden: 24, glu: true, activation: 'silu' }), registry, 'llama')).toThrow(
      /^cannot export as llama: sliding-window attention is not part of this architecture \(mixtral, qwen2, qwen2_moe and qwen3_moe have it\)/,
    );
  });

  it('picks the first architecture that can hold the model when none is named', () => {
    expect(planExport(cases[1]![1], registry).arch.modelType).toBe('qwen2_moe');
    expect(planExport(cases[4]![1], registry).arch.modelType).toBe('llama');
  });

  it('refuses a model the target cannot express, naming the architectures that could hold it', () => {
    expect(() => planExport(cases[1]![1], registry, 'mixtral')).toThrow(
      /^cannot export as mixtral: a gated shared expert is Qwen2-MoE \(qwen2_moe\); architectures that can hold this model: qwen2_moe$/,
    );
    const raw = decoder({}, moe({ type: 'softmax-topk', k: 2, renormalize: false }));
    expect(() => planExport(raw, registry, 'mixtral')).toThrow(
      /Mixtral renormalises the top-k weights \(norm_topk_prob false needs qwen2_moe, qwen3_moe or olmoe\); none of mixtral, qwen2_moe, qwen3_moe, olmoe, llama, qwen2 can hold it$/,
    );
    const ec = decoder({}, moe({ type: 'expert-choice' }));
    expect(() => planExport(ec, registry, 'mixtral')).toThrow(/router "expert-choice": HF MoE layouts route with softmax top-k/);
    expect(() => planExport(cases[0]![1], registry, 'qwen2')).toThrow(
      /cannot export as qwen2: an MoE feed-forward needs an MoE architecture; architectures that can hold this model: mixtral$/,
    );
    expect(() => planExport(cases[0]![1], registry, 'mixtrall')).toThrow(/unknown model_type "mixtrall" \(did you mean mixtral\?\)/);
  });

  it('import: unknown model_type, missing and wrong-shape tensors are one-line errors naming file and tensor', () => {
    expect(() => planImport({ model_type: 'deepseek_v3' }, 'm/config.json')).toThrow(
      /^m\/config.json: model_type: unknown model_type "deepseek_v3"; moelab converts mixtral, /,
    );
    expect(() => planImport({ model_type: 'llama', hidden_size: 16 }, 'm/config.json')).toThrow(/^m\/config.json: "num_attention_heads" is missing$/);
    expect(() => planImport({ model_type: 'llama', hidden_size: 16, num_attention_heads: 4, num_key_value_heads: 3 }, 'c.json')).toThrow(
      /"num_key_value_heads" 3 does not divide "num_attention_heads" 4/,
    );
    const plan = planExport(cases[4]![1], registry);
    const model = buildModel<Model>(cases[4]![1], registry, 1);
    const hf: HfTensors = new Map();
    exportTensors(plan, memorySource(randomise(model, 1)), (n, shape, data) => hf.set(n, { shape, data }));
    const back = planImport(plan.config);
    const missing = new Map(hf);
    missing.delete('model.layers.1.mlp.up_proj.weight');
    expect(() => importTensors(back, memorySource(missing, 'dir/model-00002-of-00002.safetensors'), () => {})).toThrow(
      /^dir\/model-00002-of-00002.safetensors: tensor "model.layers.1.mlp.up_proj.weight" is missing/,
    );
    const wrong = new Map(hf);
    wrong.set('model.layers.0.self_attn.k_proj.weight', { shape: [16, 16], data: new Float32Array(256) });
    expect(() => importTensors(back, memorySource(wrong), () => {})).toThrow(
      /tensor "model.layers.0.self_attn.k_proj.weight" has shape \[16,16\], a llama model of this config.json needs \[8,16\]/,
    );
    expect(() => planImport({ ...plan.config, rope_scaling: { rope_type: 'dynamic', factor: 2 } }, 'm/config.json')).toThrow(
      /^m\/config.json: "rope_scaling.rope_type" = "dynamic" is not supported: moelab implements linear, llama3, yarn \(dynamic rescales with the sequence length/,
    );
  });
});
