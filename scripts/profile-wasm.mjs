// `pnpm profile:wasm`: where one forward + backward step of a `moelab bench` row spends its time on
// moelab-wasm, kernel by kernel, at several thread counts interleaved in one process (the threaded
// build's pool resized between rounds, so that a machine's load drifts over all of them alike).
//
// Per kernel (each call of the WebAssembly module): wall time, and on Linux each pool thread's CPU
// time and run-queue wait (from /proc/self/task/<tid>/schedstat): CPU time split between the threads
// says whether a kernel runs on the pool at all; run-queue wait is time a thread was ready but
// another process held the core, i.e. what a shared machine adds to the wall time. On a quiet
// machine a kernel's wall time is about its busiest thread's CPU time. `worker tasks` counts the
// pool tasks the Workers (not the calling thread) ran. "outside" is the step's time in JavaScript
// (tfjs-backend-cpu's kernels, the autodiff tape, copies).
//
//   node scripts/profile-wasm.mjs [--rows dense,e64] [--threads 2,1] [--rounds 2] [--steps 3]
// Rows: dense (a dense FFN relu), e8 / e64 (b softmax-topk loop E8x1024 k2 / E64x128 k4),
// glu8 / glu64 (f SwiGLU MoE topk E8x1024 k2 / E64x128 k4); the bench's shapes (T = 4096, d = 256).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    rows: { type: 'string', default: 'dense,e64' },
    threads: { type: 'string', default: '2,1' },
    rounds: { type: 'string', default: '2' },
    steps: { type: 'string', default: '3' },
  },
});
const fail = (msg) => {
  console.error(`profile:wasm: ${msg}`);
  process.exit(1);
};
const positive = (name, s) => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer (got ${s})`);
  return n;
};
const threadCounts = args.threads.split(',').map((s) => positive('threads', s));
const rounds = positive('rounds', args.rounds);
const steps = positive('steps', args.steps);

// The built packages (the root has no dependency on them); @moelab/node's own import of
// @moelab/core resolves to the same file, so there is one tfjs instance.
const dist = (pkg) => new URL(`../packages/${pkg}/dist/index.js`, import.meta.url);
for (const pkg of ['core', 'node', 'kernels-cpu', 'kernels-wasm']) if (!existsSync(dist(pkg))) fail(`packages/${pkg} is not built: run \`pnpm build\` first`);
const { tf, Rng } = await import(dist('core').href);
const { registerMoelabWasmBackend } = await import(dist('kernels-wasm').href);
// The bench's rows and step, as the MoE scripts of packages/node use them.
const { FFN_ROWS: ROWS, benchLayer: layer, forwardBackward, T, d } = await import(new URL('../packages/node/scripts/bench-layers.mjs', import.meta.url).href);

const rowKeys = args.rows.split(',');
for (const r of rowKeys) if (!ROWS[r]) fail(`unknown row ${r} (rows: ${Object.keys(ROWS).join(', ')})`);

const status = await registerMoelabWasmBackend(tf, { threads: Math.max(...threadCounts) });
if (!status.available) fail(status.reason);
await tf.setBackend('moelab-wasm');
const kernels = tf.backend().kernels;
console.log(`# moelab-wasm: ${status.reason}`);
if (status.build !== 'threads' && threadCounts.some((n) => n > 1)) console.log('# (single-threaded build: every thread count runs on one thread)');

// Per-thread CPU and run-queue time (Linux); the pool's threads are those busy during a large GEMM.
const linux = existsSync('/proc/self/task');
const schedstat = (tid) => {
  try {
    const [cpu, wait] = readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
    return [cpu / 1e6, wait / 1e6];
  } catch {
    return [0, 0];
  }
};
let pool = [];
if (linux) {
  const n = 768;
  const buf = kernels.heap.alloc(3 * n * n * 4, () => 'the profiler');
  const view = (i) => kernels.heap.view(Float32Array, buf + i * n * n * 4, n * n);
  const tids = readdirSync('/proc/self/task');
  const before = tids.map(schedstat);
  for (let i = 0; i < 4; i++) kernels.addon.sgemmBatched(false, false, 1, n, n, n, view(0), null, 1, view(1), null, 1, view(2));
  pool = tids.filter((tid, i) => schedstat(tid)[0] - before[i][0] > 5);
  // The calling thread first.
  pool.sort((a, b) => (a === String(process.pid) ? -1 : b === String(process.pid) ? 1 : Number(a) - Number(b)));
  kernels.heap.free(buf);
}
const readPool = () => pool.map(schedstat);

// Every call into the module, timed.
let record = null;
const call = kernels.call.bind(kernels);
kernels.call = (name, jsArgs) => {
  if (!record) return call(name, jsArgs);
  const s0 = readPool();
  const t0 = performance.now();
  try {
    return call(name, jsArgs);
  } finally {
    const wall = performance.now() - t0;
    const s1 = readPool();
    const key =
      name === 'sgemmBatched' ? `sgemm ${jsArgs[0] ? 'A^T' : 'A'}${jsArgs[1] ? ' B^T' : ' B'} ${jsArgs[2]}x${jsArgs[3]}x${jsArgs[4]}x${jsArgs[5]}` : name;
    record[key] ??= { wall: 0, calls: 0, cpu: pool.map(() => 0), wait: pool.map(() => 0) };
    const e = record[key];
    e.wall += wall;
    e.calls++;
    s1.forEach(([c, w], i) => {
      e.cpu[i] += c - s0[i][0];
      e.wait[i] += w - s0[i][1];
    });
  }
};

const results = {};
for (const key of rowKeys) {
  const row = ROWS[key];
  const f = layer(row.ffn);
  const rng = new Rng(7);
  const x = tf.variable(tf.tensor(rng.normalArray(T * d), [T, d]));
  const R = tf.tensor(rng.normalArray(T * d), [T, d]);
  const vars = [x, ...f.trainableVariables()];
  const step = () => forwardBackward(f, x, R, vars);
  for (let round = 0; round < rounds; round++) {
    for (const n of threadCounts) {
      const threads = kernels.setThreads(n);
      step(); // warm-up at this thread count
      record = {};
      const tasks0 = kernels.workerTasks();
      const s0 = readPool();
      const times = [];
      for (let i = 0; i < steps; i++) {
        const t0 = performance.now();
        step();
        times.push(performance.now() - t0);
      }
      const s1 = readPool();
      const tasks = kernels.workerTasks() - tasks0;
      const kernelsRun = record;
      record = null;
      times.sort((a, b) => a - b);
      results[`${key} ${threads}`] ??= { key, threads, runs: [] };
      const r = results[`${key} ${threads}`];
      r.runs.push({
        ms: times[times.length >> 1],
        mean: times.reduce((a, b) => a + b, 0) / steps,
        kernels: kernelsRun,
        cpu: s1.map(([c], i) => (c - s0[i][0]) / steps),
        wait: s1.map(([, w], i) => (w - s0[i][1]) / steps),
        tasks: tasks / steps,
      });
    }
  }
  x.dispose();
  R.dispose();
  f.dispose?.();
}

const fmt = (v) => v.toFixed(1);
const threadCols = (xs) => (linux ? xs.map(fmt).join(' + ') : '-');
for (const r of Object.values(results)) {
  const row = ROWS[r.key];
  // The round with the median step time.
  const runs = [...r.runs].sort((a, b) => a.ms - b.ms);
  const run = runs[(runs.length - 1) >> 1];
  const gflops = (3 * row.flops) / (run.ms / 1e3) / 1e9;
  console.log(
    `\n## ${row.name}, ${r.threads} thread${r.threads > 1 ? 's' : ''}: fwd+bwd ${fmt(run.ms)} ms (${fmt(gflops)} GFLOP/s; rounds ${r.runs.map((x) => fmt(x.ms)).join(' / ')} ms)`,
  );
  if (linux)
    console.log(
      `step CPU per thread (caller first) ${threadCols(run.cpu)} ms, run-queue wait ${threadCols(run.wait)} ms; worker tasks ${fmt(run.tasks)} per step`,
    );
  console.log('| kernel | calls | wall ms | CPU ms per thread | run-queue ms per thread |');
  console.log('| --- | ---: | ---: | ---: | ---: |');
  const entries = Object.entries(run.kernels).sort((a, b) => b[1].wall - a[1].wall);
  let inModule = 0;
  const moduleCpu = pool.map(() => 0);
  for (const [name, e] of entries) {
    inModule += e.wall;
    e.cpu.forEach((c, i) => {
      moduleCpu[i] += c / steps;
    });
    const per = (xs) => xs.map((v) => v / steps);
    console.log(`| ${name} | ${e.calls / steps} | ${fmt(e.wall / steps)} | ${threadCols(per(e.cpu))} | ${threadCols(per(e.wait))} |`);
  }
  // Mean step time here (the module's times are means too).
  const outsideCpu = linux ? `${fmt(run.cpu[0] - moduleCpu[0])} (calling thread)` : '-';
  console.log(`| outside the module (JavaScript) | | ${fmt(Math.max(0, run.mean - inModule / steps))} | ${outsideCpu} | |`);
}
process.exit(0);
