// `pnpm bench:wasm-ab`: moelab-wasm beside moelab-cpu (and tfjs's `wasm` backend) on the rows of
// the issue's Node targets, interleaved step by step in one process, so that a machine whose speed
// drifts (other processes, a host that lends the second core out) slows every backend alike.
// `moelab bench --backend a,b,c` runs the backends one after another, minutes apart: on a shared
// machine its ratios between backends moved by +-15 % from run to run.
//
// Rows: the bench's peak sgemm 2048^3 and 1024^3 (forward, one element read back as the sync point,
// as the bench does), its FFN layer rows (dense, e8, e64, glu8, glu64: forward + backward of
// sum(out * R), the loss read back) and its Mixtral-style LM training step (lm: 4 layers, AdamW).
// Each backend has its own copy of every tensor (built while it is the active backend), so that
// switching backends never moves data. A round runs each backend once per row (after a garbage
// collection and a pause: one untimed step, then the mean of a few timed ones), the backends'
// order reversed every other round. Printed per row: each backend's median step time
// and GFLOP/s (the bench's FLOPs), and moelab-wasm's ratio to the others as the median of the
// per-round ratios.
//
//   node scripts/wasm-ab.mjs [--rows peak2048,peak1024,dense,e8,e64,glu8,glu64,lm] [--rounds 7]
//                            [--backends moelab-wasm,moelab-cpu,wasm] [--json FILE]
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const { values: args } = parseArgs({
  options: {
    rows: { type: 'string', default: 'peak2048,peak1024,dense,e8,e64,glu8,glu64,lm' },
    rounds: { type: 'string', default: '7' },
    backends: { type: 'string', default: 'moelab-wasm,moelab-cpu,wasm' },
    json: { type: 'string' },
  },
});
const fail = (msg) => {
  console.error(`bench:wasm-ab: ${msg}`);
  process.exit(1);
};
const rounds = Number(args.rounds);
if (!Number.isInteger(rounds) || rounds < 1) fail(`--rounds must be a positive integer (got ${args.rounds})`);

const dist = (pkg) => new URL(`../packages/${pkg}/dist/index.js`, import.meta.url);
for (const pkg of ['core', 'node', 'kernels-cpu']) if (!existsSync(dist(pkg))) fail(`packages/${pkg} is not built: run \`pnpm build\` first`);
const { tf, buildModel, Rng, Trainer } = await import(dist('core').href);
const { createDefaultRegistry, chooseBackend } = await import(dist('node').href);
// The bench's rows, step and statistic, as the MoE scripts of packages/node use them.
const { FFN_ROWS, benchLayer, forwardBackward, median, T, d } = await import(new URL('../packages/node/scripts/bench-layers.mjs', import.meta.url).href);

const S = 256;
const B = T / S;
const LM_FFN = { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'glu', hidden: 512, activation: 'silu' } };
const ROWS = {
  peak2048: { name: 'peak sgemm 2048^3 (forward)', n: 2048, flops: 2 * 2048 ** 3, forwardOnly: true },
  peak1024: { name: 'peak sgemm 1024^3 (forward)', n: 1024, flops: 2 * 1024 ** 3, forwardOnly: true },
  ...FFN_ROWS,
  lm: {
    name: 'e LM SwiGLU-MoE E8x512 k2 + MHA (training step)',
    // The bench's: 4 x (attention projections, scores, the MoE FFN) + the LM head; forward FLOPs.
    flops: 4 * (8 * T * d * d + 4 * B * S * S * d + 2 * T * d * 8 + 6 * T * 2 * d * 512) + 2 * T * d * 256,
  },
};
const rowKeys = args.rows.split(',');
for (const r of rowKeys) if (!ROWS[r]) fail(`unknown row ${r} (rows: ${Object.keys(ROWS).join(', ')})`);
const backends = args.backends.split(',');

const registry = createDefaultRegistry();
const status = {};
for (const name of backends) {
  let choice;
  try {
    choice = await chooseBackend(name);
  } catch (e) {
    fail(e.message);
  }
  if (choice.name !== name) fail(`backend ${name} is not available here (${choice.reason ?? 'got ' + choice.name})`);
  status[name] = choice.reason ?? '';
}

/** One step of `row` on the active backend; tensors made now live on it. Returns the step, or why it cannot run. */
function makeStep(key) {
  const row = ROWS[key];
  const rng = new Rng(7);
  if (row.n) {
    const a = tf.tensor2d(rng.normalArray(row.n * row.n), [row.n, row.n]);
    const b = tf.tensor2d(rng.normalArray(row.n * row.n), [row.n, row.n]);
    return () => tf.tidy(() => void tf.slice(tf.matMul(a, b), [row.n - 1, row.n - 1], [1, 1]).dataSync());
  }
  if (key === 'lm') {
    const spec = {
      type: 'transformer-lm',
      vocabSize: 256,
      dModel: d,
      contextLength: S,
      stack: { groupSize: 4, repeats: 1 },
      block: { type: 'transformer', normType: { type: 'rmsnorm' }, attention: { type: 'mha', heads: 4 }, ffn: LM_FFN },
    };
    const model = buildModel(spec, registry, 0);
    const data = { batch: (r, b, s) => Int32Array.from({ length: b * (s + 1) }, () => r.int(256)) };
    const trainer = new Trainer(model, data, { batchSize: B, seqLen: S, steps: 1000, lr: 1e-3, weightDecay: 0.1, warmup: 0, clip: 0 });
    return () => void trainer.trainStep();
  }
  const f = benchLayer(row.ffn);
  const x = tf.variable(tf.tensor(rng.normalArray(T * d), [T, d]));
  const R = tf.tensor(rng.normalArray(T * d), [T, d]);
  const vars = [x, ...f.trainableVariables()];
  return () => forwardBackward(f, x, R, vars);
}

// Before each timed step: a full garbage collection and a pause, so that the heap another backend's
// step left (tfjs's JavaScript kernels allocate a lot) is not collected by V8's helper threads while
// this step runs: with two cores a helper thread takes a core from the kernels' second thread.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');
const settle = async () => {
  gc();
  await new Promise((done) => setTimeout(done, 100));
};

const fmt = (v, digits = 1) => (v === undefined || Number.isNaN(v) ? '–' : v.toFixed(digits));

console.log(`# bench:wasm-ab: ${rounds} interleaved rounds, T = ${T}, d = ${d}`);
for (const name of backends) console.log(`# ${name}: ${status[name]}`);
const results = [];
for (const key of rowKeys) {
  const row = ROWS[key];
  const steps = {};
  const skipped = {};
  const reps = {};
  for (const name of backends) {
    await tf.setBackend(name);
    try {
      steps[name] = makeStep(key);
      steps[name](); // warm-up: the first steps fault in the outputs' pages
      const t0 = performance.now();
      steps[name]();
      reps[name] = Math.min(8, Math.max(1, Math.ceil(250 / (performance.now() - t0))));
    } catch (e) {
      delete steps[name];
      skipped[name] = e.message.split('\n')[0];
    }
  }
  const times = Object.fromEntries(Object.keys(steps).map((name) => [name, []]));
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 ? [...Object.keys(steps)].reverse() : Object.keys(steps);
    for (const name of order) {
      await tf.setBackend(name);
      await settle();
      // One untimed step wakes the pool's threads after the pause, then the mean of a few steps
      // (about 250 ms in all, at most 8).
      steps[name]();
      const t0 = performance.now();
      for (let i = 0; i < reps[name]; i++) steps[name]();
      times[name].push((performance.now() - t0) / reps[name]);
    }
  }
  const mult = row.forwardOnly ? 1 : 3;
  const res = { key, name: row.name, backends: {} };
  for (const name of backends) {
    if (!times[name]) {
      res.backends[name] = { skipped: skipped[name] };
      continue;
    }
    const ms = median(times[name]);
    res.backends[name] = { ms, gflops: (mult * row.flops) / (ms / 1e3) / 1e9, times: times[name] };
  }
  const ratio = (other) => (times['moelab-wasm'] && times[other] ? median(times[other].map((t, i) => t / times['moelab-wasm'][i])) : undefined);
  res.vs = Object.fromEntries(backends.filter((n) => n !== 'moelab-wasm').map((n) => [n, ratio(n)]));
  results.push(res);
  const cols = backends.map((n) =>
    res.backends[n].skipped ? `${n} skipped (${res.backends[n].skipped})` : `${n} ${fmt(res.backends[n].ms)} ms ${fmt(res.backends[n].gflops)} GFLOP/s`,
  );
  const vs = Object.entries(res.vs)
    .map(([n, v]) => `${fmt(v, 2)}x ${n}`)
    .join(', ');
  console.log(`${row.name}: ${cols.join(' | ')}${vs ? `; moelab-wasm ${vs}` : ''}`);
}

console.log(
  '\n| row | ' +
    backends.map((n) => `${n} GFLOP/s`).join(' | ') +
    ' | ' +
    backends
      .filter((n) => n !== 'moelab-wasm')
      .map((n) => `moelab-wasm vs ${n}`)
      .join(' | ') +
    ' |',
);
console.log(
  '| --- | ' +
    backends.map(() => '---:').join(' | ') +
    ' | ' +
    backends
      .filter((n) => n !== 'moelab-wasm')
      .map(() => '---:')
      .join(' | ') +
    ' |',
);
for (const r of results)
  console.log(
    `| ${r.name} | ${backends.map((n) => (r.backends[n].skipped ? 'aborted' : fmt(r.backends[n].gflops))).join(' | ')} | ${Object.values(r.vs)
      .map((v) => (v === undefined ? '–' : `${fmt(v, 2)}x`))
      .join(' | ')} |`,
  );
if (args.json) {
  const tmp = `${args.json}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify({ date: new Date().toISOString(), rounds, backends: status, rows: results }, null, 2)}\n`);
  renameSync(tmp, args.json);
}
process.exit(0);
