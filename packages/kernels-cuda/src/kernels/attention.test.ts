import * as tf from '@tensorflow/tfjs';
import { CACHE_WRITE_KERNEL, CACHED_ATTENTION_KERNEL, CAUSAL_ATTENTION_KERNEL, ROPE_KERNEL } from '@moelab/core/kernels';
import { describe, expect, it } from 'vitest';
import { fallbackCounts, resetFallbackCounts } from '../backend.js';
import { attentionReference, ropeReference, ropeTables } from '@moelab/kernels-cpu/testing/attention-reference';
import { compare, NAME, randArray, rng, skipReason, type Spec, status } from '../testing/helpers.js';

const spec = (shape: number[], r: () => number, scale = 1): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
    scale,
  ),
});
// [B,T,H,d] <-> [B,H,T,d]
const swap = (t: tf.Tensor) => tf.transpose(t, [0, 2, 1, 3]);

function fusedAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: number, bthd: boolean): tf.Tensor {
  const [out, lse] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, { scale, layout: bthd ? 'bthd' : 'bhtd' }) as tf.Tensor[];
  lse!.dispose();
  return out!;
}

/** The output and the gradients w.r.t. `wrt` of sum(f(...) * probe); probe is the last spec. */
const withGrads =
  (f: (...ts: tf.Tensor[]) => tf.Tensor, wrt: number[]) =>
  (...ts: tf.Tensor[]): tf.Tensor[] => {
    const probe = ts[ts.length - 1]!;
    const args = ts.slice(0, -1);
    const loss = (...xs: tf.Tensor[]) => {
      const all = args.map((t, i) => (wrt.includes(i) ? xs[wrt.indexOf(i)]! : t));
      return tf.sum(tf.mul(f(...all), probe));
    };
    return [f(...args), ...tf.grads(loss)(wrt.map((i) => args[i]!))];
  };

/** Runs `fused` on the backend under test against `reference` on cpu and checks that nothing fell back. */
async function expectOnDevice(
  specs: Spec[],
  reference: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  fused: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  tol = 1e-4,
) {
  resetFallbackCounts(NAME);
  await compare(specs, reference, tol, fused);
  expect(fallbackCounts(NAME)).toEqual({});
}

describe.skipIf(!status.available)(`attention kernels on ${NAME} vs op-by-op on cpu${skipReason}`, () => {
  const cases: [string, { B: number; H: number; T: number; dk: number; dv: number; bthd: boolean }][] = [
    ['bhtd, dv != dk', { B: 2, H: 3, T: 5, dk: 8, dv: 6, bthd: false }],
    ['bthd', { B: 2, H: 2, T: 7, dk: 4, dv: 5, bthd: true }],
    ['one token', { B: 1, H: 2, T: 1, dk: 3, dv: 3, bthd: false }],
    ['more keys than a block has threads (T = 130)', { B: 1, H: 1, T: 130, dk: 3, dv: 2, bthd: true }],
  ];
  for (const [label, c] of cases) {
    it(`MoelabCausalAttention forward and gradients: ${label}`, async () => {
      const r = rng(c.T * 7 + c.dk);
      const at = (d: number) => (c.bthd ? [c.B, c.T, c.H, d] : [c.B, c.H, c.T, d]);
      const specs = [spec(at(c.dk), r), spec(at(c.dk), r), spec(at(c.dv), r), spec(at(c.dv), r)];
      const scale = 1 / Math.sqrt(c.dk);
      const reference = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) =>
        c.bthd ? swap(attentionReference(tf, swap(q), swap(k), swap(v), scale)) : attentionReference(tf, q, k, v, scale);
      const fused = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => fusedAttention(q, k, v, scale, c.bthd);
      await expectOnDevice(specs, withGrads(reference, [0, 1, 2]) as never, withGrads(fused, [0, 1, 2]) as never, 2e-4);
    });
  }

  it('MoelabCausalAttention: lse is each row’s log-sum-exp of the scaled scores', async () => {
    await tf.setBackend(NAME);
    const q = tf.tensor4d([1, 0, 0, 1], [1, 1, 2, 2]);
    const [out, lse] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k: q, v: q }, { scale: 2 }) as tf.Tensor[];
    // row 0 sees itself (score 2); row 1 sees scores 0 and 2
    const [l0, l1] = Array.from(lse!.dataSync());
    expect(l0).toBeCloseTo(2, 5);
    expect(l1).toBeCloseTo(Math.log(1 + Math.exp(2)), 5);
    tf.dispose([q, out!, lse!]);
  });

  it('MoelabCachedAttention: grouped-query heads over the first `length` cache positions', async () => {
    const r = rng(21);
    const [B, H, Hkv, m, Tk, length, dk, dv] = [2, 4, 2, 3, 9, 7, 5, 6];
    const specs = [spec([B, H, m, dk], r), spec([B, Hkv, Tk, dk], r), spec([B, Hkv, Tk, dv], r)];
    const scale = 0.4;
    const heads = tf.tensor1d(
      Array.from({ length: H }, (_, h) => Math.floor((h * Hkv) / H)),
      'int32',
    );
    const reference = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => {
      const kk = tf.slice(tf.gather(k, heads, 1), [0, 0, 0, 0], [-1, -1, length, -1]);
      const vv = tf.slice(tf.gather(v, heads, 1), [0, 0, 0, 0], [-1, -1, length, -1]);
      return attentionReference(tf, q, kk, vv, scale, length - m);
    };
    const fused = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.engine().runKernel(CACHED_ATTENTION_KERNEL, { q, k, v }, { scale, length }) as tf.Tensor;
    await expectOnDevice(specs, reference, fused);
    await tf.setBackend(NAME);
    const [q, k, v] = specs.map((s) => tf.tensor(s.data, s.shape));
    expect(() => tf.engine().runKernel(CACHED_ATTENTION_KERNEL, { q: q!, k: k!, v: v! }, { scale, length: Tk + 1 })).toThrow(
      /^MoelabCachedAttention: attr length must be an integer in \[3, 9\], got 10$/,
    );
    tf.dispose([q!, k!, v!, heads]);
  });

  it('MoelabCacheWrite replaces positions along the time axis, everything else unchanged', async () => {
    const r = rng(22);
    for (const [axis, position] of [
      [2, 3],
      [1, 0],
    ] as const) {
      const cacheShape = [2, 5, 6, 3];
      const rowsShape = cacheShape.map((s, i) => (i === axis ? 2 : s));
      const specs = [spec(cacheShape, r), spec(rowsShape, r)];
      const reference = (cache: tf.Tensor, rows: tf.Tensor) => {
        const begin = cacheShape.map((_, i) => (i === axis ? position + 2 : 0));
        const before = tf.slice(
          cache,
          [0, 0, 0, 0],
          cacheShape.map((s, i) => (i === axis ? position : s)),
        );
        return tf.concat(
          [
            before,
            rows,
            tf.slice(
              cache,
              begin,
              cacheShape.map((s, i) => (i === axis ? s - position - 2 : s)),
            ),
          ],
          axis,
        );
      };
      const fused = (cache: tf.Tensor, rows: tf.Tensor) => tf.engine().runKernel(CACHE_WRITE_KERNEL, { cache, rows }, { axis, position }) as tf.Tensor;
      await expectOnDevice(specs, reference, fused, 0);
    }
  });

  for (const bthd of [false, true]) {
    it(`MoelabRope forward, inverse and gradient (${bthd ? 'bthd' : 'bhtd'}, partial rotation)`, async () => {
      const r = rng(bthd ? 31 : 32);
      const [B, H, T, dh, dims] = [2, 3, 5, 10, 6];
      const specs = [spec(bthd ? [B, T, H, dh] : [B, H, T, dh], r), ...ropeTables(T, dims), spec(bthd ? [B, T, H, dh] : [B, H, T, dh], r)];
      for (const inverse of [false, true]) {
        const reference = (x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) =>
          bthd ? swap(ropeReference(tf, swap(x), cos, sin, inverse)) : ropeReference(tf, x, cos, sin, inverse);
        const fused = (x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) =>
          tf.engine().runKernel(ROPE_KERNEL, { x, cos, sin }, { inverse, layout: bthd ? 'bthd' : 'bhtd' }) as tf.Tensor;
        await expectOnDevice(specs, withGrads(reference, [0]) as never, withGrads(fused, [0]) as never, 1e-5);
      }
    });
  }

  it('MoelabCausalAttention with heads wider than a block takes (64 channels): dk 300, dv 260', async () => {
    const r = rng(41);
    const specs = [spec([1, 1, 3, 300], r, 0.1), spec([1, 1, 3, 300], r, 0.1), spec([1, 1, 3, 260], r), spec([1, 1, 3, 260], r)];
    const reference = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => attentionReference(tf, q, k, v, 0.5);
    const fused = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => fusedAttention(q, k, v, 0.5, false);
    await expectOnDevice(specs, withGrads(reference, [0, 1, 2]) as never, withGrads(fused, [0, 1, 2]) as never, 2e-4);
  });

  // moelab-cpu runs the same fused kernels (its own implementation). Where its addon is not built
  // (or not bundled: scripts/device-check.sh), the reference is the op-by-op definition on cpu.
  const hasMoelabCpu = !!tf.findBackendFactory('moelab-cpu');
  const host = hasMoelabCpu ? 'moelab-cpu' : 'cpu';
  const flashCases: [string, { B: number; H: number; T: number; dk: number; dv: number; bthd: boolean }][] = [
    ['one token, three heads', { B: 2, H: 3, T: 1, dk: 5, dv: 4, bthd: false }],
    ['T = 33: a full tile and a one-row tail', { B: 1, H: 2, T: 33, dk: 8, dv: 6, bthd: true }],
    ['T = 45, dk 70 and dv 66: several channel steps and output chunks', { B: 1, H: 2, T: 45, dk: 70, dv: 66, bthd: false }],
  ];
  for (const [label, c] of flashCases) {
    it(`flash-tiled MoelabCausalAttention equals ${hasMoelabCpu ? "moelab-cpu's" : 'the op-by-op definition'}, out, lse and gradients: ${label}`, async () => {
      const r = rng(c.T * 13 + c.dk + c.H);
      const at = (d: number) => (c.bthd ? [c.B, c.T, c.H, d] : [c.B, c.H, c.T, d]);
      const specs = [spec(at(c.dk), r, 0.5), spec(at(c.dk), r, 0.5), spec(at(c.dv), r), spec(at(c.dv), r)];
      const scale = 1 / Math.sqrt(c.dk);
      const attrs = { scale, layout: c.bthd ? 'bthd' : 'bhtd' };
      const run = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, probe: tf.Tensor) => {
        const [, lse] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, attrs) as tf.Tensor[];
        return [lse!, ...withGrads((a, b, d) => fusedAttention(a, b, d, scale, c.bthd), [0, 1, 2])(q, k, v, probe)];
      };
      const opByOp = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, probe: tf.Tensor) => {
        const [qh, kh] = c.bthd ? [swap(q), swap(k)] : [q, k];
        const causal = tf.linalg.bandPart(tf.ones([c.T, c.T]), -1, 0).cast('bool');
        const scores = tf.where(causal, tf.matMul(qh, kh, false, true).mul(scale), tf.fill([c.T, c.T], Number.NEGATIVE_INFINITY));
        const reference = (a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) =>
          c.bthd ? swap(attentionReference(tf, swap(a), swap(b), swap(d), scale)) : attentionReference(tf, a, b, d, scale);
        return [tf.logSumExp(scores, -1), ...withGrads(reference, [0, 1, 2])(q, k, v, probe)];
      };
      resetFallbackCounts(NAME);
      await compare(specs, (hasMoelabCpu ? run : opByOp) as never, 2e-4, run as never, host);
      expect(fallbackCounts(NAME)).toEqual({});
    });
  }

  it(`flash-tiled MoelabCachedAttention equals ${hasMoelabCpu ? "moelab-cpu's" : 'the op-by-op definition'} over several key tiles (GQA, 35 new rows, length 70 of 75)`, async () => {
    const r = rng(51);
    const [B, H, Hkv, m, Tk, length, dk, dv, scale] = [1, 4, 2, 35, 75, 70, 6, 5, 0.3];
    const specs = [spec([B, H, m, dk], r), spec([B, Hkv, Tk, dk], r), spec([B, Hkv, Tk, dv], r)];
    const run = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.engine().runKernel(CACHED_ATTENTION_KERNEL, { q, k, v }, { scale, length }) as tf.Tensor;
    const opByOp = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => {
      const heads = tf.tensor1d([0, 0, 1, 1], 'int32');
      const window = (t: tf.Tensor) => tf.slice(tf.gather(t, heads, 1), [0, 0, 0, 0], [-1, -1, length, -1]);
      return attentionReference(tf, q, window(k), window(v), scale, length - m);
    };
    resetFallbackCounts(NAME);
    await compare(specs, hasMoelabCpu ? run : opByOp, 1e-4, run, host);
    expect(fallbackCounts(NAME)).toEqual({});
  });
});
