/** Autoregressive sampling with temperature and top-k. */
import type { LanguageModel } from './builder.js';
import { forwardContext } from './module.js';
import { Rng } from './rng.js';
import { tf } from './tf.js';

export interface SampleOptions {
  maxNewTokens: number;
  temperature: number;
  /** Keep only the k most likely tokens (0 = all). */
  topK: number;
  seed: number;
}

export function generateTokens(model: LanguageModel, prompt: ArrayLike<number>, opts: Partial<SampleOptions> = {}): number[] {
  const o: SampleOptions = { maxNewTokens: 100, temperature: 0.8, topK: 0, seed: 0, ...opts };
  const rng = new Rng(o.seed);
  const ids = Array.from(prompt);
  if (ids.length === 0) throw new Error('generate: the prompt is empty (give at least one token)');
  for (let i = 0; i < o.maxNewTokens; i++) {
    const window = ids.slice(-model.contextLength);
    const probs = tf.tidy(() => {
      const logits = model.forward(tf.tensor2d([window], [1, window.length], 'int32'), forwardContext(rng, false));
      const last = tf.reshape(tf.slice(logits, [0, window.length - 1, 0], [1, 1, -1]), [-1]);
      return last.dataSync() as Float32Array;
    });
    ids.push(sample(probs, o, rng));
  }
  return ids.slice(prompt.length);
}

function sample(logits: Float32Array, o: SampleOptions, rng: Rng): number {
  const n = logits.length;
  if (o.temperature <= 0) {
    let best = 0;
    for (let i = 1; i < n; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let idx = Array.from({ length: n }, (_, i) => i);
  if (o.topK > 0 && o.topK < n) idx = idx.sort((a, b) => logits[b]! - logits[a]!).slice(0, o.topK);
  let max = Number.NEGATIVE_INFINITY;
  for (const i of idx) max = Math.max(max, logits[i]!);
  const w = idx.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  const z = w.reduce((a, b) => a + b, 0);
  let r = rng.next() * z;
  for (let j = 0; j < idx.length; j++) {
    r -= w[j]!;
    if (r <= 0) return idx[j]!;
  }
  return idx[idx.length - 1]!;
}
