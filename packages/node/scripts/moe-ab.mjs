#!/usr/bin/env node
/**
 * A/B of the glue around the fused expert kernels on moelab-cpu, in one process: the bench's
 * `b softmax-topk loop E64x128 k4` and `c sigma-MoE sorted E64x128 k4` layers (T 4096, d 256)
 * forward+backward as they run now (`new`) and with the two changes of this A/B undone (`old`):
 *   - the expert kernel's `hidden` output gets its full [N, h] shape back (the storage is the same),
 *     so tfjs's tape zero-fills an N x h gradient for it on every backward pass, as before;
 *   - sigma-MoE's fused MoelabSigmoidTopK gate is unregistered, so the sigma-topk router selects on
 *     plain arrays and takes sigmoid(gather) of the chosen logits with tfjs ops, as before.
 * Beside them the bench's dense ReLU FFN (h 1024). The arms are interleaved step by step (the order
 * reversed every other round) so that a busy machine slows all of them alike; each prints its
 * median and its useful GFLOP/s over the dense FFN's (the bench's `vs_dense_fwdbwd` convention).
 *
 * Usage (repository root, after `pnpm build`):
 *   nice -n 10 node packages/node/scripts/moe-ab.mjs
 * Settings: ROUNDS=15, CLOCK=cpu (process CPU time: descheduled time does not count; set
 * MOELAB_THREADS=1 with it), main (the main thread's CPU time, from /proc/self/task/PID/schedstat
 * in nanoseconds, Linux only: with several threads it is the serial work plus the main thread's
 * share of the parallel work, so on a machine shared with other jobs it estimates the wall time the
 * step would take on a quiet one; the pool's workers' CPU time is printed beside it) or wall,
 * MOELAB_THREADS (the native kernels' threads), ARMS (a comma-separated subset of
 * dense,topk-old,topk-new,sigma-old,sigma-new; topk-new2 is a second copy of topk-new, to see how
 * far two identical arms drift apart).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { MOE_MLP_KERNEL, Rng, SIGMOID_TOPK_KERNEL, tf } from '@moelab/core';
import {
  benchLayer,
  d,
  DENSE_FFN,
  DENSE_FLOPS,
  E64_FLOPS,
  forwardBackward,
  interleave,
  median,
  SIGMA_E64,
  startMoelabCpu,
  T,
  TOPK_E64,
} from './bench-layers.mjs';

// Threads that exist before the backend starts its pool (the main thread, V8's and libuv's).
const threadIds = () => (process.platform === 'linux' ? readdirSync('/proc/self/task') : []);
const before = new Set(threadIds());
const status = await startMoelabCpu('moe-ab');

// The expert kernel, and a variant that hands `hidden` out with its full [N, h] shape.
const mlp = tf.getKernel(MOE_MLP_KERNEL, 'moelab-cpu');
const fullHidden = {
  ...mlp,
  kernelFunc: (args) => {
    const [out, hidden] = mlp.kernelFunc(args);
    const N = args.inputs.tokenIndex.shape[0];
    return [out, { ...hidden, shape: [N, args.inputs.w1.shape[2]] }];
  },
};
const sigmoidGate = tf.getKernel(SIGMOID_TOPK_KERNEL, 'moelab-cpu');
const use = (config) => {
  tf.unregisterKernel(MOE_MLP_KERNEL, 'moelab-cpu');
  tf.registerKernel(config.old ? fullHidden : mlp);
  const has = tf.getKernel(SIGMOID_TOPK_KERNEL, 'moelab-cpu') !== undefined;
  if (config.old && has) tf.unregisterKernel(SIGMOID_TOPK_KERNEL, 'moelab-cpu');
  if (!config.old && !has) tf.registerKernel(sigmoidGate);
};

const topk = benchLayer(TOPK_E64);
const sigma = benchLayer(SIGMA_E64);
const all = {
  dense: { f: benchLayer(DENSE_FFN), flops: DENSE_FLOPS, old: false },
  'topk-old': { f: topk, flops: E64_FLOPS, old: true },
  'topk-new': { f: topk, flops: E64_FLOPS, old: false },
  'sigma-old': { f: sigma, flops: E64_FLOPS, old: true },
  'sigma-new': { f: sigma, flops: E64_FLOPS, old: false },
  // A second copy of an arm: how far two identical arms' medians drift apart in one run.
  'topk-new2': { f: topk, flops: E64_FLOPS, old: false },
};
const names = (process.env.ARMS ?? 'dense,topk-old,topk-new,sigma-old,sigma-new').split(',');
for (const n of names) if (!all[n]) throw new Error(`moe-ab: unknown arm '${n}' (arms: ${Object.keys(all).join(', ')})`);
const rng = new Rng(7);
const x = tf.variable(tf.tensor(rng.normalArray(T * d), [T, d]));
const R = tf.tensor(rng.normalArray(T * d), [T, d]);
for (const n of names) {
  all[n].vars = [x, ...all[n].f.trainableVariables()];
  all[n].times = [];
  all[n].workerTimes = [];
}
const step = (a) => {
  use(a);
  forwardBackward(a.f, x, R, a.vars);
};
const mode = process.env.CLOCK ?? 'cpu';
if (!['cpu', 'main', 'wall'].includes(mode)) throw new Error(`moe-ab: CLOCK must be cpu, main or wall, got '${mode}'`);
if (mode === 'main' && process.platform !== 'linux') throw new Error('moe-ab: CLOCK=main reads /proc (Linux only)');
// The pool's workers: the threads the backend started (after a first kernel call).
const workers = () => threadIds().filter((t) => !before.has(t));
const threadMs = (tid) => Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
const clock = () => {
  if (mode === 'wall') return performance.now();
  if (mode === 'main') return threadMs(process.pid);
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
};
const workerMs = () => (mode === 'main' ? workers().reduce((a, t) => a + threadMs(t), 0) : 0);
for (const n of names) for (let i = 0; i < 2; i++) step(all[n]);
const rounds = Number(process.env.ROUNDS ?? 15);
interleave(names, rounds, (n) => {
  const t0 = clock();
  const w0 = workerMs();
  step(all[n]);
  all[n].times.push(clock() - t0);
  all[n].workerTimes.push(workerMs() - w0);
});
use({ old: false });
const clockName = { cpu: 'process CPU', main: 'main-thread CPU', wall: 'wall' }[mode];
console.log(`moe-ab: ${status.reason}; ${rounds} rounds, ${clockName} time, median forward+backward`);
const denseRate = all.dense.times?.length ? all.dense.flops / median(all.dense.times) : Number.NaN;
const denseBest = all.dense.times?.length ? all.dense.flops / Math.min(...all.dense.times) : Number.NaN;
for (const n of names) {
  const m = median(all[n].times);
  const best = Math.min(...all[n].times);
  console.log(
    `  ${n.padEnd(9)} ${m.toFixed(1).padStart(8)} ms  ${(all[n].flops / m / denseRate).toFixed(3)}x dense   (fastest ${best.toFixed(1)} ms, ${(all[n].flops / best / denseBest).toFixed(3)}x the fastest dense)${mode === 'main' ? `  workers ${median(all[n].workerTimes).toFixed(1)} ms` : ''}`,
  );
}
for (const row of ['topk', 'sigma'])
  if (all[`${row}-old`].times?.length && all[`${row}-new`].times?.length)
    console.log(`  ${row} new / old: ${(median(all[`${row}-new`].times) / median(all[`${row}-old`].times)).toFixed(3)}`);
