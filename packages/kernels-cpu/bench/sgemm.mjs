// Micro-benchmark of @moelab/kernels-cpu (run `pnpm --filter @moelab/kernels-cpu build` first):
//   node packages/kernels-cpu/bench/sgemm.mjs [--quick] [--json out.json]
// Reports sgemm 2048^3 GFLOP/s (OpenBLAS and the builtin packed GEMM, 1 thread and all threads) and
// the fused MoE op (expert compute only: dispatch + GEMMs + combine, no router) forward and
// forward+backward for the anchor's shapes: T=4096 d=256 E=64 h=128 top-4 and E=8 h=1024 top-2.
// Times are the minimum of N runs (the machine is shared: the minimum is the least disturbed run);
// CPU time per run is reported next to them so contention is visible (cpu/wall ~ threads when idle).
import { writeFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { moeMLP, registerMoelabCpuBackend, setGemm, setThreads } from '../dist/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const jsonOut = args.includes('--json') ? args[args.indexOf('--json') + 1] : null;
const status = registerMoelabCpuBackend(tf);
if (!status.available) {
  console.error(`moelab-cpu is not available: ${status.reason}`);
  process.exit(1);
}
await tf.setBackend('moelab-cpu');
const maxThreads = status.threads;

function measure(fn, reps) {
  fn(); // warm-up (allocations, page faults, pack buffers)
  let best = Infinity;
  let bestCpu = Infinity;
  for (let i = 0; i < reps; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    fn();
    const wall = Number(process.hrtime.bigint() - t0) / 1e6;
    const cu = process.cpuUsage(c0);
    best = Math.min(best, wall);
    bestCpu = Math.min(bestCpu, (cu.user + cu.system) / 1e3);
  }
  return { ms: best, cpuMs: bestCpu };
}

const rows = [];
const rand = (n, s = 1) => Float32Array.from({ length: n }, () => (Math.random() * 2 - 1) * s);

// --- sgemm 2048^3 ---------------------------------------------------------------------------
{
  const n = 2048;
  const a = tf.tensor2d(rand(n * n), [n, n]);
  const b = tf.tensor2d(rand(n * n), [n, n]);
  const gflop = (2 * n ** 3) / 1e9;
  for (const gemm of ['openblas', 'builtin']) {
    if (setGemm(gemm) !== gemm) continue;
    for (const threads of [...new Set([1, maxThreads])]) {
      setThreads(threads);
      const r = measure(() => tf.tidy(() => tf.matMul(a, b).dataSync()), quick ? 3 : 6);
      rows.push({ name: `sgemm 2048^3 ${gemm} ${threads}t`, ms: r.ms, cpuMs: r.cpuMs, gflops: gflop / (r.ms / 1e3), gflopsPerCpuSec: gflop / (r.cpuMs / 1e3) });
    }
  }
  setThreads(maxThreads);
  setGemm(status.blas === 'openblas' ? 'openblas' : 'builtin');
  tf.dispose([a, b]);
}

// --- fused MoE MLP ----------------------------------------------------------------------------
for (const [label, T, d, E, h, k] of [
  ['moe E64x128 k4', 4096, 256, 64, 128, 4],
  ['moe E8x1024 k2', 4096, 256, 8, 1024, 2],
]) {
  const N = T * k;
  const x = tf.tensor2d(rand(T * d), [T, d]);
  const w1 = tf.tensor3d(rand(E * d * h, 0.05), [E, d, h]);
  const w2 = tf.tensor3d(rand(E * h * d, 0.05), [E, h, d]);
  // Top-k distinct experts per token, uniformly random (a balanced router's load).
  const tokIdx = new Int32Array(N);
  const expIdx = new Int32Array(N);
  for (let t = 0; t < T; t++) {
    const chosen = new Set();
    while (chosen.size < k) chosen.add(Math.floor(Math.random() * E));
    [...chosen].forEach((e, j) => {
      tokIdx[t * k + j] = t;
      expIdx[t * k + j] = e;
    });
  }
  const tok = tf.tensor1d(tokIdx, 'int32');
  const exp = tf.tensor1d(expIdx, 'int32');
  const wt = tf.tensor1d(rand(N));
  const proj = tf.tensor2d(rand(T * d), [T, d]);
  const gflopFwd = (2 * 2 * N * d * h) / 1e9;
  const fwd = measure(() => tf.tidy(() => moeMLP(x, w1, w2, tok, exp, wt, 'relu').dataSync()), quick ? 5 : 15);
  const grad = tf.grads((a, b, c, u) => tf.sum(tf.mul(moeMLP(a, b, c, tok, exp, u, 'relu'), proj)));
  const fb = measure(
    () =>
      tf.tidy(() =>
        grad([x, w1, w2, wt]).forEach((g) => {
          g.dataSync();
        }),
      ),
    quick ? 5 : 15,
  );
  rows.push({ name: `${label} fwd`, ms: fwd.ms, cpuMs: fwd.cpuMs, gflops: gflopFwd / (fwd.ms / 1e3) });
  rows.push({ name: `${label} fwd+bwd`, ms: fb.ms, cpuMs: fb.cpuMs, gflops: (3 * gflopFwd) / (fb.ms / 1e3) });
  tf.dispose([x, w1, w2, tok, exp, wt, proj]);
}

console.log(`@moelab/kernels-cpu bench: ${status.reason}`);
console.log('name'.padEnd(30), 'min ms'.padStart(9), 'cpu ms'.padStart(9), 'GFLOP/s'.padStart(9), 'GFLOP/cpu-s'.padStart(12));
for (const r of rows) {
  console.log(
    r.name.padEnd(30),
    r.ms.toFixed(2).padStart(9),
    r.cpuMs.toFixed(2).padStart(9),
    r.gflops.toFixed(1).padStart(9),
    (r.gflopsPerCpuSec ? r.gflopsPerCpuSec.toFixed(1) : '').padStart(12),
  );
}
if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify({ status, rows }, null, 2)}\n`);
