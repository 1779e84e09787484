/**
 * Shared setup of the upcycle tests: a registry with every plugin, tiny dense specs (parallel or
 * sequential blocks, SwiGLU or ReLU FFNs), dense "checkpoints" built from a seed and branched copies of
 * them (the seed plus small perturbations, as a few steps of domain training would give), and the
 * loss / logits of a spec + weights on a fixed batch.
 */
import { attention } from '@moelab/attention';
import { buildModel, corePlugin, createRegistry, crossEntropy, forwardContext, loadState, type NodeSpec, Rng, tf } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { upcyclePlugin, type UpcycleSource, type WeightMap } from '../src/index.js';

export const registry = () => createRegistry(corePlugin, routers, experts, attention, upcyclePlugin);

export function denseSpec(opts: { layers?: number; layout?: 'parallel' | 'sequential'; glu?: boolean; d?: number; hidden?: number; heads?: number } = {}) {
  const glu = opts.glu ?? true;
  return {
    type: 'transformer-lm',
    vocabSize: 256,
    dModel: opts.d ?? 16,
    contextLength: 16,
    positionEmbedding: 'learned',
    outNorm: 'rmsnorm',
    stack: { groupSize: opts.layers ?? 2 },
    block: {
      type: 'transformer',
      layout: opts.layout ?? 'parallel',
      normType: 'rmsnorm',
      attention: { type: 'mha', heads: opts.heads ?? 2 },
      ffn: { type: 'dense', hidden: opts.hidden ?? 32, glu, activation: glu ? 'silu' : 'relu' },
    },
  };
}

export function weightsOf(spec: NodeSpec, seed: number): WeightMap {
  const m = buildModel(spec, registry(), seed);
  const out: WeightMap = new Map();
  for (const [n, v] of m.stateDict()) out.set(n, { shape: v.shape.slice(), data: Float32Array.from(v.dataSync()) });
  m.dispose();
  return out;
}

export function source(name: string, spec: NodeSpec, seed = 0): UpcycleSource {
  return { name, spec, weights: weightsOf(spec, seed) };
}

/** `base` with every tensor moved by N(0, (scale·|θ|_rms)²): a stand-in for a dense model branched from it. */
export function branched(base: UpcycleSource, name: string, seed: number, scale = 0.05): UpcycleSource {
  const rng = new Rng(seed);
  const weights: WeightMap = new Map();
  for (const [n, t] of base.weights) {
    let s = 0;
    for (const v of t.data) s += v * v;
    const rms = Math.sqrt(s / t.data.length);
    weights.set(n, { shape: t.shape.slice(), data: t.data.map((v) => v + scale * rms * rng.normal()) });
  }
  return { name, spec: structuredClone(base.spec), weights };
}

export const tokens = (B = 2, T = 12, seed = 1) => {
  const rng = new Rng(seed);
  return Int32Array.from({ length: B * (T + 1) }, () => rng.int(256));
};

/** Logits [B, T, V] and mean cross-entropy of spec + weights on a fixed batch (eval mode). */
export function run(spec: NodeSpec, weights: WeightMap, B = 2, T = 12): { logits: Float32Array; loss: number } {
  const reg = registry();
  const m = buildModel(spec, reg, 0);
  loadState(m, weights);
  const ids = tokens(B, T);
  const out = tf.tidy(() => {
    const w = tf.tensor2d(ids, [B, T + 1], 'int32');
    const logits = m.forward(tf.slice(w, [0, 0], [B, T]), forwardContext(new Rng(0), false));
    const loss = crossEntropy(logits, tf.slice(w, [0, 1], [B, T]));
    return { logits: logits.dataSync() as Float32Array, loss: loss.dataSync()[0]! };
  });
  m.dispose();
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}
