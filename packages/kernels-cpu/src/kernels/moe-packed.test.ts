import * as tf from '@tensorflow/tfjs';
import { MOE_PACKED_KERNEL, type MoePackedAttrs, PACKED_BITS } from '@moelab/core/kernels';
import { afterAll, describe, expect, it } from 'vitest';
import { type MoeActivation, moeGLU, moeMLP } from '../index.js';
import { maxRelDiff, randArray, rng, runOn, type Spec, status, underTest } from '../testing/helpers.js';
import { randPackedWeight } from '../testing/random.js';
import { mlpCases, type MlpCase, topkCase } from '../testing/moe-reference.js';

// The packed and the dense path sum in different orders; natively each step is a fused
// multiply-add, in WebAssembly SIMD128 (no FMA) a rounded product and sum, so they drift further apart.
const TOL = underTest === 'moelab-cpu' ? 2e-5 : 6e-5;

afterAll(async () => {
  await tf.setBackend('cpu');
});

/** Inputs [x, tok, exp, weight, w1 codes/scale/zero, w3..., w2..., w1, w3, w2 dense] for one case. */
function packedSpecs(c: MlpCase, seed: number, gated: boolean, bits: number, group: number): { specs: Spec[]; gated: boolean } {
  const r = rng(seed);
  const N = c.tok.length;
  const w1 = randPackedWeight(r, c.E, c.d, c.h, bits, group);
  const w3 = gated ? randPackedWeight(r, c.E, c.d, c.h, bits, group) : null;
  const w2 = randPackedWeight(r, c.E, c.h, c.d, bits, group);
  const packed = (w: ReturnType<typeof randPackedWeight> | null): Spec[] =>
    w
      ? [
          { shape: w.codesShape, data: w.codes },
          { shape: w.scaleShape, data: w.scale },
          { shape: w.scaleShape, data: w.zero },
        ]
      : [
          { shape: [0], data: new Int32Array(0) },
          { shape: [0], data: new Float32Array(0) },
          { shape: [0], data: new Float32Array(0) },
        ];
  const specs: Spec[] = [
    { shape: [c.T, c.d], data: randArray(r, c.T * c.d) },
    { shape: [N], data: c.tok },
    { shape: [N], data: c.exp },
    { shape: [N], data: randArray(r, N) },
    ...packed(w1),
    ...packed(w3),
    ...packed(w2),
    { shape: [c.E, c.d, c.h], data: w1.dense },
    { shape: [c.E, c.d, c.h], data: (w3 ?? w1).dense },
    { shape: [c.E, c.h, c.d], data: w2.dense },
  ];
  return { specs, gated };
}

function runPacked(t: tf.Tensor[], a: MoeActivation, bits: number, group: number): tf.Tensor2D {
  const [x, tokenIndex, expertIndex, weight, w1Codes, w1Scale, w1Zero, w3Codes, w3Scale, w3Zero, w2Codes, w2Scale, w2Zero] = t;
  const [out, hidden] = tf
    .engine()
    .runKernel(
      MOE_PACKED_KERNEL,
      { x, w1Codes, w1Scale, w1Zero, w3Codes, w3Scale, w3Zero, w2Codes, w2Scale, w2Zero, tokenIndex, expertIndex, weight } as unknown as tf.NamedTensorMap,
      { activation: a, bits, group } as MoePackedAttrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
  hidden!.dispose();
  return out as tf.Tensor2D;
}

function runDense(t: tf.Tensor[], a: MoeActivation, gated: boolean): tf.Tensor2D {
  const [x, tok, exp, weight] = t as tf.Tensor1D[];
  const [w1, w3, w2] = t.slice(13) as tf.Tensor3D[];
  return gated
    ? moeGLU(x as unknown as tf.Tensor2D, w1!, w3!, w2!, tok!, exp!, weight!, a)
    : moeMLP(x as unknown as tf.Tensor2D, w1!, w2!, tok!, exp!, weight!, a);
}

describe.skipIf(!status.available)(`packed experts: the native dequantized GEMMs equal dequantize-then-GEMM (${status.reason})`, () => {
  mlpCases.forEach((c, k) => {
    for (const gated of [false, true]) {
      const bits = PACKED_BITS[k % PACKED_BITS.length]!;
      const group = k % 2 === 0 ? 3 : 0;
      const a: MoeActivation = gated ? 'silu' : (['gelu', 'relu', 'relu2', 'identity'] as const)[k % 4]!;
      it(`${gated ? 'GLU' : 'MLP'} ${bits} bits, ${group ? `groups of ${group}` : 'channel-wise'}, ${a}: ${c.name} (forward, and gradients of x and the routing weights)`, async () => {
        const { specs } = packedSpecs(c, 500 + 7 * k + (gated ? 1 : 0), gated, bits, group);
        const proj = randArray(rng(13), c.T * c.d);
        const lossOf = (y: tf.Tensor) => tf.sum(tf.mul(y, tf.tensor(proj, y.shape)));
        const grads =
          (f: (t: tf.Tensor[]) => tf.Tensor) =>
          (...t: tf.Tensor[]) =>
            tf.grads((x: tf.Tensor, w: tf.Tensor) => {
              const u = t.slice();
              u[0] = x;
              u[3] = w;
              return lossOf(f(u));
            })([t[0]!, t[3]!]);
        const packed = (t: tf.Tensor[]) => runPacked(t, a, bits, group);
        const dense = (t: tf.Tensor[]) => runDense(t, a, gated);
        const got = await runOn('moelab-cpu', specs, (...t) => [packed(t), ...grads(packed)(...t)]);
        const want = await runOn('moelab-cpu', specs, (...t) => [dense(t), ...grads(dense)(...t)]);
        got.forEach((g, i) => {
          expect(g.shape).toEqual(want[i]!.shape);
          expect(maxRelDiff(g.data, want[i]!.data), `output ${i}`).toBeLessThan(TOL);
        });
      });
    }
  });

  it('every code width decodes the same bit stream (3 bits crossing word boundaries, 8, 4, 2)', async () => {
    const c = mlpCases[0]!;
    for (const bits of PACKED_BITS) {
      const { specs } = packedSpecs(c, 900 + bits, true, bits, 0);
      const got = await runOn('moelab-cpu', specs, (...t) => runPacked(t, 'silu', bits, 0));
      const want = await runOn('moelab-cpu', specs, (...t) => runDense(t, 'silu', true));
      expect(maxRelDiff(got[0]!.data, want[0]!.data), `${bits} bits`).toBeLessThan(TOL);
    }
  });

  it('one token (the decoding step): 4- and 2-bit rows of 32-column blocks, 8-column blocks and a tail, channel-wise and grouped, forward and dx', async () => {
    // d = 45 and h = 77: both projections have full 32-column blocks, an 8-column block and 5
    // leftover columns; one token with k = 2 gives each of its experts a single row.
    const c = topkCase('one token, d 45, h 77', 31, 1, 45, 77, 4, 2);
    for (const bits of [4, 2])
      for (const group of [0, 7]) {
        const { specs } = packedSpecs(c, 950 + bits + group, false, bits, group);
        const proj = randArray(rng(17), c.T * c.d);
        const run =
          (f: (t: tf.Tensor[]) => tf.Tensor) =>
          (...t: tf.Tensor[]) => {
            const y = f(t);
            const dx = tf.grad((x: tf.Tensor) => {
              const u = t.slice();
              u[0] = x;
              return tf.sum(tf.mul(f(u), tf.tensor(proj, y.shape)));
            })(t[0]!);
            return [y, dx];
          };
        const got = await runOn(
          'moelab-cpu',
          specs,
          run((t) => runPacked(t, 'gelu', bits, group)),
        );
        const want = await runOn(
          'moelab-cpu',
          specs,
          run((t) => runDense(t, 'gelu', false)),
        );
        got.forEach((g, i) => {
          expect(maxRelDiff(g.data, want[i]!.data), `${bits} bits, group ${group}, output ${i}`).toBeLessThan(TOL);
        });
      }
  });

  it('rejects a bad code width and mis-shaped packed weights with a clear error', async () => {
    await tf.setBackend('moelab-cpu');
    const { specs } = packedSpecs(mlpCases[0]!, 1, false, 4, 0);
    tf.tidy(() => {
      const t = specs.map((s) => tf.tensor(s.data, s.shape, s.data instanceof Int32Array ? 'int32' : 'float32'));
      expect(() => runPacked(t, 'gelu', 5, 0)).toThrow(/MoelabMoePacked: attr bits must be one of 2, 3, 4, 8, got 5/);
      // 4-bit codes read as 2-bit ones: the row width in words no longer fits.
      expect(() => runPacked(t, 'gelu', 8, 0)).toThrow(/MoelabMoePacked: input 'w1Codes' has shape \[5,8,1\], expected \[5,8,2\]/);
      expect(() => runPacked(t, 'gelu', 4, 3)).toThrow(/MoelabMoePacked: input 'w1Scale' has shape \[5,1,6\], expected \[5,3,6\]/);
    });
  });
});
