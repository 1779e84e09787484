// `pnpm bench:browser`: training speed in a real browser. Builds the playground, serves it (with the
// cross-origin isolation headers, so moelab-wasm runs threaded, and once without them), and trains
// the `moe-tiny` preset at batch 16 x 128 in the playground's own training worker in headless
// Chromium on each backend: moelab-wasm (threaded), moelab-wasm (single-threaded: the page not
// isolated), and tfjs's `wasm` (SIMD, not isolated). The reference row is the CLI on the native backend in Node
// (`moelab train --preset moe-tiny --backend moelab-cpu`, same batch, length and steps). Rounds are
// interleaved (every configuration once per round) so that a machine's load drifts over all of
// them alike; a configuration's tokens/s is the median over its rounds of the median step after
// the first two (warm-up). Prints a Markdown table and writes it, with the raw numbers, to
// runs/bench-browser.{md,json}.
//
//   node scripts/bench-browser.mjs [--steps 8] [--rounds 2] [--no-node] [--chromium /usr/bin/chromium]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import os from 'node:os';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const app = join(root, 'apps/playground');
const dist = join(app, 'dist');
const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '2' },
    'no-node': { type: 'boolean', default: false },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
const steps = Number(args.steps);
const rounds = Number(args.rounds);
if (!Number.isInteger(steps) || steps < 3) throw new Error(`bench:browser: --steps must be an integer >= 3 (got ${args.steps})`);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`bench:browser: --rounds must be a positive integer (got ${args.rounds})`);
const CHROMIUM = args.chromium;
if (!existsSync(CHROMIUM)) {
  console.error(`bench:browser: ${CHROMIUM} is missing (apt-get install -y chromium, or --chromium <path>)`);
  process.exit(1);
}
const { writeFileAtomic } = await import(join(root, 'packages/node/dist/fsutil.js'));
const { chromium } = await import(join(app, 'node_modules/playwright-core/index.mjs'));

const BATCH = 16;
const SEQ = 128;
const ISOLATION = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };
const CONFIGS = [
  { name: 'moelab-wasm (threaded)', backend: 'moelab-wasm', isolated: true },
  { name: 'moelab-wasm (single-threaded)', backend: 'moelab-wasm', isolated: false },
  // tfjs's wasm backend on the page that is not isolated (its SIMD build): on an isolated page its
  // threaded build did not initialise within 2 minutes in headless Chromium here.
  { name: 'tfjs wasm', backend: 'wasm', isolated: false },
];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : Number.NaN;
};

console.log('bench:browser: building the playground (vite build) ...');
const build = spawnSync(process.execPath, [join(app, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], { cwd: app, encoding: 'utf8' });
if (build.status !== 0) throw new Error(`vite build failed:\n${build.stdout}\n${build.stderr}`);

const MIME = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.css': 'text/css',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
};
function serve(headers) {
  const server = createServer((req, res) => {
    const rel = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    let file = join(dist, rel);
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!file.startsWith(dist) || !existsSync(file)) return void res.writeHead(404).end('not found');
    res.writeHead(200, { ...headers, 'content-type': MIME[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** One training run of moe-tiny in the playground's worker; resolves its per-step tokens/s and what the run panel says. */
async function browserRun(browser, port, config) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  try {
    await page.goto(`http://127.0.0.1:${port}/?backend=${config.backend}`, { timeout: 120_000 });
    await page.waitForSelector('body[data-ready=true]', { timeout: 120_000 });
    await page.selectOption('#preset', 'moe-tiny');
    await page.click('#use-preset');
    for (const [key, value] of [
      ['steps', steps],
      ['batchSize', BATCH],
      ['seqLen', SEQ],
      ['evalEvery', 0],
      ['evalBatches', 1],
    ]) {
      await page.fill(`#train-${key}`, String(value));
      await page.dispatchEvent(`#train-${key}`, 'change');
    }
    await page.click('#run-a .build');
    await page.waitForFunction((b) => document.querySelector('#run-a .backend')?.textContent === `backend: ${b}`, config.backend, { timeout: 120_000 });
    const reason = await page.getAttribute('#run-a .backend', 'title');
    await page.click('#run-a .start');
    await page.waitForFunction(() => ['done', 'error'].includes(window.playground.runs.A().state), null, { timeout: 1_800_000, polling: 1000 });
    const run = await page.evaluate(() => window.playground.runs.A());
    if (run.errors.length || errors.length) throw new Error(`${config.name}: ${[...run.errors, ...errors].join('; ')}`);
    const env = await page.evaluate(() => ({ isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency, ua: navigator.userAgent }));
    return { tokensPerSec: run.speed.map(([, s]) => s), reason, env };
  } finally {
    await page.close();
  }
}

/** The CLI on moelab-cpu in Node: same preset, batch, length and steps; per-step tokens/s from metrics.jsonl. */
function nodeRun() {
  const out = mkdtempSync(join(os.tmpdir(), 'moelab-bench-browser-'));
  try {
    const cli = join(root, 'packages/node/dist/cli.js');
    const argv = [
      'train',
      '--preset',
      'moe-tiny',
      '--backend',
      'moelab-cpu',
      '--batch',
      `${BATCH}`,
      '--seq',
      `${SEQ}`,
      '--steps',
      `${steps}`,
      '--eval-every',
      '0',
    ];
    const r = spawnSync(process.execPath, [cli, ...argv, '--eval-batches', '1', '--out', out], { encoding: 'utf8' });
    if (r.status !== 0) return { error: (r.stderr || r.stdout).trim().split('\n').at(-1) };
    const lines = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    return { tokensPerSec: lines.filter((l) => l.type === 'train').map((l) => l.tokensPerSec) };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

const isolatedServer = await serve(ISOLATION);
const plainServer = await serve({});
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
const results = new Map(CONFIGS.map((c) => [c.name, { ...c, rounds: [] }]));
const nodeResults = { name: 'moelab train on moelab-cpu (Node, native)', rounds: [] };
try {
  for (let round = 1; round <= rounds; round++) {
    for (const config of CONFIGS) {
      const server = config.isolated ? isolatedServer : plainServer;
      const r = await browserRun(browser, server.address().port, config);
      const tps = median(r.tokensPerSec.slice(2));
      results.get(config.name).rounds.push({ ...r, median: tps });
      console.log(`round ${round}: ${config.name}: ${tps.toFixed(0)} tokens/s (${r.reason})`);
    }
    if (!args['no-node']) {
      const r = nodeRun();
      if (r.error) console.log(`round ${round}: ${nodeResults.name}: failed (${r.error})`);
      else {
        const tps = median(r.tokensPerSec.slice(2));
        nodeResults.rounds.push({ ...r, median: tps });
        console.log(`round ${round}: ${nodeResults.name}: ${tps.toFixed(0)} tokens/s`);
      }
    }
  }
} finally {
  await browser.close();
  isolatedServer.close();
  plainServer.close();
}

const load = os.loadavg()[0];
const nodeTps = median(nodeResults.rounds.map((r) => r.median));
const rows = [...results.values()].map((c) => ({
  name: c.name,
  backend: c.backend,
  threads: c.rounds[0]?.reason?.match(/(\d+) threads on Workers/)?.[1] ?? (c.backend === 'moelab-wasm' ? '1' : 'tfjs default'),
  tokensPerSec: median(c.rounds.map((r) => r.median)),
  reason: c.rounds[0]?.reason,
}));
const wasmTps = rows.find((r) => r.backend === 'wasm')?.tokensPerSec;
const fmt = (x) => (Number.isFinite(x) ? x.toFixed(0) : '–');
const ratio = (x, y) => (Number.isFinite(x) && Number.isFinite(y) && y > 0 ? `${(x / y).toFixed(2)}x` : '–');
const table = [
  `moe-tiny, batch ${BATCH} x ${SEQ}, ${steps} steps (median step after 2 warm-up steps, median of ${rounds} interleaved rounds); Chromium ${
    [...results.values()][0].rounds[0]?.env.ua.match(/Chrome\/([\d.]+)/)?.[1] ?? '?'
  }, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), load average ${load.toFixed(1)} at the end`,
  '',
  '| backend (browser: the playground worker) | threads | training tokens/s | vs moelab-cpu in Node | vs tfjs wasm |',
  '| ---------------------------------------- | ------: | ----------------: | --------------------: | -----------: |',
  ...rows.map((r) => `| ${r.name} | ${r.threads} | ${fmt(r.tokensPerSec)} | ${ratio(r.tokensPerSec, nodeTps)} | ${ratio(r.tokensPerSec, wasmTps)} |`),
  `| ${nodeResults.name} | ${os.availableParallelism?.() ?? os.cpus().length} | ${fmt(nodeTps)} | 1.00x | ${ratio(nodeTps, wasmTps)} |`,
].join('\n');
console.log(`\n${table}\n`);
writeFileAtomic(join(root, 'runs/bench-browser.md'), `${table}\n`);
writeFileAtomic(
  join(root, 'runs/bench-browser.json'),
  `${JSON.stringify({ steps, rounds, batch: BATCH, seq: SEQ, load, rows, node: { tokensPerSec: nodeTps, rounds: nodeResults.rounds }, raw: [...results.values()] }, null, 2)}\n`,
);
console.log('written: runs/bench-browser.md, runs/bench-browser.json');
