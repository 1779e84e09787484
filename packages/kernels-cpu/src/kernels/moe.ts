/**
 * The fused MoE expert ops of the kernel contract (@moelab/core/kernels: MOE_MLP_KERNEL,
 * MOE_LINEAR_KERNEL and their Grad kernels) for the moelab-cpu backend, and their gradients.
 *
 *   MoeMLP:    out[t] = sum_{n: tokenIndex[n]=t} weight[n] * act(x[t] w1[e_n]) w2[e_n]
 *   MoeLinear: out[outRow[n]] += weight[n] * x[inRow[n]] w[e_n]
 *
 * moelab-cpu's `hidden` output is each assignment's pre-activation (for relu and identity the
 * activation itself), in expert-sorted order. It is a second output saved through
 * `outputsToSave` rather than a tf.customGrad closure, which leaks data ids (docs/engine.md#traps).
 * It is a handle: a tensor of shape [0] whose storage holds the N x h (gated: N x 2h) values. The
 * gradient tape hands every kernel output that nothing differentiates a zero-filled gradient of
 * the output's size, so a full-size `hidden` cost an N x h allocation and fill per backward pass
 * (and the garbage collections that external memory triggers); a [0]-shaped one costs nothing.
 * Its storage is recycled with it like any other output (disposeData).
 * The gated experts (moe-glu.ts) are the same family with a third weight: `makeExpertKernels` and
 * `registerExpertGradient` below serve both.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import {
  type Args,
  expectDtype,
  expectShape,
  type KernelConfig,
  type KernelFunc,
  moeActivationCode,
  moeExpertShapes,
  type Tensor,
  type TensorInfo,
  type Tf,
  ints,
  values,
} from './helpers.js';
import { MOE_LINEAR_GRAD_KERNEL, MOE_LINEAR_KERNEL, MOE_MLP_GRAD_KERNEL, MOE_MLP_KERNEL, type MoeLinearGradInputs } from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

export function makeMoeKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  function linearShapes(kernel: string, inputs: Record<string, TensorInfo>, outRows: number) {
    expectDtype(kernel, inputs, ['x', 'w', 'weight']);
    expectDtype(kernel, inputs, ['inRow', 'outRow', 'expertIndex'], 'int32');
    const { x, w, inRow } = inputs;
    if (x.shape.length !== 2 || w.shape.length !== 3) throw new Error(`${kernel}: x must be [R,din] and w [E,din,dout]`);
    if (!Number.isInteger(outRows) || outRows < 0) throw new Error(`${kernel}: attr outRows must be a non-negative integer`);
    const [R, din] = x.shape;
    const [E, , dout] = w.shape;
    const N = inRow.shape.reduce((a, b) => a * b, 1);
    expectShape(kernel, 'w', w, [E, din, dout]);
    for (const n of ['inRow', 'outRow', 'expertIndex', 'weight']) expectShape(kernel, n, inputs[n], [N]);
    return { R, din, dout, E, N };
  }

  const linear = (args: Args): TensorInfo => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_KERNEL, inputs, outRows);
    const out = outputArray(outRows * dout);
    if (out.length > 0) {
      const v = (n: string) => values(backend, inputs[n]);
      const i = (n: string) => ints(backend, inputs[n]);
      native.moeLinearForward(v('x'), v('w'), i('inRow'), i('outRow'), i('expertIndex'), v('weight'), out, R, din, dout, E, N, outRows);
    }
    return backend.makeTensorInfo([outRows, dout], 'float32', out);
  };

  const linearGrad = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_GRAD_KERNEL, inputs, outRows);
    expectShape(MOE_LINEAR_GRAD_KERNEL, 'dy', inputs.dy, [outRows, dout]);
    const dx = outputArray(R * din);
    const dw = outputArray(E * din * dout);
    const dweight = outputArray(N);
    const v = (n: string) => values(backend, inputs[n]);
    const i = (n: string) => ints(backend, inputs[n]);
    native.moeLinearBackward(v('dy'), v('x'), v('w'), i('inRow'), i('outRow'), i('expertIndex'), v('weight'), dx, dw, dweight, R, din, dout, E, N, outRows);
    return [
      backend.makeTensorInfo([R, din], 'float32', dx),
      backend.makeTensorInfo([E, din, dout], 'float32', dw),
      backend.makeTensorInfo([N], 'float32', dweight),
    ];
  };

  return [
    ...makeExpertKernels(backendName, {
      kernel: MOE_MLP_KERNEL,
      gradKernel: MOE_MLP_GRAD_KERNEL,
      weights: ['w1', 'w2'],
      forward: native.moeMlpForward,
      backward: native.moeMlpBackward,
    }),
    { kernelName: MOE_LINEAR_KERNEL, backendName, kernelFunc: linear as unknown as KernelFunc },
    { kernelName: MOE_LINEAR_GRAD_KERNEL, backendName, kernelFunc: linearGrad as unknown as KernelFunc },
  ];
}

/**
 * Gradients of the two fused ops, registered once for every backend. The backward work is itself a
 * kernel (`...Grad`) so each backend brings its own; the closures only hand out its outputs. It is
 * run eagerly here, not inside the closures: tfjs runs each closure in its own tidy, which would
 * dispose the outputs meant for the other inputs.
 */
export function registerMoeGradients(tf: Tf): void {
  const zerosFor = (t: Tensor) => () => tf.zeros(t.shape, 'float32');
  registerExpertGradient(tf, MOE_MLP_KERNEL, MOE_MLP_GRAD_KERNEL, ['w1', 'w2']);
  tf.registerGradient({
    kernelName: MOE_LINEAR_KERNEL,
    inputsToSave: ['x', 'w', 'inRow', 'outRow', 'expertIndex', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, w, inRow, outRow, expertIndex, weight] = saved;
      const [dx, dw, dweight] = tf
        .engine()
        .runKernel(
          MOE_LINEAR_GRAD_KERNEL,
          { dy: dOut, x, w, inRow, outRow, expertIndex, weight } satisfies MoeLinearGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      return {
        x: () => dx,
        w: () => dw,
        weight: () => dweight,
        inRow: zerosFor(inRow),
        outRow: zerosFor(outRow),
        expertIndex: zerosFor(expertIndex),
      };
    },
  });
}

/** The expert weights of a fused expert kernel, in the addon's argument order. */
export type ExpertWeightName = 'w1' | 'w3' | 'w2';

/** A fused expert family (MLP, GLU): its kernel names, weights and the addon's two entry points. */
export interface ExpertFamily {
  kernel: string;
  gradKernel: string;
  /** ['w1', 'w2'], or ['w1', 'w3', 'w2'] for gated experts (hidden is then [N, 2h]). */
  weights: readonly ExpertWeightName[];
  /** (x, ...weights, tok, exp, weight, out, hidden, T, d, h, E, N, act). */
  forward: (...args: never[]) => void;
  /** (dy, x, ...weights, tok, exp, weight, hidden, dx, ...dweights, dweight, T, d, h, E, N, act). */
  backward: (...args: never[]) => void;
}

/** The forward kernel and its Grad kernel of one fused expert family. */
export function makeExpertKernels(backendName: string, f: ExpertFamily): KernelConfig[] {
  const gated = f.weights.includes('w3');
  const hiddenWidth = (h: number) => (gated ? 2 * h : h);
  const call = (fn: (...args: never[]) => void, args: unknown[]) => (fn as unknown as (...a: unknown[]) => void)(...args);

  const forward = (args: Args): TensorInfo[] => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(f.kernel, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(f.kernel, inputs, gated);
    // Native-written outputs come from the pool; without the native call they must be zeros.
    const alloc = T * d > 0 ? outputArray : (n: number) => new Float32Array(n);
    const out = alloc(T * d);
    const hidden = alloc(N * hiddenWidth(h));
    if (T * d > 0) {
      const v = (n: string) => values(backend, inputs[n]);
      const i = (n: string) => ints(backend, inputs[n]);
      call(f.forward, [v('x'), ...f.weights.map(v), i('tokenIndex'), i('expertIndex'), v('weight'), out, hidden, T, d, h, E, N, act]);
    }
    return [backend.makeTensorInfo([T, d], 'float32', out), hiddenHandle(backend, hidden)];
  };

  const backward = (args: Args): TensorInfo[] => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(f.kernel, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(f.gradKernel, inputs, gated);
    expectShape(f.gradKernel, 'dy', inputs.dy, [T, d]);
    const hidden = hiddenValues(f.gradKernel, backend, inputs.hidden, N * hiddenWidth(h));
    // Every element is written by the native backward (empty experts get zero gradients there).
    const shapes = f.weights.map((w) => (w === 'w2' ? [E, h, d] : [E, d, h]));
    const dx = outputArray(T * d);
    const dws = shapes.map((s) => outputArray(s[0]! * s[1]! * s[2]!));
    const dweight = outputArray(N);
    const v = (n: string) => values(backend, inputs[n]);
    const i = (n: string) => ints(backend, inputs[n]);
    call(f.backward, [v('dy'), v('x'), ...f.weights.map(v), i('tokenIndex'), i('expertIndex'), v('weight'), hidden, dx, ...dws, dweight, T, d, h, E, N, act]);
    return [
      backend.makeTensorInfo([T, d], 'float32', dx),
      ...dws.map((dw, j) => backend.makeTensorInfo(shapes[j]!, 'float32', dw)),
      backend.makeTensorInfo([N], 'float32', dweight),
    ];
  };

  return [
    { kernelName: f.kernel, backendName, kernelFunc: forward as unknown as KernelFunc },
    { kernelName: f.gradKernel, backendName, kernelFunc: backward as unknown as KernelFunc },
  ];
}

/**
 * The `hidden` output of an expert kernel: a [0]-shaped tensor on `values` (see the file comment).
 * Nothing but the Grad kernel reads it.
 */
export function hiddenHandle(backend: MathBackendCPU, values: Float32Array): TensorInfo {
  return backend.makeTensorInfo([0], 'float32', values);
}

/** The storage of a `hidden` handle, checked to hold `size` values (the forward's N x h). */
export function hiddenValues(kernel: string, backend: MathBackendCPU, hidden: TensorInfo, size: number): Float32Array {
  const v = hidden ? backend.data.get(hidden.dataId)?.values : undefined;
  if (!(v instanceof Float32Array) || v.length !== size) {
    throw new Error(
      `${kernel}: input 'hidden' must be the forward kernel's second output (holding ${size} float32 values), got ${v ? `${v.length} values` : 'nothing'}`,
    );
  }
  return v;
}

/**
 * The gradient of a fused expert kernel, registered once for every backend: the backward work is
 * its Grad kernel (outputs [dx, ...dweights, dweight]), run eagerly here, not inside the closures:
 * tfjs runs each closure in its own tidy, which would dispose the outputs meant for the other inputs.
 * `hidden`, the forward's second output, is saved through `outputsToSave`.
 */
export function registerExpertGradient(tf: Tf, kernel: string, gradKernel: string, weights: readonly ExpertWeightName[]): void {
  const zerosFor = (t: Tensor) => () => tf.zeros(t.shape, 'float32');
  tf.registerGradient({
    kernelName: kernel,
    inputsToSave: ['x', ...weights, 'tokenIndex', 'expertIndex', 'weight'],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, ...rest] = saved;
      const ws = rest.slice(0, weights.length);
      const [tokenIndex, expertIndex, weight, hidden] = rest.slice(weights.length);
      const inputs: Record<string, Tensor> = { dy: dOut!, x: x!, tokenIndex: tokenIndex!, expertIndex: expertIndex!, weight: weight!, hidden: hidden! };
      weights.forEach((w, j) => {
        inputs[w] = ws[j]!;
      });
      const [dx, ...grads] = tf.engine().runKernel(gradKernel, inputs as unknown as tfTypes.NamedTensorMap, attrs as tfTypes.NamedAttrMap) as Tensor[];
      const out: Record<string, () => Tensor> = {
        x: () => dx!,
        weight: () => grads[weights.length]!,
        tokenIndex: zerosFor(tokenIndex!),
        expertIndex: zerosFor(expertIndex!),
      };
      weights.forEach((w, j) => {
        out[w] = () => grads[j]!;
      });
      return out;
    },
  });
}
