/**
 * The upcycler contract (registry kind `upcycler`, docs/upcycling.md#the-upcycler-contract):
 *
 *   (sources, config) -> (new model spec, new weights, provenance, report)
 *
 * An upcycler never trains: it copies, averages, stacks and slices tensors of dense checkpoints and
 * creates the few new ones (routers). Training phases around it (branch training, MoE training) are
 * ordinary trainer runs. A registry entry's `create(config)` returns an {@link Upcycler}; `upcycle()`
 * (upcycle.ts) runs it, completes the weights with the builder's initialisation of any tensor it did not
 * supply (recorded as `new`), loads them into the built model to prove spec and weights agree, and counts.
 */
import type { NodeSpec, Registry } from '@moelab/core';
import type { WeightMap, WeightTensor } from './weights.js';

/** One dense (or, for `nexus-extend`, MoE) checkpoint handed to an upcycler. */
export interface UpcycleSource {
  /** A label used in provenance and expert names (a directory name, a domain). */
  name: string;
  spec: NodeSpec;
  weights: WeightMap;
  /** AdamW state of the checkpoint (`exp_avg.<tensor>`, `exp_avg_sq.<tensor>`, `step`), for optimizer carry-over. */
  optimizer?: Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array }>;
  /** Training step of the checkpoint. */
  step?: number;
}

export interface UpcycleInput {
  /** The dense seed model (sparse-upcycle, split methods: the only source). */
  seed?: UpcycleSource;
  /** Dense models branched from the seed (BTX, BAM, Nexus), one per domain, in expert order. */
  experts?: UpcycleSource[];
  /** A trained upcycled MoE to extend (`nexus-extend`). */
  base?: UpcycleSource;
  /** Nexus: one domain embedding per expert (all of one length m), instead of computing them. */
  domainEmbeddings?: Float32Array[];
  /** Nexus: token sequences of each expert's domain (one list per expert), for the `seed-mean` / `hashed-ngrams` embedders. */
  domainSamples?: Int32Array[][];
  /** Split methods: calibration token sequences (each at most the model's context length) the seed is run on. */
  calibration?: Int32Array[];
}

/** Where one tensor of the upcycled model came from. */
export interface ProvenanceEntry {
  op: 'copy' | 'average' | 'weighted-average' | 'stack' | 'slice' | 'new' | 'computed';
  /** Source tensors as `source:tensor` (e.g. `seed:transformer.layers.0.ffn.w1.weight`). */
  from: string[];
  /** How, in a few words (e.g. `transposed to [in, out]`, `neurons 0-15`, `N(0, 0.02²)`). */
  note?: string;
}

/** What an upcycler's `run` returns; `upcycle()` completes and checks it. */
export interface UpcycleDraft {
  spec: Exclude<NodeSpec, string>;
  /** The tensors it built; the rest are initialised by the builder and recorded as `new`. */
  weights: WeightMap;
  provenance: Map<string, ProvenanceEntry>;
  notes: string[];
}

/** Helpers `upcycle()` hands to an upcycler. */
export interface UpcycleTools {
  registry: Registry;
  /** A new tensor drawn from N(0, std²), from an RNG derived from the upcycle seed and `name` (zeros when carrying optimizer moments). */
  fresh(name: string, shape: number[], std: number): WeightTensor;
  /** Seed of every random choice of this upcycle. */
  seed: number;
  /** Report something suspicious that does not stop the upcycle (also printed through core's `warn`). */
  warn(message: string): void;
  /** True while the upcycler is replayed on optimizer moments instead of weights (optimizer carry-over). */
  moments: boolean;
}

/** What an `upcycler` registry entry's `create(config)` returns. */
export interface Upcycler {
  run(input: UpcycleInput, tools: UpcycleTools): UpcycleDraft;
  /**
   * True when `run` only copies, averages, stacks, slices by a fixed index set and creates new tensors, so
   * replaying it on the sources' Adam moments carries the optimizer state over (sparse upcycling's vision recipe).
   */
  readonly carriesOptimizer?: boolean;
  /** The method's own `resumeOptimizerState` option (sparse upcycling); `upcycle()`'s option overrides it. */
  readonly resumeOptimizerState?: boolean;
}

export interface UpcycleReport {
  method: string;
  /** Parameters of the new model (shared ones once). */
  totalParams: number;
  /** Parameters used per token. */
  activeParams: number;
  /** Forward FLOPs per token at the context length (training ≈ 3×). */
  forwardFlopsPerToken: number;
  /** The same three numbers for the first source, for comparison. */
  source?: { name: string; totalParams: number; activeParams: number; forwardFlopsPerToken: number };
  notes: string[];
  warnings: string[];
  /** Wall time of the upcycle in milliseconds (surgery + build check). */
  ms: number;
}

export interface UpcycleResult {
  spec: Exclude<NodeSpec, string>;
  weights: WeightMap;
  provenance: Map<string, ProvenanceEntry>;
  report: UpcycleReport;
  /** AdamW state for the new model (with `resumeOptimizerState`): `exp_avg.*`, `exp_avg_sq.*`, `step`. */
  optimizer?: Map<string, { shape: number[]; data: Float32Array | Int32Array; dtype?: 'I32' }>;
  /** Training step to record in the checkpoint: 0, or the source's step when the optimizer state is carried. */
  step: number;
}
