/**
 * The trainer: AdamW, warmup + cosine, clipping, gradient accumulation, periodic evaluation.
 *
 * Determinism: every random choice of step s (data windows, dropout, routing noise) comes from an RNG
 * derived from (seed, s, micro-batch), never from a stream that depends on history. So a run resumed
 * from a checkpoint at step s produces exactly the losses of the uninterrupted run.
 */
import type { LanguageModel } from '../builder.js';
import { MoelabError } from '../errors.js';
import { Config, Type } from '../schema.js';
import { crossEntropy } from '../losses.js';
import { type AuxLoss, type ForwardContext, forwardContext, type Module, type RoutingStats } from '../module.js';
import { Rng } from '../rng.js';
import { tf } from '../tf.js';
import { AdamW, clipByGlobalNorm, learningRate, type UpdateMasks } from './optim.js';

export interface TrainConfig {
  steps: number;
  batchSize: number;
  /** Tokens per training window (<= the model's contextLength). */
  seqLen: number;
  lr: number;
  minLrRatio: number;
  warmup: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Max global gradient norm (0 = no clipping). */
  clip: number;
  /** Micro-batches per optimiser step (gradient accumulation). */
  accumulate: number;
  /** Evaluate every N steps (0 = only when asked). */
  evalEvery: number;
  evalBatches: number;
  /**
   * Compute the MoE layers' routing statistics (load, entropies, drop rates, z-loss; `StepMetrics.routing`)
   * at the first step, every N-th step and the last one; 1 = every step. They never affect training, and
   * each costs a pass over every layer's [T, E] routing distribution in JS (~5 ms per layer at T=4096,
   * E=64), so the default keeps them under 1 % of a step.
   */
  statsEvery: number;
  seed: number;
}

/**
 * The schema of a (partial) TrainConfig as JSON, e.g. a checkpoint's `train` section: every field
 * optional, no defaults filled in, unknown fields refused.
 */
export const trainConfigSchema = Config({
  steps: Type.Optional(Type.Integer({ minimum: 0, description: 'optimiser steps of the run' })),
  batchSize: Type.Optional(Type.Integer({ minimum: 1, description: 'sequences per micro-batch' })),
  seqLen: Type.Optional(Type.Integer({ minimum: 1, description: "tokens per training window (<= the model's contextLength)" })),
  lr: Type.Optional(Type.Number({ minimum: 0, description: 'peak learning rate' })),
  minLrRatio: Type.Optional(Type.Number({ minimum: 0, description: 'final learning rate of the cosine schedule / lr' })),
  warmup: Type.Optional(Type.Integer({ minimum: 0, description: 'linear warm-up steps' })),
  weightDecay: Type.Optional(Type.Number({ minimum: 0 })),
  beta1: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1 })),
  beta2: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1 })),
  eps: Type.Optional(Type.Number({ minimum: 0 })),
  clip: Type.Optional(Type.Number({ minimum: 0, description: 'max global gradient norm (0 = no clipping)' })),
  accumulate: Type.Optional(Type.Integer({ minimum: 1, description: 'micro-batches per optimiser step' })),
  evalEvery: Type.Optional(Type.Integer({ minimum: 0, description: 'evaluate every N steps (0 = only when asked)' })),
  evalBatches: Type.Optional(Type.Integer({ minimum: 0 })),
  statsEvery: Type.Optional(Type.Integer({ minimum: 1, description: 'routing statistics at the first, every N-th and the last step' })),
  seed: Type.Optional(Type.Number()),
});

export const defaultTrainConfig: TrainConfig = {
  steps: 200,
  batchSize: 16,
  seqLen: 64,
  lr: 3e-3,
  minLrRatio: 0.1,
  warmup: 20,
  weightDecay: 0.01,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  clip: 1,
  accumulate: 1,
  evalEvery: 50,
  evalBatches: 4,
  statsEvery: 10,
  seed: 0,
};

/** Where training windows come from. Returns B*(T+1) token ids (row-major [B, T+1]). */
export interface TokenSource {
  batch(rng: Rng, batchSize: number, seqLen: number, split: 'train' | 'val'): Int32Array;
}

export interface StepMetrics {
  step: number;
  loss: number;
  ce: number;
  aux: Record<string, number>;
  lr: number;
  gradNorm: number;
  tokens: number;
  ms: number;
  /** Routing statistics of every MoE layer call of the step; empty at steps without statistics (`statsEvery`). */
  routing: RoutingStats[];
  /** Whether this step computed routing statistics. */
  stats: boolean;
}

export interface EvalMetrics {
  step: number;
  loss: number;
  perplexity: number;
  bitsPerToken: number;
}

/** Options of a trainer beyond its TrainConfig (the parts that are not plain JSON). */
export interface TrainerOptions {
  /**
   * Masked updates (AdamW's `UpdateMasks`), keyed by parameter name: only the entries where the mask is
   * true are trained. Their gradients are masked before clipping (the global norm counts only what is
   * trained) and the optimiser restores every other entry after each step.
   */
  updateMasks?: UpdateMasks;
}

/** What the trainer trains: a module that is a language model. */
export type TrainableModel = Module & LanguageModel;

/** Cross-entropy + weighted aux losses for one [B, T+1] batch. Call inside a tidy / grad scope. */
export function lmLoss(model: TrainableModel, windows: tf.Tensor2D, ctx: ForwardContext): { total: tf.Scalar; ce: tf.Scalar; aux: AuxLoss[] } {
  const [B, T1] = windows.shape;
  const inputs = tf.slice(windows, [0, 0], [B, T1 - 1]);
  const targets = tf.slice(windows, [0, 1], [B, T1 - 1]);
  const logits = model.forward(inputs, ctx);
  const ce = crossEntropy(logits, targets);
  let total: tf.Scalar = ce;
  for (const a of ctx.aux) if (a.coef !== 0) total = tf.add(total, tf.mul(a.value, a.coef)) as tf.Scalar;
  return { total, ce, aux: ctx.aux };
}

export class Trainer {
  readonly config: TrainConfig;
  readonly optimizer: AdamW;
  readonly params: [string, tf.Variable][];
  private readonly gradMasks = new Map<string, tf.Tensor>();

  /** Trains the model's parameters whose variable is `trainable` (frozen ones are not in the optimiser at all). */
  constructor(
    readonly model: TrainableModel,
    readonly data: TokenSource,
    config: Partial<TrainConfig> = {},
    options: TrainerOptions = {},
  ) {
    this.config = { ...defaultTrainConfig, ...config };
    const every = this.config.statsEvery;
    if (!Number.isInteger(every) || every < 1) throw new MoelabError(`statsEvery must be a positive integer, got ${every}`, 'train.statsEvery');
    if (this.config.seqLen > model.contextLength)
      throw new MoelabError(`seqLen ${this.config.seqLen} exceeds the model's contextLength ${model.contextLength}`);
    this.params = model.namedParameters().filter(([, v]) => v.trainable);
    this.optimizer = new AdamW(this.params, this.config, options.updateMasks);
    for (const [name, mask] of options.updateMasks ?? [])
      this.gradMasks.set(
        name,
        tf.tidy(() => tf.cast(tf.notEqual(mask, 0), 'float32')),
      );
  }

  get step(): number {
    return this.optimizer.step;
  }

  private windows(split: 'train' | 'val', rng: Rng): tf.Tensor2D {
    const { batchSize, seqLen } = this.config;
    return tf.tensor2d(this.data.batch(rng, batchSize, seqLen, split), [batchSize, seqLen + 1], 'int32');
  }

  /** Whether the step that brings the optimiser to step `n` (1-based) computes routing statistics. */
  statsAt(n: number): boolean {
    return n === 1 || n % this.config.statsEvery === 0 || n === this.config.steps;
  }

  /**
   * One optimiser step (with `accumulate` micro-batches). Routing statistics are computed when
   * `statsAt(step + 1)` says so, or always with `{ stats: true }` (false: never).
   */
  trainStep(options: { stats?: boolean } = {}): StepMetrics {
    const t0 = performance.now();
    const c = this.config;
    const step = this.step;
    const stats = options.stats ?? this.statsAt(step + 1);
    const vars = this.params.map(([, v]) => v);
    let acc = new Map<string, tf.Tensor>();
    let lossSum = 0;
    let ceSum = 0;
    const auxSum: Record<string, number> = {};
    const routing: RoutingStats[] = [];
    for (let micro = 0; micro < c.accumulate; micro++) {
      const ctx = forwardContext(Rng.derive(c.seed, 'fwd', step, micro), true, { stats });
      const batch = this.windows('train', Rng.derive(c.seed, 'data', step, micro));
      const { value, grads } = tf.variableGrads(() => {
        const { total, ce, aux } = lmLoss(this.model, batch, ctx);
        ceSum += ce.dataSync()[0]!;
        for (const a of aux) auxSum[a.name] = (auxSum[a.name] ?? 0) + a.value.dataSync()[0]! / c.accumulate;
        return total;
      }, vars);
      batch.dispose();
      lossSum += value.dataSync()[0]!;
      value.dispose();
      routing.push(...ctx.routing);
      const next = new Map<string, tf.Tensor>();
      this.params.forEach(([name, v]) => {
        const g = grads[v.name];
        if (!g) return;
        const prev = acc.get(name);
        next.set(name, prev ? tf.tidy(() => tf.add(prev, g)) : g);
        if (prev) {
          prev.dispose();
          g.dispose();
        }
      });
      acc = next;
    }
    if (c.accumulate > 1) {
      const scaled = new Map<string, tf.Tensor>();
      for (const [k, g] of acc) {
        scaled.set(k, tf.div(g, c.accumulate));
        g.dispose();
      }
      acc = scaled;
    }
    for (const [k, mask] of this.gradMasks) {
      const g = acc.get(k);
      if (!g) continue;
      acc.set(k, tf.mul(g, mask));
      g.dispose();
    }
    const { grads, norm } = clipByGlobalNorm(acc, c.clip);
    const lr = learningRate(step, c.lr, c.warmup, c.steps, c.minLrRatio);
    this.optimizer.apply(grads, lr);
    for (const g of grads.values()) g.dispose();
    for (const m of this.model.modules()) m.afterStep?.();
    const tokens = c.batchSize * c.seqLen * c.accumulate;
    return {
      step: this.step,
      loss: lossSum / c.accumulate,
      ce: ceSum / c.accumulate,
      aux: auxSum,
      lr,
      gradNorm: norm,
      tokens,
      ms: performance.now() - t0,
      routing,
      stats,
    };
  }

  /** Mean validation loss over a fixed set of windows (the same windows at every evaluation). */
  evaluate(batches = this.config.evalBatches): EvalMetrics {
    let sum = 0;
    for (let i = 0; i < batches; i++) {
      sum += tf.tidy(() => {
        const ctx = forwardContext(Rng.derive(this.config.seed, 'eval-fwd', i), false);
        const w = this.windows('val', Rng.derive(this.config.seed, 'eval', i));
        return lmLoss(this.model, w, ctx).ce.dataSync()[0]!;
      });
    }
    const loss = sum / Math.max(1, batches);
    return { step: this.step, loss, perplexity: Math.exp(loss), bitsPerToken: loss / Math.LN2 };
  }
}
