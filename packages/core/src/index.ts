/**
 * @moelab/core — the registry, the model spec and builder, modules, the MoE layer shell, losses,
 * the trainer, safetensors and backend resolution. Isomorphic: no fs, no native code.
 * @packageDocumentation
 */
export { tf } from './tf.js';
export type { Tensor, Tensor1D, Tensor2D, Tensor3D, Scalar, Variable } from './tf.js';
export * from './errors.js';
export * from './rng.js';
export * from './schema.js';
export * from './registry.js';
export * from './builder.js';
export * from './module.js';
export * from './nn/activations.js';
export * from './nn/layers.js';
export * from './nn/rope.js';
export * from './nn/attention.js';
export * from './nn/kv-cache.js';
export * from './nn/dispatch.js';
export * from './nn/moe.js';
export * from './nn/ffn.js';
export * from './nn/transformer.js';
export * from './ops/moe.js';
export * from './ops/moe-glu.js';
export * from './kernels/contract.js';
export { patchWasmBackend, registerSegmentSumFor } from './ops/engine-fixes.js';
export * from './losses.js';
export * from './safetensors.js';
export * from './state.js';
export * from './tokenizer.js';
export * from './train/optim.js';
export * from './train/trainer.js';
export * from './backend.js';
export * from './metrics.js';
export * from './generate.js';
export * from './plugin.js';
export * from './spec-info.js';
export { directionalGradCheck } from './gradcheck.js';
export * from './presets.js';
export * from './checkpoint-format.js';
