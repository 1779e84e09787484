/**
 * @moelab/core — the registry, the model spec and builder, modules, the MoE layer shell, losses,
 * the trainer, safetensors and backend resolution. Isomorphic: no fs, no native code.
 *
 * **TensorFlow.js is a peer dependency** (`@tensorflow/tfjs` ^4.22.0): install it beside core, and
 * every moelab package and your own code share that one engine and kernel registry.
 *
 * **Side effects at import** (one module, `tf.js`; package.json `sideEffects` lists it): importing core
 * changes the tfjs engine it shares with the host, once per process —
 * - registers a gradient for `TopK` (stock tfjs has none: the values' gradient is scattered back to the
 *   selected positions), which routing through `tf.topk` needs;
 * - re-registers the gradient of `GatherV2` (stock tfjs returns an int32 gradient for `indices`, which
 *   autodiff rejects when the indices come from a routing decision; ours is float zeros) and of
 *   `UnsortedSegmentSum` (a gather, checking once for negative ids instead of masking every element);
 * - registers an O(N) `UnsortedSegmentSum` kernel for the `cpu` and `wasm` backends (the stock cpu kernel is
 *   O(segments × size), and wasm has none).
 * The results of stock ops are unchanged. Selecting the `wasm` backend through `resolveBackend` also
 * wraps its `BatchMatMul` and `GatherV2` kernels (`patchWasmBackend`: batched and transposed products through XNNPACK, row gathers as block copies).
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
export * from './memory.js';
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
