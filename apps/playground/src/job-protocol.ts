/** Messages between the Fine-tune / Compress sections and their job worker (job-worker.ts). */
import type { NodeSpec, TrainConfig } from '@moelab/core';
import type { ParameterCounts } from '@moelab/finetune';
import type { CompressMethod, CompressResult } from './compress.js';
import type { TextData } from './data.js';
import type { DomainPerplexity } from './finetune.js';

export interface JobFile {
  name: string;
  bytes: ArrayBuffer;
}

export type ToJob =
  | {
      type: 'finetune';
      backend: string;
      files: JobFile[];
      source: string;
      method: string;
      options: Record<string, unknown>;
      target: TextData;
      general: TextData;
      train: Partial<TrainConfig>;
    }
  | { type: 'compress'; backend: string; files: JobFile[]; method: CompressMethod; data: TextData }
  /** Stop a fine-tuning run after its current step (it still measures the perplexity after). */
  | { type: 'stop' };

export type FromJob =
  | { type: 'backend'; backend: string; reason: string }
  | { type: 'progress'; phase: string }
  | {
      type: 'ft-ready';
      method: string;
      adapters: NodeSpec[];
      counts: ParameterCounts;
      domains: DomainPerplexity[];
      steps: number;
    }
  | { type: 'ft-step'; step: number; steps: number; loss: number }
  | {
      type: 'ft-done';
      domains: DomainPerplexity[];
      steps: number;
      /** The adapter checkpoint (full fine-tuning: the model's checkpoint). */
      files: JobFile[];
      /** The fine-tuned model as a checkpoint a run loads (empty when the adapters cannot be folded). */
      runFiles: JobFile[];
      /** Why the adapters cannot be folded into the base. */
      mergeBlocked?: string;
    }
  | { type: 'compressed'; result: Omit<CompressResult, 'files' | 'runFiles'>; files: JobFile[]; runFiles: JobFile[] }
  | { type: 'error'; message: string };
