/**
 * MoE-Pruner (Xie et al. 2024, arXiv 2410.12013), docs/compression.md#moe-pruner: unstructured weight
 * pruning inside the experts, Wanda's magnitude × input-norm metric with the router's gate folded into
 * the input. For expert e and one of its matrices W [din, dout] (x W convention: input channel i, output
 * neuron j), over the calibration tokens T_e routed to e with gate g_{t,e} and matrix input u_t:
 *
 *   S_{i,j} = |W_{i,j}| · ‖(g_{t,e} u_{t,i})_{t∈T_e}‖₂ = |W_{i,j}| · sqrt(Σ_{t∈T_e} (g_{t,e} u_{t,i})²)
 *
 * For every output neuron j the ⌊sparsity · din⌋ weights with the smallest S are set to zero (Wanda's
 * comparison group; ties zero the lower input index first). One shot, no weight update. The input of
 * W1 and W3 is the expert input x (the observer's `inSqGated`), that of W2 the hidden activation
 * act(x W1) (⊙ x W3) (`hiddenSqGated`, observer option `hidden`). With every gate equal to 1 this is
 * Wanda (Sun et al. 2023, arXiv 2306.11695) on the expert's own tokens; scaling the inputs by a
 * constant scales every S of a matrix alike and leaves the mask unchanged.
 * The paper's optional recovery (expert-wise distillation from the unpruned model) is not implemented.
 */
import { MoelabError, tf } from '@moelab/core';
import { asMlpBank } from './bank.js';
import type { RoutingObserver } from './observer.js';
import { moeLayers, type SpecModel } from './surgery.js';

/**
 * The keep-mask (1 = keep) of one matrix W [din, dout] (row-major) from its inputs' squared norms
 * `inSq` [din]: per output column, the ⌊sparsity · din⌋ smallest |W_ij| · sqrt(inSq_i) are dropped.
 */
export function wandaMask(w: ArrayLike<number>, din: number, dout: number, inSq: ArrayLike<number>, sparsity: number): Uint8Array {
  checkSparsity(sparsity);
  if (w.length !== din * dout) throw new MoelabError(`the matrix has ${w.length} values, [${din}, ${dout}] needs ${din * dout}`);
  if (inSq.length !== din) throw new MoelabError(`the input statistic has ${inSq.length} channels, the matrix ${din} inputs`);
  const drop = Math.floor(sparsity * din);
  const keep = new Uint8Array(din * dout).fill(1);
  const norm = Float64Array.from(inSq, (v) => Math.sqrt(Math.max(0, v)));
  const idx = Array.from({ length: din }, (_, i) => i);
  const score = new Float64Array(din);
  for (let j = 0; j < dout; j++) {
    for (let i = 0; i < din; i++) score[i] = Math.abs(w[i * dout + j]!) * norm[i]!;
    idx.sort((a, b) => score[a]! - score[b]! || a - b);
    for (let r = 0; r < drop; r++) keep[idx[r]! * dout + j] = 0;
  }
  return keep;
}

function checkSparsity(sparsity: number): void {
  if (!(sparsity > 0 && sparsity < 1))
    throw new MoelabError(`the sparsity (fraction of each neuron's weights to zero) must be in (0, 1), got ${sparsity}`, '--ratio');
}

export interface MoEPrunerOptions {
  /** Fraction of the weights of every output neuron to zero, in (0, 1). */
  sparsity: number;
  /** Only these layers (default: every MoE layer). */
  layers?: string[];
}

export interface MoEPrunerReport {
  /** Per layer and expert tensor (w1, w2, w3): weights zeroed by the mask / weights in the tensor. */
  tensors: { layer: string; tensor: string; zeroed: number; total: number }[];
}

/**
 * Zero the weights MoE-Pruner drops, in place on `source.model` (the spec does not change). The
 * observer must have run with `hidden: true` (W2's statistic) on an mlp / glu bank.
 */
export function moePrune(observer: RoutingObserver, source: SpecModel, o: MoEPrunerOptions): MoEPrunerReport {
  checkSparsity(o.sparsity);
  const layers = moeLayers(source.model);
  if (layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to prune');
  for (const p of o.layers ?? [])
    if (!layers.some((l) => l.path === p)) throw new MoelabError(`no moe layer "${p}"; moe layers: ${layers.map((l) => l.path).join(', ')}`, '--layers');
  const chosen = o.layers ? layers.filter((l) => o.layers!.includes(l.path)) : layers;
  const report: MoEPrunerReport = { tensors: [] };
  for (const l of chosen) {
    const bank = asMlpBank(l.layer.experts, l.path, 'MoE-Pruner');
    const s = observer.layer(l.path);
    if (s.tokens === 0) throw new MoelabError('the calibration pass saw no tokens in this layer', l.path);
    if (!s.inSqGated) throw new MoelabError("MoE-Pruner needs the experts' gated input norms; calibrate with the observer option inputs: true", l.path);
    if (!s.hiddenSqGated) throw new MoelabError("MoE-Pruner needs the experts' gated hidden norms; calibrate with the observer option hidden: true", l.path);
    const E = l.numExperts;
    const parts: [string, tf.Variable, Float64Array][] = [
      ['w1', bank.w1, s.inSqGated],
      ...(bank.w3 ? ([['w3', bank.w3, s.inSqGated]] as [string, tf.Variable, Float64Array][]) : []),
      ['w2', bank.w2, s.hiddenSqGated],
    ];
    for (const [name, v, stat] of parts) {
      const [, din, dout] = v.shape as [number, number, number];
      if (stat.length !== E * din) throw new MoelabError(`the calibration statistic has ${stat.length / E} inputs per expert, ${name} has ${din}`, l.path);
      const data = v.dataSync() as Float32Array;
      const next = new Float32Array(data);
      let zeroed = 0;
      for (let e = 0; e < E; e++) {
        const off = e * din * dout;
        const mask = wandaMask(data.subarray(off, off + din * dout), din, dout, stat.subarray(e * din, (e + 1) * din), o.sparsity);
        for (let k = 0; k < mask.length; k++)
          if (!mask[k]) {
            next[off + k] = 0;
            zeroed++;
          }
      }
      tf.tidy(() => v.assign(tf.tensor(next, v.shape)));
      report.tensors.push({ layer: l.path, tensor: name, zeroed, total: data.length });
    }
  }
  return report;
}
