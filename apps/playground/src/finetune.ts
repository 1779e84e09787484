/**
 * Fine-tuning in the page (no DOM here; the view is finetune-view.ts, the work runs in job-worker.ts):
 * a base checkpoint (config.json + model.safetensors: a run of the page, exported, or uploaded files),
 * one of `@moelab/finetune`'s methods (lora, perft-s/-d/-r/-e, smore, mov, molora, mixlora, esft, or
 * full fine-tuning as the baseline) with its options, trained on the fine-tuning text while the base
 * stays frozen, and the perplexity on two domains before and after: the fine-tuning text (does it
 * learn?) and the base's own domain (does it forget?). The result is an adapter checkpoint
 * (`moelab-adapter-v1`, adapter tensors only, keyed by the base's content hash) that
 * `moelab eval <base> --adapter <dir>` reads.
 *
 * Perplexity is per byte (the page tokenizes bytes): exp of the mean next-byte cross-entropy over the
 * validation split, on the same seeded windows before and after.
 */
import { encodeCheckpoint, type EvalMetrics, MoelabError, type NodeSpec, type Registry, type TrainConfig, Trainer } from '@moelab/core';
import {
  AdaptedModel,
  baseContentHash,
  encodeAdapterCheckpoint,
  finetuneMethod,
  finetuneMethods,
  type Model,
  mergeAdapters,
  type ParameterCounts,
} from '@moelab/finetune';
import { loadCheckpointFiles, type UploadedFile } from './checkpoint.js';
import { type TextData, TextTokens } from './data.js';

/** The methods the page offers, in the order of `@moelab/finetune`'s table (full fine-tuning last). */
export function finetuneMethodNames(): string[] {
  return [...finetuneMethods.keys()];
}

/**
 * The options a method starts from in the page: the defaults of its adapter entry (the registry kind
 * `adapter` entry of the same name), `{}` for full fine-tuning and for methods without an entry.
 */
export function methodDefaults(registry: Registry, method: string): Record<string, unknown> {
  finetuneMethod(method, 'method');
  if (!registry.has('adapter', method)) return {};
  const { defaults } = registry.describe('adapter', method);
  return { ...(defaults as Record<string, unknown>) };
}

/** The options a person typed (a JSON object), or a one-line error. */
export function parseOptions(text: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    throw new MoelabError(`options are not JSON: ${(e as Error).message}`, 'fine-tuning options');
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new MoelabError('options must be a JSON object', 'fine-tuning options');
  return parsed as Record<string, unknown>;
}

export interface FinetuneRequest {
  /** The base checkpoint files. */
  files: UploadedFile[];
  /** Where the base came from (recorded in the adapter checkpoint), e.g. `runA@40`. */
  source: string;
  method: string;
  options: Record<string, unknown>;
  /** The fine-tuning text (its validation split is the target domain). */
  target: TextData;
  /** The base's domain (forgetting is measured on its validation split). */
  general: TextData;
  /** Steps, learning rate, batch size, ... on top of the method's defaults. */
  train: Partial<TrainConfig>;
}

export interface DomainPerplexity {
  /** `target` (the fine-tuning text) or `general` (the base's domain). */
  role: 'target' | 'general';
  name: string;
  before: EvalMetrics;
  after?: EvalMetrics;
}

/**
 * One fine-tuning run in memory: construction loads the base, measures both domains, attaches the
 * adapters (the base is frozen) and makes the trainer; `step()` trains one step; `finish()` measures
 * again. Nothing here touches the DOM, so the worker and the tests drive it the same way.
 */
export class PageFinetune {
  readonly model: Model;
  readonly adapted?: AdaptedModel;
  readonly trainer: Trainer;
  readonly counts: ParameterCounts;
  readonly adapters: NodeSpec[];
  readonly baseHash: string;
  readonly baseStep: number;
  private readonly spec: NodeSpec;
  readonly domains: DomainPerplexity[];
  readonly method: string;
  private readonly target: TextTokens;
  private readonly general: TextTokens;
  private readonly evalConfig: Partial<TrainConfig>;
  private merged = false;

  constructor(
    registry: Registry,
    private readonly request: FinetuneRequest,
  ) {
    const method = finetuneMethod(request.method, 'method');
    this.method = method.name;
    if (method.trainBase && Object.keys(request.options).length > 0)
      throw new MoelabError(`method "${method.name}" trains the base itself and takes no adapter options`, 'fine-tuning options');
    const { model, config } = loadCheckpointFiles<Model>(request.files, registry);
    this.model = model;
    this.baseStep = config.step;
    this.spec = config.spec;
    try {
      this.target = new TextTokens(request.target);
      this.general = new TextTokens(request.general);
      const seed = request.train.seed ?? config.seed ?? 0;
      const train: Partial<TrainConfig> = {
        seqLen: Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength),
        batchSize: config.train?.batchSize ?? 8,
        evalBatches: 4,
        ...method.train,
        ...request.train,
        evalEvery: 0,
        seed,
      };
      // A warm-up longer than a short page run would keep the learning rate near 0 for all of it.
      if (request.train.warmup === undefined && train.steps !== undefined) train.warmup = Math.min(train.warmup ?? 0, Math.floor(train.steps / 5));
      this.evalConfig = train;
      this.baseHash = baseContentHash(model);
      // The base's perplexity on both domains (the adapters start as the identity, so this is also step 0).
      const before = { target: this.evaluate(this.target), general: this.evaluate(this.general) };
      const nodes = method.adapters(request.options, { model, data: this.target, seed });
      this.adapted = nodes.length > 0 ? new AdaptedModel(model, nodes, registry, { seed, trainBase: method.trainBase }) : undefined;
      this.adapters = this.adapted?.attached.map((a) => a.node) ?? [];
      this.trainer = this.adapted ? this.adapted.trainer(this.target, train) : new Trainer(model, this.target, train);
      const total = model.parameterCount();
      this.counts = this.adapted ? this.adapted.counts() : { trainable: total, frozen: 0, base: total, added: 0 };
      this.domains = [
        { role: 'target', name: request.target.name, before: before.target },
        { role: 'general', name: request.general.name, before: before.general },
      ];
    } catch (e) {
      model.dispose();
      throw e;
    }
  }

  get steps(): number {
    return this.trainer.config.steps;
  }

  get done(): boolean {
    return this.trainer.step >= this.trainer.config.steps;
  }

  /** One optimiser step; a loss that is not finite stops the run with advice. */
  step(): { step: number; loss: number } {
    const m = this.trainer.trainStep();
    if (!Number.isFinite(m.loss)) throw new MoelabError(`the loss became ${m.loss} at step ${m.step}; lower the learning rate`, 'fine-tuning');
    return { step: m.step, loss: m.loss };
  }

  /** Perplexity on both domains after training (the same windows as before). */
  finish(): DomainPerplexity[] {
    this.domains[0]!.after = this.evaluate(this.target);
    this.domains[1]!.after = this.evaluate(this.general);
    return this.domains;
  }

  /**
   * The adapter checkpoint (adapter.json + adapter.safetensors); full fine-tuning has no adapter, so
   * it gives the whole model as an ordinary checkpoint instead (config.json + model.safetensors).
   */
  resultFiles(): { name: string; bytes: Uint8Array }[] {
    const train = { ...this.trainer.config, data: this.request.target.name };
    if (this.adapted) {
      const { configJson, weights } = encodeAdapterCheckpoint(this.adapted, {
        method: this.method,
        step: this.trainer.step,
        seed: this.trainer.config.seed,
        train,
        source: this.request.source,
      });
      return [
        { name: 'adapter.json', bytes: new TextEncoder().encode(configJson) },
        { name: 'adapter.safetensors', bytes: weights },
      ];
    }
    return this.mergedFiles();
  }

  /**
   * The fine-tuned model as an ordinary checkpoint a run loads: the adapters folded into the base
   * weights where the maths allows (`mergeAdapters`: LoRA, (IA)³, MixLoRA, ESFT), the model itself for
   * full fine-tuning. A block-parallel or input-dependent adapter (PERFT, MoLoRA, S'MoRE, MoV with
   * E > 1) cannot be folded: a one-line error says why. Call after `resultFiles` (folding detaches the
   * adapters).
   */
  mergedFiles(): { name: string; bytes: Uint8Array }[] {
    if (this.adapted && !this.merged) {
      mergeAdapters(this.adapted);
      this.merged = true;
    }
    const { configJson, weights } = encodeCheckpoint(this.model, {
      spec: this.spec,
      step: this.baseStep + this.trainer.step,
      seed: this.trainer.config.seed,
      train: { ...this.trainer.config, data: this.request.target.name },
    });
    return [
      { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
      { name: 'model.safetensors', bytes: weights },
    ];
  }

  dispose(): void {
    if (!this.merged) this.adapted?.detach();
    this.model.dispose();
  }

  private evaluate(data: TextTokens): EvalMetrics {
    // A fresh trainer only for its seeded evaluation windows (no optimiser step is taken).
    return new Trainer(this.model, data, { ...this.evalConfig, steps: 1 }).evaluate();
  }
}
