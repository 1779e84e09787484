/**
 * MixLoRA (Li et al. 2024, arXiv 2404.15159; official code TUDB-Labs/MixLoRA), docs/finetune.md#mixlora,
 * on an MoE base: every routed expert gets its own LoRA deltas inside its projections, and the frozen base
 * router picks and weights them,
 *
 *   f_e(x) = W2'_e act(W1'_e x)  (GLU: W2'_e (act(W1'_e x) ⊙ W3'_e x)),   W'_e = W_e + (α/r) · (B_e A_e)ᵀ
 *
 * (expert tensors stored [E, d_in, d_out], applied as x W_e). Published MixLoRA turns a dense FFN into
 * E such experts that share the frozen FFN weights behind a new top-k router; when the FFN is already a
 * mixture, its experts and router take those roles. A ~ U(±1/√d_in) per expert, B = 0 (identity at
 * init). Trainable per layer: E·r·(d + h) per projection (2 for an MLP expert, 3 for GLU). The deltas
 * are changes of the expert weights, so they fold into the base (`moelab merge-adapter`). MixLoRA's
 * recipe adds LoRA on the attention queries and values: a second `lora` adapter node.
 */
import { type Activation, Config, type DispatchPlan, type ForwardContext, MoelabError, moeGLU, moeMLP, type Rng, Type, tf } from '@moelab/core';
import { type AdapterSite, defineAdapter, type ExpertApply, InExpertAdapter } from './adapter.js';
import { checkRank, type InitB, initBOption, initBValues, kaimingUniform } from './low-rank.js';

export interface MixLoRAOptions {
  rank: number;
  alpha: number;
  initB: InitB;
}

const PROJECTIONS = ['w1', 'w3', 'w2'] as const;

export class MixLoRA extends InExpertAdapter {
  readonly scale: number;
  private readonly bank: { w1: tf.Variable; w2: tf.Variable; w3?: tf.Variable; activation: Activation };
  private readonly factors = new Map<string, { A: tf.Variable; B: tf.Variable }>();

  constructor(
    site: AdapterSite<'in-expert'>,
    readonly options: MixLoRAOptions,
    rng: Rng,
  ) {
    super(site.path);
    const bank = site.module.experts;
    const w1 = bank.params.get('w1');
    const w2 = bank.params.get('w2');
    const activation = (bank as { options?: { activation?: Activation } }).options?.activation;
    if (!w1 || !w2 || w1.rank !== 3 || w2.rank !== 3 || !activation)
      throw new MoelabError(`mixlora needs an MLP expert bank (stacked w1 [E, d, h], w2 [E, h, d]); ${bank.path} is a ${bank.constructor.name}`, site.path);
    this.bank = { w1, w2, w3: bank.params.get('w3'), activation };
    this.scale = options.alpha / options.rank;
    for (const name of PROJECTIONS) {
      const w = this.bank[name];
      if (!w) continue;
      const [E, dIn, dOut] = w.shape as [number, number, number];
      checkRank(options.rank, dIn, dOut, `${bank.path}.${name}`);
      const r = options.rank;
      const A = this.param(`${name}.lora_A`, kaimingUniform(rng, E * r * dIn, dIn), [E, r, dIn]);
      const B = this.param(`${name}.lora_B`, initBValues(rng, E * dOut * r, options.initB), [E, dOut, r]);
      this.factors.set(name, { A, B });
    }
  }

  /** ΔW [E, d_in, d_out] = (α/r) · (B_e A_e)ᵀ of one projection. */
  private delta(name: string): tf.Tensor3D {
    const { A, B } = this.factors.get(name)!;
    return tf.mul(tf.transpose(tf.matMul(B as tf.Tensor3D, A as tf.Tensor3D), [0, 2, 1]), this.scale) as tf.Tensor3D;
  }

  apply(_base: ExpertApply, x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, _ctx: ForwardContext): tf.Tensor2D {
    const w = (name: 'w1' | 'w2' | 'w3') => tf.add(this.bank[name]!, this.delta(name)) as tf.Tensor3D;
    if (this.bank.w3) return moeGLU(x, w('w1'), w('w3'), w('w2'), plan, weight, this.bank.activation);
    return moeMLP(x, w('w1'), w('w2'), plan, weight, this.bank.activation);
  }

  override mergedExpertWeights(): Map<string, tf.Tensor> {
    return new Map([...this.factors.keys()].map((name) => [name, this.delta(name)]));
  }
}

export const mixloraAdapter = defineAdapter({
  name: 'mixlora',
  description: "MixLoRA on an MoE base: LoRA deltas inside every routed expert's projections, picked and weighted by the base router.",
  reference: 'arXiv 2404.15159; TUDB-Labs/MixLoRA; docs/finetune.md#mixlora',
  attachment: 'in-expert',
  targets: ['*.ffn'],
  schema: Config({
    rank: Type.Integer({ minimum: 1, default: 8, description: 'r, the rank of each delta' }),
    alpha: Type.Number({ exclusiveMinimum: 0, default: 16, description: 'α: deltas are scaled by α/r' }),
    initB: initBOption(),
  }),
  build: (c, site, rng) => new MixLoRA(site, c, rng),
});
