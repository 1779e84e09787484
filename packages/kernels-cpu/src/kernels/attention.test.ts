import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { CAUSAL_ATTENTION_KERNEL, ROPE_KERNEL } from '@moelab/core/kernels';
import { attentionReference, ropeReference, ropeTables } from '../testing/attention-reference.js';
import { compareBackends, randArray, rng, type Spec, status } from '../testing/helpers.js';

const f = (shape: number[], r: () => number, scale = 1): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
    scale,
  ),
});
const has = (name: string) => tf.getKernel(name, tf.getBackend()) !== undefined;

/** The fused kernel where the backend has it, else the op-by-op reference (core's fallback maths). */
function attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: number): tf.Tensor {
  if (has(CAUSAL_ATTENTION_KERNEL)) {
    const [out, lse] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, { scale }) as tf.Tensor[];
    lse!.dispose();
    return out!;
  }
  return attentionReference(tf, q, k, v, scale);
}

/** Rotate-half RoPE of the first cos.shape[1] channels. */
function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  if (has(ROPE_KERNEL)) return tf.engine().runKernel(ROPE_KERNEL, { x, cos, sin }, { inverse: false }) as tf.Tensor;
  return ropeReference(tf, x, cos, sin);
}

const weightedSum = (y: tf.Tensor, seed: number) => tf.sum(tf.mul(y, tf.tensor(randArray(rng(seed), y.size), y.shape)));

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe.skipIf(!status.available)(`fused causal attention and RoPE equal the op-by-op versions (${status.reason})`, () => {
  // [B, H, T, dk, dv]: one token, blocks of 64 queries crossed (T = 65, 130), dv != dk.
  const shapes: [number, number, number, number, number][] = [
    [1, 1, 1, 4, 4],
    [2, 3, 17, 8, 8],
    [1, 2, 65, 16, 12],
    [2, 2, 130, 8, 8],
  ];

  it('MoelabCausalAttention: forward and gradients of q, k, v', async () => {
    const r = rng(5);
    for (const [B, H, T, dk, dv] of shapes) {
      const specs = [f([B, H, T, dk], r, 2), f([B, H, T, dk], r, 2), f([B, H, T, dv], r)];
      const scale = 1 / Math.sqrt(dk);
      await compareBackends(specs, (q, k, v) => attention(q!, k!, v!, scale), 1e-5);
      await compareBackends(
        specs,
        (q, k, v) => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => weightedSum(attention(a, b, c, scale), 3))([q!, k!, v!]),
        1e-4,
      );
    }
  });

  it('MoelabCausalAttention: a large scale (peaked softmax) stays finite and equal', async () => {
    const r = rng(6);
    const specs = [f([1, 2, 40, 8], r, 4), f([1, 2, 40, 8], r, 4), f([1, 2, 40, 8], r)];
    await compareBackends(
      specs,
      (q, k, v) => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => weightedSum(attention(a, b, c, 3), 4))([q!, k!, v!]),
      1e-4,
    );
  });

  it('MoelabRope: forward and gradient, all channels or a prefix, one position or many', async () => {
    const r = rng(7);
    for (const [B, H, T, dh, dims] of [
      [1, 1, 1, 8, 8],
      [2, 3, 19, 16, 16],
      [2, 2, 9, 12, 4],
    ]) {
      const [cos, sin] = ropeTables(T!, dims!);
      const specs = [f([B!, H!, T!, dh!], r), cos, sin];
      await compareBackends(specs, (x, c, s) => rope(x!, c!, s!), 1e-6);
      await compareBackends(specs, (x, c, s) => tf.grad((a: tf.Tensor) => weightedSum(rope(a, c!, s!), 8))(x!), 1e-6);
    }
  });

  it("layout 'bthd' ([B, T, H, d], no head transposes): attention and RoPE equal the [B, H, T, d] versions, values and gradients", async () => {
    const r = rng(8);
    const toHeads = (t: tf.Tensor) => tf.transpose(t, [0, 2, 1, 3]);
    const attentionBthd = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: number) => {
      if (has(CAUSAL_ATTENTION_KERNEL)) {
        const [out, lse] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, { scale, layout: 'bthd' }) as tf.Tensor[];
        lse!.dispose();
        return out!;
      }
      return toHeads(attention(toHeads(q), toHeads(k), toHeads(v), scale));
    };
    const ropeBthd = (x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) =>
      has(ROPE_KERNEL)
        ? (tf.engine().runKernel(ROPE_KERNEL, { x, cos, sin }, { inverse: false, layout: 'bthd' }) as tf.Tensor)
        : toHeads(rope(toHeads(x), cos, sin));
    for (const [B, T, H, dk, dv] of [
      [2, 70, 3, 8, 12],
      [1, 1, 2, 4, 4],
    ]) {
      const specs = [f([B!, T!, H!, dk!], r, 2), f([B!, T!, H!, dk!], r, 2), f([B!, T!, H!, dv!], r)];
      await compareBackends(specs, (q, k, v) => attentionBthd(q!, k!, v!, 0.4), 1e-5);
      await compareBackends(
        specs,
        (q, k, v) => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => weightedSum(attentionBthd(a, b, c, 0.4), 6))([q!, k!, v!]),
        1e-4,
      );
      const [cos, sin] = ropeTables(T!, dk! / 2);
      const rs = [f([B!, T!, H!, dk!], r), cos, sin];
      await compareBackends(rs, (x, c, s) => tf.grad((a: tf.Tensor) => weightedSum(ropeBthd(a, c!, s!), 9))(x!), 1e-6);
      await compareBackends(rs, (x, c, s) => ropeBthd(x!, c!, s!), 1e-6);
    }
  });

  it('rejects mismatched shapes with a message naming the input', async () => {
    await tf.setBackend('moelab-cpu');
    const q = tf.zeros([1, 2, 4, 8]);
    const k = tf.zeros([1, 2, 5, 8]);
    expect(() => tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v: q }, { scale: 1 })).toThrow(/input 'k' has shape \[1,2,5,8\], expected \[1,2,4,8\]/);
    expect(() => tf.engine().runKernel(ROPE_KERNEL, { x: q, cos: tf.zeros([4, 3]), sin: tf.zeros([4, 3]) }, { inverse: false })).toThrow(/must be even/);
    tf.dispose([q, k]);
  });

  it('no tensors left behind by forward + backward', async () => {
    await tf.setBackend('moelab-cpu');
    const r = rng(9);
    const [q, k, v] = [0, 1, 2].map(() => tf.tensor4d(randArray(r, 2 * 2 * 70 * 8), [2, 2, 70, 8]));
    const step = () =>
      tf.tidy(
        () =>
          void tf
            .grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(attention(a, b, c, 0.3)))([q!, k!, v!])
            .map((g) => g.dataSync()),
      );
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) step();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([q!, k!, v!]);
  });
});
