/**
 * `esft` adapter (expert-select): Expert-Specialized Fine-Tuning (Wang et al., EMNLP 2024, arXiv
 * 2407.01906; official code github.com/deepseek-ai/ESFT). No new parameters: per MoE layer l, only the
 * selected routed experts E_s^l train; attention, embeddings, norms, routers, shared experts and every
 * other routed expert stay frozen, and routing is the base router's throughout.
 *
 *   θ_e ← AdamW step      for e ∈ E_s^l          (masked update: every other row of the stacked
 *   θ_e unchanged          for e ∉ E_s^l           [E, …] expert tensors is restored after each step,
 *                                                  so weight decay cannot move a frozen expert)
 *
 *   trainable parameters  P_ESFT = Σ_l |E_s^l| · P_expert  (+ the shared experts with sharedExperts)
 *
 * The selection (`experts`, the released `expert_configs` format: layer key → expert ids in selection
 * order) comes from the relevance scores of the task's data (./scores.ts) and eq. 8 (./select.ts):
 * `moelab esft-scores` writes it, `moelab finetune --method esft` computes it from its training data when
 * it is not given. Layer keys are transformer layer indices ("3" = `transformer.layers.3.ffn`). With a
 * selection, its layers are the targets. An ESFT adapter checkpoint stores only the selected rows of each
 * expert tensor (shape [|E_s^l|, …], in selection order) and the selection itself. docs/finetune.md#esft.
 */
import {
  Config,
  type Entry,
  type LanguageModel,
  type Module,
  type MoELayer,
  MoelabError,
  Rng,
  type TensorToWrite,
  type TokenSource,
  Type,
  tf,
} from '@moelab/core';
import { type AdapterFactory, defineAdapter, ExpertSelectAdapter, type TrainedSlice } from '../adapter.js';
import { esftSelect } from './scores.js';
import { ESFT_DEFAULT_P, type EsftScoreKind } from './select.js';

/** The ESFT adapter at one MoE layer: its selected experts' rows of the routed expert tensors. */
export class EsftExperts extends ExpertSelectAdapter {
  private readonly masks = new Map<string, tf.Tensor>();

  constructor(
    sitePath: string,
    readonly layer: MoELayer,
    /** Selected expert ids, in selection order. */
    readonly experts: number[],
    readonly sharedExperts: boolean,
    where = '$.adapter.experts',
  ) {
    super(sitePath);
    const E = layer.experts.numExperts;
    for (const e of experts)
      if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`expert id ${e} is out of range: ${layer.path} has ${E} routed experts`, where);
    if (new Set(experts).size !== experts.length) throw new MoelabError(`an expert is listed twice: ${JSON.stringify(experts)}`, where);
    if (sharedExperts && !layer.shared) throw new MoelabError(`sharedExperts is set, but ${layer.path} has no shared experts`, '$.adapter.sharedExperts');
    for (const [name, v] of layer.experts.namedParameters())
      if (v.shape[0] !== E)
        throw new MoelabError(
          `ESFT trains rows of stacked expert tensors [E, …]; ${layer.experts.path}.${name} has shape [${v.shape}] (expert bank ${layer.experts.constructor.name})`,
          layer.path,
        );
  }

  /** The routed expert tensors, by local name (`experts.w1`) with their full parameter names. */
  private routed(): { local: string; name: string; variable: tf.Variable }[] {
    return this.layer.experts.namedParameters().map(([n, v]) => ({ local: `experts.${n}`, name: `${this.layer.experts.path}.${n}`, variable: v }));
  }

  private shared(): { local: string; name: string; variable: tf.Variable }[] {
    if (!this.sharedExperts || !this.layer.shared) return [];
    return this.layer.shared.namedParameters().map(([n, v]) => ({ local: `shared.${n}`, name: `${this.layer.shared!.path}.${n}`, variable: v }));
  }

  private rowMask(v: tf.Variable): tf.Tensor {
    const row = v.size / v.shape[0]!;
    const m = new Uint8Array(v.size);
    for (const e of this.experts) m.fill(1, e * row, (e + 1) * row);
    return tf.tensor(m, v.shape, 'bool');
  }

  trainedSlices(): TrainedSlice[] {
    const out: TrainedSlice[] = [];
    if (this.experts.length > 0)
      for (const t of this.routed()) {
        let mask = this.masks.get(t.name);
        if (!mask) {
          mask = this.rowMask(t.variable);
          this.masks.set(t.name, mask);
        }
        out.push({ name: t.name, variable: t.variable, mask });
      }
    for (const t of this.shared()) {
      let mask = this.masks.get(t.name);
      if (!mask) {
        mask = tf.ones(t.variable.shape, 'bool');
        this.masks.set(t.name, mask);
      }
      out.push({ name: t.name, variable: t.variable, mask });
    }
    return out;
  }

  /** Parameters that train here: |E_s| · P_expert (+ the shared experts). */
  trainableParameters(): number {
    let n = 0;
    for (const t of this.routed()) n += (t.variable.size / t.variable.shape[0]!) * this.experts.length;
    for (const t of this.shared()) n += t.variable.size;
    return n;
  }

  /** The selected rows of each routed expert tensor ([|E_s|, …], selection order) and the shared experts. */
  override checkpointTensors(): Map<string, TensorToWrite> {
    const out = new Map<string, TensorToWrite>();
    if (this.experts.length > 0)
      for (const t of this.routed()) {
        const data = t.variable.dataSync() as Float32Array;
        const row = t.variable.size / t.variable.shape[0]!;
        const rows = new Float32Array(row * this.experts.length);
        this.experts.forEach((e, j) => {
          rows.set(data.subarray(e * row, (e + 1) * row), j * row);
        });
        out.set(t.local, { shape: [this.experts.length, ...t.variable.shape.slice(1)], data: rows });
      }
    for (const t of this.shared()) out.set(t.local, { shape: t.variable.shape.slice(), data: (t.variable.dataSync() as Float32Array).slice() });
    return out;
  }

  override checkpointShapes(): Map<string, number[]> {
    const out = new Map<string, number[]>();
    if (this.experts.length > 0) for (const t of this.routed()) out.set(t.local, [this.experts.length, ...t.variable.shape.slice(1)]);
    for (const t of this.shared()) out.set(t.local, t.variable.shape.slice());
    return out;
  }

  /** Write the stored rows back into the base's expert tensors (every other row keeps the base's values). */
  override loadCheckpointTensors(tensors: Map<string, { shape: number[]; data: Float32Array }>): void {
    if (this.experts.length > 0)
      for (const t of this.routed()) {
        const stored = tensors.get(t.local)!;
        const data = (t.variable.dataSync() as Float32Array).slice();
        const row = t.variable.size / t.variable.shape[0]!;
        this.experts.forEach((e, j) => {
          data.set(stored.data.subarray(j * row, (j + 1) * row), e * row);
        });
        tf.tidy(() => t.variable.assign(tf.tensor(data, t.variable.shape)));
      }
    for (const t of this.shared()) {
      const stored = tensors.get(t.local)!;
      tf.tidy(() => t.variable.assign(tf.tensor(stored.data, t.variable.shape)));
    }
  }

  override dispose(): void {
    for (const m of this.masks.values()) m.dispose();
    this.masks.clear();
    super.dispose();
  }
}

/** The module-path glob of an ESFT layer key: "3" → `transformer.layers.3.ffn`; any other key is a path. */
export function esftLayerGlob(key: string): string {
  return /^\d+$/.test(key) ? `transformer.layers.${key}.ffn` : key;
}

const definition = defineAdapter({
  name: 'esft',
  description:
    'ESFT: train only the routed experts most used by the task (token selection ratio or gate score, cumulative threshold p); everything else frozen, routing unchanged.',
  reference: 'docs/finetune.md#esft; Wang et al. 2024, arXiv 2407.01906; github.com/deepseek-ai/ESFT',
  attachment: 'expert-select',
  targets: ['transformer.layers.*.ffn'],
  schema: Config({
    experts: Type.Optional(
      Type.Record(Type.String(), Type.Array(Type.Integer({ minimum: 0 })), {
        description:
          'the expert selection: layer key ("3" = transformer.layers.3.ffn) → expert ids (the `experts` of an ESFT expert config); computed from the data when absent',
      }),
    ),
    sharedExperts: Type.Boolean({ default: false, description: 'also train the shared experts (the paper\'s "relevant + shared" ablation)' }),
    score: Type.Union([Type.Literal('token'), Type.Literal('gate')], {
      default: 'token',
      description: 'relevance score for the selection: token (selection ratio, ESFT-Token) or gate (average gate score, ESFT-Gate)',
    }),
    p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'cumulative-score threshold (default 0.2 for token, 0.1 for gate)' })),
    scoreTokens: Type.Integer({ minimum: 1, default: 32768, description: 'training tokens scored to make the selection when `experts` is absent' }),
  }),
  build(c, site) {
    if (!c.experts)
      throw new MoelabError(
        'esft needs its expert selection: give `experts` (e.g. the "experts" of `moelab esft-scores`\'s expert_config.json), or let `moelab finetune --method esft` score the training data',
        '$.adapter.experts',
      );
    const key = Object.keys(c.experts).find((k) => esftLayerGlob(k) === site.path) ?? site.path;
    return new EsftExperts(site.path, site.module, c.experts[key] ?? [], c.sharedExperts, `$.adapter.experts.${key}`);
  },
});

/** The threshold an ESFT config uses: its `p`, or the paper's default for its score. */
export function esftThreshold(c: { score: EsftScoreKind; p?: number }): number {
  return c.p ?? ESFT_DEFAULT_P[c.score];
}

/** The `esft` registry entry; with a selection, its layers are the targets (an unknown layer is a one-line error). */
export const esftAdapter: Entry = {
  ...definition,
  create: (config, ctx) => {
    const factory = definition.create(config, ctx) as AdapterFactory;
    const experts = (config as { experts?: Record<string, number[]> }).experts;
    if (experts && Object.keys(experts).length > 0) factory.targets = Object.keys(experts).map(esftLayerGlob);
    return factory;
  },
};

/** The training windows `esftMethodNodes` scores when a selection must be made: `tokens` from the train split. */
function* scoringWindows(data: TokenSource, seed: number, tokens: number, seqLen: number, batchSize = 8) {
  const batches = Math.max(1, Math.ceil(tokens / (batchSize * seqLen)));
  for (let i = 0; i < batches; i++) {
    const raw = data.batch(Rng.derive(seed, 'esft-data', i), batchSize, seqLen, 'train');
    // Windows come as [B, T+1] (inputs and next-token targets); the scores need the inputs only.
    const ids = new Int32Array(batchSize * seqLen);
    for (let b = 0; b < batchSize; b++) ids.set(raw.subarray(b * (seqLen + 1), b * (seqLen + 1) + seqLen), b * seqLen);
    yield { ids, batchSize, seqLen };
  }
}

/**
 * The adapter node of the `esft` fine-tuning method: the user's options, with `experts` computed from the
 * base's routing on `scoreTokens` tokens of the training data (eq. 8 with `score` and `p`) when not given.
 */
export function esftMethodNode(
  options: Record<string, unknown>,
  ctx: { model: Module & LanguageModel; data: TokenSource; seed: number },
): { type: 'esft' } & Record<string, unknown> {
  if (options.experts !== undefined) return { ...options, type: 'esft' };
  const score = (options.score as EsftScoreKind | undefined) ?? 'token';
  if (score !== 'token' && score !== 'gate') throw new MoelabError(`score must be token or gate, got ${JSON.stringify(score)}`, '$.adapter.score');
  const p = options.p as number | undefined;
  const tokens = (options.scoreTokens as number | undefined) ?? 32768;
  if (!Number.isInteger(tokens) || tokens < 1)
    throw new MoelabError(`scoreTokens must be a positive integer, got ${JSON.stringify(tokens)}`, '$.adapter.scoreTokens');
  const { config } = esftSelect(ctx.model, scoringWindows(ctx.data, ctx.seed, tokens, ctx.model.contextLength), {
    score,
    p: esftThreshold({ score, p }),
    seed: ctx.seed,
    where: '$.adapter',
  });
  return { ...options, type: 'esft', experts: config.experts };
}
