/**
 * What `moelab export --format <name>` dispatches to: one module per format in this folder exporting an
 * {@link ExportFormat}, plus one line in `./index.ts`. A format gets the checkpoint directory, the output
 * path and the parsed flags, writes atomically, and returns the lines to print.
 */
import type { Registry } from '@moelab/core';

export interface ExportFlags {
  /** Target architecture within the format (hf: a model_type), when the format has several. */
  arch?: string;
  /** Weight dtype on disk (hf: f32 or bf16). */
  dtype?: string;
  /** Largest shard (hf), e.g. "5GB". */
  maxShardSize?: string;
  /** onnx: run every expert on every token, weighted by the gate matrix, instead of dispatching (FFN experts, SwitchHead, MoA). */
  denseExperts?: boolean;
  /** onnx: write the weights to `<out>.data` (ONNX external data) even when they fit in the .onnx file. */
  externalData?: boolean;
}

export interface ExportFormat {
  name: string;
  /** One line for `moelab export --help`. */
  description: string;
  run(checkpoint: string, out: string, flags: ExportFlags, registry: Registry): string[];
}
