import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { LAYER_NORM_KERNEL } from '@moelab/core/kernels';
import { compareBackends, randArray, rng, type Spec, status } from '../testing/helpers.js';

const f = (shape: number[], r: () => number, scale = 1, shift = 0): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
    scale,
  ).map((v) => v + shift),
});

/** The fused kernel where the backend has it, else core's op-by-op LayerNorm. */
function layerNorm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor | null, eps: number): tf.Tensor {
  if (tf.getKernel(LAYER_NORM_KERNEL, tf.getBackend())) {
    const inputs: tf.NamedTensorMap = beta ? { x, gamma, beta } : { x, gamma };
    const [y, mean, rstd] = tf.engine().runKernel(LAYER_NORM_KERNEL, inputs, { eps, hasBeta: !!beta }) as tf.Tensor[];
    tf.dispose([mean!, rstd!]);
    return y!;
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const y = tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), gamma);
  return beta ? tf.add(y, beta) : y;
}

const weightedSum = (y: tf.Tensor, seed: number) => tf.sum(tf.mul(y, tf.tensor(randArray(rng(seed), y.size), y.shape)));

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe.skipIf(!status.available)(`fused LayerNorm equals the op-by-op version (${status.reason})`, () => {
  it('forward and gradients of x, gamma, beta; with and without beta; rows of one, wide rows, an offset mean', async () => {
    const r = rng(31);
    for (const [shape, withBeta, shift] of [
      [[4, 7], true, 0],
      [[2, 3, 300], true, 5],
      [[1, 1], false, 0],
      [[16, 33, 64], false, -3],
    ] as [number[], boolean, number][]) {
      const D = shape[shape.length - 1]!;
      const specs = [f(shape, r, 2, shift), f([D], r, 1, 1), f([D], r)];
      const fn = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => layerNorm(x, g, withBeta ? b : null, 1e-5);
      await compareBackends(specs, (x, g, b) => fn(x!, g!, b!), 1e-5);
      await compareBackends(
        specs,
        (x, g, b) =>
          withBeta
            ? tf.grads((a: tf.Tensor, c: tf.Tensor, d: tf.Tensor) => weightedSum(fn(a, c, d), 5))([x!, g!, b!])
            : tf.grads((a: tf.Tensor, c: tf.Tensor) => weightedSum(fn(a, c, b!), 5))([x!, g!]),
        1e-4,
      );
    }
  });

  it('rejects a gamma of the wrong length, naming it', async () => {
    await tf.setBackend('moelab-cpu');
    const x = tf.zeros([2, 4]);
    const g = tf.ones([3]);
    expect(() => tf.engine().runKernel(LAYER_NORM_KERNEL, { x, gamma: g }, { eps: 1e-5, hasBeta: false })).toThrow(
      /input 'gamma' has shape \[3\], expected \[4\]/,
    );
    tf.dispose([x, g]);
  });
});
