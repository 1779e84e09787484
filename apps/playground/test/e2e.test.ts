/**
 * End-to-end: the built playground in a real headless Chromium (Debian's package, driven by
 * playwright-core). Builds the app, serves dist/, picks a preset, trains a few steps (loss falls),
 * checks the expert-load heatmap and routed-token colouring render, generates text, saves a checkpoint
 * (two downloads) that the CLI's loader reads, loads it back into the second run (same validation
 * loss), rejects a malformed upload with a clear message, and saves a screenshot to test-results/.
 * Then it upcycles a dense run into an MoE in the Upcycle section (provenance table) and trains it in run B,
 * fine-tunes a trained MoE with LoRA in the Fine-tune section (counts, perplexity on both domains, the
 * adapter download) and compresses it in the Compress section (size, perplexity, per-expert chart).
 * "Download ONNX" gives a model.onnx that ONNX Runtime runs to the CLI loader's logits.
 * Two more train on moelab-wasm (moelab's kernels in WebAssembly, the default backend) with and
 * without cross-origin isolation (threaded / single-threaded build). A last test boots the app
 * through Vite's dev server (what `pnpm --filter playground dev` runs: it sends the isolation
 * headers) and trains a few steps there on moelab-wasm, so the development path is checked too.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { forwardContext, resolveBackend, Rng, tf } from '@moelab/core';
import { decodeOnnxModel } from '@moelab/interop';
import { createDefaultRegistry, loadCheckpoint } from '@moelab/node';
import * as ort from 'onnxruntime-node';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CHROMIUM = '/usr/bin/chromium';
const app = fileURLToPath(new URL('..', import.meta.url));
const dist = join(app, 'dist');
const results = join(app, 'test-results');
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.log(`[playground e2e] skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);

function newestMtime(dir: string): number {
  let t = 0;
  for (const f of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, f.name);
    t = Math.max(t, f.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

/** vite build, unless dist/ is newer than every source (the app's and the bundled packages'). */
function buildApp(): void {
  const sources = [
    join(app, 'src'),
    join(app, 'index.html'),
    join(app, 'vite.config.ts'),
    ...['core', 'routers', 'experts', 'attention', 'upcycle', 'finetune', 'compress', 'interop', 'kernels-cpu', 'kernels-wasm'].map((p) =>
      join(app, '../../packages', p, 'src'),
    ),
    join(app, '../../packages/kernels-wasm/build'),
  ];
  const newest = Math.max(...sources.map((s) => (statSync(s).isDirectory() ? newestMtime(s) : statSync(s).mtimeMs)));
  const built = existsSync(join(dist, 'index.html')) ? statSync(join(dist, 'index.html')).mtimeMs : 0;
  if (built > newest) return;
  const r = spawnSync(process.execPath, [join(app, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], { cwd: app, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`vite build failed:\n${r.stdout}\n${r.stderr}`);
}

type RunView = { state: string; loaded?: { step: number } };

/** Resolves when the page's run `id` ('A' or 'B') has finished training. */
function runDone(page: Page, id: string, timeout = 120_000): Promise<unknown> {
  return page.waitForFunction(
    (id: string) => (window as unknown as { playground: { runs: Record<string, () => RunView> } }).playground.runs[id]!().state === 'done',
    id,
    { timeout, polling: 500 },
  );
}

/** Resolves when the page's run `id` has loaded a model at training step `step`. */
function runLoaded(page: Page, id: string, step: number): Promise<unknown> {
  return page.waitForFunction(
    ([id, step]: [string, number]) =>
      (window as unknown as { playground: { runs: Record<string, () => RunView> } }).playground.runs[id]!().loaded?.step === step,
    [id, step],
    { timeout: 60_000 },
  );
}

const MIME: Record<string, string> = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.css': 'text/css',
  '.wasm': 'application/wasm',
  '.txt': 'text/plain; charset=utf-8',
  '.json': 'application/json',
};

function serve(root: string, headers: Record<string, string> = {}): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const rel = normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, '');
    let file = join(root, rel);
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!file.startsWith(root) || !existsSync(file)) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { ...headers, 'content-type': MIME[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

type Snapshot = {
  state: string;
  backend: string;
  losses: [number, number][];
  evals: [number, number][];
  speed: [number, number][];
  layers: { layer: string; numExperts: number; recorded: number; entropy?: number }[];
  sampleLayers: number;
  heatPainted: number;
  lastSaved?: { step: number; valLoss: number };
  loaded?: { step: number; valLoss: number };
  generated: string;
  errors: string[];
};

describe.skipIf(!hasChromium)('playground in headless chromium', () => {
  // biome-ignore lint/suspicious/noExplicitAny: playwright types are loaded dynamically
  let browser: any;
  // biome-ignore lint/suspicious/noExplicitAny: playwright page
  let page: any;
  let server: Server;
  let url: string;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    buildApp();
    server = await serve(dist);
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
    page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1400, height: 1100 } });
    page.on('pageerror', (e: Error) => pageErrors.push(e.message));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/?backend=wasm`;
    await page.goto(url);
    await page.waitForSelector('body[data-ready=true]', { timeout: 60_000 });
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((r) => server?.close(r));
  });

  const run = (name: 'A' | 'B'): Promise<Snapshot> =>
    page.evaluate((n: string) => (window as unknown as { playground: { runs: Record<string, () => unknown> } }).playground.runs[n]!(), name);

  it('builds a preset, trains on wasm (loss falls), renders routing views, round-trips a checkpoint', async () => {
    // Preset -> form + spec JSON + live parameter counts.
    await page.selectOption('#preset', 'moe-micro');
    await page.click('#use-preset');
    await page.waitForFunction(() => document.querySelector<HTMLElement>('#summary')?.dataset.parameters);
    const summary = await page.evaluate(() => ({ ...document.querySelector<HTMLElement>('#summary')!.dataset }));
    expect(Number(summary.parameters)).toBeGreaterThan(Number(summary.active));
    const specText = await page.inputValue('#spec-json');
    expect(JSON.parse(specText).block.ffn.router.type).toBe('softmax-topk');
    // An invalid value is explained next to its field; fixing it clears the message.
    const k = page.locator('input[data-path="$.block.ffn.router.k"]');
    await k.fill('two');
    await k.dispatchEvent('change');
    const kError = page.locator('[data-error-for="$.block.ffn.router.k"]');
    await expect.poll(async () => kError.textContent()).toMatch(/number|integer/i);
    await k.fill('2');
    await k.dispatchEvent('change');
    await expect.poll(async () => kError.textContent()).toBe('');
    expect(JSON.parse(await page.inputValue('#spec-json')).block.ffn.router.k).toBe(2);

    // The spec JSON and the form stay in sync both ways: editing the JSON re-renders the form and counts.
    const edited = JSON.parse(await page.inputValue('#spec-json'));
    edited.dModel = 48;
    await page.fill('#spec-json', JSON.stringify(edited));
    await expect.poll(async () => page.inputValue('input[data-path="$.dModel"]')).toBe('48');
    await expect.poll(async () => Number(await page.getAttribute('#summary', 'data-parameters'))).toBeGreaterThan(Number(summary.parameters));
    await page.fill('#spec-json', '{ "type": ');
    await expect.poll(async () => page.textContent('#spec-error')).toMatch(/spec JSON: /);
    await page.click('#use-preset');
    await expect.poll(async () => Number(await page.getAttribute('#summary', 'data-parameters'))).toBe(Number(summary.parameters));

    // Few steps, evaluation every 10.
    await page.fill('#train-steps', '40');
    await page.dispatchEvent('#train-steps', 'change');
    await page.click('#run-a .build');
    await page.waitForFunction(() => document.querySelector('#run-a .backend')?.textContent?.includes('wasm'), null, { timeout: 60_000 });
    await page.click('#run-a .start');
    await runDone(page, 'A', 150_000);
    const a = await run('A');
    expect(a.errors).toEqual([]);
    expect(a.backend).toBe('wasm');
    expect(a.losses.length).toBe(40);
    const mean = (xs: [number, number][]) => xs.reduce((s, [, y]) => s + y, 0) / xs.length;
    expect(mean(a.losses.slice(-5))).toBeLessThan(mean(a.losses.slice(0, 5)) - 0.3);
    expect(a.evals.at(-1)![1]).toBeLessThan(a.evals[0]![1]);
    expect(a.speed.every(([, s]) => s > 0)).toBe(true);
    // Two MoE layers, each with 40 recorded loads, an entropy between 0 and log 4, and a painted heatmap.
    expect(a.layers.length).toBe(2);
    for (const l of a.layers) {
      expect(l.recorded).toBe(40);
      expect(l.entropy!).toBeGreaterThan(0);
      expect(l.entropy!).toBeLessThanOrEqual(Math.log(4) + 1e-6);
    }
    expect(a.heatPainted).toBe(2 * 40 * 4);
    const inked = await page.evaluate(() => {
      const c = document.querySelector<HTMLCanvasElement>('#run-a canvas.heat')!;
      const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i]! < 250 || d[i + 1]! < 250) n++;
      return n;
    });
    expect(inked).toBeGreaterThan(500);
    // Routed tokens: every sampled token coloured by an expert in [0, 4).
    const experts: number[] = await page.$$eval('#run-a .sample span', (s: HTMLElement[]) => s.map((x) => Number(x.dataset.expert)));
    expect(experts.length).toBe(32);
    expect(experts.every((e) => e >= 0 && e < 4)).toBe(true);

    // Generate.
    await page.click('#run-a .generate');
    await page.waitForFunction(() => (document.querySelector('#run-a pre.generated')?.textContent ?? '').length > 20, null, { timeout: 60_000 });

    // Save: two downloads.
    const ckpt = join(results, 'checkpoint');
    mkdirSync(ckpt, { recursive: true });
    const downloads = new Map<string, string>();
    const got = new Promise<void>((resolve) => {
      page.on('download', async (d: { suggestedFilename(): string; saveAs(p: string): Promise<void> }) => {
        const p = join(ckpt, d.suggestedFilename());
        await d.saveAs(p);
        downloads.set(d.suggestedFilename(), p);
        if (downloads.size === 2) resolve();
      });
    });
    await page.click('#run-a .save');
    await got;
    expect([...downloads.keys()].sort()).toEqual(['config.json', 'model.safetensors']);
    const saved = (await run('A')).lastSaved!;
    expect(saved.step).toBe(40);

    // The CLI's loader reads the playground's checkpoint: same validation windows -> compare logits sanity.
    await resolveBackend('cpu');
    const { model, config } = loadCheckpoint(ckpt, createDefaultRegistry());
    expect(config.step).toBe(40);
    const logits = tf.tidy(
      () => model.forward(tf.tensor2d([[84, 104, 101, 32]], [1, 4], 'int32'), forwardContext(new Rng(0), false)).arraySync() as number[][][],
    );
    expect(logits[0]!.length).toBe(4);
    expect(logits[0]![0]!.length).toBe(256);
    model.dispose();

    // A malformed upload (config.json alone, then a broken safetensors) gives a clear message.
    await page.setInputFiles('#run-b input.load', [downloads.get('config.json')!]);
    await page.waitForFunction(() => (document.querySelector('#run-b .run-error')?.textContent ?? '').includes('model.safetensors is missing'));
    await page.setInputFiles('#run-b input.load', [
      { name: 'config.json', mimeType: 'application/json', buffer: readFileSync(downloads.get('config.json')!) },
      { name: 'model.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from('not a safetensors file at all') },
    ]);
    await page.waitForFunction(
      () =>
        /safetensors/i.test(document.querySelector('#run-b .run-error')?.textContent ?? '') &&
        !(document.querySelector('#run-b .run-error')?.textContent ?? '').includes('is missing'),
    );

    // Load the checkpoint into run B: same step, same validation loss as run A at save time.
    await page.setInputFiles('#run-b input.load', [downloads.get('config.json')!, downloads.get('model.safetensors')!]);
    await page.waitForFunction(
      () => (window as unknown as { playground: { runs: Record<string, () => { loaded?: unknown }> } }).playground.runs.B!().loaded,
      null,
      { timeout: 60_000 },
    );
    const b = await run('B');
    expect(b.loaded!.step).toBe(40);
    expect(b.loaded!.valLoss).toBeCloseTo(saved.valLoss, 4);

    // Download ONNX: run A's model as model.onnx, built in the page; ONNX Runtime gives the CLI loader's logits.
    const onnxDownload = page.waitForEvent('download');
    await page.click('#run-a .onnx');
    const onnx = await onnxDownload;
    expect(onnx.suggestedFilename()).toBe('model.onnx');
    const onnxBytes = new Uint8Array(readFileSync(await onnx.path()));
    expect(onnxBytes.length).toBeGreaterThan(1000);
    expect(decodeOnnxModel(onnxBytes).graph.node.some((n) => n.opType === 'TopK')).toBe(true);
    const session = await ort.InferenceSession.create(onnxBytes);
    const ortOut = await session.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from([84n, 104n, 101n, 32n]), [1, 4]) });
    const ortLogits = ortOut.logits!.data as Float32Array;
    await session.release();
    let onnxDiff = 0;
    logits[0]!.flat().forEach((v, i) => {
      onnxDiff = Math.max(onnxDiff, Math.abs(v - ortLogits[i]!));
    });
    expect(onnxDiff).toBeLessThan(1e-4);
    await expect.poll(async () => page.textContent('#run-a .ckpt-status')).toMatch(/^model\.onnx \(step 40\): ONNX opset 17: \d+ nodes/);
    // The page bundle builds the file itself: the Node runtime never enters it.
    for (const f of readdirSync(join(dist, 'assets'))) expect(readFileSync(join(dist, 'assets', f), 'latin1').includes('onnxruntime')).toBe(false);

    mkdirSync(results, { recursive: true });
    await page.screenshot({ path: join(results, 'playground.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  }, 240_000);

  it('upcycles a dense run into an MoE (provenance table) and trains it in run B', async () => {
    type Up = {
      sources: string[];
      built?: { method: string; totalParams: number; activeParams: number; tensors: number };
      provenance: { op: string; count: number }[];
      errors: string[];
    };
    const up = (): Promise<Up> => page.evaluate(() => (window as unknown as { playground: { upcycle: () => unknown } }).playground.upcycle());
    await page.selectOption('#preset', 'dense-micro');
    await page.click('#use-preset');
    await page.fill('#train-steps', '6');
    await page.dispatchEvent('#train-steps', 'change');
    await page.click('#run-a .build');
    await page.waitForFunction(() => document.querySelector('#run-a .params')?.textContent?.includes('6 steps'), null, { timeout: 60_000 });
    await page.click('#up-clear');
    await page.click('.up-add-a');
    await expect.poll(async () => (await up()).sources, { timeout: 30_000 }).toEqual(['runA@0']);
    await page.selectOption('#up-method', 'sparse-upcycle');
    await page.fill('#up-options', '{ "experts": 4, "layers": "all" }');
    await page.click('#up-build');
    await expect.poll(async () => (await up()).built?.method, { timeout: 30_000 }).toBe('sparse-upcycle');
    const u = await up();
    expect(u.errors).toEqual([]);
    // Every tensor has a provenance row; the routers are new, the rest comes from the dense run.
    expect(u.provenance.reduce((n, r) => n + r.count, 0)).toBe(u.built!.tensors);
    expect(u.provenance.some((r) => r.op === 'new')).toBe(true);
    expect(u.provenance.some((r) => r.op !== 'new')).toBe(true);
    expect(await page.locator('#up-provenance tr').count()).toBe(u.provenance.length + 1);
    expect(u.built!.totalParams).toBeGreaterThan(u.built!.activeParams);
    // Train on: run B loads the upcycled model (step 0) and trains its 6 steps through 2 MoE layers of 4 experts.
    const earlierErrors = (await run('B')).errors.length; // the malformed uploads of the previous test
    await page.click('.up-train-b');
    await runLoaded(page, 'B', 0);
    await page.click('#run-b .start');
    await runDone(page, 'B');
    const b = await run('B');
    expect(b.errors.slice(earlierErrors)).toEqual([]);
    expect(b.losses.length).toBe(6);
    expect(b.layers.map((l) => l.numExperts)).toEqual([4, 4]);
    await page.screenshot({ path: join(results, 'playground-upcycle.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  }, 240_000);

  it('fine-tunes a trained MoE with LoRA (counts, perplexity on both domains) and compresses it (size, perplexity, per-expert scores)', async () => {
    type Ft = {
      state: string;
      counts?: { trainable: number; frozen: number; base: number; added: number };
      domains: { role: string; name: string; before: number; after?: number }[];
      losses: [number, number][];
      files: string[];
      errors: string[];
    };
    type Cp = {
      state: string;
      result?: {
        size: { before: { bytes: number; parameters: number }; after: { bytes: number; parameters: number } };
        perplexity: { before: number; after: number };
        experts: { values: number[]; kept?: boolean[] }[];
      };
      barsDrawn: number;
      errors: string[];
    };
    const ft = (): Promise<Ft> => page.evaluate(() => (window as unknown as { playground: { finetune: () => unknown } }).playground.finetune());
    const cp = (): Promise<Cp> => page.evaluate(() => (window as unknown as { playground: { compress: () => unknown } }).playground.compress());
    /** Runs the Compress section's chosen method to the end; it must report no error. */
    const compressRun = async (): Promise<Cp> => {
      await page.click('#cp-run');
      await expect.poll(async () => (await cp()).state, { timeout: 120_000, intervals: [500] }).toBe('done');
      const r = await cp();
      expect(r.errors).toEqual([]);
      return r;
    };
    // A trained moe-micro in run A (8 steps).
    await page.selectOption('#preset', 'moe-micro');
    await page.click('#use-preset');
    await page.fill('#train-steps', '8');
    await page.dispatchEvent('#train-steps', 'change');
    await page.click('#run-a .build');
    await page.waitForFunction(() => document.querySelector('#run-a .params')?.textContent?.includes('8 steps'), null, { timeout: 60_000 });
    await page.click('#run-a .start');
    await runDone(page, 'A');
    // Read the size once run A is trained: the summary updates after a debounce, so reading it right after
    // picking the preset can still show the previous test's model.
    const parameters = Number(await page.getAttribute('#summary', 'data-parameters'));

    // Fine-tune: run A's model, LoRA rank 4, 5 steps on an uploaded text; the base's domain is the bundled corpus.
    await page.click('.ft-use-a');
    await page.waitForFunction(() => document.querySelector('.ft-model')?.textContent?.includes('runA@8'), null, { timeout: 30_000 });
    await page.setInputFiles('#ft-file', { name: 'drill.txt', mimeType: 'text/plain', buffer: Buffer.from('abcd efgh abcd efgh ijkl. '.repeat(120)) });
    await expect.poll(async () => page.inputValue('#ft-target')).toBe('drill.txt');
    expect(await page.inputValue('#ft-general')).toBe('brown (bundled slice)');
    await page.selectOption('#ft-method', 'lora');
    await page.fill('#ft-options', '{ "rank": 4 }');
    await page.fill('#ft-steps', '5');
    await page.click('#ft-run');
    await expect.poll(async () => (await ft()).state, { timeout: 120_000, intervals: [500] }).toBe('done');
    const f = await ft();
    expect(f.errors).toEqual([]);
    // LoRA rank 4 on q and v (32 -> 32) of both layers: 2 x 2 x 4 x (32 + 32) trainable; the whole base frozen.
    expect(f.counts).toEqual({ trainable: 2 * 2 * 4 * 64, added: 2 * 2 * 4 * 64, frozen: parameters, base: parameters });
    expect(await page.getAttribute('#ft-counts', 'data-trainable')).toBe('1024');
    expect(f.losses.length).toBe(5);
    expect(f.domains.map((d) => [d.role, d.name])).toEqual([
      ['target', 'drill.txt'],
      ['general', 'brown (bundled slice)'],
    ]);
    for (const d of f.domains) {
      expect(d.before).toBeGreaterThan(1);
      expect(d.after).toBeGreaterThan(1);
    }
    for (const role of ['target', 'general'])
      for (const cell of ['before', 'after']) expect(Number(await page.textContent(`#ft-perplexity tr[data-role=${role}] td.${cell}`))).toBeGreaterThan(1);
    expect(f.files).toEqual(['adapter.json', 'adapter.safetensors']);
    const adapterJson = new Promise<string>((resolve) => {
      page.once('download', async (d: { suggestedFilename(): string; path(): Promise<string> }) => resolve(readFileSync(await d.path(), 'utf8')));
    });
    await page.click('#ft-save');
    const adapter = JSON.parse(await adapterJson);
    expect(adapter.format).toBe('moelab-adapter-v1');
    expect(adapter.counts.trainable).toBe(1024);
    // LoRA folds into the base: the fine-tuned model loads into run B (8 + 5 steps).
    await page.click('.ft-load-b');
    await runLoaded(page, 'B', 13);

    // Compress run A's model: 4-bit experts shrink the file; pruning half the experts by REAP removes parameters.
    await page.click('.cp-use-a');
    await page.waitForFunction(() => document.querySelector('.cp-model')?.textContent?.includes('runA@8'), null, { timeout: 30_000 });
    await page.selectOption('#cp-method', 'quantize');
    await page.selectOption('#cp-bits', '4');
    const q = await compressRun();
    expect(q.result!.size.after.bytes).toBeLessThan(q.result!.size.before.bytes);
    expect(q.result!.size.after.parameters).toBe(parameters);
    expect(Number(await page.textContent('#cp-table tr[data-row=perplexity] td.after'))).toBeGreaterThan(1);
    // Charts draw on the next animation frame.
    await expect.poll(async () => (await cp()).barsDrawn).toBe(2 * 4);
    await page.selectOption('#cp-method', 'prune');
    await page.selectOption('#cp-score', 'reap');
    await page.fill('#cp-ratio', '0.5');
    const p = await compressRun();
    expect(p.result!.size.after.parameters).toBeLessThan(parameters);
    expect(p.result!.experts.map((l) => l.kept!.filter(Boolean).length)).toEqual([2, 2]);
    await expect.poll(async () => (await cp()).barsDrawn).toBe(2 * 4);
    // The pruned model trains on in run B: the Build section shows its spec (2 experts per layer).
    await page.click('.cp-load-b');
    await runLoaded(page, 'B', 8);
    expect(JSON.parse(await page.inputValue('#spec-json')).block.ffn.experts).toBe(2);
    // Steering toward the uploaded text, away from the bundled corpus: both perplexities, the steering file.
    await page.selectOption('#cp-method', 'steer');
    await page.focus('#cp-toward');
    await expect.poll(async () => page.inputValue('#cp-toward')).toBe('drill.txt');
    expect(await page.inputValue('#cp-away')).toBe('brown (bundled slice)');
    const st = (await compressRun()) as Cp & { files: string[] };
    expect(st.files).toEqual(['steer.json']);
    expect(Number(await page.textContent('#cp-table tr[data-row=other-perplexity] td.after'))).toBeGreaterThan(1);
    await expect.poll(async () => (await cp()).barsDrawn).toBe(2 * 4);
    // EEP (a tiny search budget, then one generation of its merging phase): half the experts, an ordinary checkpoint.
    await page.selectOption('#cp-method', 'eep');
    await page.fill('#cp-eep-ratio', '0.5');
    await page.fill('#cp-population', '2');
    await page.fill('#cp-generations', '1');
    await page.fill('#cp-merge-generations', '1');
    const eep = await compressRun();
    expect(eep.result!.size.after.parameters).toBeLessThan(parameters);
    expect(eep.result!.experts.map((l) => l.kept!.filter(Boolean).length)).toEqual([2, 2]);
    // SCMoE decodes a validation prompt without and with the contrast; no file, the weights unchanged.
    await page.selectOption('#cp-method', 'scmoe');
    await page.fill('#cp-beta', '0.5');
    const sc = (await compressRun()) as Cp & { files: string[] };
    expect(sc.files).toEqual([]);
    expect(sc.result!.size.after.parameters).toBe(parameters);
    expect(await page.textContent('#cp-generated')).toMatch(/^prompt: [\s\S]*\ngreedy: …[\s\S]*\nSCMoE: {2}…/);
    await expect.poll(async () => (await cp()).barsDrawn).toBe(2 * 4);
    await page.screenshot({ path: join(results, 'playground-finetune-compress.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  }, 360_000);
});

describe.skipIf(!hasChromium)('playground charts on a high-DPI screen', () => {
  it('size every chart backing store to its CSS box x devicePixelRatio, and again after a resize or a ratio change', async () => {
    buildApp();
    const server = await serve(dist);
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const page = await browser.newPage({ deviceScaleFactor: 2, viewport: { width: 1200, height: 900 } });
      const errors: string[] = [];
      page.on('pageerror', (e: Error) => errors.push(e.message));
      await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/?backend=cpu`);
      await page.waitForSelector('body[data-ready=true]', { timeout: 60_000 });
      type Canvas = { name: string; width: number; height: number; cssWidth: number; cssHeight: number; cornerAlpha: number };
      const canvases = (): Promise<{ dpr: number; list: Canvas[] }> =>
        page.evaluate(() => ({
          dpr: devicePixelRatio,
          list: [...document.querySelectorAll('canvas')].map((c) => ({
            name: c.id || `${c.closest('.run')?.id} ${c.className}`,
            width: c.width,
            height: c.height,
            cssWidth: c.clientWidth,
            cssHeight: c.clientHeight,
            // The white chart background covers the whole backing store only if drawing is scaled by the ratio.
            cornerAlpha: c.getContext('2d')!.getImageData(c.width - 1, c.height - 1, 1, 1).data[3]!,
          })),
        }));
      const atRatio = (dpr: number) => async () => {
        const { dpr: actual, list } = await canvases();
        return {
          actual,
          mismatched: list.filter((c) => c.width !== Math.round(c.cssWidth * dpr) || c.height !== Math.round(c.cssHeight * dpr) || c.cornerAlpha !== 255),
        };
      };

      const first = await canvases();
      expect(first.dpr).toBe(2);
      // The comparison chart, each run's loss and speed charts, the fine-tuning loss and the per-expert scores.
      expect(first.list.length).toBe(7);
      for (const c of first.list) {
        expect(c.cssWidth).toBeGreaterThan(100);
        expect(c.cssHeight).toBeGreaterThan(30);
      }
      await expect.poll(atRatio(2)).toEqual({ actual: 2, mismatched: [] });

      // A narrower window: the charts shrink with it and are redrawn at the new size.
      const compareWidth = first.list.find((c) => c.name === 'compare')!.cssWidth;
      await page.setViewportSize({ width: 700, height: 900 });
      await expect.poll(async () => (await canvases()).list.find((c) => c.name === 'compare')!.cssWidth).toBeLessThan(compareWidth);
      await expect.poll(atRatio(2)).toEqual({ actual: 2, mismatched: [] });

      // The ratio changes (browser zoom, another screen): redrawn at the new ratio.
      const cdp = await page.context().newCDPSession(page);
      await cdp.send('Emulation.setDeviceMetricsOverride', { width: 700, height: 900, deviceScaleFactor: 3, mobile: false });
      // Headless Chromium evaluates media queries when it renders a frame (a screen would at once).
      await cdp.send('Page.captureScreenshot', {});
      await expect.poll(atRatio(3)).toEqual({ actual: 3, mismatched: [] });
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      await new Promise((r) => server.close(r));
    }
  }, 180_000);
});

describe.skipIf(!hasChromium)("playground on moelab-wasm (moelab's kernels in WebAssembly), with and without cross-origin isolation", () => {
  // What vite.config.ts's dev and preview servers send (and a static host must): SharedArrayBuffer, so threads.
  const ISOLATION = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

  for (const isolated of [true, false]) {
    it(`${isolated ? 'isolated (COOP/COEP): auto picks it, threaded' : 'not isolated: picked by name, the single-threaded build, saying why'}; loss falls`, async () => {
      buildApp();
      const server = await serve(dist, isolated ? ISOLATION : {});
      const { chromium } = await import('playwright-core');
      const browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      });
      try {
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on('pageerror', (e: Error) => errors.push(e.message));
        const port = (server.address() as AddressInfo).port;
        await page.goto(`http://127.0.0.1:${port}/${isolated ? '' : '?backend=moelab-wasm'}`);
        await page.waitForSelector('body[data-ready=true]', { timeout: 60_000 });
        const env = await page.evaluate(() => ({ isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency }));
        expect(env.isolated).toBe(isolated);
        expect(await page.inputValue('#backend')).toBe(isolated ? 'auto' : 'moelab-wasm');
        await page.selectOption('#preset', 'moe-micro');
        await page.click('#use-preset');
        await page.fill('#train-steps', '20');
        await page.dispatchEvent('#train-steps', 'change');
        await page.click('#run-a .build');
        await page.waitForFunction(() => document.querySelector('#run-a .backend')?.textContent?.includes('moelab-wasm'), null, { timeout: 60_000 });
        const reason = await page.getAttribute('#run-a .backend', 'title');
        if (isolated && env.cores > 1) expect(reason).toContain(`; ${env.cores} threads on Workers sharing the memory)`);
        else if (isolated) expect(reason).toContain('single-threaded: one core here');
        else expect(reason).toContain('single-threaded: the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin');
        await page.click('#run-a .start');
        await runDone(page, 'A', 150_000);
        const a: Snapshot = await page.evaluate(() => (window as unknown as { playground: { runs: Record<string, () => Snapshot> } }).playground.runs.A!());
        expect(a.errors).toEqual([]);
        expect(a.backend).toBe('moelab-wasm');
        expect(a.losses.length).toBe(20);
        const mean = (xs: [number, number][]) => xs.reduce((s, [, y]) => s + y, 0) / xs.length;
        expect(mean(a.losses.slice(-5))).toBeLessThan(mean(a.losses.slice(0, 5)) - 0.2);
        expect(errors).toEqual([]);
      } finally {
        await browser.close();
        await new Promise((r) => server.close(r));
      }
    }, 300_000);
  }
});

describe.skipIf(!hasChromium)('playground on the Vite dev server (pnpm --filter playground dev)', () => {
  it('serves the app from sources: it boots, builds a preset and trains in the worker without page errors', async () => {
    const { createServer: createViteServer } = await import('vite');
    const vite = await createViteServer({ configFile: join(app, 'vite.config.ts'), root: app, logLevel: 'warn', server: { port: 0, host: '127.0.0.1' } });
    await vite.listen();
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e: Error) => errors.push(e.message));
      const port = (vite.httpServer!.address() as AddressInfo).port;
      // The dev server transforms every module on first request: on a loaded machine that outlasts 30 s.
      await page.goto(`http://127.0.0.1:${port}/?backend=moelab-wasm`, { timeout: 120_000 });
      await page.waitForSelector('body[data-ready=true]', { timeout: 120_000 });
      // The dev server sends COOP/COEP (vite.config.ts): the page is isolated, so moelab-wasm runs threaded.
      expect(await page.evaluate(() => crossOriginIsolated)).toBe(true);
      await page.selectOption('#preset', 'moe-micro');
      await page.click('#use-preset');
      await page.fill('#train-steps', '6');
      await page.dispatchEvent('#train-steps', 'change');
      await page.click('#run-a .build');
      await page.click('#run-a .start');
      await runDone(page, 'A');
      const a = await page.evaluate(() =>
        (window as unknown as { playground: { runs: Record<string, () => { losses: unknown[]; errors: string[]; backend: string }> } }).playground.runs.A!(),
      );
      expect(a.errors).toEqual([]);
      expect(a.losses.length).toBe(6);
      expect(a.backend).toBe('moelab-wasm');
      expect(await page.getAttribute('#run-a .backend', 'title')).toMatch(/threads on Workers sharing the memory|single-threaded: one core here/);
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      await vite.close();
    }
  }, 240_000);
});
