/**
 * The threaded build (pthreads: kernels-cpu's pool on worker threads sharing the memory) computes
 * what the single-threaded build does: the same calls, on shapes large enough that the pool splits
 * them (above its 5e5-flop threshold), give the same numbers up to float32 rounding (a split over
 * K sums partial products in another order). Skips, with the reason, when a build is missing.
 */
import { describe, expect, it } from 'vitest';
import { randArray, rng } from '@moelab/kernels-cpu/testing/random';
import { loadWasmKernels, type WasmKernels } from './module.js';

const single = await loadWasmKernels({ threads: 1 });
const threaded = await loadWasmKernels({ threads: 3 });
const ready = single.kernels !== null && threaded.kernels !== null && threaded.build === 'threads';
const why = single.kernels ? threaded.reason || threaded.singleReason : single.reason;

/** n values uniform in [-0.5, 0.5), reproducible from the seed. */
const rand = (n: number, seed: number): Float32Array => randArray(rng(seed), n, 0.5);

/** Runs `call` on both builds with fresh zeroed outputs of the given sizes; returns [single, threaded] outputs. */
function both(outputs: number[], call: (k: WasmKernels, out: Float32Array[]) => void): [Float32Array[], Float32Array[]] {
  const run = (k: WasmKernels) => {
    const out = outputs.map((n) => new Float32Array(n));
    call(k, out);
    return out;
  };
  return [run(single.kernels!), run(threaded.kernels!)];
}

function expectClose(a: Float32Array[], b: Float32Array[]): void {
  expect(b.length).toBe(a.length);
  for (let o = 0; o < a.length; o++) {
    const x = a[o]!;
    const y = b[o]!;
    let scale = 0;
    let diff = 0;
    for (let i = 0; i < x.length; i++) {
      scale = Math.max(scale, Math.abs(x[i]!));
      diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
    }
    expect(scale, `output ${o} is all zeros`).toBeGreaterThan(0);
    expect(diff / scale, `output ${o}`).toBeLessThan(1e-5);
  }
}

/** N = T*k assignments of T tokens to E experts (k distinct experts per token), and their weights. */
function routing(T: number, E: number, k: number) {
  const tok = new Int32Array(T * k);
  const exp = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      tok[t * k + j] = t;
      exp[t * k + j] = (t * 7 + j * 3) % E;
    }
  }
  return { tok, exp, weight: rand(T * k, 99), N: T * k };
}

describe.skipIf(!ready)(`moelab-wasm threaded build equals the single-threaded one (${why})`, () => {
  it('runs the threads it was started with', () => {
    expect(single.kernels!.addon.info().threads).toBe(1);
    expect(threaded.kernels!.addon.info().threads).toBe(3);
    expect(threaded.kernels!.heap.shared).toBe(true);
    expect(single.kernels!.heap.shared).toBe(false);
    // More than it has Workers for is clamped (creating a thread must never wait for a Worker).
    expect(threaded.kernels!.addon.setThreads(64)).toBe(3);
  });

  it('shrinking the pool and growing it back: the Workers take part again at once', () => {
    const k = threaded.kernels!;
    const [M, N, K] = [192, 160, 256]; // ~16 MFLOP: above the pool's threshold, split into tasks
    const A = rand(M * K, 20);
    const B = rand(K * N, 21);
    const C = new Float32Array(M * N);
    const gemm = () => k.addon.sgemmBatched(false, false, 1, M, N, K, A, null, 1, B, null, 1, C);
    expect(k.setThreads(1)).toBe(1);
    expect(k.addon.info().threads).toBe(1);
    const before = k.workerTasks();
    for (let i = 0; i < 3; i++) gemm();
    // One thread: the caller runs every task.
    expect(k.workerTasks()).toBe(before);
    // Back to three without returning to the event loop: parked Workers wake; none has to be
    // started (a new Worker would only start once this synchronous test returned).
    expect(k.setThreads(3)).toBe(3);
    let tasks = 0;
    for (let i = 0; i < 200 && tasks === 0; i++) {
      gemm();
      tasks = k.workerTasks() - before;
    }
    expect(tasks).toBeGreaterThan(0);
    const ref = new Float32Array(M * N);
    single.kernels!.addon.sgemmBatched(false, false, 1, M, N, K, A, null, 1, B, null, 1, ref);
    expectClose([ref], [C]);
    expect(single.kernels!.workerTasks()).toBe(0);
  });

  it('GEMM: plain, transposed and batched', () => {
    // An odd M and N % 16 != 0: edge tiles of the 2 x 16 micro-kernel on both sides.
    const [M, N, K] = [151, 130, 270];
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const A = rand(M * K, 1);
      const B = rand(K * N, 2);
      expectClose(...both([M * N], (k, [C]) => k.addon.sgemmBatched(ta, tb, 1, M, N, K, A, null, 1, B, null, 1, C!)));
    }
    const A = rand(4 * 40 * 300, 3);
    const B = rand(300 * 50, 4);
    expectClose(...both([4 * 40 * 50], (k, [C]) => k.addon.sgemmBatched(false, false, 4, 40, 50, 300, A, null, 4, B, new Int32Array(4), 1, C!)));
  });

  it('fused MoE experts, plain and gated, forward and backward', () => {
    const [T, d, h, E] = [96, 32, 64, 8];
    const { tok, exp, weight, N } = routing(T, E, 2);
    const x = rand(T * d, 5);
    const w1 = rand(E * d * h, 6);
    const w3 = rand(E * d * h, 7);
    const w2 = rand(E * h * d, 8);
    const dy = rand(T * d, 9);
    const act = 1;
    const mlp = both([T * d, N * h], (k, [out, hidden]) => k.addon.moeMlpForward(x, w1, w2, tok, exp, weight, out!, hidden!, T, d, h, E, N, act));
    expectClose(...mlp);
    const hidden = mlp[0][1]!;
    expectClose(
      ...both([T * d, E * d * h, E * h * d, N], (k, [dx, dw1, dw2, dweight]) =>
        k.addon.moeMlpBackward(dy, x, w1, w2, tok, exp, weight, hidden, dx!, dw1!, dw2!, dweight!, T, d, h, E, N, act),
      ),
    );
    const glu = both([T * d, N * 2 * h], (k, [out, hid]) => k.addon.moeGluForward(x, w1, w3, w2, tok, exp, weight, out!, hid!, T, d, h, E, N, act));
    expectClose(...glu);
    const gluHidden = glu[0][1]!;
    expectClose(
      ...both([T * d, E * d * h, E * d * h, E * h * d, N], (k, [dx, dw1, dw3, dw2, dweight]) =>
        k.addon.moeGluBackward(dy, x, w1, w3, w2, tok, exp, weight, gluHidden, dx!, dw1!, dw3!, dw2!, dweight!, T, d, h, E, N, act),
      ),
    );
  });

  it('causal attention forward and backward, LayerNorm backward, softmax', () => {
    const [BH, T, dh] = [8, 64, 32];
    const q = rand(BH * T * dh, 10);
    const kk = rand(BH * T * dh, 11);
    const v = rand(BH * T * dh, 12);
    const fwd = both([BH * T * dh, BH * T], (k, [out, lse]) => k.addon.causalAttentionForward(q, kk, v, out!, lse!, BH, T, dh, dh, 0.25, 4, false));
    expectClose(...fwd);
    const [out, lse] = fwd[0];
    const dy = rand(BH * T * dh, 13);
    expectClose(
      ...both([BH * T * dh, BH * T * dh, BH * T * dh], (k, [dq, dk, dv]) =>
        k.addon.causalAttentionBackward(dy, q, kk, v, out!, lse!, dq!, dk!, dv!, BH, T, dh, dh, 0.25, 4, false),
      ),
    );
    const [rows, D] = [512, 64];
    const x = rand(rows * D, 14);
    const gamma = rand(D, 15);
    const ln = both([rows * D, rows, rows], (k, [y, mean, rstd]) => k.addon.layerNormForward(x, gamma, null, y!, mean!, rstd!, rows, D, 1e-5));
    expectClose(...ln);
    const [, mean, rstd] = ln[0];
    const dyn = rand(rows * D, 16);
    expectClose(...both([rows * D, D, D], (k, [dx, dgamma, dbeta]) => k.addon.layerNormBackward(dyn, x, gamma, mean!, rstd!, dx!, dgamma!, dbeta!, rows, D)));
    expectClose(...both([rows * D], (k, [o]) => k.addon.softmax(x, o!, rows, D)));
  });
});
