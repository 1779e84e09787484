import { buildModel, forwardContext, generateTokens, type NodeSpec, Rng, type TransformerLM, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { createDefaultRegistry } from '../src/registry.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('moe-tiny generation with a KV cache', () => {
  it('every step’s logits equal a full re-run over the window (max |Δ| <= 1e-4), through a slide past the context', () => {
    const registry = createDefaultRegistry();
    const spec = { ...(registry.preset('moe-tiny').spec as Record<string, unknown>), contextLength: 24 } as unknown as NodeSpec;
    const model = buildModel<TransformerLM>(spec, registry, 1);
    expect(model.cacheBlocker()).toBeNull();
    const prompt = Array.from({ length: 10 }, (_, i) => (i * 41 + 3) % 256);
    const seen: Float32Array[] = [];
    const out = generateTokens(model, prompt, {
      maxNewTokens: 24,
      temperature: 1,
      seed: 3,
      onLogits: (l, i) => {
        seen[i] = Float32Array.from(l);
      },
    });
    const ids = [...prompt, ...out];
    let start = 0;
    let worst = 0;
    for (let i = 0; i < out.length; i++) {
      const L = prompt.length + i;
      if (L - start > 24) start = L - 12; // the default slide keeps half the context
      const window = ids.slice(start, L);
      const full = tf.tidy(() => {
        const logits = model.forward(tf.tensor2d([window], [1, window.length], 'int32'), forwardContext(new Rng(0), false));
        return tf.slice(logits, [0, window.length - 1, 0], [1, 1, -1]).dataSync();
      });
      for (let v = 0; v < full.length; v++) worst = Math.max(worst, Math.abs(full[v]! - seen[i]![v]!));
    }
    expect(worst).toBeLessThanOrEqual(1e-4);
    model.dispose();
  });
});
