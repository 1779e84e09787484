/**
 * `@moelab/kernels-cpu/kernels`: the JavaScript half of the native kernels (argument checks,
 * shapes, output allocation, gradients) without the Node-API addon, for another backend that
 * implements the same {@link NativeAddon} functions on its own storage: @moelab/kernels-wasm runs
 * them on the addon's C++ compiled to WebAssembly. Browser-safe: nothing here imports Node modules.
 */
export type { NativeAddon, PackedWeightArrays } from './native.js';
export { nativeKernels, registerFusedGradients } from './kernels/index.js';
export { withOutputAllocator } from './storage.js';
