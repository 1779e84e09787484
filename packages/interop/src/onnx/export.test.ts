/**
 * ONNX export of each layer option the graph covers, run in ONNX Runtime (onnxruntime-node, CPU): the
 * logits of the file equal moelab's forward pass within 1e-4 for tiny models (d 16, 2 layers, T 6),
 * one model per option group (LayerNorm / RMSNorm, GQA, both RoPE layouts and partial RoPE, q/k norms,
 * biases, RoPE scaling, sliding windows, every router family with and without renormalisation, GLU
 * experts, gated shared experts, tied embeddings, learned positions, shared layers, post / peri /
 * parallel blocks, every attention mixture, PEER, MONET, FFF, dense experts). The file is also read
 * back: opset 17, TopK and ScatterElements present, no dense expert trick unless asked, and the layout
 * of external data.
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
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { memorySource } from '../hf/convert.js';
import { exportOnnx, ONNX_OPSET, type OnnxExportOptions } from './export.js';
import { decodeOnnxModel } from './proto.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts, attention);
type Model = Module & LanguageModel;

const B = 2;
const T = 6;
const V = 40;

function lm(block: Record<string, unknown>, extra: Record<string, unknown> = {}): NodeSpec {
  return { type: 'transformer-lm', vocabSize: V, dModel: 16, contextLength: 8, stack: { groupSize: 2 }, block: { type: 'transformer', ...block }, ...extra };
}

function tokens(seed: number): Int32Array {
  return Int32Array.from({ length: B * T }, (_, i) => (i * 7 + seed * 13 + ((i * i) % 5)) % V);
}

/** Nudge every parameter and buffer (norm gains, biases, the selection bias) off its init, deterministically. */
function randomize(model: Model): void {
  let s = 1;
  const state = stateTensors(model);
  for (const t of state.values()) {
    const data = t.data.slice();
    for (let i = 0; i < data.length; i++) {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      data[i]! += ((s / 2 ** 31) * 2 - 1) * 0.1;
    }
    t.data = data;
  }
  loadState(model, state);
}

async function parity(spec: NodeSpec, options: OnnxExportOptions = {}): Promise<{ maxDiff: number; bytes: Uint8Array }> {
  const model = buildModel<Model>(spec, registry, 3);
  randomize(model);
  const weights = new Map([...stateTensors(model)].map(([name, t]) => [name, { shape: t.shape, data: t.data as Float32Array }]));
  const { bytes } = exportOnnx(spec, registry, memorySource(weights), options);
  const ids = tokens(1);
  const expected = tf.tidy(() => model.forward(tf.tensor2d(ids, [B, T], 'int32'), forwardContext(new Rng(0), false)).dataSync());
  const session = await ort.InferenceSession.create(bytes);
  const out = await session.run({
    input_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from(ids, (v) => BigInt(v)),
      [B, T],
    ),
  });
  const logits = out.logits!;
  expect(logits.dims).toEqual([B, T, V]);
  const got = logits.data as Float32Array;
  let maxDiff = 0;
  for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i]! - expected[i]!));
  await session.release();
  model.dispose();
  return { maxDiff, bytes };
}

const mha = { type: 'mha', heads: 4 };
const moe = (router: unknown, expert: unknown = { type: 'mlp', hidden: 24 }, extra: Record<string, unknown> = {}) => ({
  type: 'moe',
  experts: 4,
  router,
  expert,
  ...extra,
});

/** A MONET layer: E 6 shards per group, σ = Φ⁻¹(1 − 2/6) ≈ 0.43, so the threshold keeps some shards and drops others. */
const monet = (type: string, extra: Record<string, unknown> = {}) => ({ type, experts: 6, expertDim: 4, heads: 2, k: 2, ...extra });

const cases: [string, NodeSpec, OnnxExportOptions?][] = [
  ['LayerNorm, MHA, dense GELU FFN', lm({ attention: mha, ffn: { type: 'dense', hidden: 24 } })],
  [
    'RMSNorm, GQA, interleaved partial RoPE, q/k/v biases, per-head q/k norms, SwiGLU, tied embeddings',
    lm(
      {
        normType: 'rmsnorm',
        attention: { type: 'mha', heads: 4, kvHeads: 2, ropeLayout: 'interleaved', ropeDims: 2, qkvBias: true, qkNorm: 'head', ropeBase: 500 },
        ffn: { type: 'dense', hidden: 24, glu: true, activation: 'silu', bias: true },
      },
      { outNorm: 'rmsnorm', tieEmbeddings: true },
    ),
  ],
  [
    'projection q/k norms, all biases, gelu-tanh, learned positions, embedding scale, head bias',
    lm(
      { attention: { type: 'mha', heads: 2, bias: true, qkNorm: 'projection', ropeDims: 0 }, ffn: { type: 'dense', hidden: 24, activation: 'gelu-tanh' } },
      { positionEmbedding: 'learned', embeddingScale: 2, headBias: true },
    ),
  ],
  [
    'sliding window of 3 keys (T 6), GQA, YaRN-scaled RoPE with its attention factor',
    lm({
      normType: 'rmsnorm',
      attention: { type: 'mha', heads: 4, kvHeads: 2, slidingWindow: 3, ropeScaling: { type: 'yarn', factor: 4, originalContext: 4 } },
      ffn: { type: 'dense', hidden: 16 },
    }),
  ],
  [
    'Llama 3 RoPE scaling (interleaved, partial), linear scaling in the other layer, sliding window of 2',
    lm(
      {},
      {
        blocks: [
          {
            type: 'transformer',
            attention: {
              type: 'mha',
              heads: 2,
              ropeLayout: 'interleaved',
              ropeDims: 4,
              ropeScaling: { type: 'llama3', factor: 8, originalContext: 4, highFreqFactor: 2 },
            },
            ffn: { type: 'dense', hidden: 16 },
          },
          {
            type: 'transformer',
            attention: { type: 'mha', heads: 2, slidingWindow: 2, ropeScaling: { type: 'linear', factor: 2 } },
            ffn: { type: 'dense', hidden: 16 },
          },
        ],
      },
    ),
  ],
  ['softmax top-2 renormalised, GELU experts', lm({ attention: mha, ffn: moe({ type: 'softmax-topk', k: 2 }) })],
  [
    'Qwen2-MoE: raw top-2 weights, SwiGLU experts, sigmoid-gated shared expert',
    lm({
      normType: 'rmsnorm',
      attention: { type: 'mha', heads: 4, kvHeads: 1, qkvBias: true },
      ffn: moe({ type: 'qwen2-moe', k: 2 }, { type: 'glu', hidden: 16 }, { shared: { type: 'glu', hidden: 24 }, sharedGate: 'sigmoid' }),
    }),
  ],
  [
    'softmax top-3 with selection bias and routed scaling, two ungated shared relu2 experts',
    lm({
      attention: mha,
      ffn: moe(
        { type: 'softmax-topk', k: 3, renormalize: false, expertBias: true, scale: 1.7 },
        { type: 'mlp', hidden: 12, activation: 'relu2' },
        {
          shared: { type: 'mlp', hidden: 8, count: 2 },
        },
      ),
    }),
  ],
  [
    'Switch top-1, relu experts, post-norm blocks',
    lm({ norm: 'post', attention: mha, ffn: moe({ type: 'switch' }, { type: 'mlp', hidden: 24, activation: 'relu' }) }),
  ],
  [
    'sigma top-k (sigmoid gates), peri-norm, 2 shared layers repeated aabb',
    lm({ norm: 'peri', attention: mha, ffn: moe({ type: 'sigma-topk', k: 2 }) }, { stack: { groupSize: 2, repeats: 2, order: 'aabb' } }),
  ],
  [
    'DeepSeek-V3 sigmoid gate with bias, normalised and scaled; parallel block with two norms',
    lm({ layout: 'parallel', norms: 2, attention: mha, ffn: moe({ type: 'deepseek-v3', k: 2 }, { type: 'glu', hidden: 16 }) }),
  ],
  [
    'layers that differ (blocks), normalised sigmoid top-k',
    lm(
      {},
      {
        blocks: [
          { type: 'transformer', attention: mha, ffn: { type: 'dense', hidden: 24 } },
          { type: 'transformer', attention: mha, ffn: moe({ type: 'topk-sigmoid-normalised', k: 2 }) },
        ],
      },
    ),
  ],
  [
    'MoEUT: SwitchHead (2 of 3 value / output experts per head, partial RoPE), sigma-MoE FFN, peri-norm, shared layers',
    lm(
      {
        norm: 'peri',
        attention: { type: 'switchhead', heads: 2, headDim: 6, experts: 3, k: 2 },
        ffn: { type: 'sigma-moe', experts: 6, k: 2, expertSize: 8 },
      },
      { stack: { groupSize: 2, repeats: 2 }, headBias: true },
    ),
  ],
  [
    'dense-gated SwitchHead (experts: 1), sigma-moe experts in the moe shell',
    lm({ attention: { type: 'switchhead', heads: 4, experts: 1 }, ffn: moe({ type: 'sigma-topk', k: 2 }, { type: 'sigma-moe', size: 8 }) }),
  ],
  [
    'MoA: top-2 of 5 head experts with one shared K/V head, raw gates; learned positions',
    lm({ attention: { type: 'moa', experts: 5, k: 2, headDim: 6 }, ffn: { type: 'dense', hidden: 16 } }, { positionEmbedding: 'learned' }),
  ],
  [
    'MoA with RoPE and renormalised gates',
    lm({ attention: { type: 'moa', experts: 4, k: 3, headDim: 4, rope: true, router: { weighting: 'renormalise' } }, ffn: { type: 'dense', hidden: 16 } }),
  ],
  [
    'BAM soft mixture of 3 attention experts (own K/V, GQA), parallel block with one norm',
    lm({ layout: 'parallel', normType: 'rmsnorm', attention: { type: 'bam-soft-moa', experts: 3, heads: 4, kvHeads: 2 }, ffn: { type: 'dense', hidden: 16 } }),
  ],
  [
    'BAM with shared K/V and top-2 routing (renormalised), no RoPE',
    lm({
      attention: { type: 'bam-soft-moa', experts: 3, heads: 2, kv: 'shared', rope: false, routing: { type: 'topk', k: 2, weighting: 'renormalise' } },
      ffn: { type: 'dense', hidden: 16 },
    }),
  ],
  [
    'PEER: 36 single-neuron experts, 2 heads retrieving 3 by product keys, query BatchNorm (running statistics)',
    lm({ normType: 'rmsnorm', attention: mha, ffn: { type: 'peer', experts: 36, heads: 2, k: 3, keyDim: 6 } }),
  ],
  [
    'PEER without query BatchNorm, relu',
    lm({ attention: mha, ffn: { type: 'peer', experts: 16, heads: 1, k: 2, keyDim: 4, queryBatchNorm: false, activation: 'relu' } }),
  ],
  [
    'MONET-VD: BatchNorm-threshold routing (about 2 of 6 shards per head and group), router in every layer, RMSNorm',
    lm({ normType: 'rmsnorm', attention: mha, ffn: monet('monet-vd') }),
  ],
  ['MONET-HD: relu2, router in every layer, post-norm blocks', lm({ norm: 'post', attention: mha, ffn: monet('monet-hd', { heads: 3 }) })],
  [
    'MONET-HD: one router for 2 layers (routerGroup 2) read from the peri-norm router input, gelu, layers repeated abab',
    lm({ norm: 'peri', attention: mha, ffn: monet('monet-hd', { routerGroup: 2, activation: 'gelu' }) }, { stack: { groupSize: 2, repeats: 2 } }),
  ],
  [
    'MONET-VD: k >= E (every shard selected: plain softmax), shared router, layers repeated aabb',
    lm({ attention: mha, ffn: monet('monet-vd', { experts: 3, k: 3, expertDim: 6, routerGroup: 2 }) }, { stack: { groupSize: 2, repeats: 2, order: 'aabb' } }),
  ],
  [
    'MAE: 4 heads reweighted per token by the gate, partial RoPE',
    lm({ attention: { type: 'mae', heads: 4, ropeDims: 2, gateStd: 0.5 }, ffn: { type: 'dense', hidden: 16 } }),
  ],
  [
    'MAE: gate from the running mean of the inputs (granularity sequence), headDim 6, parallel block',
    lm({ layout: 'parallel', attention: { type: 'mae', heads: 3, headDim: 6, granularity: 'sequence', gateStd: 0.5 }, ffn: { type: 'dense', hidden: 16 } }),
  ],
  ['FFF: hard descent through a depth-2 tree of 4 relu leaves', lm({ normType: 'rmsnorm', attention: mha, ffn: { type: 'fff', depth: 2, leafWidth: 8 } })],
  [
    "FFF: depth 3, gelu, Master Leaf, the official eval's missing leaf output bias",
    lm({
      attention: mha,
      ffn: { type: 'fff', depth: 3, leafWidth: 4, activation: 'gelu', masterLeaf: true, masterLeafWidth: 4, officialEvalOmitsLeafOutputBias: true },
    }),
  ],
  ['FFF: depth 0 (one dense leaf) with a Master Leaf', lm({ attention: mha, ffn: { type: 'fff', depth: 0, leafWidth: 8, masterLeaf: true } })],
  ['dense experts (--onnx-dense-experts): FFF leaves, depth 2', lm({ attention: mha, ffn: { type: 'fff', depth: 2, leafWidth: 8 } }), { denseExperts: true }],
  [
    'dense experts (--onnx-dense-experts): SwitchHead (2 of 3 value / output experts per head), sigma-MoE FFN',
    lm(
      { norm: 'peri', attention: { type: 'switchhead', heads: 2, headDim: 6, experts: 3, k: 2 }, ffn: { type: 'sigma-moe', experts: 6, k: 2, expertSize: 8 } },
      { stack: { groupSize: 2, repeats: 2 } },
    ),
    { denseExperts: true },
  ],
  [
    'dense experts (--onnx-dense-experts): MoA top-2 of 5 with RoPE and renormalised gates',
    lm({ attention: { type: 'moa', experts: 5, k: 2, headDim: 6, rope: true, router: { weighting: 'renormalise' } }, ffn: { type: 'dense', hidden: 16 } }),
    { denseExperts: true },
  ],
  [
    'dense experts (--onnx-dense-experts), Mixtral router',
    lm({ attention: mha, ffn: moe({ type: 'mixtral' }, { type: 'glu', hidden: 16 }) }),
    { denseExperts: true },
  ],
];

describe('ONNX export parity in ONNX Runtime', () => {
  for (const [name, spec, options] of cases) {
    it(name, async () => {
      const { maxDiff } = await parity(spec, options);
      expect(maxDiff).toBeLessThan(1e-4);
    });
  }
});

describe('MONET', () => {
  it('the parity models route to some, not all, composed experts (the threshold is exercised)', () => {
    const model = buildModel<Model>(lm({ normType: 'rmsnorm', attention: mha, ffn: monet('monet-vd') }), registry, 3);
    randomize(model);
    const ctx = forwardContext(new Rng(0), false);
    tf.tidy(() => model.forward(tf.tensor2d(tokens(1), [B, T], 'int32'), ctx));
    expect(ctx.routing).toHaveLength(2);
    for (const stats of ctx.routing) {
      expect(stats.expertsPerTokenMin).toBeGreaterThanOrEqual(1);
      expect(stats.expertsPerTokenMax).toBeLessThan(36);
    }
    model.dispose();
  });

  it('stores one router for a routing group, and refuses a layer sharing a router that no earlier layer has or that has another shape', () => {
    const shared = lm({ attention: mha, ffn: monet('monet-hd', { routerGroup: 2 }) });
    const model = buildModel<Model>(shared, registry, 0);
    const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    model.dispose();
    const names = decodeOnnxModel(exportOnnx(shared, registry, memorySource(weights)).bytes).graph.initializer.map((t) => t.name);
    expect(names).toContain('transformer.layers.0.ffn.router.w1.weight^T');
    expect(names).toContain('transformer.layers.0.ffn.router.norm2.inv_std');
    expect(names.filter((n) => n.startsWith('transformer.layers.1.ffn.router'))).toEqual([]);
    expect(names).toContain('transformer.layers.1.ffn.moe.v.weight^T');

    const orphan = lm(
      {},
      {
        blocks: [
          { type: 'transformer', attention: mha, ffn: { type: 'dense', hidden: 8 } },
          { type: 'transformer', attention: mha, ffn: monet('monet-vd', { routerGroup: 2 }) },
        ],
      },
    );
    const built = buildModel<Model>(orphan, registry, 0);
    const orphanWeights = new Map([...stateTensors(built)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    built.dispose();
    expect(() => exportOnnx(orphan, registry, memorySource(orphanWeights))).toThrow(
      /^\$\.blocks\[1\]\.ffn\.routerGroup: this monet layer shares its router \(routerGroup 2\) but no earlier layer of the stack routes$/,
    );
    const mismatched = lm(
      {},
      {
        blocks: [
          { type: 'transformer', attention: mha, ffn: monet('monet-hd', { routerGroup: 2 }) },
          { type: 'transformer', attention: mha, ffn: monet('monet-vd', { routerGroup: 2, experts: 4 }) },
        ],
      },
    );
    const other = buildModel<Model>(mismatched, registry, 0);
    const otherWeights = new Map([...stateTensors(other)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    other.dispose();
    expect(() => exportOnnx(mismatched, registry, memorySource(otherWeights))).toThrow(
      /^\$\.blocks\[1\]\.ffn: this monet layer \(heads 2, experts 4\) shares the routing of \$\.blocks\[0\]\.ffn \(heads 2, experts 6\); they must match$/,
    );
  });
});

describe('FFF', () => {
  it('the parity models send the tokens to several leaves (the descent is exercised)', () => {
    const model = buildModel<Model>(lm({ normType: 'rmsnorm', attention: mha, ffn: { type: 'fff', depth: 2, leafWidth: 8 } }), registry, 3);
    randomize(model);
    const ctx = forwardContext(new Rng(0), false);
    tf.tidy(() => model.forward(tf.tensor2d(tokens(1), [B, T], 'int32'), ctx));
    for (const stats of ctx.routing) expect(stats.counts.filter((c) => c > 0).length).toBeGreaterThan(1);
    model.dispose();
  });
});

describe('external data', () => {
  const spec = lm({ attention: mha, ffn: moe({ type: 'softmax-topk', k: 2 }) });

  /** Write the .onnx file and its side file into a fresh folder; ONNX Runtime loads the model by path. */
  async function runFromFiles(out: ReturnType<typeof exportOnnx>, ids: Int32Array): Promise<Float32Array> {
    const dir = mkdtempSync(join(tmpdir(), 'moelab-onnx-'));
    try {
      writeFileSync(join(dir, 'tiny.onnx'), out.bytes);
      if (out.externalData) writeFileSync(join(dir, out.externalData.location), Buffer.concat(out.externalData.chunks));
      const session = await ort.InferenceSession.create(join(dir, 'tiny.onnx'));
      const run = await session.run({
        input_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (v) => BigInt(v)),
          [B, T],
        ),
      });
      await session.release();
      return run.logits!.data as Float32Array;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('moves every initializer of 1 KiB or more to an aligned side file that ONNX Runtime reads, with the same logits', async () => {
    const model = buildModel<Model>(spec, registry, 4);
    randomize(model);
    const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    const ids = tokens(2);
    const expected = tf.tidy(() => model.forward(tf.tensor2d(ids, [B, T], 'int32'), forwardContext(new Rng(0), false)).dataSync());
    model.dispose();
    const inline = exportOnnx(spec, registry, memorySource(weights));
    expect(inline.externalData).toBeUndefined();
    const out = exportOnnx(spec, registry, memorySource(weights), { externalData: true, externalDataLocation: 'tiny.onnx.data' });
    const data = out.externalData!;
    expect(data.location).toBe('tiny.onnx.data');
    expect(data.byteLength).toBe(data.chunks.reduce((a, c) => a + c.byteLength, 0));

    const file = Buffer.concat(data.chunks);
    const byName = new Map(decodeOnnxModel(inline.bytes).graph.initializer.map((t) => [t.name, t]));
    const tensors = decodeOnnxModel(out.bytes).graph.initializer;
    const external = tensors.filter((t) => t.dataLocation === 1);
    expect(external).toHaveLength(data.tensors);
    expect(external.map((t) => t.name)).toContain('embedding.weight');
    for (const t of tensors) {
      const original = byName.get(t.name)!.rawData!;
      if (t.dataLocation !== 1) {
        expect(original.byteLength).toBeLessThan(1024);
        expect(t.rawData).toEqual(original);
        continue;
      }
      expect(original.byteLength).toBeGreaterThanOrEqual(1024);
      expect(t.rawData?.byteLength ?? 0).toBe(0); // the bytes are only in the side file
      const entry = Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
      expect(Object.keys(entry).sort()).toEqual(['length', 'location', 'offset']);
      expect(entry.location).toBe('tiny.onnx.data');
      const offset = Number(entry.offset);
      expect(offset % 64).toBe(0);
      expect(Number(entry.length)).toBe(original.byteLength);
      expect(new Uint8Array(file.subarray(offset, offset + original.byteLength))).toEqual(new Uint8Array(original));
    }

    const got = await runFromFiles(out, ids);
    let maxDiff = 0;
    for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i]! - expected[i]!));
    expect(maxDiff).toBeLessThan(1e-4);
  });

  it("'auto' switches to a side file above the threshold; a side file name with a directory is refused", () => {
    const model = buildModel<Model>(spec, registry, 0);
    const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    model.dispose();
    const size = decodeOnnxModel(exportOnnx(spec, registry, memorySource(weights)).bytes).graph.initializer.reduce((a, t) => a + t.rawData!.byteLength, 0);
    expect(exportOnnx(spec, registry, memorySource(weights), { externalDataAbove: size }).externalData).toBeUndefined();
    expect(exportOnnx(spec, registry, memorySource(weights), { externalDataAbove: size - 1 }).externalData?.location).toBe('model.onnx.data');
    expect(exportOnnx(spec, registry, memorySource(weights), { externalData: false, externalDataAbove: 1 }).externalData).toBeUndefined();
    expect(() => exportOnnx(spec, registry, memorySource(weights), { externalData: true, externalDataLocation: '../w.bin' })).toThrow(
      /^externalDataLocation: external data location "\.\.\/w\.bin" must be a file name beside the \.onnx file \(no directory part\)$/,
    );
  });
});

describe('the ONNX file', () => {
  it('is opset 17 with sparse top-k dispatch, and dense experts only when asked', async () => {
    const spec = lm({ attention: mha, ffn: moe({ type: 'softmax-topk', k: 2 }) });
    const model = buildModel<Model>(spec, registry, 0);
    const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    const read = (options: OnnxExportOptions) => decodeOnnxModel(exportOnnx(spec, registry, memorySource(weights), options).bytes);
    const sparse = read({});
    expect(sparse.opsetImport.map((o) => [o.domain ?? '', o.version])).toEqual([['', ONNX_OPSET]]);
    expect(sparse.irVersion).toBe(8);
    expect(ONNX_OPSET).toBe(17);
    const ops = (m: typeof sparse) => new Set(m.graph.node.map((n) => n.opType));
    for (const op of ['TopK', 'GatherElements', 'NonZero', 'Gather', 'ScatterElements']) expect(ops(sparse).has(op)).toBe(true);
    // Dispatch: each expert's first-layer weight is its own [d, h] initializer, used by one MatMul per layer.
    expect(sparse.graph.initializer.find((t) => t.name === 'transformer.layers.0.ffn.experts.w1[3]')?.dims).toEqual([16, 24]);
    const dense = read({ denseExperts: true });
    expect(dense.graph.initializer.find((t) => t.name === 'transformer.layers.0.ffn.experts.w1')?.dims).toEqual([4, 16, 24]);
    expect(ops(dense).has('NonZero')).toBe(false);
    // Dense mode reaches the attention experts too: SwitchHead and MoA then have no per-expert dispatch.
    for (const attention of [
      { type: 'switchhead', heads: 2, experts: 3, k: 2 },
      { type: 'moa', experts: 4, k: 2 },
    ]) {
      const attSpec = lm({ attention, ffn: { type: 'dense', hidden: 8 } });
      const m = buildModel<Model>(attSpec, registry, 0);
      const w = new Map([...stateTensors(m)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
      m.dispose();
      const opsOf = (options: OnnxExportOptions) => ops(decodeOnnxModel(exportOnnx(attSpec, registry, memorySource(w), options).bytes));
      expect(opsOf({}).has('NonZero')).toBe(true);
      const denseOps = opsOf({ denseExperts: true });
      expect(denseOps.has('NonZero')).toBe(false);
      expect(denseOps.has('TopK')).toBe(true);
    }
    expect(sparse.graph.input[0]!.name).toBe('input_ids');
    expect(sparse.graph.output[0]!.name).toBe('logits');
    model.dispose();
  });

  it('refuses what the graph cannot express in one line naming the node kind and its JSON path', () => {
    const refused = (spec: NodeSpec) => {
      const model = buildModel<Model>(spec, registry, 0);
      const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
      model.dispose();
      try {
        exportOnnx(spec, registry, memorySource(weights));
      } catch (e) {
        return (e as Error).message;
      }
      return 'exported';
    };
    expect(refused(lm({ attention: mha, ffn: moe({ type: 'hash' }) }))).toMatch(
      /^\$\.block\.ffn\.router: router "hash" has no ONNX export \(routers the ONNX export holds: softmax-topk, /,
    );
    expect(refused(lm({ attention: mha, ffn: moe({ type: 'softmax-topk', k: 2 }, 'mlp', { capacityFactor: 1.25 }) }))).toMatch(
      /^\$\.block\.ffn\.capacityFactor: capacity factor 1\.25 at inference drops assignments/,
    );
    expect(refused(lm({ attention: mha, ffn: moe({ type: 'deepseek-v3', k: 2, groups: 2, topkGroup: 1 }) }))).toMatch(
      /^\$\.block\.ffn\.router\.groups: group-limited/,
    );
    for (const m of [refused(lm({ attention: mha, ffn: moe({ type: 'hash' }) }))]) expect(m.split('\n')).toHaveLength(1);
  });

  it('names a missing or misshapen tensor', () => {
    const spec = lm({ attention: mha, ffn: { type: 'dense', hidden: 24 } });
    const model = buildModel<Model>(spec, registry, 0);
    const weights = new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
    model.dispose();
    const missing = new Map(weights);
    missing.delete('transformer.layers.1.ffn.w2.weight');
    expect(() => exportOnnx(spec, registry, memorySource(missing))).toThrow('model.safetensors: tensor "transformer.layers.1.ffn.w2.weight" is missing');
    const wrong = new Map(weights);
    wrong.set('lm_head.weight', { shape: [V, 8], data: new Float32Array(V * 8) });
    expect(() => exportOnnx(spec, registry, memorySource(wrong))).toThrow(
      'tensor "lm_head.weight" has shape [40,8], the ONNX graph of this spec needs [40,16]',
    );
  });
});
