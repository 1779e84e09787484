/**
 * Shared helpers of the router tests: a registry with the experts the routers need, building one router
 * (or one `moe` layer) from a JSON node, a tiny language model per router trained for a few steps on a
 * fixed toy token stream, a toy regression for routers a causal LM refuses, and a finite-difference
 * gradient check. Test-only (outside `src`, so the package build never sees `@moelab/experts`).
 */
import { attention } from '@moelab/attention';
import {
  buildModel,
  buildNode,
  corePlugin,
  createRegistry,
  directionalGradCheck,
  type FeedForward,
  forwardContext,
  type LanguageModel,
  type Module,
  type NodeSpec,
  Rng,
  type Router,
  Trainer,
  tf,
} from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '../src/index.js';

export const registry = () => createRegistry(corePlugin, routers, experts, attention);

/** Build a router node as a `moe` layer would: env { dModel, numExperts } (+ extra env). */
export function makeRouter<R = Router>(node: NodeSpec, dModel = 8, numExperts = 4, env: Record<string, unknown> = {}, seed = 0): R {
  return buildNode<R>(registry(), 'router', node, '$.block.ffn.router', seed, { dModel, numExperts, ...env });
}

/** Build a `moe` (or other ffn) node outside a causal LM. */
export function makeFFN<F = FeedForward & Module>(node: NodeSpec, dModel = 16, env: Record<string, unknown> = {}, seed = 0): F {
  return buildNode<F>(registry(), 'ffn', node, '$.block.ffn', seed, { dModel, ...env });
}

/** A d = 16, one-layer causal LM over 16 token ids whose feed-forward is `ffn` (default: a 4-expert moe with `router`). */
export function tinyLM(router: NodeSpec, ffn: Record<string, unknown> = {}): NodeSpec {
  return {
    type: 'transformer-lm',
    vocabSize: 16,
    dModel: 16,
    contextLength: 12,
    stack: { groupSize: 1, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: 4, router, expert: { type: 'mlp', hidden: 16 }, ...ffn },
    },
  };
}

/** The same tiny LM with any feed-forward node (e.g. the router-shaped `aoe`, `chain-of-experts` ffn entries). */
export function tinyLMWithFFN(ffn: NodeSpec): NodeSpec {
  const spec = tinyLM('softmax-topk') as unknown as { block: { ffn: NodeSpec } };
  spec.block.ffn = ffn;
  return spec as unknown as NodeSpec;
}

/** A fixed toy token stream: arithmetic sequences mod 16 (learnable in a few steps). */
export function patternSource(V = 16) {
  return {
    batch(rng: Rng, B: number, T: number): Int32Array {
      const a = new Int32Array(B * (T + 1));
      for (let b = 0; b < B; b++) {
        const s = rng.int(V);
        const step = 1 + rng.int(2);
        for (let t = 0; t <= T; t++) a[b * (T + 1) + t] = (s + step * t) % V;
      }
      return a;
    },
  };
}

/** Train `spec` for `steps` steps (batch 4 × 12 tokens, lr 1e-2); returns the losses. */
export function trainLosses(spec: NodeSpec, steps = 20, seed = 1): number[] {
  const model = buildModel<Module & LanguageModel>(spec, registry(), seed);
  const tr = new Trainer(model, patternSource(), { steps, batchSize: 4, seqLen: 12, lr: 1e-2, warmup: 2, evalBatches: 1, seed });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push(tr.trainStep().loss);
  model.dispose();
  tr.optimizer.dispose();
  return losses;
}

export const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;

/** Mean of the last 3 losses relative to the first 3. */
export function lossRatio(losses: number[]): number {
  return mean(losses.slice(-3)) / mean(losses.slice(0, 3));
}

/**
 * Routers a causal LM refuses (expert choice, Soft MoE, ...): fit y = tanh(x A) with one `moe` layer on
 * fixed inputs [B, T, 16] for `steps` Adam steps; returns the MSE losses.
 */
export function layerToyLosses(ffn: NodeSpec, steps = 20, B = 4, T = 8): number[] {
  const d = 16;
  const layer = makeFFN(ffn, d, {}, 3);
  const rng = new Rng(11);
  const x = tf.tensor3d(rng.normalArray(B * T * d), [B, T, d]);
  const A = tf.tensor2d(rng.normalArray(d * d, 1 / Math.sqrt(d)), [d, d]);
  const y = tf.tanh(tf.reshape(tf.matMul(tf.reshape(x, [B * T, d]), A), [B, T, d]));
  const vars = layer.namedParameters().map(([, v]) => v);
  const opt = tf.train.adam(1e-2);
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const l = opt.minimize(
      () => {
        const ctx = forwardContext(new Rng(100 + i), true);
        const out = layer.forward(x, ctx);
        let loss = tf.mean(tf.square(tf.sub(out, y))) as tf.Scalar;
        for (const a of ctx.aux) loss = tf.add(loss, tf.mul(a.value, a.coef)) as tf.Scalar;
        return loss;
      },
      true,
      vars,
    );
    losses.push(l!.dataSync()[0]!);
    for (const m of layer.modules()) m.afterStep?.();
  }
  opt.dispose();
  return losses;
}

/** Finite-difference gradient check with a fixed seed (core's `directionalGradCheck`). */
export function gradCheck(f: () => tf.Scalar, vars: tf.Variable[], seed = 5, eps = 1e-2): number[] {
  return directionalGradCheck(f, vars, new Rng(seed), eps);
}

/** A deterministic scalar of a layer's output: Σ out ⊙ R for a fixed random R (sensitive to every output entry). */
export function probe(out: tf.Tensor, seed = 9): tf.Scalar {
  const r = tf.tensor(new Rng(seed).normalArray(out.size), out.shape);
  return tf.sum(tf.mul(out, r)) as tf.Scalar;
}

export { forwardContext, Rng, tf };
