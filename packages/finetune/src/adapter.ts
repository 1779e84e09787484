/**
 * The adapter contract: what an `adapter` registry entry is, where it attaches, and what it computes.
 *
 * An adapter changes a frozen base model at one of five attachment points (docs/finetune.md#attachment-points);
 * x_t is the input of the attached module (for a feed-forward block: after the pre-FFN norm):
 *
 *   block-parallel    beside a whole feed-forward block (dense or MoE)    y_t ← y_t + Δ(x_t)
 *   in-expert         inside the routed experts of an MoE layer           y_t ← y_t + Σ_{e∈S_t} g_{t,e} Δ_e(x_t)
 *                     (weighted by the base router's gates; or any rewrite of the expert bank's apply)
 *   linear-wrap       around one Linear W0 [d_out, d_in]                  y ← W0 x + Δ(x)
 *   activation-scale  an activation a (a Linear's input or output)       a ← a ⊙ v(a)
 *   expert-select     no new parameters: slices of existing expert tensors become trainable (masked update)
 *
 * A third-party adapter is one file: `defineAdapter({ name, attachment, schema, targets, build })`, where
 * `build(config, site, rng)` returns a module subclassing the attachment's class below. `targets` are globs
 * over module paths (`*` any run of characters, dots included; `?` one character), e.g.
 * `transformer.layers.*.ffn` or `*.attention.q_proj`; the default comes with the entry and the user's
 * `targets` option replaces it.
 */
import {
  type CarryKey,
  Config,
  type DispatchPlan,
  defineEntry,
  type Entry,
  type ForwardContext,
  type Linear,
  Module,
  type MoELayer,
  privateCarryKey,
  type Rng,
  type Static,
  type TensorToWrite,
  type TSchema,
  Type,
  tf,
} from '@moelab/core';

export const ATTACHMENTS = ['block-parallel', 'in-expert', 'linear-wrap', 'activation-scale', 'expert-select'] as const;
/** Where an adapter attaches (see the file header). */
export type Attachment = (typeof ATTACHMENTS)[number];

/** The registry kind of adapter entries. */
export const ADAPTER_KIND = 'adapter';

/** What each attachment point attaches to: the module a target glob must match. */
export interface SiteModules {
  /** A feed-forward block (the `ffn` of a transformer block): dense or MoE. */
  'block-parallel': Module & { forward(x: tf.Tensor, ctx: ForwardContext, sources?: { routerInput?: tf.Tensor }): tf.Tensor };
  'in-expert': MoELayer;
  'linear-wrap': Linear;
  'activation-scale': Linear;
  'expert-select': MoELayer;
}

/** One matched target: a module of the base model, its path, and the model width. */
export interface AdapterSite<A extends Attachment = Attachment> {
  path: string;
  module: SiteModules[A];
  /** The model width d (input and output width of a feed-forward block). */
  dModel: number;
}

/** What every adapter module is: a module (its parameters are the trainable ones) attached to one site. */
export abstract class Adapter extends Module {
  abstract readonly attachment: Attachment;

  constructor(readonly sitePath: string) {
    super();
  }

  /**
   * The tensors an adapter checkpoint stores for this adapter, by local name. Default: its parameters and
   * buffers. An adapter that trains base tensors (expert-select) stores the trained slices instead.
   */
  checkpointTensors(): Map<string, TensorToWrite> {
    const out = new Map<string, TensorToWrite>();
    for (const [name, v] of this.stateDict()) out.set(name, { shape: v.shape.slice(), data: v.dataSync() as Float32Array });
    return out;
  }

  /** Names of the tensors {@link checkpointTensors} writes, with their shapes (for a strict load). */
  checkpointShapes(): Map<string, number[]> {
    return new Map(this.stateDict().map(([name, v]) => [name, v.shape.slice()]));
  }

  /** Restore what {@link checkpointTensors} wrote (already checked by name and shape). */
  loadCheckpointTensors(tensors: Map<string, { shape: number[]; data: Float32Array }>): void {
    for (const [name, v] of this.stateDict()) {
      const t = tensors.get(name)!;
      tf.tidy(() => v.assign(tf.tensor(t.data, v.shape, v.dtype)));
    }
  }
}

/** `block-parallel`: Δ(x) beside a feed-forward block; the block output becomes y + Δ(x). */
export abstract class BlockParallelAdapter extends Adapter {
  readonly attachment = 'block-parallel' as const;
  /** Δ for the block's input rows x [N, d] -> [N, d]. */
  abstract delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
}

/** The expert bank's own apply (see core's ExpertBank.apply). */
export type ExpertApply = (x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, ctx: ForwardContext) => tf.Tensor2D;

/** `in-expert`: rewrites the routed part of an MoE layer (the base router, its plan and gates unchanged). */
export abstract class InExpertAdapter extends Adapter {
  readonly attachment = 'in-expert' as const;
  /** The routed output [T, d] for rows x [T, d]: `base(x, plan, weight, ctx)` plus or instead of the adapter's part. */
  abstract apply(base: ExpertApply, x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, ctx: ForwardContext): tf.Tensor2D;
  /**
   * Weight changes of the expert bank's own tensors (local name in the bank, e.g. `w1` -> ΔW of its shape)
   * when the adapter is exactly such a change (then it folds into the bank), or a one-line reason.
   */
  mergedExpertWeights(): Map<string, tf.Tensor> | string {
    return `${this.constructor.name} adds an output beside the experts' own, which is not a change of their weights`;
  }
}

/** `linear-wrap`: Δ(x) around a Linear; its output becomes W0 x (+ b) + Δ(x). */
export abstract class LinearWrapAdapter extends Adapter {
  readonly attachment = 'linear-wrap' as const;
  /** Δ for the Linear's input rows x [N, d_in] -> [N, d_out]. */
  abstract delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
  /**
   * The weight change ΔW [d_out, d_in] with Δ(x) = ΔW x for every x (then the adapter folds into the base
   * weight), or a one-line reason why Δ is not such a fixed linear map.
   */
  abstract mergedWeight(): tf.Tensor2D | string;
}

/** `activation-scale`: a ← a ⊙ v(a), on a Linear's input (`side: 'input'`) or its output. */
export abstract class ActivationScaleAdapter extends Adapter {
  readonly attachment = 'activation-scale' as const;
  abstract readonly side: 'input' | 'output';
  /** The scaled activation for rows a [N, width]. */
  abstract scale(a: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
  /**
   * The per-channel vector v when it does not depend on the input (then it folds into the Linear's weight),
   * or a one-line reason.
   */
  abstract mergedScale(): tf.Tensor1D | string;
}

/** A base tensor an expert-select adapter trains, and which of its entries may move. */
export interface TrainedSlice {
  /** The base parameter's name (as in the model's namedParameters). */
  name: string;
  variable: tf.Variable;
  /** Bool or 0/1 tensor of the variable's shape: true where the optimiser may update. */
  mask: tf.Tensor;
}

/** `expert-select`: no new parameters; slices of the base's expert tensors become trainable. */
export abstract class ExpertSelectAdapter extends Adapter {
  readonly attachment = 'expert-select' as const;
  /** The base tensors to train, each with its update mask. */
  abstract trainedSlices(): TrainedSlice[];
}

/** What an `adapter` entry builds from its config: the attachment, the targets, and a factory per site. */
export interface AdapterFactory {
  /** The entry's name (`lora`, `perft-r`, ...). */
  name: string;
  attachment: Attachment;
  /** Globs over module paths. */
  targets: string[];
  /** The config with defaults filled in (what an adapter checkpoint records). */
  config: Record<string, unknown>;
  /** The adapter module for one site; throws a MoelabError for a site it cannot serve (e.g. a rank above the width). */
  build(site: AdapterSite, rng: Rng): Adapter;
}

export interface AdapterDefinition<S extends TSchema, A extends Attachment> {
  name: string;
  /** One line: what this adapter is. */
  description: string;
  /** The paper (arXiv id) and the official code it follows. */
  reference?: string;
  attachment: A;
  /** Default target globs (the `targets` option replaces them). */
  targets: string[];
  /** The adapter's options (without `type` and `targets`), built with core's `Config`. */
  schema: S;
  /**
   * The adapter module for one site. `group` is one object per adapter node, shared by the modules of all
   * its sites: its carry key lets them meet in the forward pass (e.g. one balance loss pooled over layers).
   */
  build(config: Static<S>, site: AdapterSite<A>, rng: Rng, group: AdapterGroup): Adapter;
}

/** What the modules of one adapter node share (see {@link AdapterDefinition.build}). */
export interface AdapterGroup {
  /** A forward-carry key private to this adapter node. */
  carry: CarryKey<unknown>;
}

/**
 * An `adapter` registry entry from its definition: the schema gets a `targets` option (default: the
 * definition's globs) and `create` returns an {@link AdapterFactory}.
 */
export function defineAdapter<S extends TSchema & { properties: Record<string, TSchema> }, A extends Attachment>(def: AdapterDefinition<S, A>): Entry {
  const schema = Config({
    ...def.schema.properties,
    targets: Type.Array(Type.String({ minLength: 1 }), {
      minItems: 1,
      default: def.targets,
      description: 'globs over module paths of the base model (`*` any run of characters, `?` one)',
    }),
  });
  return defineEntry({
    kind: ADAPTER_KIND,
    name: def.name,
    description: def.description,
    reference: def.reference,
    flags: { [def.attachment]: true },
    schema,
    create: (config: Record<string, unknown>): AdapterFactory => {
      const { targets, ...rest } = config as { targets: string[] };
      const group: AdapterGroup = { carry: privateCarryKey(`adapter:${def.name}`) };
      return {
        name: def.name,
        attachment: def.attachment,
        targets,
        config,
        build: (site, rng) => def.build(rest as Static<S>, site as AdapterSite<A>, rng, group),
      };
    },
  }) as unknown as Entry;
}
