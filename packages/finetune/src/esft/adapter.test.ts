/**
 * The `esft` adapter (arXiv 2407.01906) on a tiny fine-grained MoE: no new parameters, so the output
 * equals the base exactly at init; after AdamW steps with weight decay 0.1 and clipping only the selected
 * rows of the stacked expert tensors moved (every other tensor and every unselected row bitwise equal);
 * the first MoE layer routes exactly as before; the trainable count is Σ_l |E_s^l| · P_expert; the adapter
 * checkpoint holds only the selected rows and restores the fine-tuned logits exactly; bad selections and
 * dense models are one-line errors.
 */
import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { baseWeights, changedWeights, logitsOf, patternSource, registry, sameValues, tinyModel, trainSteps } from '../../test/helpers.js';
import { AdaptedModel } from '../adapted-model.js';
import { finetuneMethod } from '../methods.js';
import type { Model } from '../index.js';
import { type EsftExperts, esftMethodNode } from './adapter.js';
import { esftScores } from './scores.js';
import { esftExpertConfig, esftTrainableParameters } from './select.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const D = 16;
const H = 8;
/** The shared tiny model (d = 16, 2 layers) with 8 fine-grained experts of width 8, top-2. */
const tinyMoE = (seed = 1) => tinyModel(seed, { ffn: { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: H } } });
const selection = { '0': [5, 1], '1': [2] };

/** The experts each token of the first MoE layer picks, on a fixed batch. */
function firstLayerRouting(m: Model): number[] {
  const ctx = forwardContext(new Rng(0), false, { assignments: new Map() });
  tf.tidy(() => {
    m.forward(
      tf.tensor2d(
        Int32Array.from({ length: 20 }, (_, i) => (i * 7) % 16),
        [2, 10],
        'int32',
      ),
      ctx,
    );
  });
  return ctx.assignments!.get('transformer.layers.0.ffn')!.flatMap((c) => Array.from(c.expertIndex));
}

describe('esft adapter', () => {
  it('equals the base at init; AdamW with weight decay and clipping moves only the selected rows; the first MoE layer routes as before', () => {
    const model = tinyMoE();
    const before = logitsOf(model);
    const weights = baseWeights(model);
    const routing = firstLayerRouting(model);
    const adapted = new AdaptedModel(model, [{ type: 'esft', experts: selection }], registry());
    expect(sameValues(logitsOf(model), before)).toBe(true);
    const { trainer, losses } = trainSteps(adapted, 4);
    expect(trainer.params.map(([n]) => n)).toEqual([
      'transformer.layers.0.ffn.experts.w1',
      'transformer.layers.0.ffn.experts.w2',
      'transformer.layers.1.ffn.experts.w1',
      'transformer.layers.1.ffn.experts.w2',
    ]);
    expect(losses.at(-1)!).toBeLessThan(losses[0]!);
    expect(changedWeights(model, weights)).toEqual(trainer.params.map(([n]) => n));
    const row = D * H;
    for (const [name, v] of model.namedParameters()) {
      const layer = /^transformer\.layers\.(\d)\.ffn\.experts\./.exec(name)?.[1];
      if (!layer) continue;
      const was = new Uint32Array(weights.get(name)!.buffer);
      const now = new Uint32Array((v.dataSync() as Float32Array).slice().buffer);
      for (let e = 0; e < 8; e++) {
        const same = now.subarray(e * row, (e + 1) * row).every((x, i) => x === was[e * row + i]);
        expect(same, `${name} expert ${e}`).toBe(!selection[layer as '0' | '1'].includes(e));
      }
    }
    expect(firstLayerRouting(model)).toEqual(routing);
    trainer.optimizer.dispose();
    adapted.detach();
    expect(model.namedParameters().every(([, v]) => v.trainable)).toBe(true);
    model.dispose();
  });

  it('trains exactly Σ_l |E_s^l| · P_expert parameters; a selection from scores drives it', () => {
    const model = tinyMoE();
    const { file } = esftScores(model, [{ ids: Int32Array.from({ length: 40 }, (_, i) => (i * 7) % 16), batchSize: 4, seqLen: 10 }]);
    const cfg = esftExpertConfig(file, { score: 'token', p: 0.3 });
    const adapted = new AdaptedModel(model, [{ type: 'esft', experts: cfg.experts }], registry());
    const want = esftTrainableParameters(cfg, () => 2 * D * H);
    expect(adapted.counts()).toEqual({ trainable: want, frozen: model.parameterCount() - want, base: model.parameterCount(), added: 0 });
    expect((adapted.adapters as EsftExperts[]).reduce((a, m) => a + m.trainableParameters(), 0)).toBe(want);
    adapted.detach();
    model.dispose();
  });

  it('the adapter checkpoint holds only the selected rows and restores the fine-tuned logits exactly on a fresh base', () => {
    const model = tinyMoE();
    const adapted = new AdaptedModel(model, [{ type: 'esft', experts: selection }], registry());
    const { trainer } = trainSteps(adapted, 2);
    const tuned = logitsOf(model);
    const stored = (adapted.adapters as EsftExperts[]).map((a) => a.checkpointTensors());
    expect(stored.map((t) => Object.fromEntries([...t].map(([n, x]) => [n, x.shape])))).toEqual([
      { 'experts.w1': [2, D, H], 'experts.w2': [2, H, D] },
      { 'experts.w1': [1, D, H], 'experts.w2': [1, H, D] },
    ]);
    const fresh = tinyMoE();
    expect(sameValues(logitsOf(fresh), tuned)).toBe(false);
    const again = new AdaptedModel(fresh, [{ type: 'esft', experts: selection }], registry());
    again.adapters.forEach((a, i) => {
      expect(a.checkpointShapes()).toEqual(new Map([...stored[i]!].map(([n, t]) => [n, t.shape])));
      a.loadCheckpointTensors(stored[i] as Map<string, { shape: number[]; data: Float32Array }>);
    });
    expect(sameValues(logitsOf(fresh), tuned)).toBe(true);
    trainer.optimizer.dispose();
    adapted.detach();
    again.detach();
    model.dispose();
    fresh.dispose();
  });

  it('the esft method node scores the training data when no selection is given (token / p = 0.2 by default)', () => {
    const model = tinyMoE();
    const data = patternSource();
    const node = esftMethodNode({ scoreTokens: 96 }, { model, data, seed: 4 });
    // The same windows the method scored: 96 tokens of the train split as windows of the context length (12).
    const windows = [0].map((i) => {
      const raw = data.batch(Rng.derive(4, 'esft-data', i), 8, 12, 'train');
      const ids = new Int32Array(8 * 12);
      for (let b = 0; b < 8; b++) ids.set(raw.subarray(b * 13, b * 13 + 12), b * 12);
      return { ids, batchSize: 8, seqLen: 12 };
    });
    expect(node).toEqual({ type: 'esft', scoreTokens: 96, experts: esftExpertConfig(esftScores(model, windows).file, { score: 'token', p: 0.2 }).experts });
    const gate = esftMethodNode({ score: 'gate', p: 0.5, scoreTokens: 96 }, { model, data, seed: 4 });
    expect(gate.experts).toEqual(esftExpertConfig(esftScores(model, windows).file, { score: 'gate', p: 0.5 }).experts);
    expect(esftMethodNode({ experts: selection }, { model, data, seed: 4 })).toEqual({ type: 'esft', experts: selection });
    expect(() => esftMethodNode({ score: 'tokens' }, { model, data, seed: 4 })).toThrow('$.adapter.score: score must be token or gate, got "tokens"');
    model.dispose();
  });

  it('is the `esft` method of moelab finetune (lr 1e-3), beside `smore`', () => {
    const model = tinyMoE();
    const ctx = { model, data: patternSource(), seed: 4 };
    const esft = finetuneMethod('esft');
    expect(esft.train.lr).toBe(1e-3);
    expect(esft.adapters({ experts: selection }, ctx)).toEqual([{ type: 'esft', experts: selection }]);
    expect(esft.adapters({ scoreTokens: 96 }, ctx)).toEqual([esftMethodNode({ scoreTokens: 96 }, ctx)]);
    expect(finetuneMethod('smore').adapters({ ranks: [2, 4] }, ctx)).toEqual([{ type: 'smore', ranks: [2, 4] }]);
    model.dispose();
  });

  it('bad input: a dense model, a layer that is not an MoE layer, an unknown layer, an expert id out of range, no selection', () => {
    const dense = tinyModel(0, { ffn: { type: 'dense', hidden: 32 } });
    expect(() => new AdaptedModel(dense, [{ type: 'esft', experts: { '0': [1] } }], registry())).toThrow(
      /matches transformer\.layers\.0\.ffn \(DenseFFN\), but expert-select attaches to an MoE layer/,
    );
    expect(() => new AdaptedModel(dense, [{ type: 'esft' }], registry())).toThrow(/but expert-select attaches to an MoE layer/);
    const model = tinyMoE();
    expect(() => new AdaptedModel(model, [{ type: 'esft', experts: { '7': [1] } }], registry())).toThrow(
      /target "transformer\.layers\.7\.ffn" matches no module/,
    );
    expect(() => new AdaptedModel(model, [{ type: 'esft', experts: { '0': [1, 8] } }], registry())).toThrow(
      '$.adapter.experts.0: expert id 8 is out of range: transformer.layers.0.ffn has 8 routed experts',
    );
    expect(() => new AdaptedModel(model, [{ type: 'esft', experts: { '1': [] }, sharedExperts: true }], registry())).toThrow(
      '$.adapter.sharedExperts: sharedExperts is set, but transformer.layers.1.ffn has no shared experts',
    );
    expect(() => new AdaptedModel(model, [{ type: 'esft' }], registry())).toThrow(/^\$\.adapter\.experts: esft needs its expert selection/);
    expect(model.children.has('adapter')).toBe(false);
    model.dispose();
    dense.dispose();
  });
});
