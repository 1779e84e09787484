/**
 * Calibration statistics: the inputs of selected FFN layers while the seed model runs on calibration
 * token sequences (what MoEfication's and CMoE's activation statistics are computed from). The inputs are
 * captured by wrapping each layer's FFN forward for the duration of the run.
 */
import { buildModel, forwardContext, type LanguageModel, loadState, type Module, type Registry, Rng, tf, type TransformerBlock } from '@moelab/core';
import type { UpcycleSource } from './contract.js';

/** Layer index -> FFN input rows ([d] each), at most `maxTokens` per layer. */
export function ffnInputs(
  registry: Registry,
  seed: UpcycleSource,
  calibration: Int32Array[],
  layers: number[],
  maxTokens: number,
): Map<number, Float32Array[]> {
  const model = buildModel<Module & LanguageModel & { layers: TransformerBlock[] }>(seed.spec, registry, 0);
  const out = new Map<number, Float32Array[]>(layers.map((l) => [l, []]));
  const restore: (() => void)[] = [];
  try {
    loadState(model, seed.weights, { source: seed.name });
    for (const l of layers) {
      const ffn = model.layers[l]!.ffn;
      const original = ffn.forward.bind(ffn);
      const rows = out.get(l)!;
      ffn.forward = (x, ctx, sources) => {
        const d = x.shape[x.shape.length - 1]!;
        const v = x.dataSync();
        for (let i = 0; i + d <= v.length && rows.length < maxTokens; i += d) rows.push(Float32Array.from(v.subarray(i, i + d)));
        return original(x, ctx, sources);
      };
      restore.push(() => {
        ffn.forward = original;
      });
    }
    for (const seq of calibration) {
      const T = Math.min(seq.length, model.contextLength);
      if (T === 0) continue;
      tf.tidy(() => {
        model.forward(tf.tensor2d(seq.subarray(0, T), [1, T], 'int32'), forwardContext(new Rng(0), false));
      });
    }
    return out;
  } finally {
    for (const r of restore) r();
    model.dispose();
  }
}
