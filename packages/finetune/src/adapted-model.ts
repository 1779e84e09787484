/**
 * A base model with adapters attached: the freezing rules and the wiring of every attachment point.
 *
 * Freezing (docs/finetune.md#freezing): every base variable is marked non-trainable, so core's Trainer
 * leaves it out of the optimiser's variable list altogether (a zero gradient would not be enough: AdamW's
 * decoupled decay θ ← θ − lr·wd·θ moves a parameter whatever its gradient). An expert-select adapter makes
 * whole base tensors trainable again together with an update mask; the optimiser then restores every
 * entry outside the mask after each step, so frozen slices stay bitwise unchanged.
 *
 * Wiring: the adapter modules live under one child `adapter` of the model's root (parameter names
 * `adapter.<site path>.<name>`, e.g. `adapter.transformer.layers.0.ffn.lora_A`), and the forward method of
 * each target module is wrapped on that instance: `ffn.forward`, `experts.apply` or `linear.forward`.
 * Base paths, names and weights are untouched, so detaching restores the base exactly. A probe forward pass
 * at attach time checks that every wrapped method runs, so a module whose parent bypasses it (reads the
 * weights directly) is refused instead of being silently not adapted.
 *
 * With a frozen base, the base routers' auxiliary losses are dropped from the loss: their weights cannot
 * move, and keeping them would let the balance loss of a frozen router steer the adapters upstream of it.
 * Only the adapters' own aux losses (PERFT-R, MoLoRA and MixLoRA routers) are trained.
 */
import {
  type BuildEnv,
  buildNode,
  type ForwardContext,
  flatten2d,
  forwardContext,
  type LanguageModel,
  type Linear,
  type MoELayer,
  type Module,
  ModuleDict,
  MoelabError,
  type NodeSpec,
  type Registry,
  Rng,
  type TokenSource,
  type TrainConfig,
  Trainer,
  tf,
  TransformerLM,
} from '@moelab/core';
import {
  ActivationScaleAdapter,
  ADAPTER_KIND,
  type Adapter,
  type AdapterFactory,
  BlockParallelAdapter,
  ExpertSelectAdapter,
  InExpertAdapter,
  LinearWrapAdapter,
  type TrainedSlice,
} from './adapter.js';
import { baseContentHash } from './hash.js';
import { matchTargets } from './targets.js';

export type Model = Module & LanguageModel;

/** The root child that holds every adapter module. */
export const ADAPTER_ROOT = 'adapter';

export interface AttachOptions {
  /** Seed of the adapters' initialisation (default 0); each site draws from (seed, adapter index, site path). */
  seed?: number;
  /**
   * Train the base too (full fine-tuning, the baseline the adapters are compared with): base variables keep
   * their trainable flag and the base routers' aux losses stay in the loss. Default false.
   */
  trainBase?: boolean;
}

/** One resolved adapter node: its factory and the modules it attached. */
export interface AttachedAdapter {
  factory: AdapterFactory;
  /** The node with its defaults filled in, as a checkpoint records it. */
  node: { type: string } & Record<string, unknown>;
  modules: Adapter[];
}

/** Parameter counts of an adapted model (docs/finetune.md#parameter-counts). */
export interface ParameterCounts {
  /** Entries the optimiser can change: adapter parameters plus the masked-in entries of trained base slices. */
  trainable: number;
  /** Base entries that cannot change. */
  frozen: number;
  /** Parameters of the base model. */
  base: number;
  /** Parameters the adapters added. */
  added: number;
}

/** The model width: the transformer's dModel. */
function modelWidth(model: Module): number {
  for (const m of model.modules()) if (m instanceof TransformerLM) return m.options.dModel;
  throw new MoelabError(`adapters attach to a transformer language model (got ${model.constructor.name})`);
}

type Restore = () => void;

/** Replace `obj[key]` on this instance (not its class) and return the undo. */
function override<T extends object, K extends keyof T>(obj: T, key: K, value: T[K]): Restore {
  const own = Object.hasOwn(obj, key);
  const previous = own ? obj[key] : undefined;
  Object.defineProperty(obj, key, { value, configurable: true, writable: true, enumerable: false });
  return () => {
    if (own) Object.defineProperty(obj, key, { value: previous, configurable: true, writable: true, enumerable: false });
    else delete (obj as Record<PropertyKey, unknown>)[key as PropertyKey];
  };
}

export class AdaptedModel {
  /** The adapter modules, in attach order. */
  readonly adapters: Adapter[] = [];
  readonly attached: AttachedAdapter[] = [];
  /** Content hash of the base weights before anything was attached (see hash.ts). */
  readonly baseHash: string;
  readonly trainBase: boolean;
  private readonly restores: Restore[] = [];
  private readonly calls = new Map<Adapter, number>();
  private readonly trainableBefore = new Map<tf.Variable, boolean>();
  private readonly slices: TrainedSlice[] = [];
  private readonly sites = new Map<Adapter, { key: string; module: Module }>();
  /** The forward context of the pass in progress (Linear.forward has no context argument). */
  private current: ForwardContext | undefined;

  /**
   * Attach `nodes` (adapter nodes, e.g. `{ type: 'lora', rank: 8 }`) to `model`, freeze the base and check
   * the wiring with a probe forward pass. Throws a one-line MoelabError for a bad node, a glob that matches
   * nothing, or a site an adapter cannot serve; on error the model is left as it was.
   */
  constructor(
    readonly model: Model,
    nodes: NodeSpec[],
    registry: Registry,
    options: AttachOptions = {},
  ) {
    if (model.children.has(ADAPTER_ROOT)) throw new MoelabError('this model already has adapters attached (detach them first)');
    if (nodes.length === 0) throw new MoelabError('no adapter given', '$.adapters');
    this.baseHash = baseContentHash(model);
    this.trainBase = options.trainBase ?? false;
    const seed = options.seed ?? 0;
    const dModel = modelWidth(model);
    const built: { factory: AdapterFactory; node: AttachedAdapter['node']; sites: { key: string; adapter: Adapter; module: Module }[] }[] = [];
    const keys = new Set<string>();
    try {
      nodes.forEach((node, i) => {
        const where = nodes.length === 1 ? '$.adapter' : `$.adapters[${i}]`;
        const factory = buildNode<AdapterFactory>(registry, ADAPTER_KIND, node, where, seed, {} as BuildEnv);
        const sites = matchTargets(model, factory.attachment, factory.targets, dModel, `${where}.targets`);
        const entry: (typeof built)[number] = { factory, node: { type: factory.name, ...factory.config }, sites: [] };
        for (const site of sites) {
          const adapter = factory.build(site, Rng.derive(seed, 'adapter', i, site.path));
          if (adapter.attachment !== factory.attachment)
            throw new MoelabError(`adapter "${factory.name}" declares ${factory.attachment} but built a ${adapter.attachment} module`, where);
          let key = site.path;
          for (let n = 1; keys.has(key); n++) key = `${site.path}#${n}`;
          keys.add(key);
          entry.sites.push({ key, adapter, module: site.module });
        }
        built.push(entry);
      });
    } catch (e) {
      for (const b of built) for (const s of b.sites) s.adapter.dispose();
      throw e;
    }
    const children: Record<string, Module> = {};
    for (const b of built) for (const s of b.sites) children[s.key] = s.adapter;
    model.attachChild(ADAPTER_ROOT, new ModuleDict(children));
    for (const b of built) {
      this.attached.push({ factory: b.factory, node: b.node, modules: b.sites.map((s) => s.adapter) });
      for (const s of b.sites) {
        this.adapters.push(s.adapter);
        this.sites.set(s.adapter, { key: s.key, module: s.module });
        this.wire(s.adapter, s.module);
      }
    }
    this.wireRoot();
    this.freeze();
    try {
      this.probe();
    } catch (e) {
      this.detach();
      throw e;
    }
  }

  /** The adapter modules' parameters (names relative to the model root, `adapter.…`). */
  adapterParameters(): [string, tf.Variable][] {
    return this.model.namedParameters().filter(([n]) => n.startsWith(`${ADAPTER_ROOT}.`));
  }

  /** The base module an adapter is attached to, and its key under the `adapter` child. */
  siteOf(adapter: Adapter): { key: string; module: Module } {
    const site = this.sites.get(adapter);
    if (!site) throw new MoelabError('this adapter module is not attached to this model', adapter.sitePath);
    return site;
  }

  /** The update masks of trained base slices, keyed by parameter name (for core's Trainer). */
  updateMasks(): Map<string, tf.Tensor> {
    return new Map(this.slices.map((s) => [s.name, s.mask]));
  }

  /** Trainable and frozen parameter counts. */
  counts(): ParameterCounts {
    const added = this.adapterParameters().reduce((s, [, v]) => s + v.size, 0);
    const base = this.model.parameterCount() - added;
    if (this.trainBase) return { trainable: base + added, frozen: 0, base, added };
    let sliceEntries = 0;
    for (const s of this.slices) sliceEntries += tf.tidy(() => tf.sum(tf.cast(tf.notEqual(s.mask, 0), 'int32')).dataSync()[0]!);
    return { trainable: added + sliceEntries, frozen: base - sliceEntries, base, added };
  }

  /** A core Trainer over the trainable parameters, with the masks of trained slices. */
  trainer(data: TokenSource, config: Partial<TrainConfig> = {}): Trainer {
    return new Trainer(this.model, data, config, { updateMasks: this.updateMasks() });
  }

  /** Undo everything: forward methods, trainable flags, the adapter child (its modules are disposed unless `keep`). */
  detach(keep = false): void {
    for (const r of this.restores.splice(0).reverse()) r();
    for (const [v, t] of this.trainableBefore) v.trainable = t;
    this.trainableBefore.clear();
    this.model.detachChild(ADAPTER_ROOT);
    if (!keep) for (const a of this.adapters) a.dispose();
  }

  private wireRoot(): void {
    const model = this.model;
    const forward = model.forward.bind(model);
    this.restores.push(
      override(model, 'forward', (tokens: tf.Tensor, ctx: ForwardContext) => {
        const outer = this.current;
        this.current = ctx;
        try {
          const out = forward(tokens, ctx);
          this.dropBaseAux(ctx);
          return out;
        } finally {
          this.current = outer;
        }
      }),
    );
    if (model.forwardCached) {
      const cached = model.forwardCached.bind(model);
      this.restores.push(
        override(model, 'forwardCached', (tokens, ctx, cache) => {
          const outer = this.current;
          this.current = ctx;
          try {
            return cached(tokens, ctx, cache);
          } finally {
            this.current = outer;
          }
        }),
      );
    }
  }

  /** With a frozen base only the adapters' aux losses are trained (file header). */
  private dropBaseAux(ctx: ForwardContext): void {
    if (this.trainBase) return;
    const own = ctx.aux.filter((a) => a.layer === ADAPTER_ROOT || a.layer.startsWith(`${ADAPTER_ROOT}.`));
    ctx.aux.splice(0, ctx.aux.length, ...own);
  }

  private context(): ForwardContext {
    return this.current ?? forwardContext(new Rng(0), false);
  }

  private count(a: Adapter): void {
    this.calls.set(a, (this.calls.get(a) ?? 0) + 1);
  }

  private wire(adapter: Adapter, module: Module): void {
    if (adapter instanceof BlockParallelAdapter) {
      const ffn = module as Module & { forward(x: tf.Tensor, ctx: ForwardContext, sources?: { routerInput?: tf.Tensor }): tf.Tensor };
      const forward = ffn.forward.bind(ffn);
      this.restores.push(
        override(ffn, 'forward', (x: tf.Tensor, ctx: ForwardContext, sources?: { routerInput?: tf.Tensor }) => {
          this.count(adapter);
          const y = forward(x, ctx, sources);
          return tf.add(y, tf.reshape(adapter.delta(flatten2d(x), ctx), y.shape));
        }),
      );
    } else if (adapter instanceof InExpertAdapter) {
      const layer = module as MoELayer;
      const bank = layer.experts;
      const apply = bank.apply.bind(bank);
      this.restores.push(
        override(bank, 'apply', (x, plan, weight, ctx) => {
          this.count(adapter);
          return adapter.apply(apply, x, plan, weight, ctx);
        }),
      );
    } else if (adapter instanceof LinearWrapAdapter) {
      const linear = module as Linear;
      const forward = linear.forward.bind(linear);
      this.restores.push(
        override(linear, 'forward', (x: tf.Tensor) => {
          this.count(adapter);
          const y = forward(x);
          return tf.add(y, tf.reshape(adapter.delta(flatten2d(x), this.context()), y.shape));
        }),
      );
    } else if (adapter instanceof ActivationScaleAdapter) {
      const linear = module as Linear;
      const forward = linear.forward.bind(linear);
      this.restores.push(
        override(linear, 'forward', (x: tf.Tensor) => {
          this.count(adapter);
          if (adapter.side === 'input') return forward(tf.reshape(adapter.scale(flatten2d(x), this.context()), x.shape));
          const y = forward(x);
          return tf.reshape(adapter.scale(flatten2d(y), this.context()), y.shape);
        }),
      );
    } else if (adapter instanceof ExpertSelectAdapter) {
      // No forward change: the trained slices are part of the base (see freeze()).
    } else {
      throw new MoelabError(`adapter module ${adapter.constructor.name} does not subclass one of the attachment classes`, adapter.sitePath);
    }
  }

  private freeze(): void {
    const adapterVars = new Set(this.adapterParameters().map(([, v]) => v));
    for (const [, v] of this.model.namedParameters()) {
      if (adapterVars.has(v)) continue;
      this.trainableBefore.set(v, v.trainable);
      if (!this.trainBase) v.trainable = false;
    }
    if (this.trainBase) return;
    const names = new Map(this.model.namedParameters().map(([n, v]) => [v, n]));
    for (const a of this.adapters) {
      if (!(a instanceof ExpertSelectAdapter)) continue;
      for (const s of a.trainedSlices()) {
        if (names.get(s.variable) !== s.name)
          throw new MoelabError(
            `trained slice "${s.name}" is not the name of that base parameter (${names.get(s.variable) ?? 'not in the model'})`,
            a.sitePath,
          );
        s.variable.trainable = true;
        this.slices.push(s);
      }
    }
  }

  /** One tiny inference pass: every wired adapter must have run. */
  private probe(): void {
    this.calls.clear();
    tf.tidy(() => {
      const tokens = tf.tensor2d([[0, 0]], [1, 2], 'int32');
      this.model.forward(tokens, forwardContext(new Rng(0), false));
    });
    const silent = this.adapters.filter((a) => !(a instanceof ExpertSelectAdapter) && !this.calls.get(a));
    this.calls.clear();
    if (silent.length > 0)
      throw new MoelabError(
        `the adapter at ${silent[0]!.sitePath} never ran in a forward pass: its module's parent does not call the ${silent[0]!.attachment} hook (it reads the weights directly); choose another target`,
        silent[0]!.sitePath,
      );
  }
}
