/**
 * Shared setup of the attention-mixture tests (BAM, MAE, MoA): the cpu backend, a registry with the
 * attention entries, building one attention node from a JSON spec, a seeded input and the largest
 * absolute difference of two tensors.
 */
import { buildNode, corePlugin, createRegistry, forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll } from 'vitest';
import { attention } from '../src/index.js';

/** Run the calling test file on the reference cpu backend. */
export function useCpuBackend(): void {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });
}

export const registry = createRegistry(corePlugin, attention);

/** A builder of attention entry `type`: spec fields over the entry's defaults, at width d, from `seed`. */
export function attentionBuilder<M>(type: string): (spec: Record<string, unknown>, d?: number, seed?: number) => M {
  return (spec, d = 16, seed = 0) => buildNode<M>(registry, 'attention', { type, ...spec }, '$.block.attention', seed, { dModel: d });
}

/** max |a − b| over all elements. */
export const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);

/** A [B, T, d] standard-normal input from `seed`. */
export const input = (B: number, T: number, d: number, seed = 5) => tf.tensor3d(new Rng(seed).normalArray(B * T * d), [B, T, d]);

/** An inference-mode forward context. */
export const inferenceContext = () => forwardContext(new Rng(0), false);
