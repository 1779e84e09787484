/**
 * Token windows, the unit every calibration and search pass of this package reads: a window is
 * T + 1 token ids, the first T the input and the last T the next-token targets. Batches of windows
 * become [B, T + 1] int32 tensors; the loss of a set of windows is the mean next-token cross-entropy
 *
 *   L = (1 / (N T)) Σ_windows Σ_t −log p(w_{t+1} | w_{≤t})
 *
 * (N windows; exp(L) is their perplexity). Used by EEP's fitness, the compression commands and the
 * playground, so they all measure the same thing.
 */
import { crossEntropy, type ForwardContext, forwardContext, MoelabError, Rng, type RouterLogitEdit, tf } from '@moelab/core';
import type { Model } from './surgery.js';

/** Consecutive batches of at most `batchSize` windows, each as one [B, T + 1] int32 tensor (the caller disposes it). */
export function* windowBatches(windows: readonly Int32Array[], batchSize: number): Generator<tf.Tensor2D> {
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new MoelabError(`the batch size must be a positive integer, got ${batchSize}`, '--batch');
  for (let i = 0; i < windows.length; i += batchSize) {
    const part = windows.slice(i, i + batchSize);
    const T1 = part[0]!.length;
    const flat = new Int32Array(part.length * T1);
    for (const [b, w] of part.entries()) {
      if (w.length !== T1) throw new MoelabError(`the windows of one batch must have one length (${T1} and ${w.length})`);
      flat.set(w, b * T1);
    }
    yield tf.tensor2d(flat, [part.length, T1], 'int32');
  }
}

/**
 * Mean next-token cross-entropy L of `windows` (see the file comment), evaluated in eval mode with
 * the given router-logit edits or other forward-context fields.
 */
export function windowsLoss(
  model: Model,
  windows: readonly Int32Array[],
  batchSize: number,
  extra?: Map<string, RouterLogitEdit> | Partial<ForwardContext>,
): number {
  const fields = extra instanceof Map ? { routerLogitEdits: extra } : (extra ?? {});
  let sum = 0;
  let tokens = 0;
  for (const batch of windowBatches(windows, batchSize)) {
    const [B, T1] = batch.shape;
    sum += tf.tidy(() => {
      const logits = model.forward(tf.slice(batch, [0, 0], [B, T1 - 1]), forwardContext(new Rng(0), false, { stats: false, ...fields }));
      return crossEntropy(logits, tf.slice(batch, [0, 1], [B, T1 - 1])).dataSync()[0]! * B * (T1 - 1);
    });
    batch.dispose();
    tokens += B * (T1 - 1);
  }
  if (tokens === 0) throw new MoelabError('there are no windows to evaluate');
  return sum / tokens;
}
