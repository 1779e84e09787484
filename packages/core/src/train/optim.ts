/**
 * AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, a linear-warmup + cosine schedule and
 * global-norm gradient clipping. Written here rather than using tf.train.adam because we need decoupled
 * decay and an exportable state (exact resume).
 */
import { MoelabError } from '../errors.js';
import type { TensorToWrite } from '../safetensors.js';
import { ADAMW_KERNEL, type AdamWAttrs, type AdamWInputs, SUM_OF_SQUARES_KERNEL, type SumOfSquaresInputs } from '../kernels/contract.js';
import { hasKernel } from '../ops/kernel.js';
import { tf } from '../tf.js';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/**
 * Masked update of a parameter: `mask` (bool, the parameter's shape) marks the entries the optimiser may
 * move. After each step `θ ← where(mask, θ_proposed, θ_old)`, so nothing outside the mask changes — not
 * even through decoupled weight decay (`θ ← θ − lr·wd·θ` runs where the gradient is 0) or through a
 * non-zero moment left from earlier steps. Used to train slices of a stacked tensor (one expert of an
 * `[E, ...]` bank) while the rest stays bitwise frozen.
 */
export type UpdateMasks = Map<string, tf.Tensor>;

export class AdamW {
  step = 0;
  private m = new Map<string, tf.Variable>();
  private v = new Map<string, tf.Variable>();
  private readonly masks: UpdateMasks;

  constructor(
    readonly params: [string, tf.Variable][],
    readonly options: AdamWOptions,
    masks: UpdateMasks = new Map(),
  ) {
    this.masks = checkUpdateMasks(params, masks);
    // In a tidy so that the zero tensors are released once the variables hold them (otherwise each
    // stayed alive beside its variable: two parameter-sized tensors leaked per parameter).
    for (const [name, p] of params) {
      const zeros = () => tf.tidy(() => tf.variable(tf.zerosLike(p), false));
      this.m.set(name, zeros());
      this.v.set(name, zeros());
    }
  }

  /** Apply one update. `grads` is keyed like `params`. Weight decay skips 1-D tensors (norms, biases). */
  apply(grads: Map<string, tf.Tensor>, lr: number): void {
    this.step++;
    const { beta1, beta2, eps, weightDecay } = this.options;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    const fused = hasKernel(ADAMW_KERNEL);
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) continue;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        const mask = this.masks.get(name);
        // A copy of the bytes (tf.clone would share the buffer, and the fused kernel may update p in place).
        const old = mask ? tf.tensor(Float32Array.from(p.dataSync() as Float32Array), p.shape) : undefined;
        const restore = () => {
          if (mask && old) p.assign(tf.where(mask, p, old));
        };
        if (fused) {
          // The backend's fused step (ADAMW_KERNEL in the kernel contract); it may update in
          // place and return p, m, v themselves, hence all three assigns.
          const attrs: AdamWAttrs = { lr, beta1, beta2, eps, weightDecay: p.rank > 1 ? weightDecay : 0, bc1, bc2 };
          const [p2, m2, v2] = tf
            .engine()
            .runKernel(
              ADAMW_KERNEL,
              { p, g, m, v } satisfies AdamWInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
              attrs as unknown as tf.NamedAttrMap,
            ) as tf.Tensor[];
          m.assign(m2!);
          v.assign(v2!);
          p.assign(p2!);
          restore();
          continue;
        }
        const m2 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const v2 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        m.assign(m2);
        v.assign(v2);
        const update = tf.div(tf.div(m2, bc1), tf.add(tf.sqrt(tf.div(v2, bc2)), eps));
        let next = tf.sub(p, tf.mul(update, lr));
        if (weightDecay > 0 && p.rank > 1) next = tf.sub(next, tf.mul(p, lr * weightDecay));
        p.assign(mask ? tf.where(mask, next, p) : next);
      }
    });
  }

  stateTensors(): Map<string, TensorToWrite> {
    const out = new Map<string, TensorToWrite>();
    for (const [name] of this.params) {
      const m = this.m.get(name)!;
      const v = this.v.get(name)!;
      out.set(`exp_avg.${name}`, { shape: m.shape.slice(), data: m.dataSync() as Float32Array });
      out.set(`exp_avg_sq.${name}`, { shape: v.shape.slice(), data: v.dataSync() as Float32Array });
    }
    out.set('step', { shape: [1], data: Int32Array.of(this.step), dtype: 'I32' });
    return out;
  }

  loadState(tensors: Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array }>, source = 'optimizer state'): void {
    const stepT = tensors.get('step');
    if (!stepT) throw new MoelabError('tensor "step" is missing', source);
    for (const [name, p] of this.params) {
      for (const [prefix, store] of [
        ['exp_avg.', this.m],
        ['exp_avg_sq.', this.v],
      ] as const) {
        const t = tensors.get(prefix + name);
        if (!t) throw new MoelabError(`tensor "${prefix}${name}" is missing`, source);
        if (t.shape.join(',') !== p.shape.join(','))
          throw new MoelabError(`tensor "${prefix}${name}" has shape ${JSON.stringify(t.shape)}, parameter has ${JSON.stringify(p.shape)}`, source);
        tf.tidy(() => store.get(name)!.assign(tf.tensor(Float32Array.from(t.data as ArrayLike<number>), p.shape)));
      }
    }
    this.step = Number(stepT.data[0]);
  }

  dispose(): void {
    for (const t of this.masks.values()) t.dispose();
    for (const t of this.m.values()) t.dispose();
    for (const t of this.v.values()) t.dispose();
  }
}

/** Linear warmup to `lr`, then cosine decay to `lr * minLrRatio` at `totalSteps`. */
export function learningRate(step: number, lr: number, warmup: number, totalSteps: number, minLrRatio: number): number {
  if (warmup > 0 && step < warmup) return (lr * (step + 1)) / warmup;
  const span = Math.max(1, totalSteps - warmup);
  const t = Math.min(1, (step - warmup) / span);
  return lr * (minLrRatio + (1 - minLrRatio) * 0.5 * (1 + Math.cos(Math.PI * t)));
}

/** Scale gradients so that their global L2 norm is at most maxNorm. Returns the norm before clipping. */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): { grads: Map<string, tf.Tensor>; norm: number } {
  const fused = hasKernel(SUM_OF_SQUARES_KERNEL);
  const norm = tf.tidy(() => {
    const sq = [...grads.values()].map((g) =>
      fused
        ? (tf.engine().runKernel(SUM_OF_SQUARES_KERNEL, { x: g } satisfies SumOfSquaresInputs<tf.Tensor> as unknown as tf.NamedTensorMap) as tf.Tensor)
        : tf.sum(tf.square(g)),
    );
    return sq.length ? Math.sqrt(tf.addN(sq).dataSync()[0]!) : 0;
  });
  if (!(maxNorm > 0) || norm <= maxNorm || !Number.isFinite(norm)) return { grads, norm };
  const scale = maxNorm / (norm + 1e-6);
  const out = new Map<string, tf.Tensor>();
  for (const [k, g] of grads) {
    out.set(k, tf.mul(g, scale));
    g.dispose();
  }
  return { grads: out, norm };
}

/**
 * Check update masks against the parameters they belong to (names known, shapes equal) and hold them as
 * bool tensors (copies: the caller keeps its own).
 */
export function checkUpdateMasks(params: [string, tf.Variable][], masks: UpdateMasks): UpdateMasks {
  const byName = new Map(params);
  const out: UpdateMasks = new Map();
  for (const [name, mask] of masks) {
    const p = byName.get(name);
    if (!p) throw new MoelabError(`update mask for "${name}", which is not a trained parameter`, name);
    if (mask.shape.join(',') !== p.shape.join(',')) throw new MoelabError(`update mask has shape [${mask.shape}], the parameter [${p.shape}]`, name);
    out.set(
      name,
      tf.tidy(() => (mask.dtype === 'bool' ? tf.clone(mask) : tf.notEqual(mask, 0))),
    );
  }
  return out;
}
