/**
 * A training run in a Web Worker: builds the model on the chosen tfjs backend, trains with core's
 * Trainer, and posts metrics, routing statistics, coloured samples, generations and checkpoints.
 */
import {
  buildModel,
  ByteTokenizer,
  forwardContext,
  generateTokens,
  type LanguageModel,
  type Module,
  modelSummary,
  type NodeSpec,
  resolveBackend,
  Rng,
  type RoutingStats,
  tf,
  Trainer,
  type TrainConfig,
} from '@moelab/core';
import { registerBrowserBackends, setAllowSoftwareWebGL } from './backends.js';
import { checkpointFiles, loadCheckpointFiles } from './checkpoint.js';
import { TextTokens } from './data.js';
import type { FromWorker, LayerRouting, RunState, ToWorker, TokenRouting } from './protocol.js';
import { createPlaygroundRegistry } from './registry.js';

type Model = Module & LanguageModel;

const scope = self as unknown as { postMessage(m: unknown, transfer?: Transferable[]): void; onmessage: ((e: MessageEvent<ToWorker>) => void) | null };
const post = (m: FromWorker, transfer?: Transferable[]) => scope.postMessage(m, transfer);

const registry = createPlaygroundRegistry();
const tokenizer = new ByteTokenizer();
let model: Model | undefined;
let trainer: Trainer | undefined;
let data: TextTokens | undefined;
let spec: NodeSpec | undefined;
let train: Partial<TrainConfig> = {};
let state: RunState = 'idle';
let lastVal = Number.NaN;
let backendChosen = '';
// What the chosen backend runs (moelab-wasm: its threads, or why it is single-threaded), shown on the run panel.
let backendReason = '';

function setState(s: RunState): void {
  state = s;
  post({ type: 'state', state: s });
}

async function useBackend(request: string): Promise<{ name: string; reason: string }> {
  registerBrowserBackends();
  setAllowSoftwareWebGL(request === 'webgl');
  if (backendChosen && (request === 'auto' || request === backendChosen)) return { name: backendChosen, reason: backendReason };
  const choice = await resolveBackend(request);
  backendChosen = choice.name;
  backendReason = choice.reason;
  return choice;
}

function summarizeRouting(stats: RoutingStats[]): LayerRouting[] {
  const byLayer = new Map<string, { counts: number[]; entropy: number[]; numExperts: number }>();
  for (const s of stats) {
    let l = byLayer.get(s.layer);
    if (!l) {
      l = { counts: new Array(s.numExperts).fill(0), entropy: [], numExperts: s.numExperts };
      byLayer.set(s.layer, l);
    }
    s.counts.forEach((c, e) => {
      l.counts[e] = (l.counts[e] ?? 0) + c;
    });
    if (s.entropy !== undefined) l.entropy.push(s.entropy);
  }
  return [...byLayer.entries()].map(([layer, l]) => {
    const total = l.counts.reduce((a, b) => a + b, 0) || 1;
    return {
      layer,
      numExperts: l.numExperts,
      load: l.counts.map((c) => c / total),
      entropy: l.entropy.length ? l.entropy.reduce((a, b) => a + b, 0) / l.entropy.length : undefined,
    };
  });
}

/** Route a fixed validation snippet and report each token's expert per MoE layer (ctx.assignments). */
function sampleRouting(): void {
  if (!model || !data) return;
  const m = model;
  const val = data.tokens('val');
  const n = Math.min(m.contextLength, 96, val.length);
  const ids = Array.from(val.subarray(0, n));
  const assignments = new Map<string, { tokenIndex: Int32Array; expertIndex: Int32Array; tokens: number }[]>();
  tf.tidy(() => {
    m.forward(tf.tensor2d([ids], [1, n], 'int32'), forwardContext(new Rng(0), false, { assignments }));
  });
  const layers: TokenRouting[] = [];
  const experts = new Map<string, number>();
  for (const s of lastRouting) experts.set(s.layer, s.numExperts);
  for (const [layer, calls] of assignments) {
    const a = calls[0];
    if (!a) continue;
    const expert = new Array(n).fill(-1);
    for (let i = 0; i < a.tokenIndex.length; i++) {
      const t = a.tokenIndex[i]!;
      if (t < n && expert[t] === -1) expert[t] = a.expertIndex[i]!;
    }
    let numExperts = experts.get(layer) ?? 0;
    for (const e of expert) numExperts = Math.max(numExperts, e + 1);
    layers.push({ layer, numExperts, expert });
  }
  post({ type: 'sample', step: trainer?.step ?? 0, tokens: ids, layers });
}

let lastRouting: LayerRouting[] = [];

function evaluate(): void {
  if (!trainer) return;
  const e = trainer.evaluate();
  lastVal = e.loss;
  post({ type: 'eval', step: e.step, loss: e.loss });
}

function disposeModel(): void {
  model?.dispose();
  model = undefined;
  trainer = undefined;
}

function ready(reason: string): void {
  if (!model || !trainer || !spec) return;
  post({
    type: 'ready',
    backend: tf.getBackend(),
    reason,
    summary: modelSummary(model),
    step: trainer.step,
    steps: trainer.config.steps,
    spec,
    train: trainer.config,
  });
}

async function init(msg: Extract<ToWorker, { type: 'init' }>): Promise<void> {
  const choice = await useBackend(msg.backend);
  disposeModel();
  spec = msg.spec;
  train = msg.train;
  data = new TextTokens(msg.data);
  model = buildModel<Model>(spec, registry, train.seed ?? 0);
  // The live routing charts plot every step (after the spread: the page sends the defaults, statsEvery 10 included).
  trainer = new Trainer(model, data, { ...train, statsEvery: 1 });
  lastVal = Number.NaN;
  ready(choice.reason);
  setState('idle');
  evaluate();
  sampleRouting();
}

async function loop(): Promise<void> {
  while (state === 'running' && trainer) {
    const t = trainer;
    const m = t.trainStep();
    const routing = summarizeRouting(m.routing);
    lastRouting = routing;
    post({ type: 'step', step: m.step, loss: m.loss, ce: m.ce, lr: m.lr, tokensPerSec: m.tokens / Math.max(1e-3, m.ms / 1000), routing });
    const every = Math.max(0, t.config.evalEvery);
    if ((every && m.step % every === 0) || m.step >= t.config.steps) {
      evaluate();
      sampleRouting();
    }
    if (m.step >= t.config.steps) {
      setState('done');
      return;
    }
    // Yield so that pause / stop / generate messages are handled between steps.
    await new Promise((r) => setTimeout(r, 0));
  }
}

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'init':
      await init(msg);
      return;
    case 'start':
      if (!trainer) throw new Error('build the model first');
      if (state === 'running') return;
      if (trainer.step >= trainer.config.steps)
        throw new Error(`the run has finished its ${trainer.config.steps} steps (raise "steps" and rebuild, or load a checkpoint)`);
      setState('running');
      void loop().catch((e) => {
        setState('stopped');
        post({ type: 'error', message: (e as Error).message });
      });
      return;
    case 'pause':
      if (state === 'running') setState('paused');
      return;
    case 'stop':
      if (state === 'running' || state === 'paused') {
        setState('stopped');
        evaluate();
        sampleRouting();
      }
      return;
    case 'generate': {
      if (!model) throw new Error('build or load a model first');
      const prompt = tokenizer.encode(msg.prompt || '\n');
      const out = generateTokens(model, prompt, { maxNewTokens: msg.maxNewTokens, temperature: msg.temperature, topK: msg.topK, seed: msg.seed });
      post({ type: 'generated', prompt: msg.prompt, text: tokenizer.decode(out) });
      return;
    }
    case 'save':
    case 'export': {
      if (!model || !trainer || !spec) throw new Error('build or load a model first');
      if (msg.type === 'save' && Number.isNaN(lastVal)) evaluate();
      const { configJson, weights } = checkpointFiles(model, {
        spec,
        step: trainer.step,
        seed: trainer.config.seed,
        train: { ...train, data: data?.data.name },
      });
      const buf = weights.slice().buffer as ArrayBuffer;
      if (msg.type === 'export') post({ type: 'exported', configJson, weights: buf, step: trainer.step }, [buf]);
      else post({ type: 'saved', configJson, weights: buf, step: trainer.step, valLoss: lastVal }, [buf]);
      return;
    }
    case 'load': {
      if (state === 'running') setState('paused');
      const choice = await useBackend(msg.backend);
      const files = msg.files.map((f) => ({ name: f.name, bytes: new Uint8Array(f.bytes) }));
      const loaded = loadCheckpointFiles<Model>(files, registry);
      disposeModel();
      model = loaded.model;
      spec = loaded.config.spec;
      const { data: dataName, ...rest } = loaded.config.train ?? {};
      void dataName;
      train = { ...rest, seed: loaded.config.train?.seed ?? loaded.config.seed };
      data = new TextTokens(msg.data);
      const steps = Math.max(train.steps ?? 0, loaded.config.step + 1);
      trainer = new Trainer(model, data, { ...train, steps, statsEvery: 1 });
      // The optimiser restarts (config.json + model.safetensors carry no optimiser state); the step
      // counter continues from the checkpoint's step so the schedule and charts line up.
      trainer.optimizer.step = loaded.config.step;
      ready(`${choice.reason}; loaded checkpoint at step ${loaded.config.step}`);
      setState('idle');
      evaluate();
      post({ type: 'loaded', config: loaded.config, valLoss: lastVal });
      sampleRouting();
      return;
    }
  }
}

let queue: Promise<void> = Promise.resolve();
scope.onmessage = (e) => {
  queue = queue.then(() =>
    handle(e.data).catch((err) => {
      post({ type: 'error', message: (err as Error).message });
    }),
  );
};
