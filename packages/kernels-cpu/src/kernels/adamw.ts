/**
 * The fused AdamW update as a tfjs kernel for moelab-cpu. Core's AdamW runs ~12 elementwise ops
 * per parameter tensor (each a full pass and a fresh allocation); on the MoE LMs of the benchmark,
 * whose expert banks hold most of the parameters, that was ~0.5 s per step. This is one threaded
 * pass that reads p, g, m, v once and writes p', m', v'.
 *
 * In place when that cannot be observed: when p, m and v are each held by one tensor only (backend
 * refCount 1: the optimiser's variables between steps) and their buffers are *owned* (storage.ts:
 * allocated by a kernel here, never read out or wrapped by another tensor since: the previous
 * step's outputs). Then the kernel overwrites them and returns them as its outputs (the way Reshape
 * returns its input, one more reference each). That saves three parameter-sized allocations per
 * tensor per step and about half the memory traffic; PyTorch's AdamW is in place too. Anything
 * else (a user's array, a buffer read by dataSync or viewed by a slice) gets fresh outputs.
 *
 * Kernel contract: ADAMW_KERNEL of @moelab/core/kernels (no gradient). Outputs [p', m', v'] with
 * the same float32 operations, in the same order, as core's op-by-op step.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import { type Args, expectDtype, expectShape, type KernelFunc, type TensorInfo, values } from './helpers.js';
import { ADAMW_KERNEL, type AdamWAttrs } from '@moelab/core/kernels';
import { isOwned, outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

export function makeAdamWKernel(native: NativeAddon, backendName: string): tfTypes.KernelConfig {
  const kernelFunc = (args: Args): TensorInfo[] => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const p = inputs.p;
    expectDtype(ADAMW_KERNEL, inputs, ['p', 'g', 'm', 'v']);
    for (const n of ['g', 'm', 'v']) expectShape(ADAMW_KERNEL, n, inputs[n]!, p.shape);
    const a = (args.attrs ?? {}) as Record<string, unknown>;
    const num = (name: string) => {
      const x = Number(a[name]);
      if (!Number.isFinite(x)) throw new Error(`${ADAMW_KERNEL}: attr ${name} must be a finite number, got ${String(a[name])}`);
      return x;
    };
    const names: (keyof AdamWAttrs)[] = ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'bc1', 'bc2'];
    const [lr, beta1, beta2, eps, wd, bc1, bc2] = names.map(num) as number[];
    const n = p.shape.reduce((x, y) => x * y, 1);
    // The scalars as core's op-by-op version forms them (JS doubles, rounded to float32 by tfjs).
    const scalars = [beta1!, 1 - beta1!, beta2!, 1 - beta2!, eps!, bc1!, bc2!, lr!, lr! * wd!];
    const v = (name: string) => values(backend, inputs[name]);
    if (canUpdateInPlace(backend, inputs, ['p', 'm', 'v'], 'g')) {
      const [pv, mv, vv] = [v('p'), v('m'), v('v')];
      if (n > 0) native.adamw(pv, v('g'), mv, vv, pv, mv, vv, n, scalars, wd! > 0);
      return (['p', 'm', 'v'] as const).map((name) => {
        backend.incRef(inputs[name]!.dataId);
        return { dataId: inputs[name]!.dataId, shape: p.shape, dtype: 'float32' } as TensorInfo;
      });
    }
    const outs = [outputArray(n), outputArray(n), outputArray(n)] as const;
    if (n > 0) native.adamw(v('p'), v('g'), v('m'), v('v'), outs[0], outs[1], outs[2], n, scalars, wd! > 0);
    return outs.map((o) => backend.makeTensorInfo(p.shape, 'float32', o));
  };
  return { kernelName: ADAMW_KERNEL, backendName, kernelFunc: kernelFunc as unknown as KernelFunc };
}

/**
 * Whether each of `names` holds an owned buffer of its own (distinct from the others and from
 * `readOnly`) as its sole holder (refCount 1): then overwriting it changes no other tensor.
 */
function canUpdateInPlace(backend: MathBackendCPU, inputs: Record<string, TensorInfo>, names: string[], readOnly: string): boolean {
  const ids = new Set<unknown>([inputs[readOnly]!.dataId]);
  for (const name of names) {
    const id = inputs[name]!.dataId;
    const d = backend.data.get(id);
    if (ids.has(id) || !d || d.refCount !== 1 || !isOwned(d.values)) return false;
    ids.add(id);
  }
  return true;
}
