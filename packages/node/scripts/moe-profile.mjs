#!/usr/bin/env node
/**
 * Per-kernel profile of the bench's MoE layer rows on moelab-cpu: one forward+backward step of
 * `a dense FFN relu`, `b softmax-topk loop E64x128 k4` and `c sigma-MoE sorted E64x128 k4` (T 4096,
 * d 256), the rows interleaved round by round. Every kernel moelab-cpu registers is wrapped to
 * record, per kernel name, its calls, wall time, process CPU time (all threads: a kernel that runs
 * on the native pool shows CPU > wall, a serial one CPU ~ wall) and, on Linux, the main thread's
 * CPU time (/proc/self/task/PID/schedstat: with 2 threads a parallel kernel shows about half its
 * CPU time there, a serial one all of it; on a machine shared with other jobs the main thread's CPU
 * time estimates the quiet wall time); `(outside kernels)` is the step's time not spent in any
 * kernel (JS routing code, the tape, zero-filled gradients, garbage collection).
 * Each row also prints the forward alone, so `bwd = fwd+bwd - fwd` per kernel can be read off.
 *
 * Usage (repository root, after `pnpm build`):
 *   nice -n 10 node packages/node/scripts/moe-profile.mjs
 * Settings: ROUNDS=7, MOELAB_THREADS (the native kernels' threads), ROWS=dense,topk,sigma, TOP=18.
 */
import { readFileSync } from 'node:fs';
import { forwardContext, Rng, tf } from '@moelab/core';
import { benchLayer, d, DENSE_FFN, interleave, median, S, SIGMA_E64, startMoelabCpu, T, TOPK_E64 } from './bench-layers.mjs';

const status = await startMoelabCpu('moe-profile');

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
};
const linux = process.platform === 'linux';
const mainMs = () => (linux ? Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6 : 0);
/** name -> { calls, wall, cpu, main } of the current recording. */
let table = null;
let depth = 0;
for (const k of tf.getKernelsForBackend('moelab-cpu')) {
  const inner = k.kernelFunc;
  tf.unregisterKernel(k.kernelName, 'moelab-cpu');
  tf.registerKernel({
    ...k,
    kernelFunc: (args) => {
      if (!table || depth > 0) return inner(args);
      depth++;
      const w0 = performance.now();
      const c0 = cpuMs();
      const m0 = mainMs();
      try {
        return inner(args);
      } finally {
        const c = cpuMs() - c0;
        const m = mainMs() - m0;
        const w = performance.now() - w0;
        depth--;
        const e = table.get(k.kernelName) ?? { calls: 0, wall: 0, cpu: 0, main: 0 };
        e.calls++;
        e.wall += w;
        e.cpu += c;
        e.main += m;
        table.set(k.kernelName, e);
      }
    },
  });
}

const rows = {
  dense: { f: benchLayer(DENSE_FFN), shape: [T, d] },
  topk: { f: benchLayer(TOPK_E64), shape: [T, d] },
  sigma: { f: benchLayer(SIGMA_E64), shape: [16, S, d] },
};
const names = (process.env.ROWS ?? 'dense,topk,sigma').split(',');
const rng = new Rng(7);
for (const n of names) {
  const r = rows[n];
  const size = r.shape.reduce((a, b) => a * b, 1);
  r.x = tf.variable(tf.tensor(rng.normalArray(size), r.shape));
  r.R = tf.tensor(rng.normalArray(size), r.shape);
  r.vars = [r.x, ...r.f.trainableVariables()];
  r.prof = { fwd: new Map(), fb: new Map() };
  r.steps = { fwd: [], fb: [] };
}
const ctx = () => forwardContext(new Rng(0), true, { stats: false });
const run = (r, phase) =>
  tf.tidy(() => {
    if (phase === 'fwd') r.f.forward(r.x, ctx()).dataSync();
    else tf.variableGrads(() => tf.sum(tf.mul(r.f.forward(r.x, ctx()), r.R)), r.vars).value.dataSync();
  });
const record = (r, phase) => {
  table = r.prof[phase];
  const w0 = performance.now();
  const c0 = cpuMs();
  const m0 = mainMs();
  run(r, phase);
  const step = { wall: performance.now() - w0, cpu: cpuMs() - c0, main: mainMs() - m0 };
  table = null;
  r.steps[phase].push(step);
};
for (const n of names) for (let i = 0; i < 2; i++) run(rows[n], 'fb');
const rounds = Number(process.env.ROUNDS ?? 7);
interleave(names, rounds, (n) => {
  record(rows[n], 'fwd');
  record(rows[n], 'fb');
});

const top = Number(process.env.TOP ?? 18);
console.log(`moe-profile: ${status.reason}; ${rounds} rounds; ms per step (kernel sums: mean over rounds; step: median)`);
for (const n of names) {
  const r = rows[n];
  const step = { fwd: median(r.steps.fwd.map((s) => s.wall)), fb: median(r.steps.fb.map((s) => s.wall)) };
  const stepCpu = { fwd: median(r.steps.fwd.map((s) => s.cpu)), fb: median(r.steps.fb.map((s) => s.cpu)) };
  console.log(
    `\n${n}: step fwd ${step.fwd.toFixed(1)} ms wall / ${stepCpu.fwd.toFixed(1)} cpu;  fwd+bwd ${step.fb.toFixed(1)} wall / ${stepCpu.fb.toFixed(1)} cpu`,
  );
  console.log(
    `  ${'kernel'.padEnd(34)} ${'calls'.padStart(5)} ${'fb wall'.padStart(8)} ${'fb cpu'.padStart(8)} ${'fb main'.padStart(8)} ${'cpu/w'.padStart(6)} ${'fwd wall'.padStart(8)} ${'fwd cpu'.padStart(8)}`,
  );
  const entries = [...r.prof.fb.entries()].sort((a, b) => b[1].wall - a[1].wall);
  let sumW = 0;
  let sumC = 0;
  let sumM = 0;
  for (const [, e] of entries) {
    sumW += e.wall / rounds;
    sumC += e.cpu / rounds;
    sumM += e.main / rounds;
  }
  for (const [k, e] of entries.slice(0, top)) {
    const f = r.prof.fwd.get(k);
    console.log(
      `  ${k.padEnd(34)} ${(e.calls / rounds).toFixed(0).padStart(5)} ${(e.wall / rounds).toFixed(2).padStart(8)} ${(e.cpu / rounds).toFixed(2).padStart(8)} ${(e.main / rounds).toFixed(2).padStart(8)} ${(e.cpu / Math.max(e.wall, 1e-9)).toFixed(2).padStart(6)} ${f ? (f.wall / rounds).toFixed(2).padStart(8) : '       -'} ${f ? (f.cpu / rounds).toFixed(2).padStart(8) : '       -'}`,
    );
  }
  const meanStep = r.steps.fb.reduce((a, s) => a + s.wall, 0) / rounds;
  const meanCpu = r.steps.fb.reduce((a, s) => a + s.cpu, 0) / rounds;
  const meanMain = r.steps.fb.reduce((a, s) => a + s.main, 0) / rounds;
  console.log(`  ${'(all kernels)'.padEnd(34)} ${''.padStart(5)} ${sumW.toFixed(2).padStart(8)} ${sumC.toFixed(2).padStart(8)} ${sumM.toFixed(2).padStart(8)}`);
  console.log(
    `  ${'(outside kernels)'.padEnd(34)} ${''.padStart(5)} ${(meanStep - sumW).toFixed(2).padStart(8)} ${(meanCpu - sumC).toFixed(2).padStart(8)} ${(meanMain - sumM).toFixed(2).padStart(8)}`,
  );
}
