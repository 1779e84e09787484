/**
 * Registers `moelab-cuda` (the device addon) or `moelab-cuda-emu` (the emulation addon) with tfjs:
 * first every kernel of the host fallback backend (moelab-cpu when its addon is built, else
 * tfjs-cpu) as a counted fallback, then the CUDA kernels over them, then the fused kernels'
 * gradients (once per tfjs instance, shared with moelab-cpu).
 */
import * as tfjs from '@tensorflow/tfjs';
import { registerFusedGradients, registerMoelabCpuBackend } from '@moelab/kernels-cpu';
import { MoelabCudaBackend, noteFallback } from './backend.js';
import { registerAttention } from './kernels/attention.js';
import { registerElementwise } from './kernels/elementwise.js';
import type { Args, Ctx, Result, TensorInfo } from './kernels/context.js';
import { registerFused } from './kernels/fused.js';
import { registerLayout } from './kernels/layout.js';
import { registerMatmul } from './kernels/matmul.js';
import { registerReduce } from './kernels/reduce.js';
import { registerRouter } from './kernels/router.js';
import { loadAddon } from './native.js';

/** The backend on a GPU. */
export const BACKEND_NAME = 'moelab-cuda';
/** The same backend on the CPU emulation of the launch grid (tests, kernel debugging; never picked by `auto`). */
export const EMULATION_BACKEND_NAME = 'moelab-cuda-emu';

/** What registerMoelabCudaBackend found. */
export interface MoelabCudaStatus {
  /** True when the addon loaded, the device answered and the backend is registered. */
  available: boolean;
  /** The backend's name (`moelab-cuda` or `moelab-cuda-emu`). */
  backend: string;
  /** One line: the device and settings, or why the backend is unavailable and what to do. */
  reason: string;
  /** The host backend whose kernels run what CUDA does not (`moelab-cpu` or `cpu`; '' when unavailable). */
  fallback: string;
}

export interface RegisterOptions {
  /** Register `moelab-cuda-emu` on the emulation addon instead of `moelab-cuda` (default false). */
  emulate?: boolean;
  /** tfjs backend priority (default 3 on the device: preferred over moelab-cpu's 2.5; -1 for the emulation). */
  priority?: number;
  /** TF32 tensor cores for dense GEMMs on sm_80+ (default true; MOELAB_CUDA_TF32=0 turns them off). */
  tf32?: boolean;
}

const registered = new Map<string, MoelabCudaStatus>();

/** Kernels the CUDA backend implements itself (every other kernel falls back to the host). */
export const CUDA_KERNELS: string[] = [];

/**
 * Register the backend and its kernels (idempotent per name). Returns `available: false` with the
 * reason, registering nothing, when the addon is not built or no usable device answers. Does not
 * switch backends: call `tf.setBackend(status.backend)`.
 */
export function registerMoelabCudaBackend(tf: typeof tfjs = tfjs, options: RegisterOptions = {}): MoelabCudaStatus {
  const emulate = options.emulate ?? false;
  const name = emulate ? EMULATION_BACKEND_NAME : BACKEND_NAME;
  const done = registered.get(name);
  if (done) return done;
  const { addon, reason } = loadAddon(emulate ? 'emulation' : 'device');
  if (!addon) return { available: false, backend: name, reason, fallback: '' };
  const cpu = registerMoelabCpuBackend(tf);
  const fallbackName = cpu.available ? 'moelab-cpu' : 'cpu';
  const hostKernels = tf.getKernelsForBackend(fallbackName);
  if (hostKernels.length === 0) {
    return {
      available: false,
      backend: name,
      reason: 'tfjs-backend-cpu registered no kernels in this tfjs instance (import @tensorflow/tfjs, not @tensorflow/tfjs-core alone)',
      fallback: '',
    };
  }
  const tf32 = addon.setTf32(options.tf32 ?? process.env.MOELAB_CUDA_TF32 !== '0');
  tf.registerBackend(name, () => new MoelabCudaBackend(addon, name), options.priority ?? (emulate ? -1 : 3));

  const wrappers = new Map<string, (args: Args) => Result>();
  const fallback = (kernel: string): ((args: Args) => Result) => {
    const f = wrappers.get(kernel);
    if (!f) throw new Error(`${name}: ${fallbackName} has no ${kernel} kernel to fall back to`);
    return f;
  };
  for (const k of hostKernels) {
    const hostFunc = k.kernelFunc;
    const kernel = k.kernelName;
    const wrapper = (args: Args): Result => {
      noteFallback(name, kernel);
      const be = args.backend as unknown as MoelabCudaBackend;
      const host = tf.findBackend(fallbackName) as tfjs.KernelBackend;
      // A host kernel may return one of its inputs' storage (ExpandDims, Reshape): dispose each id once.
      const temps = new Set<object>();
      const toHost = (t: TensorInfo): TensorInfo => {
        const dataId = host.write(be.host(t), t.shape, t.dtype);
        temps.add(dataId);
        return { dataId, shape: t.shape, dtype: t.dtype };
      };
      // AddN, Concat, Pack, ... take their inputs as an array; the others as a record by name.
      let ins: TensorInfo[] | Record<string, TensorInfo>;
      if (Array.isArray(args.inputs)) ins = (args.inputs as TensorInfo[]).map(toHost);
      else {
        ins = {};
        for (const [key, t] of Object.entries(args.inputs as Record<string, TensorInfo | undefined>)) if (t) ins[key] = toHost(t);
      }
      try {
        const out = hostFunc({ inputs: ins, backend: host, attrs: args.attrs } as unknown as Args) as Result;
        const list = Array.isArray(out) ? out : [out];
        // readSync before disposing: moelab-cpu then never recycles an array we keep.
        const mine = list.map((o) => be.makeTensorInfo(o.shape, o.dtype, host.readSync(o.dataId)));
        for (const o of list) temps.add(o.dataId);
        return Array.isArray(out) ? mine : mine[0]!;
      } finally {
        for (const id of temps) host.disposeData(id, true);
      }
    };
    wrappers.set(kernel, wrapper);
    tf.registerKernel({ kernelName: kernel, backendName: name, kernelFunc: wrapper as unknown as tfjs.KernelFunc });
  }

  const ctx: Ctx = {
    tf,
    native: addon,
    fallback,
    add(kernel, fn) {
      if (tf.getKernel(kernel, name)) tf.unregisterKernel(kernel, name);
      tf.registerKernel({ kernelName: kernel, backendName: name, kernelFunc: fn as unknown as tfjs.KernelFunc });
      if (!CUDA_KERNELS.includes(kernel)) CUDA_KERNELS.push(kernel);
    },
  };
  for (const family of [registerMatmul, registerElementwise, registerReduce, registerLayout, registerAttention, registerRouter, registerFused]) family(ctx);
  registerFusedGradients(tf);

  const info = addon.info();
  const device = info.emulated
    ? info.name
    : `${info.name} (sm_${info.major}${info.minor}, ${(info.totalBytes / 2 ** 30).toFixed(0)} GiB, driver ${version(info.driverVersion)}, runtime ${version(info.runtimeVersion)}, TF32 GEMM ${tf32 ? 'on' : 'off'})`;
  const status = { available: true, backend: name, reason: `${device}; other kernels fall back to ${fallbackName}`, fallback: fallbackName };
  registered.set(name, status);
  return status;
}

function version(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** Live and cached device bytes of the caching allocator (0 when the addon is not loaded). */
export function deviceMemory(options: { emulate?: boolean } = {}): { liveBytes: number; cachedBytes: number; liveBuffers: number } {
  const { addon } = loadAddon(options.emulate ? 'emulation' : 'device');
  return addon ? addon.memory() : { liveBytes: 0, cachedBytes: 0, liveBuffers: 0 };
}
