/**
 * The one place moelab imports TensorFlow.js from.
 *
 * We depend on `@tensorflow/tfjs` rather than `@tensorflow/tfjs-core` alone: in Node, tfjs-core by itself
 * registers no gradients ("gradient function not found for Sum") and its ESM build cannot be loaded
 * (docs/engine.md#one-engine-per-process). Both packages share one engine, so plugins may import either.
 */
import * as tf from '@tensorflow/tfjs';
import { installEngineFixes } from './ops/engine-fixes.js';

installEngineFixes();

export { tf };
export type Tensor = tf.Tensor;
export type Tensor1D = tf.Tensor1D;
export type Tensor2D = tf.Tensor2D;
export type Tensor3D = tf.Tensor3D;
export type Scalar = tf.Scalar;
export type Variable = tf.Variable;
