/**
 * A consumer of the published moelab packages (installed from their tarballs into a fresh project by
 * scripts/consumer-test.mjs): registers a third-party router plugin, builds a model with it, trains five
 * steps on the native `moelab-cpu` backend and saves and reloads a checkpoint. Prints one JSON line.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ByteTokenizer,
  Config,
  DispatchPlan,
  defineEntry,
  definePlugin,
  forwardContext,
  type LanguageModel,
  Linear,
  Module,
  Rng,
  type Router,
  type TokenSource,
  Trainer,
  Type,
  buildModel,
  tf,
} from '@moelab/core';
import { chooseBackend, createDefaultRegistry, loadCheckpoint, saveCheckpoint } from '@moelab/node';

/** Top-1 of a learned linear gate: token t goes to argmax_e (W x_t)_e with weight softmax(W x_t)_e. */
class ArgmaxGate extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly expertsPerToken = 1;
  readonly gate: Linear;
  constructor(
    dModel: number,
    readonly numExperts: number,
    rng: Rng,
  ) {
    super();
    this.gate = this.child('gate', new Linear(dModel, numExperts, rng));
  }
  route(x: tf.Tensor2D) {
    const T = x.shape[0];
    const probs = tf.softmax(this.gate.forward(x)) as tf.Tensor2D;
    const choice = tf.argMax(probs, 1);
    const weight = tf.sum(tf.mul(probs, tf.oneHot(choice, this.numExperts)), 1) as tf.Tensor1D;
    const tokens = Int32Array.from({ length: T }, (_, t) => t);
    return { plan: new DispatchPlan(tokens, choice.dataSync() as Int32Array, T, this.numExperts), weight, probs };
  }
}

const argmaxGate = defineEntry({
  kind: 'router',
  name: 'argmax-gate',
  description: 'top-1 of a learned linear gate, weighted by its softmax probability',
  schema: Config({ scale: Type.Number({ default: 1 }) }),
  create: (_config, ctx) => new ArgmaxGate(ctx.need('dModel'), ctx.need('numExperts'), ctx.rng),
});
const plugin = definePlugin({ name: 'moelab-plugin-argmax-gate', entries: [argmaxGate] });

/** Random windows of a text's bytes. */
class TextWindows implements TokenSource {
  private readonly ids = new ByteTokenizer().encode('The quick brown fox jumps over the lazy dog. '.repeat(40));
  batch(rng: Rng, batchSize: number, seqLen: number): Int32Array {
    const out = new Int32Array(batchSize * (seqLen + 1));
    for (let b = 0; b < batchSize; b++) {
      const start = rng.int(this.ids.length - seqLen - 1);
      out.set(this.ids.subarray(start, start + seqLen + 1), b * (seqLen + 1));
    }
    return out;
  }
}

type Model = Module & LanguageModel;

const backend = await chooseBackend('moelab-cpu');
const registry = createDefaultRegistry(plugin);
const spec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 32,
  contextLength: 16,
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'argmax-gate' }, expert: { type: 'mlp', hidden: 32 } },
  },
};
const model = buildModel<Model>(spec, registry, 0);
const gateBefore = model.namedParameters().find(([n]) => n.endsWith('router.gate.weight'));
if (!gateBefore)
  throw new Error(
    `no router.gate.weight among ${model
      .namedParameters()
      .map(([n]) => n)
      .join(', ')}`,
  );
const gate0 = gateBefore[1].dataSync().slice();
const trainer = new Trainer(model, new TextWindows(), { steps: 5, batchSize: 4, seqLen: 16, lr: 1e-2, warmup: 1, evalBatches: 1, seed: 1 });
const losses: number[] = [];
for (let i = 0; i < 5; i++) losses.push(trainer.trainStep().loss);
const gate1 = gateBefore[1].dataSync();
const gateMoved = gate1.some((v, i) => v !== gate0[i]);

const dir = mkdtempSync(join(tmpdir(), 'moelab-consumer-ckpt-'));
saveCheckpoint(dir, model, { spec, step: 5, seed: 0 });
const loaded = loadCheckpoint(dir, registry).model;
const probe = () => tf.tensor2d([[84, 104, 101, 32, 113, 117, 105, 99]], [1, 8], 'int32');
const logits = (m: Model) => tf.tidy(() => Array.from(m.forward(probe(), forwardContext(new Rng(0), false)).dataSync()));
const a = logits(model);
const b = logits(loaded);
rmSync(dir, { recursive: true, force: true });
const maxDiff = Math.max(...a.map((v, i) => Math.abs(v - b[i]!)));

console.log(JSON.stringify({ backend: backend.name, tfBackend: tf.getBackend(), losses, gateMoved, maxDiff, logits: a.length }));
