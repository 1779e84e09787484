/**
 * Calibration statistics: the inputs of selected FFN layers while the seed model runs on calibration
 * token sequences (what MoEfication's and CMoE's activation statistics are computed from), the FFN's hidden
 * activations on them, and the gradient of the language-model loss at each FFN's output (LLaMA-MoE's
 * neuron importance). Inputs and gradients are captured by wrapping each layer's FFN forward for the
 * duration of the run; the seed's weights are only read.
 */
import {
  type Activation,
  activate,
  buildModel,
  crossEntropy,
  forwardContext,
  type LanguageModel,
  loadState,
  type Module,
  type Registry,
  Rng,
  tf,
  type TransformerBlock,
} from '@moelab/core';
import type { UpcycleSource } from './contract.js';
import type { WeightTensor } from './weights.js';

/** Layer index -> FFN input rows ([d] each), at most `maxTokens` per layer. */
export function ffnInputs(
  registry: Registry,
  seed: UpcycleSource,
  calibration: Int32Array[],
  layers: number[],
  maxTokens: number,
): Map<number, Float32Array[]> {
  const model = buildModel<Module & LanguageModel & { layers: TransformerBlock[] }>(seed.spec, registry, 0);
  const out = new Map<number, Float32Array[]>(layers.map((l) => [l, []]));
  const restore: (() => void)[] = [];
  try {
    loadState(model, seed.weights, { source: seed.name });
    for (const l of layers) {
      const ffn = model.layers[l]!.ffn;
      const original = ffn.forward.bind(ffn);
      const rows = out.get(l)!;
      ffn.forward = (x, ctx, sources) => {
        const d = x.shape[x.shape.length - 1]!;
        const v = x.dataSync();
        for (let i = 0; i + d <= v.length && rows.length < maxTokens; i += d) rows.push(Float32Array.from(v.subarray(i, i + d)));
        return original(x, ctx, sources);
      };
      restore.push(() => {
        ffn.forward = original;
      });
    }
    for (const seq of calibration) {
      const T = Math.min(seq.length, model.contextLength);
      if (T === 0) continue;
      tf.tidy(() => {
        model.forward(tf.tensor2d(seq.subarray(0, T), [1, T], 'int32'), forwardContext(new Rng(0), false));
      });
    }
    return out;
  } finally {
    for (const r of restore) r();
    model.dispose();
  }
}

/**
 * Hidden activations of a bias-free dense FFN for input rows X: a = act(X W1ᵀ) (⊙ X W3ᵀ when gated), as
 * [N, h] row-major (W1, W3 in [h, d] layout).
 */
export function hiddenActivations(rows: Float32Array[], w1: WeightTensor, w3: WeightTensor | undefined, activation: string): Float32Array {
  const [h, d] = w1.shape as [number, number];
  if (rows.length === 0) return new Float32Array(0);
  return tf.tidy(() => {
    const x = tf.tensor2d(concatRows(rows, d), [rows.length, d]);
    let a = activate(tf.matMul(x, tf.tensor2d(w1.data, [h, d]), false, true), activation as Activation);
    if (w3) a = tf.mul(a, tf.matMul(x, tf.tensor2d(w3.data, [h, d]), false, true));
    return a.dataSync() as Float32Array;
  });
}

function concatRows(rows: Float32Array[], d: number): Float32Array {
  const out = new Float32Array(rows.length * d);
  for (const [i, r] of rows.entries()) out.set(r, i * d);
  return out;
}

/** One calibration sequence seen by the FFNs: per layer its T input rows and the loss gradient at the FFN output. */
export interface SequenceGrads {
  inputs: Map<number, Float32Array[]>;
  grads: Map<number, Float32Array[]>;
}

/**
 * Runs the seed on each sequence (next-token targets, the summed cross-entropy ℓ = Σ_t −log p(x_{t+1})) and
 * returns, for the selected layers (sequences until `maxTokens` tokens are seen), the FFN inputs x_t and the gradients ∂ℓ/∂y_t at the FFN outputs y_t. The
 * gradient at neuron j's activation follows as ∂ℓ/∂a_tj = (∂ℓ/∂y_t) · W2[:, j].
 */
export function ffnOutputGrads(registry: Registry, seed: UpcycleSource, sequences: Int32Array[], layers: number[], maxTokens = Infinity): SequenceGrads[] {
  const model = buildModel<Module & LanguageModel & { layers: TransformerBlock[] }>(seed.spec, registry, 0);
  const restore: (() => void)[] = [];
  const out: SequenceGrads[] = [];
  try {
    loadState(model, seed.weights, { source: seed.name });
    let probes = new Map<number, tf.Tensor>();
    let captured = new Map<number, tf.Tensor>();
    let shapes = new Map<number, number[]>();
    for (const l of layers) {
      const ffn = model.layers[l]!.ffn;
      const original = ffn.forward.bind(ffn);
      ffn.forward = (x, ctx, sources) => {
        shapes.set(l, x.shape.slice());
        captured.set(l, tf.keep(tf.clone(x)));
        const y = original(x, ctx, sources);
        const p = probes.get(l);
        return p ? tf.add(y, p) : y;
      };
      restore.push(() => {
        ffn.forward = original;
      });
    }
    let seen = 0;
    for (const seq of sequences) {
      const T = Math.min(seq.length - 1, model.contextLength);
      if (T < 1) continue;
      if (seen >= maxTokens) break;
      seen += T;
      const ids = tf.tensor2d(seq.subarray(0, T), [1, T], 'int32');
      const targets = tf.tensor2d(seq.subarray(1, T + 1), [1, T], 'int32');
      const loss = () => tf.mul(crossEntropy(model.forward(ids, forwardContext(new Rng(0), false)), targets), T) as tf.Scalar;
      shapes = new Map();
      tf.tidy(() => {
        loss();
      });
      for (const t of captured.values()) t.dispose();
      captured = new Map();
      const zeros = layers.map((l) => tf.zeros(shapes.get(l)!));
      probes = new Map(layers.map((l, i) => [l, zeros[i]!]));
      const grads = tf.tidy(() =>
        tf
          .grads((..._p: tf.Tensor[]) => loss())(zeros)
          .map((g) => tf.keep(g)),
      );
      const rec: SequenceGrads = { inputs: new Map(), grads: new Map() };
      layers.forEach((l, i) => {
        const d = shapes.get(l)!.at(-1)!;
        const split = (v: Float32Array) => Array.from({ length: v.length / d }, (_, t) => v.slice(t * d, (t + 1) * d));
        rec.inputs.set(l, split(captured.get(l)!.dataSync() as Float32Array));
        rec.grads.set(l, split(grads[i]!.dataSync() as Float32Array));
      });
      out.push(rec);
      for (const t of [...zeros, ...grads, ...captured.values(), ids, targets]) t.dispose();
      captured = new Map();
      probes = new Map();
    }
    return out;
  } finally {
    for (const r of restore) r();
    model.dispose();
  }
}
