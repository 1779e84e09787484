/**
 * What a MONET layer needs from its expert shards, whichever decomposition (HD or VD) holds them.
 */
import type { Module, tf } from '@moelab/core';

/** The expert bank of a MONET layer (HD or VD), as the layer sees it. */
export interface MonetExperts extends Module {
  /** Factored evaluation from the two groups' routing (docs/monet.md#horizontal-decomposition, #vertical-decomposition). x [n, d] -> [n, d]. */
  forward(x: tf.Tensor2D, g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor2D;
  /** Evaluation from an explicit (masked) score tensor G' [n, E, E] (docs/monet.md#expert-masking). */
  forwardScores(x: tf.Tensor2D, scores: tf.Tensor3D): tf.Tensor2D;
}
