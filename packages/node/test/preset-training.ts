/**
 * The training check the preset tests share: a few small steps of a preset's model on a byte corpus make
 * the loss fall, and validation runs.
 */
import { type TokenSource, type TrainableModel, Trainer } from '@moelab/core';
import { expect } from 'vitest';

/**
 * Train `model` five small steps on `data` (batch 4, sequence 16, lr 1e-2) and check that the loss is
 * finite, starts above 5 (bytes start near ln 256 = 5.55) and ends, as the mean of the last two steps,
 * more than 1 nat lower (five steps learn the byte distribution of English text); then one validation
 * batch gives a finite loss.
 */
export function expectLossFallsInFewSteps(model: TrainableModel, data: TokenSource): void {
  const steps = 5;
  const trainer = new Trainer(model, data, { batchSize: 4, seqLen: 16, steps, lr: 1e-2, warmup: 2, evalBatches: 1, seed: 5 });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push(trainer.trainStep().ce);
  expect(losses.every(Number.isFinite)).toBe(true);
  const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
  expect(losses[0]).toBeGreaterThan(5);
  expect(mean(losses.slice(-2))).toBeLessThan(losses[0]! - 1);
  expect(Number.isFinite(trainer.evaluate(1).loss)).toBe(true);
}
