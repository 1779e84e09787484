/**
 * Autoregressive sampling with temperature and top-k, with or without a KV cache.
 *
 * Cached (default, when the model supports it): the prompt's last window is prefilled once, then each
 * new token is one cached step (TransformerLM.forwardCached: O(1) new rows per layer instead of the
 * whole window). When the cache fills (contextLength positions), the window slides: the cache is
 * emptied and the last `slideKeep` tokens are prefilled again. With `slideKeep = contextLength` every
 * step past the limit conditions on exactly the uncached path's window (the last contextLength
 * tokens) at the uncached cost; the default, half the context, re-prefills once per contextLength/2
 * tokens and conditions on the last contextLength/2 .. contextLength tokens.
 *
 * Uncached (`cache: false`): every new token re-runs the model over the last contextLength tokens.
 *
 * Self-contrast (`contrast`, SCMoE's decoding: Shi et al. 2024, arXiv 2405.14507): every step runs the
 * model twice, the strong pass as configured and a weak pass with the contrast's router-logit edits
 * (its own KV cache), and samples from
 *
 *   score_v = (1 + β) s_v − β w_v   for v ∈ V = { v : s_v ≥ log α + max_u s_u },   −∞ elsewhere
 *
 * where s and w are the strong and weak log-probabilities (`selfContrastScores`). β = 0, or a weak
 * pass equal to the strong one, gives the strong pass's own distribution restricted to V.
 */
import type { LanguageModel } from './builder.js';
import { MoelabError } from './errors.js';
import { type ForwardContext, forwardContext } from './module.js';
import type { DecodingCache } from './nn/kv-cache.js';
import { Rng } from './rng.js';
import { tf } from './tf.js';

export interface SampleOptions {
  maxNewTokens: number;
  temperature: number;
  /** Keep only the k most likely tokens (0 = all). */
  topK: number;
  seed: number;
  /** Decode with a KV cache when the model can (default true); false re-runs the window for every token. */
  cache: boolean;
  /** Tokens re-prefilled when the cached window slides past contextLength (default: half the context; 1 .. contextLength). */
  slideKeep?: number;
  /** Told once, in one line, why the model cannot use a cache (generation then re-runs the window). */
  onFallback?: (reason: string) => void;
  /** Router-logit edits applied in every forward pass (steering, runtime expert masking; see `ForwardContext.routerLogitEdits`). */
  routerLogitEdits?: ForwardContext['routerLogitEdits'];
  /** Sees the logits each new token is sampled from (step 0 = the first new token); with `contrast`, the contrast scores. */
  onLogits?: (logits: Float32Array, step: number) => void;
  /** Self-contrast decoding against a weak pass of the same model (see the file comment). */
  contrast?: SelfContrast;
}

export interface SelfContrast {
  /** The weak pass's router-logit edits (applied after `routerLogitEdits`, which both passes get). */
  routerLogitEdits: NonNullable<ForwardContext['routerLogitEdits']>;
  /** β ≥ 0: the weight of the contrast. */
  beta: number;
  /** α ∈ (0, 1]: plausibility, tokens below α · max probability of the strong pass are excluded. */
  alpha: number;
}

/** The self-contrast scores of one step (see the file comment); −∞ outside the plausible set. */
export function selfContrastScores(strong: ArrayLike<number>, weak: ArrayLike<number>, beta: number, alpha: number): Float32Array {
  if (!(beta >= 0)) throw new MoelabError(`the contrast weight beta must be >= 0, got ${beta}`, 'contrast.beta');
  if (!(alpha > 0 && alpha <= 1)) throw new MoelabError(`the plausibility alpha must be in (0, 1], got ${alpha}`, 'contrast.alpha');
  if (strong.length !== weak.length) throw new MoelabError(`the strong pass has ${strong.length} logits, the weak one ${weak.length}`);
  const logSoftmax = (z: ArrayLike<number>) => {
    let max = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < z.length; i++) max = Math.max(max, z[i]!);
    let sum = 0;
    for (let i = 0; i < z.length; i++) sum += Math.exp(z[i]! - max);
    const lse = max + Math.log(sum);
    return Float64Array.from({ length: z.length }, (_, i) => z[i]! - lse);
  };
  const s = logSoftmax(strong);
  const w = logSoftmax(weak);
  let top = Number.NEGATIVE_INFINITY;
  for (const v of s) top = Math.max(top, v);
  const cut = Math.log(alpha) + top;
  return Float32Array.from(s, (sv, v) => (sv >= cut ? (1 + beta) * sv - beta * w[v]! : Number.NEGATIVE_INFINITY));
}

export function generateTokens(model: LanguageModel, prompt: ArrayLike<number>, opts: Partial<SampleOptions> = {}): number[] {
  const o: SampleOptions = { maxNewTokens: 100, temperature: 0.8, topK: 0, seed: 0, cache: true, ...opts };
  const rng = new Rng(o.seed);
  const ids = Array.from(prompt);
  if (ids.length === 0) throw new MoelabError('generate: the prompt is empty (give at least one token)');
  const C = model.contextLength;
  const keep = o.slideKeep ?? Math.max(1, Math.floor(C / 2));
  if (!Number.isInteger(keep) || keep < 1 || keep > C)
    throw new MoelabError(`slideKeep ${keep} must be an integer in 1..${C} (the model's contextLength)`, 'generate');
  let cache: DecodingCache | undefined;
  let weakCache: DecodingCache | undefined;
  if (o.contrast) selfContrastScores([0], [0], o.contrast.beta, o.contrast.alpha);
  if (o.cache) {
    const why = model.createCache ? (model.cacheBlocker?.() ?? null) : 'this model has no cached decoding path';
    if (why) o.onFallback?.(`no KV cache, re-running the window per token: ${why}`);
    else {
      cache = model.createCache!();
      if (o.contrast) weakCache = model.createCache!();
    }
  }
  // Logits of the last row of `tokens` (the next token's distribution). The tidy returns the tensor,
  // not its values: tidy walks whatever it returns looking for tensors, element by element for a
  // typed array (a tenth of a cached decoding step for 256 logits).
  const lastLogits = (run: (t: tf.Tensor) => tf.Tensor, tokens: number[]) => {
    const last = tf.tidy(() => {
      const logits = run(tf.tensor2d([tokens], [1, tokens.length], 'int32'));
      return tf.slice(logits, [0, tokens.length - 1, 0], [1, 1, -1]);
    });
    const values = last.dataSync() as Float32Array;
    last.dispose();
    return values;
  };
  // No routing statistics: nobody reads them here, and they cost a pass over the router's outputs per MoE layer.
  const edits: Partial<ForwardContext> = o.routerLogitEdits ? { routerLogitEdits: o.routerLogitEdits } : {};
  const context = () => forwardContext(rng, false, { stats: false, ...edits });
  // The weak pass: the strong pass's edits, then the contrast's, per layer.
  const weakEdits = new Map(o.routerLogitEdits ?? []);
  for (const [layer, edit] of o.contrast?.routerLogitEdits ?? []) {
    const first = weakEdits.get(layer);
    weakEdits.set(layer, first ? (z) => tf.tidy(() => edit(first(z))) : edit);
  }
  const weakContext = () => forwardContext(rng, false, { stats: false, routerLogitEdits: weakEdits });
  const step = (tokens: number[], reset: boolean): Float32Array => {
    if (reset) {
      cache?.reset();
      weakCache?.reset();
    }
    const strong = cache ? lastLogits((t) => model.forwardCached!(t, context(), cache!), tokens) : lastLogits((t) => model.forward(t, context()), tokens);
    if (!o.contrast) return strong;
    const weak = weakCache
      ? lastLogits((t) => model.forwardCached!(t, weakContext(), weakCache!), tokens)
      : lastLogits((t) => model.forward(t, weakContext()), tokens);
    return selfContrastScores(strong, weak, o.contrast.beta, o.contrast.alpha);
  };
  try {
    let logits = step(ids.slice(-C), false);
    for (let i = 0; i < o.maxNewTokens; i++) {
      o.onLogits?.(logits, i);
      ids.push(sample(logits, o, rng));
      if (i + 1 === o.maxNewTokens) break;
      if (!cache) logits = step(ids.slice(-C), false);
      else if (cache.length < C) logits = step(ids.slice(-1), false);
      else logits = step(ids.slice(-keep), true);
    }
  } finally {
    cache?.dispose();
    weakCache?.dispose();
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
