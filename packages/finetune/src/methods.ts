/**
 * The fine-tuning methods of `moelab finetune --method NAME` (docs/finetune.md#methods): each is a list
 * of adapter nodes built from the user's options, and training defaults. A new method is one entry in
 * {@link finetuneMethods} (or `defineMethod` + `registerMethod` from another package). The defaults
 * follow the Brown → SOTU scenario: AdamW without weight decay, 20 warm-up steps, clipping 1.0, learning
 * rate 3e-3 for adapters and 3e-4 when the whole base is trained.
 */
import { MoelabError, closeMatches, type NodeSpec, type TokenSource, type TrainConfig } from '@moelab/core';
import type { Model } from './adapted-model.js';
import { esftMethodNode } from './esft/adapter.js';

/** What a method may look at when it builds its adapter nodes (ESFT scores the base on the data). */
export interface MethodContext {
  model: Model;
  data: TokenSource;
  seed: number;
}

export interface FinetuneMethod {
  name: string;
  /** One line. */
  description: string;
  /**
   * The adapter nodes for the user's options (an object; what `--options` JSON and the flags give).
   * Empty for full fine-tuning (`trainBase`).
   */
  adapters(options: Record<string, unknown>, ctx: MethodContext): NodeSpec[];
  /** Training defaults; the user's flags override them. */
  train: Partial<TrainConfig>;
  /** Train every base weight (the full fine-tuning baseline) instead of adapters. */
  trainBase?: boolean;
}

const ADAPTER_TRAIN: Partial<TrainConfig> = { lr: 3e-3, warmup: 20, weightDecay: 0, clip: 1, minLrRatio: 0.1 };

export function defineMethod(m: FinetuneMethod): FinetuneMethod {
  return m;
}

/** One adapter node of `type` with the user's options on top. */
const single =
  (type: string) =>
  (options: Record<string, unknown>): NodeSpec[] => [{ ...options, type }];

const table: FinetuneMethod[] = [
  defineMethod({
    name: 'lora',
    description: 'LoRA on the attention queries and values (the MoE-agnostic baseline)',
    adapters: single('lora'),
    train: ADAPTER_TRAIN,
  }),
  defineMethod({ name: 'perft-s', description: 'PERFT-S: one LoRA expert beside each feed-forward block', adapters: single('perft-s'), train: ADAPTER_TRAIN }),
  defineMethod({ name: 'perft-d', description: 'PERFT-D: M always-active LoRA experts beside each block', adapters: single('perft-d'), train: ADAPTER_TRAIN }),
  defineMethod({ name: 'perft-r', description: "PERFT-R: M LoRA experts behind a new top-K' router", adapters: single('perft-r'), train: ADAPTER_TRAIN }),
  defineMethod({
    name: 'perft-e',
    description: "PERFT-E: a LoRA expert inside each routed expert, the base router's gates",
    adapters: single('perft-e'),
    train: ADAPTER_TRAIN,
  }),
  defineMethod({ name: 'mov', description: 'MoV: a mixture of (IA)³ vectors on the attention keys and values', adapters: single('mov'), train: ADAPTER_TRAIN }),
  defineMethod({
    name: 'molora',
    description: 'MoLoRA: a soft mixture of LoRA experts on every attention projection',
    adapters: single('molora'),
    train: ADAPTER_TRAIN,
  }),
  defineMethod({
    name: 'esft',
    description: 'ESFT: only the routed experts the training data uses most train (token scores, p = 0.2; routing unchanged)',
    adapters: (options, ctx) => [esftMethodNode(options, ctx)],
    train: { ...ADAPTER_TRAIN, lr: 1e-3 },
  }),
  defineMethod({
    name: 'smore',
    description: "S'MoRE: a tree of low-rank residual experts beside each feed-forward block",
    adapters: single('smore'),
    train: ADAPTER_TRAIN,
  }),
  defineMethod({
    name: 'mixlora',
    description: 'MixLoRA: LoRA deltas inside every routed expert, plus LoRA on the attention queries and values',
    adapters: (options) => [
      { ...options, type: 'mixlora' },
      { type: 'lora', rank: (options.rank as number | undefined) ?? 8 },
    ],
    train: ADAPTER_TRAIN,
  }),
  defineMethod({
    name: 'full',
    description: 'full fine-tuning: every base weight trains (the baseline)',
    adapters: () => [],
    train: { ...ADAPTER_TRAIN, lr: 3e-4 },
    trainBase: true,
  }),
];

/** Every method by name (add one with {@link registerMethod}). */
export const finetuneMethods = new Map<string, FinetuneMethod>(table.map((m) => [m.name, m]));

/** Add a method (another package's, e.g. ESFT); a duplicate name is an error. */
export function registerMethod(m: FinetuneMethod): void {
  if (finetuneMethods.has(m.name)) throw new MoelabError(`duplicate fine-tuning method "${m.name}"`);
  finetuneMethods.set(m.name, m);
}

/** The method called `name`, or a one-line error with close names. */
export function finetuneMethod(name: string, where = '--method'): FinetuneMethod {
  const m = finetuneMethods.get(name);
  if (m) return m;
  const names = [...finetuneMethods.keys()];
  const close = closeMatches(name, names);
  throw new MoelabError(`unknown method "${name}".${close.length ? ` Did you mean: ${close.join(', ')}?` : ` Methods: ${names.join(', ')}.`}`, where);
}
