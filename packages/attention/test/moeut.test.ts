/**
 * MoEUT model-level invariants (docs/moeut.md#invariants-the-tests-check): shared layers, names, regulariser, training,
 * presets (parameter and compute matching).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  buildModel,
  corePlugin,
  createRegistry,
  forwardContext,
  type LanguageModel,
  loadState,
  type Module,
  type NodeSpec,
  readSafetensors,
  Rng,
  stateTensors,
  type TokenSource,
  Trainer,
  tf,
  writeSafetensors,
} from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention, moeutSpecFromOfficialConfig, moeutTinyDenseComputeSpec, moeutTinyDenseParamsSpec, moeutTinySpec } from '../src/index.js';

type LM = Module & LanguageModel;
const registry = createRegistry(corePlugin, routers, experts, attention);

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const small = (G: number, R: number, extra: Record<string, unknown> = {}): NodeSpec => ({
  type: 'transformer-lm',
  vocabSize: 20,
  dModel: 16,
  contextLength: 8,
  stack: { groupSize: G, repeats: R },
  headBias: true,
  block: {
    type: 'transformer',
    norm: 'peri',
    attention: { type: 'switchhead', heads: 2, experts: 3, k: 2 },
    ffn: { type: 'sigma-moe', experts: 6, k: 2, expertSize: 4 },
  },
  ...extra,
});

const tokens = () =>
  tf.tensor2d(
    Int32Array.from({ length: 2 * 8 }, (_, i) => (i * 7 + 3) % 20),
    [2, 8],
    'int32',
  );

describe('MoEUT language model', () => {
  it('has exactly the official MoEUTLM state_dict names and shapes', () => {
    const doc = JSON.parse(readFileSync(fileURLToPath(new URL('../../../fixtures/moeut/moeut_lm_p2.json', import.meta.url)), 'utf8'));
    const model = buildModel<LM>(moeutSpecFromOfficialConfig(doc.config), registry);
    const ours = Object.fromEntries(model.namedParameters().map(([n, v]) => [n, v.shape]));
    const official = Object.fromEntries((doc.param_names as string[]).map((n) => [n, doc.tensors[`param.${n}`].shape]));
    expect(ours).toEqual(official);
    expect(model.namedBuffers()).toHaveLength(0);
  });

  it('shared layers: one parameter set, gradients summed over repeats (abab)', () => {
    const shared = buildModel<LM>(small(1, 2), registry);
    const unshared = buildModel<LM>(small(2, 1), registry);
    // Give the unshared model two copies of the shared block.
    const sp = new Map(shared.namedParameters());
    for (const [name, v] of unshared.namedParameters()) v.assign(sp.get(name.replace('transformer.layers.1.', 'transformer.layers.0.'))!);
    // embedding, lm_head (2), out_norm (2) + 13 per distinct block (6 attention, 3 ffn, 4 norms)
    expect(shared.namedParameters()).toHaveLength(5 + 13);
    expect(unshared.namedParameters()).toHaveLength(5 + 2 * 13);
    const R = tf.tensor3d(new Rng(1).normalArray(2 * 8 * 20), [2, 8, 20]);
    const f = (m: LM) => () => tf.sum(tf.mul(m.forward(tokens(), forwardContext(new Rng(0), false)), R)) as tf.Scalar;
    const ys = shared.forward(tokens(), forwardContext(new Rng(0), false)).dataSync();
    const yu = unshared.forward(tokens(), forwardContext(new Rng(0), false)).dataSync();
    for (let i = 0; i < ys.length; i++) expect(ys[i]).toBeCloseTo(yu[i]!, 4);
    const gs = tf.variableGrads(f(shared), shared.trainableVariables()).grads;
    const gu = tf.variableGrads(f(unshared), unshared.trainableVariables()).grads;
    const up = new Map(unshared.namedParameters());
    for (const [name, v] of shared.namedParameters()) {
      const g = gs[v.name]!.dataSync();
      let want: Float32Array;
      if (name.startsWith('transformer.layers.0.')) {
        const a = gu[up.get(name)!.name]!.dataSync();
        const b = gu[up.get(name.replace('layers.0.', 'layers.1.'))!.name]!.dataSync();
        want = Float32Array.from(a, (x, i) => x + b[i]!);
      } else want = gu[up.get(name)!.name]!.dataSync() as Float32Array;
      const scale = Math.max(...want.map(Math.abs));
      for (let i = 0; i < g.length; i++) expect(Math.abs(g[i]! - want[i]!)).toBeLessThan(1e-4 * scale + 1e-6);
    }
  });

  it('regulariser: once per unique layer over all repeats, within its bounds; 0 in eval; outputs identical in train and eval', () => {
    const model = buildModel<LM>(small(2, 2), registry);
    const ctx = forwardContext(new Rng(0), true);
    const yt = model.forward(tokens(), ctx).dataSync();
    expect(ctx.aux.map((a) => `${a.layer}:${a.name}`).sort()).toEqual(
      [0, 1]
        .flatMap((i) => [
          `transformer.layers.${i}.attention:att_entropy_o`,
          `transformer.layers.${i}.attention:att_entropy_v`,
          `transformer.layers.${i}.ffn:entropy_balance`,
        ])
        .sort(),
    );
    const total = ctx.aux.reduce((s, a) => s + a.coef * a.value.dataSync()[0]!, 0);
    expect(total).toBeLessThanOrEqual(0);
    expect(total).toBeGreaterThanOrEqual(-2 * (0.01 * Math.log(6) + 2 * 0.001 * Math.log(3)) - 1e-6);
    const ev = forwardContext(new Rng(0), false);
    const ye = model.forward(tokens(), ev).dataSync();
    expect(ev.aux).toHaveLength(0);
    expect(Array.from(ye)).toEqual(Array.from(yt));
  });

  it('checkpoint round trip by official names gives identical logits', () => {
    const a = buildModel<LM>(small(2, 2), registry, 1);
    const b = buildModel<LM>(small(2, 2), registry, 2);
    const bytes = writeSafetensors(stateTensors(a));
    loadState(b, readSafetensors(bytes).tensors);
    const ctx = () => forwardContext(new Rng(0), false);
    expect(Array.from(b.forward(tokens(), ctx()).dataSync())).toEqual(Array.from(a.forward(tokens(), ctx()).dataSync()));
  });

  it('a tiny MoEUT (peri-LN, G 2 x R 2) trains: loss falls', () => {
    const model = buildModel<LM>(small(2, 2, { vocabSize: 16, dModel: 16, contextLength: 16 }), registry, 3);
    const src: TokenSource = {
      batch(rng, B, T) {
        const a = new Int32Array(B * (T + 1));
        for (let b = 0; b < B; b++) {
          const s = rng.int(16);
          for (let t = 0; t <= T; t++) a[b * (T + 1) + t] = (s + t) % 16;
        }
        return a;
      },
    };
    const trainer = new Trainer(model, src, { batchSize: 8, seqLen: 16, steps: 25, lr: 1e-2, warmup: 5, clip: 0.25 });
    const first = trainer.trainStep();
    expect(Object.keys(first.aux).sort()).toEqual(['att_entropy_o', 'att_entropy_v', 'entropy_balance']);
    let last = first;
    for (let i = 1; i < 25; i++) last = trainer.trainStep();
    expect(Number.isFinite(last.loss)).toBe(true);
    expect(last.ce).toBeLessThan(0.5 * first.ce);
  });
});

describe('MoEUT presets', () => {
  const params = (s: NodeSpec) => buildModel<LM>(s, registry).parameterCount();
  const macs = (s: NodeSpec) => buildModel<LM>(s, registry).macsPerToken(128);

  it('moeut-tiny matches the official MoEUT parameter-count formula', () => {
    const [G, H, dh, Ea, E, es, d, V] = [2, 2, 32, 4, 16, 64, 128, 256];
    const formula = G * (2 * H * dh * d + 2 * H * Ea * d * dh + 2 * H * Ea * d + E * d * (2 * es + 1) + 4 * d) + 2 * V * d + V + 2 * d;
    expect(params(moeutTinySpec)).toBe(formula);
    expect(formula).toBe(763_392);
  });

  it('dense baselines: same total parameters / same MACs per token as moeut-tiny (within 0.5%)', () => {
    const p = params(moeutTinySpec);
    const m = macs(moeutTinySpec);
    expect(Math.abs(params(moeutTinyDenseParamsSpec) / p - 1)).toBeLessThan(0.005);
    expect(Math.abs(macs(moeutTinyDenseComputeSpec) / m - 1)).toBeLessThan(0.005);
    // and they really differ in the other measure
    expect(macs(moeutTinyDenseParamsSpec)).toBeGreaterThan(1.3 * m);
    expect(params(moeutTinyDenseComputeSpec)).toBeLessThan(0.8 * p);
  });

  it('MACs per token of moeut-tiny, counted by hand', () => {
    const [H, dh, K, Ea, E, Kf, es, d, V, T] = [2, 32, 2, 4, 16, 4, 64, 128, 256, 128];
    const attn = 2 * H * dh * d + 2 * K * H * d * dh + 2 * H * Ea * d + H * dh * (T + 1);
    const ffn = E * d + Kf * 2 * d * es;
    const perLayer = attn + ffn + 4 * d; // two LayerNorms count their parameters
    expect(macs(moeutTinySpec)).toBe(4 * perLayer + 2 * d + V * d + V);
  });
});
