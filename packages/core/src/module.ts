/**
 * Modules: named trees of parameters, like PyTorch's nn.Module, so that parameter names can follow the
 * official implementations' state_dict names (weights move both ways).
 *
 * A module may be referenced from several places (layer grouping shares one block between repeats):
 * `namedParameters()` lists each variable once, under the first name it was reached by.
 */
import { MoelabError } from './errors.js';
import { tf } from './tf.js';
import { reserveParameters, trackAllocation } from './memory.js';
import type { Rng } from './rng.js';
import type { MoERouteEvent, RouterLogitEdit } from './nn/moe.js';

export interface AuxLoss {
  /** e.g. `switch_balance`, `z_loss`, `entropy` */
  name: string;
  /** Which module produced it (its parameter path). */
  layer: string;
  /** The unweighted value. */
  value: tf.Scalar;
  /** Weight in the total loss. */
  coef: number;
}

/** Routing statistics of one MoE layer call (plain numbers: they never hold tensors). */
export interface RoutingStats {
  layer: string;
  numExperts: number;
  tokens: number;
  /** Assignments per expert after capacity (dropped ones excluded). */
  counts: number[];
  /** Fraction of assignments each expert received. */
  load: number[];
  /** Assignments dropped by the capacity limit / assignments made by the router. */
  dropRate: number;
  /** Mean entropy (nats) of each token's routing distribution, when the router has one. */
  entropy?: number;
  /** Mean number of experts per token. */
  expertsPerToken: number;
  /** Extra router-specific numbers (e.g. bias norms). */
  extra?: Record<string, number>;
  /** Assignments per expert the router intended, before capacity drops and expert masks (docs/metrics.md#definitions). */
  intendedCounts?: number[];
  /** Tokens whose every assignment was dropped / tokens (Switch's "< 1%" statistic). */
  tokenDropRate?: number;
  /** Fewest / most experts any token received (dynamic routers: top-p, threshold, ReLU, expert choice). */
  expertsPerTokenMin?: number;
  expertsPerTokenMax?: number;
  /** H(mean_t q_t) in nats: the entropy of the mean routing distribution (1 · log E = balanced on average). */
  marginalEntropy?: number;
  /** mean_t logsumexp(z_t)^2 of the router logits, when the router reports logits (logit-growth monitor). */
  zLoss?: number;
  /** Fraction of tokens whose largest routing probability exceeds 0.99. */
  saturation?: number;
}

export interface ForwardContext {
  training: boolean;
  /** Randomness for dropout and noisy routing; derived from the run's seed and the step. */
  rng: Rng;
  /** Auxiliary losses produced during this forward pass. */
  aux: AuxLoss[];
  /** Routing statistics of every MoE layer call. */
  routing: RoutingStats[];
  /**
   * False: MoE layers skip their routing statistics (`routing` stays empty; the trainer asks for them
   * only every `statsEvery` steps, they cost a pass over the [T, E] routing distribution per layer).
   * Undefined or true: recorded.
   */
  stats?: boolean;
  /** When set, MoE layers also record per-token expert choices (for visualisation / inspect). */
  assignments?: Map<string, { tokenIndex: Int32Array; expertIndex: Int32Array; tokens: number }[]>;
  /**
   * Sees every call of a `moe` layer whose router emits assignments: the expert input, the router's
   * result and the plan and weights the experts run (after masks and capacity). Read-only: the routing
   * observer of `@moelab/compress` accumulates its calibration statistics here.
   */
  moeObserver?: (event: MoERouteEvent) => void;
  /**
   * Sees, in every transformer block, the residual stream the feed-forward output is added to (before
   * the add), keyed by the feed-forward layer's path and called just before that layer runs. EASY-EP's
   * token weight (`@moelab/compress`) compares it with the routed experts' output. Read-only.
   */
  ffnResidualObserver?: (layer: string, residual: tf.Tensor) => void;
  /**
   * Edits of router logits before the softmax / top-k, by MoE layer path (runtime expert masking with
   * −∞, SteerMoE's force / block). Routers apply them through `editRouterLogits`; a `moe` layer whose
   * router ignores an edit addressed to it throws instead of silently running unedited.
   */
  routerLogitEdits?: Map<string, RouterLogitEdit>;
  /** MoE layer paths whose router applied its `routerLogitEdits` entry in this call (set by `editRouterLogits`). */
  routerLogitEditsApplied?: Set<string>;
  /** Experts disabled at inference: exact MoE layer path (e.g. `transformer.layers.0.ffn`, as `moelab mask` writes them) -> expert ids. */
  expertMask?: Map<string, Set<number>>;
  /** Token ids of the forward pass, flattened row-major like the rows MoE layers see (set by the language model; hash routers read it). */
  tokenIds?: Int32Array;
  /**
   * State that lives for ONE forward pass, read and written only through `CarryKey`s (`readCarry`,
   * `writeCarry`, `ensureCarry`, `takeCarry`). The language model starts every forward pass with an empty carry;
   * a fresh context has none until the first write. Two uses:
   * - state handed from layer to layer, under a key the layers agree on by name (a shared recurrent
   *   router's hidden state, `rmoe:<group>`; MONET's routing reused by the next layers, `monet:routing`);
   * - what one module gathers over its calls until `finalizeForward` (a regulariser over every repeat of a
   *   shared layer), under a key private to that module (`privateCarryKey`).
   */
  carry?: Map<string, unknown>;
  /**
   * Position of the first row of this call in its sequence: 0 in a full forward pass, the number of
   * cached positions in a cached decoding step (TransformerLM.forwardCached). Position-dependent
   * modules (learned absolute positions) read it.
   */
  positionOffset?: number;
}

export function forwardContext(rng: Rng, training: boolean, extra: Partial<ForwardContext> = {}): ForwardContext {
  return { training, rng, aux: [], routing: [], ...extra };
}

/**
 * A typed slot of `ForwardContext.carry`: `name` identifies the slot, `T` is the type of what it holds.
 * Keys with the same name address the same slot, so producers and consumers in different modules meet
 * by agreeing on the name.
 */
export interface CarryKey<T> {
  readonly name: string;
  /** Never set: only carries the slot's value type. */
  readonly valueType?: (value: T) => T;
}

/** The key of the slot called `name`. */
export function carryKey<T>(name: string): CarryKey<T> {
  return { name };
}

let privateCarrySlots = 0;

/** A key no other call returns (its name is `label#n`): for state one module instance keeps to itself. */
export function privateCarryKey<T>(label: string): CarryKey<T> {
  return { name: `${label}#${privateCarrySlots++}` };
}

/** What this forward pass holds under `key`, or undefined. */
export function readCarry<T>(ctx: ForwardContext, key: CarryKey<T>): T | undefined {
  return ctx.carry?.get(key.name) as T | undefined;
}

/** Store `value` under `key` for the rest of this forward pass (replaces what was there). */
export function writeCarry<T>(ctx: ForwardContext, key: CarryKey<T>, value: T): void {
  ctx.carry ??= new Map();
  ctx.carry.set(key.name, value);
}

/** What this forward pass holds under `key`; the first call in the pass stores and returns `create()`. */
export function ensureCarry<T>(ctx: ForwardContext, key: CarryKey<T>, create: () => T): T {
  const held = readCarry(ctx, key);
  if (held !== undefined) return held;
  const value = create();
  writeCarry(ctx, key, value);
  return value;
}

/** Read and remove what this forward pass holds under `key`. */
export function takeCarry<T>(ctx: ForwardContext, key: CarryKey<T>): T | undefined {
  const value = readCarry(ctx, key);
  ctx.carry?.delete(key.name);
  return value;
}

/**
 * A variable holding `values`, after reserving its size in the parameter budget of a build (memory.ts);
 * a build over its limit only counts, and gets an empty placeholder.
 */
function makeVariable(values: Float32Array | tf.Tensor, shape: number[] | undefined, trainable: boolean): tf.Variable {
  const isArray = values instanceof Float32Array;
  const size = isArray ? (shape ? shape.reduce((a, b) => a * b, 1) : values.length) : values.size;
  const t = !reserveParameters(size) ? tf.zeros([0]) : isArray ? tf.tensor(values, shape) : values;
  const v = tf.variable(t, trainable);
  if (t !== values) t.dispose();
  trackAllocation(v);
  return v;
}

export abstract class Module {
  /**
   * Optional hook, called by the model once per forward pass after every layer ran: modules whose
   * regulariser spans all their calls (e.g. a shared layer used by several repeats) add it here.
   */
  finalizeForward?(ctx: ForwardContext): void;

  /**
   * Optional hook, called by the trainer on every module once after each optimiser step: non-gradient
   * controllers (aux-loss-free bias balancing, ReMoE's L1 coefficient) update their state here from what
   * they recorded during the step's training forward passes.
   */
  afterStep?(): void;

  /**
   * Optional: why this module cannot take part in cached (incremental) decoding, or null when it can.
   * A cached step runs every module on the new rows of the sequence only, so a module whose output
   * for a row depends on other rows of the call (batch-dependent routing, capacity drops, mixing of
   * tokens) or on earlier rows it does not cache (a previous-token hash) returns a one-line reason.
   * The language model asks every module before it creates a cache (TransformerLM.cacheBlocker).
   */
  cachedDecodingBlocker?(): string | null;

  /** Set by the parent: the dotted path of this module (first reference wins). */
  path = '';
  readonly params = new Map<string, tf.Variable>();
  readonly buffers = new Map<string, tf.Variable>();
  readonly children = new Map<string, Module>();

  /** Register a trainable parameter. `values` are copied into a new variable. */
  protected param(name: string, values: Float32Array | tf.Tensor, shape?: number[], trainable = true): tf.Variable {
    const v = makeVariable(values, shape, trainable);
    this.params.set(name, v);
    return v;
  }

  /** Register non-trainable state that is saved with the weights (e.g. BatchNorm running statistics). */
  protected buffer(name: string, values: Float32Array | tf.Tensor, shape?: number[]): tf.Variable {
    const v = makeVariable(values, shape, false);
    this.buffers.set(name, v);
    return v;
  }

  protected child<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  /**
   * Add a child to a module that is already built (a fine-tuning package attaches its adapter modules
   * to a loaded model this way) and give the new subtree its paths. The name must be new.
   */
  attachChild<M extends Module>(name: string, m: M): M {
    if (this.children.has(name)) throw new MoelabError(`this module already has a child "${name}"`, this.path || undefined);
    this.children.set(name, m);
    m.assignPaths(this.path ? `${this.path}.${name}` : name);
    return m;
  }

  /** Remove a child added by {@link attachChild}; returns it (undefined when there is none). */
  detachChild(name: string): Module | undefined {
    const m = this.children.get(name);
    this.children.delete(name);
    return m;
  }

  /** Set paths of the whole tree (call once on the root after construction). */
  assignPaths(prefix = '', seen = new Set<Module>()): void {
    if (seen.has(this)) return;
    seen.add(this);
    this.path = prefix;
    for (const [n, c] of this.children) c.assignPaths(prefix ? `${prefix}.${n}` : n, seen);
  }

  private walk(fn: (m: Module, prefix: string) => void, prefix = '', seen = new Set<Module>()): void {
    if (seen.has(this)) return;
    seen.add(this);
    fn(this, prefix);
    for (const [n, c] of this.children) c.walk(fn, prefix ? `${prefix}.${n}` : n, seen);
  }

  /** Each variable of `which` once, named by the first path it is reached by. */
  private named(which: 'params' | 'buffers'): [string, tf.Variable][] {
    const out: [string, tf.Variable][] = [];
    const seen = new Set<tf.Variable>();
    this.walk((m, prefix) => {
      for (const [n, v] of m[which]) {
        if (seen.has(v)) continue;
        seen.add(v);
        out.push([prefix ? `${prefix}.${n}` : n, v]);
      }
    });
    return out;
  }

  namedParameters(): [string, tf.Variable][] {
    return this.named('params');
  }

  namedBuffers(): [string, tf.Variable][] {
    return this.named('buffers');
  }

  /** Parameters and buffers: everything a checkpoint stores. */
  stateDict(): [string, tf.Variable][] {
    return [...this.namedParameters(), ...this.namedBuffers()];
  }

  trainableVariables(): tf.Variable[] {
    return this.namedParameters()
      .map(([, v]) => v)
      .filter((v) => v.trainable);
  }

  parameterCount(): number {
    return this.namedParameters().reduce((s, [, v]) => s + v.size, 0);
  }

  /**
   * Parameters used to process one token. Modules whose parameters are only partly used per token
   * (MoE layers) override this; the default is all parameters of this module and its children.
   */
  activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    let n = 0;
    for (const v of this.params.values()) n += v.size;
    for (const c of this.children.values()) n += c.activeParameterCount(seen);
    return n;
  }

  /**
   * Multiply-accumulates spent on one token (forward), for a sequence of `seqLen` tokens. Default: one
   * MAC per parameter of this module and its children (exact for linear maps); modules whose cost is
   * not their parameter count (embeddings, attention mixing, MoE layers, shared blocks) override it.
   */
  macsPerToken(seqLen: number): number {
    let n = 0;
    for (const v of this.params.values()) n += v.size;
    for (const c of this.children.values()) n += c.macsPerToken(seqLen);
    return n;
  }

  /**
   * Forward FLOPs spent on one token with a context of `seqLen`, in the convention of Kaplan et al.
   * (arXiv 2001.08361, Table 1) that BAM's Table 10 (arXiv 2408.08274) uses: 2 FLOPs per multiply-
   * accumulate of a matrix product, attention mixing (scores and weighted sum) counted as
   * 2 · seqLen · d_attn, norms, biases, activations and embedding lookups not counted. Default: twice
   * {@link macsPerToken}; attention, norms, linear maps and containers override it.
   */
  flopsPerToken(seqLen: number): number {
    return 2 * this.macsPerToken(seqLen);
  }

  /** Every module of the tree once, depth first. */
  modules(): Module[] {
    const out: Module[] = [];
    this.walk((m) => out.push(m));
    return out;
  }

  dispose(): void {
    this.walk((m) => {
      for (const v of m.params.values()) v.dispose();
      for (const v of m.buffers.values()) v.dispose();
    });
  }
}

/** A container whose children are named "0", "1", ... (PyTorch's nn.ModuleList naming). */
export class ModuleList<M extends Module = Module> extends Module {
  constructor(readonly items: M[]) {
    super();
    items.forEach((m, i) => {
      this.child(String(i), m);
    });
  }
}

/** A container of named children (PyTorch's nn.ModuleDict naming). */
export class ModuleDict extends Module {
  constructor(items: Record<string, Module>) {
    super();
    for (const [k, m] of Object.entries(items)) this.child(k, m);
  }
}
