/**
 * Cached decoding (@moelab/core/kernels: CACHE_WRITE_KERNEL, CACHED_ATTENTION_KERNEL) for moelab-cpu:
 * a KV cache preallocated to the context length and written in place, and attention of the new
 * query rows over its first `length` positions.
 *
 *   write:     out = cache with positions p .. p+m-1 along the time axis replaced by rows
 *   attention: out_i = sum_{j <= n - m + i} softmax_j(scale q_i.k_j) v_j    (n = length; a query head
 *              of a group reads the group's key / value head)
 *
 * Why: a decoding step of a small model is ~80 tiny kernels, and op by op the cache grows by a
 * concat per entry and layer (a fresh [B, H, n, d] tensor copied element by element, every token),
 * then attention runs as two batched GEMMs, a scale and a softmax with their reshapes. Here the
 * cache is written where it lies and read by one kernel.
 *
 * In place only where nobody can observe it (the rule of storage.ts, as for MoelabAdamW): the cache
 * tensor is the sole holder of its storage (backend refCount 1) and the storage is owned (allocated
 * by a kernel here, never read out or viewed since). Then the rows are copied in and the same
 * storage is returned as the output, with one more reference. Otherwise (the first write into a
 * zero-filled tensor, a cache someone read) the output is a fresh copy, owned from then on.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { CACHE_WRITE_KERNEL, CACHED_ATTENTION_KERNEL } from '@moelab/core/kernels';
import type { NativeAddon } from '../native.js';
import { isOwned, outputArray } from '../storage.js';
import { cachedAttentionShapes, cacheWriteShapes } from './attention-checks.js';
import { type Args, type KernelConfig, type KernelFunc, prod, type TensorInfo, values } from './helpers.js';

export function makeDecodeKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const write = (args: Args): TensorInfo => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const { cache, rows } = inputs;
    const { axis, C, m, position } = cacheWriteShapes(CACHE_WRITE_KERNEL, inputs, args.attrs);
    const outer = prod(cache.shape.slice(0, axis));
    const inner = prod(cache.shape.slice(axis + 1));
    const src = values(backend, rows);
    const stored = backend.data.get(cache.dataId);
    let dst: Float32Array;
    let out: TensorInfo;
    if (stored && stored.refCount === 1 && isOwned(stored.values) && cache.dataId !== rows.dataId) {
      dst = stored.values;
      backend.incRef(cache.dataId);
      out = { dataId: cache.dataId, shape: cache.shape, dtype: 'float32' } as TensorInfo;
    } else {
      dst = outputArray(outer * C * inner);
      dst.set(values(backend, cache));
      out = backend.makeTensorInfo(cache.shape, 'float32', dst);
    }
    const block = m * inner;
    for (let o = 0; o < outer; o++) dst.set(src.subarray(o * block, (o + 1) * block), (o * C + position) * inner);
    return out;
  };

  const attention = (args: Args): TensorInfo => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const { q, k, v } = inputs;
    const { B, H, Hkv, m, Tk, dk, dv, scale, length: n } = cachedAttentionShapes(CACHED_ATTENTION_KERNEL, inputs, args.attrs);
    const out = outputArray(B * H * m * dv);
    if (out.length > 0) native.cachedAttentionForward(values(backend, q), values(backend, k), values(backend, v), out, B, H, Hkv, m, n, Tk, dk, dv, scale);
    return backend.makeTensorInfo([B, H, m, dv], 'float32', out);
  };

  return [
    { kernelName: CACHE_WRITE_KERNEL, backendName, kernelFunc: write as unknown as KernelFunc },
    { kernelName: CACHED_ATTENTION_KERNEL, backendName, kernelFunc: attention as unknown as KernelFunc },
  ];
}
