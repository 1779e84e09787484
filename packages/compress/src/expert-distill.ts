/**
 * MoE-Pruner's recovery step (Xie et al. 2024, arXiv 2410.12013), docs/compression.md#moe-pruner:
 * expert-wise knowledge distillation from the unpruned model. Every pruned expert is trained to
 * reproduce the output of the same expert before pruning, on the layer inputs the unpruned model
 * routes to it. For layer l and expert e, with X_e the calibration inputs routed to e by the unpruned
 * model and f_e^T its output before pruning (the teacher), the loss over all N routed rows is
 *
 *   L = (1/N) Σ_l Σ_e Σ_{x∈X_e} ‖f_e(x; W ⊙ m) − f_e^T(x)‖²₂
 *
 * minimised by Adam over the expert weights W of the mlp / glu banks, with the pruning mask m (the
 * weights that are exactly zero when distillation starts) applied after every step, so pruned
 * weights stay zero and the sparsity does not change. The distillation is layer-local: each expert
 * sees the unpruned model's inputs, not those of the pruned model (the paper adds the loss to the
 * end-to-end language-model loss; here only the expert-wise term is optimised, which needs no
 * backward pass through the model).
 */
import { activate, forwardContext, MoelabError, Rng, tf } from '@moelab/core';
import { asMlpBank, type MlpBank } from './bank.js';
import { type Model, moeLayers } from './surgery.js';
import { windowBatches } from './windows.js';

/** The teacher's routed inputs and outputs of one MoE layer, per expert (row-major [n_e, d]). */
export interface ExpertTargets {
  path: string;
  inputDim: number;
  outputDim: number;
  inputs: Float32Array[];
  outputs: Float32Array[];
  /** Rows per expert. */
  rows: number[];
}

/** One expert's output f_e(x) for rows x [n, d] (differentiable in the bank's weights). */
function expertOutput(bank: MlpBank, e: number, x: tf.Tensor2D, path: string): tf.Tensor2D {
  const activation = bank.options?.activation;
  if (!activation) throw new MoelabError('the expert bank does not name its activation, so its outputs cannot be recomputed', path);
  const pick = (w: tf.Variable) => tf.reshape(tf.gather(w, [e]), [w.shape[1]!, w.shape[2]!]) as tf.Tensor2D;
  let h = activate(tf.matMul(x, pick(bank.w1)), activation) as tf.Tensor2D;
  if (bank.w3) h = tf.mul(h, tf.matMul(x, pick(bank.w3)));
  return tf.matMul(h, pick(bank.w2));
}

/**
 * Run the (unpruned) model over `windows` ([T + 1] token ids each; the last token is only a target)
 * and record, per MoE layer and expert, the inputs routed to it and its outputs: the teacher of
 * `distilExperts`. At most `maxRowsPerExpert` rows per expert (the first ones seen).
 */
export function collectExpertTargets(model: Model, windows: Int32Array[], o: { batchSize?: number; maxRowsPerExpert?: number } = {}): ExpertTargets[] {
  if (windows.length === 0) throw new MoelabError('expert distillation has no calibration windows', '--calib');
  const layers = moeLayers(model);
  if (layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to distil');
  const banks = new Map(layers.map((l) => [l.path, asMlpBank(l.layer.experts, l.path, 'expert distillation')]));
  const cap = o.maxRowsPerExpert ?? 4096;
  const batchSize = o.batchSize ?? 8;
  const rows = new Map(layers.map((l) => [l.path, Array.from({ length: l.numExperts }, () => [] as number[][])]));
  let d = 0;
  for (const batch of windowBatches(windows, batchSize)) {
    const [B, T1] = batch.shape;
    const ctx = forwardContext(new Rng(0), false, {
      stats: false,
      moeObserver: (ev) => {
        const byExpert = rows.get(ev.layer);
        if (!byExpert) return;
        d = ev.x.shape[1];
        const x = ev.x.dataSync();
        for (let n = 0; n < ev.plan.size; n++) {
          const e = ev.plan.expertIndex[n]!;
          const t = ev.plan.tokenIndex[n]!;
          if (byExpert[e]!.length < cap) byExpert[e]!.push(Array.from(x.subarray(t * d, (t + 1) * d)));
        }
      },
    });
    tf.tidy(() => {
      model.forward(tf.slice(batch, [0, 0], [B, T1 - 1]), ctx);
    });
    batch.dispose();
  }
  return layers.map((l) => {
    const bank = banks.get(l.path)!;
    const byExpert = rows.get(l.path)!;
    const outputDim = bank.w2.shape[2]!;
    const inputs = byExpert.map((r) => Float32Array.from(r.flat()));
    const outputs = byExpert.map((r, e) =>
      r.length === 0 ? new Float32Array(0) : (tf.tidy(() => expertOutput(bank, e, tf.tensor2d(inputs[e]!, [r.length, d]), l.path).dataSync()) as Float32Array),
    );
    return { path: l.path, inputDim: d, outputDim, inputs, outputs, rows: byExpert.map((r) => r.length) };
  });
}

export interface DistilOptions {
  /** Adam steps (full batch over every routed row). */
  steps: number;
  /** Adam learning rate (default 1e-3). */
  lr?: number;
}

export interface DistilReport {
  /** L before each step, then after the last (steps + 1 entries). */
  losses: number[];
  /** Weights held at zero by the pruning mask. */
  masked: number;
}

/** The expert-wise distillation loss L of the file comment for the model's current weights. */
export function distillationLoss(model: Model, targets: readonly ExpertTargets[]): number {
  const { banks, total } = prepare(model, targets);
  return tf.tidy(() => lossOf(banks, targets, total).dataSync()[0]!);
}

function prepare(model: Model, targets: readonly ExpertTargets[]): { banks: Map<string, MlpBank>; total: number } {
  const layers = new Map(moeLayers(model).map((l) => [l.path, l]));
  const banks = new Map<string, MlpBank>();
  let total = 0;
  for (const t of targets) {
    const l = layers.get(t.path);
    if (!l) throw new MoelabError(`the model has no moe layer "${t.path}"; moe layers: ${[...layers.keys()].join(', ')}`, t.path);
    if (l.numExperts !== t.rows.length)
      throw new MoelabError(`the teacher recorded ${t.rows.length} experts but the layer has ${l.numExperts} (distil before removing experts)`, t.path);
    banks.set(t.path, asMlpBank(l.layer.experts, t.path, 'expert distillation'));
    total += t.rows.reduce((a, b) => a + b, 0);
  }
  if (total === 0) throw new MoelabError('the teacher recorded no routed rows to distil on', '--calib');
  return { banks, total };
}

function lossOf(banks: Map<string, MlpBank>, targets: readonly ExpertTargets[], total: number): tf.Scalar {
  let sum: tf.Scalar = tf.scalar(0);
  for (const t of targets) {
    const bank = banks.get(t.path)!;
    t.rows.forEach((n, e) => {
      if (n === 0) return;
      const y = expertOutput(bank, e, tf.tensor2d(t.inputs[e]!, [n, t.inputDim]), t.path);
      sum = tf.add(sum, tf.sum(tf.square(tf.sub(y, tf.tensor2d(t.outputs[e]!, [n, t.outputDim])))));
    });
  }
  return tf.div(sum, total);
}

/**
 * Distil the (pruned) model's experts toward the teacher's targets in place (see the file comment).
 * Weights that are exactly zero at the start stay zero.
 */
export function distilExperts(model: Model, targets: readonly ExpertTargets[], o: DistilOptions): DistilReport {
  if (!(Number.isInteger(o.steps) && o.steps >= 0))
    throw new MoelabError(`the distillation steps must be a non-negative integer, got ${o.steps}`, '--distil-steps');
  const lr = o.lr ?? 1e-3;
  if (!(lr > 0)) throw new MoelabError(`the distillation learning rate must be positive, got ${lr}`, '--distil-lr');
  const { banks, total } = prepare(model, targets);
  const vars = [...banks.values()].flatMap((b) => [b.w1, b.w2, ...(b.w3 ? [b.w3] : [])]);
  const masks = vars.map((v) => tf.tidy(() => tf.notEqual(v, 0).toFloat()));
  let masked = 0;
  for (const m of masks) for (const v of m.dataSync()) if (v === 0) masked++;
  const optimizer = tf.train.adam(lr);
  const losses: number[] = [];
  try {
    for (let s = 0; s < o.steps; s++) {
      const cost = optimizer.minimize(() => lossOf(banks, targets, total), true, vars);
      losses.push(cost!.dataSync()[0]!);
      cost!.dispose();
      vars.forEach((v, i) => {
        tf.tidy(() => v.assign(tf.mul(v, masks[i]!)));
      });
    }
    losses.push(tf.tidy(() => lossOf(banks, targets, total).dataSync()[0]!));
  } finally {
    optimizer.dispose();
    for (const m of masks) m.dispose();
  }
  return { losses, masked };
}
