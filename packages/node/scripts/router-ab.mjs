#!/usr/bin/env node
/**
 * A/B of the fused softmax top-k router gate on moelab-cpu, in one process: the bench's top-k
 * E64x128 k4 layer (T 4096, d 256) forward+backward with the fused `MoelabSoftmaxTopK` kernel
 * (`fused`) and with it unregistered, so @moelab/routers' softmaxTopKGate runs its op-by-op path
 * (softmax, gather, segment sum, divide and their gradients: `ops`), beside the bench's dense ReLU
 * FFN (h 1024). The three are interleaved step by step (the order reversed every other round) so
 * that a busy machine slows all of them alike; each prints its median and its useful GFLOP/s over
 * the dense FFN's (the bench's `vs_dense_fwdbwd` convention), then fused / ops.
 *
 * Usage (repository root, after `pnpm build`):
 *   nice -n 10 node packages/node/scripts/router-ab.mjs
 * Settings: ROUNDS=15 (interleaved rounds), CLOCK=cpu (process CPU time: descheduled time does not
 * count; set MOELAB_THREADS=1 with it) or wall, MOELAB_THREADS (the native kernels' threads).
 */
import { Rng, SOFTMAX_TOPK_KERNEL, tf } from '@moelab/core';
import { benchLayer, d, DENSE_FFN, DENSE_FLOPS, E64_FLOPS, forwardBackward, interleave, median, startMoelabCpu, T, TOPK_E64 } from './bench-layers.mjs';

const status = await startMoelabCpu('router-ab');
const fusedGate = tf.getKernel(SOFTMAX_TOPK_KERNEL, 'moelab-cpu');
const moe = benchLayer(TOPK_E64);
const arms = {
  dense: { f: benchLayer(DENSE_FFN), flops: DENSE_FLOPS, fused: true },
  ops: { f: moe, flops: E64_FLOPS, fused: false },
  fused: { f: moe, flops: E64_FLOPS, fused: true },
};
const rng = new Rng(7);
const x = tf.variable(tf.tensor(rng.normalArray(T * d), [T, d]));
const R = tf.tensor(rng.normalArray(T * d), [T, d]);
for (const a of Object.values(arms)) {
  a.vars = [x, ...a.f.trainableVariables()];
  a.times = [];
}
const useGate = (on) => {
  const has = tf.getKernel(SOFTMAX_TOPK_KERNEL, 'moelab-cpu') !== undefined;
  if (on && !has) tf.registerKernel(fusedGate);
  if (!on && has) tf.unregisterKernel(SOFTMAX_TOPK_KERNEL, 'moelab-cpu');
};
const step = (a) => {
  useGate(a.fused);
  forwardBackward(a.f, x, R, a.vars);
};
const wall = process.env.CLOCK === 'wall';
const clock = () => {
  if (wall) return performance.now();
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
};
const names = Object.keys(arms);
for (const n of names) for (let i = 0; i < 2; i++) step(arms[n]);
const rounds = Number(process.env.ROUNDS ?? 15);
interleave(names, rounds, (n) => {
  const t0 = clock();
  step(arms[n]);
  arms[n].times.push(clock() - t0);
});
useGate(true);
const denseRate = arms.dense.flops / median(arms.dense.times);
console.log(`router-ab: ${status.reason}; ${rounds} rounds, ${wall ? 'wall' : 'process CPU'} time, median forward+backward`);
for (const n of names) {
  const m = median(arms[n].times);
  console.log(`  ${n.padEnd(6)} ${m.toFixed(1).padStart(8)} ms  ${(arms[n].flops / m / denseRate).toFixed(3)}x dense`);
}
console.log(`  fused / ops: ${(median(arms.fused.times) / median(arms.ops.times)).toFixed(3)}`);
