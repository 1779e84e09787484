/** Messages between the page and a training worker (one worker per run). */
import type { CheckpointConfig, ModelSummary, NodeSpec, TrainConfig } from '@moelab/core';
import type { TextData } from './data.js';

export type ToWorker =
  | { type: 'init'; backend: string; spec: NodeSpec; train: Partial<TrainConfig>; data: TextData }
  | { type: 'start' }
  | { type: 'pause' }
  | { type: 'stop' }
  | { type: 'generate'; prompt: string; maxNewTokens: number; temperature: number; topK: number; seed: number }
  | { type: 'save' }
  /** The model's checkpoint files without a download (the upcycle view takes them as a source). */
  | { type: 'export' }
  | { type: 'load'; backend: string; files: { name: string; bytes: ArrayBuffer }[]; data: TextData };

export interface LayerRouting {
  layer: string;
  numExperts: number;
  /** Fraction of assignments per expert (summed over the layer's calls in the step, normalised). */
  load: number[];
  /** Mean routing entropy (nats), when the router reports one. */
  entropy?: number;
}

export interface TokenRouting {
  layer: string;
  numExperts: number;
  /** Per token: the expert of its first (highest-priority) assignment, -1 = none. */
  expert: number[];
}

export type RunState = 'idle' | 'running' | 'paused' | 'stopped' | 'done';

export type FromWorker =
  | { type: 'ready'; backend: string; reason: string; summary: ModelSummary; step: number; steps: number; spec: NodeSpec; train: Partial<TrainConfig> }
  | { type: 'state'; state: RunState }
  | { type: 'step'; step: number; loss: number; ce: number; lr: number; tokensPerSec: number; routing: LayerRouting[] }
  | { type: 'eval'; step: number; loss: number }
  | { type: 'sample'; step: number; tokens: number[]; layers: TokenRouting[] }
  | { type: 'generated'; prompt: string; text: string }
  | { type: 'saved'; configJson: string; weights: ArrayBuffer; step: number; valLoss: number }
  | { type: 'exported'; configJson: string; weights: ArrayBuffer; step: number }
  | { type: 'loaded'; config: CheckpointConfig; valLoss: number }
  | { type: 'error'; message: string };
