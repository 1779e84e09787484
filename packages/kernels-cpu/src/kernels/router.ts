/**
 * The fused router gates of core's kernel contract (@moelab/core/kernels) for the moelab-cpu
 * backend, and their gradients:
 *
 *   softmax (SOFTMAX_TOPK_KERNEL):  p = softmax(scores)   S = top-k(scores + bias)
 *                                   weight_s = p[e_s] / sum_{r in S} p[e_r]  (renormalize),  p[e_s]  (raw)
 *   sigmoid (SIGMOID_TOPK_KERNEL):  S = top-k(scores)     weight_s = sigmoid(scores[e_s])   (sigma-MoE, MoEUT)
 *
 * One pass per token row (on the thread pool) instead of softmax + gather + segment sum + divide
 * (softmax) or a top-k on plain arrays + gather + sigmoid (sigmoid) forward and their gradients
 * backward; renormalised softmax and sigmoid backwards write only the k chosen scores of each row
 * (and zeros). Outputs are slot-major [k, T], the order of a router's dispatch plan.
 */
import type * as tfTypes from '@tensorflow/tfjs';
import {
  SIGMOID_TOPK_GRAD_KERNEL,
  SIGMOID_TOPK_KERNEL,
  type SigmoidTopKGradInputs,
  type SigmoidTopKInputs,
  SOFTMAX_TOPK_GRAD_KERNEL,
  SOFTMAX_TOPK_KERNEL,
  type SoftmaxTopKAttrs,
  type SoftmaxTopKGradInputs,
  type SoftmaxTopKInputs,
} from '@moelab/core/kernels';
import type { NativeAddon } from '../native.js';
import { outputArray } from '../storage.js';
import {
  type Args,
  backendOf,
  expectDtype,
  expectShape,
  type KernelConfig,
  type KernelFunc,
  type Tensor,
  type TensorInfo,
  type Tf,
  ints,
  values,
} from './helpers.js';

/** Checks scores [T,E] and the attrs (1 <= k <= E); returns the sizes. */
function gateShapes(kernel: string, scores: TensorInfo, attrs: Args['attrs']): { T: number; E: number; k: number; renormalize: boolean } {
  if (scores?.dtype !== 'float32' || scores.shape.length !== 2) throw new Error(`${kernel}: input 'scores' must be float32 [T,E]`);
  const [T, E] = scores.shape as [number, number];
  const { k, renormalize } = (attrs ?? {}) as unknown as SoftmaxTopKAttrs;
  if (!Number.isInteger(k) || k < 1 || k > E) throw new Error(`${kernel}: attr k must be an integer in [1, ${E}], got ${String(k)}`);
  return { T, E, k, renormalize: !!renormalize };
}

/** A gate's two outputs [k,T] (weight float32, expert int32), filled by `fill` when there are tokens. */
function gateOutputs(args: Args, k: number, T: number, fill: (weight: Float32Array, expert: Int32Array) => void): TensorInfo[] {
  const backend = backendOf(args);
  const weight = outputArray(k * T);
  const expert = new Int32Array(k * T);
  if (T > 0) fill(weight, expert);
  return [backend.makeTensorInfo([k, T], 'float32', weight), backend.makeTensorInfo([k, T], 'int32', expert)];
}

/** Checks a gate backward's dy and weight (float32) and expert (int32) inputs, each [k,T]. */
function checkGateGradInputs(kernel: string, dy: TensorInfo, weight: TensorInfo, expert: TensorInfo, k: number, T: number): void {
  expectDtype(kernel, { dy, weight }, ['dy', 'weight']);
  expectDtype(kernel, { expert }, ['expert'], 'int32');
  for (const [name, t] of [
    ['dy', dy],
    ['weight', weight],
    ['expert', expert],
  ] as const)
    expectShape(kernel, name, t, [k, T]);
}

export function makeRouterKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const gate = (args: Args): TensorInfo[] => {
    const backend = backendOf(args);
    const { scores, bias } = args.inputs as unknown as SoftmaxTopKInputs<TensorInfo>;
    const { T, E, k, renormalize } = gateShapes(SOFTMAX_TOPK_KERNEL, scores, args.attrs);
    expectDtype(SOFTMAX_TOPK_KERNEL, { bias }, ['bias']);
    const biased = bias.shape.length === 1 && bias.shape[0] === E;
    if (!biased) expectShape(SOFTMAX_TOPK_KERNEL, 'bias', bias, [0]);
    return gateOutputs(args, k, T, (weight, expert) =>
      native.softmaxTopK(values(backend, scores), biased ? values(backend, bias) : null, weight, expert, T, E, k, renormalize),
    );
  };

  const gateGrad = (args: Args): TensorInfo => {
    const backend = backendOf(args);
    const { dy, scores, weight, expert } = args.inputs as unknown as SoftmaxTopKGradInputs<TensorInfo>;
    const { T, E, k, renormalize } = gateShapes(SOFTMAX_TOPK_GRAD_KERNEL, scores, args.attrs);
    checkGateGradInputs(SOFTMAX_TOPK_GRAD_KERNEL, dy, weight, expert, k, T);
    const dscores = outputArray(T * E);
    if (T > 0)
      native.softmaxTopKGrad(values(backend, dy), values(backend, scores), values(backend, weight), ints(backend, expert), dscores, T, E, k, renormalize);
    return backend.makeTensorInfo([T, E], 'float32', dscores);
  };

  const sigmoidGate = (args: Args): TensorInfo[] => {
    const backend = backendOf(args);
    const { scores } = args.inputs as unknown as SigmoidTopKInputs<TensorInfo>;
    const { T, E, k } = gateShapes(SIGMOID_TOPK_KERNEL, scores, args.attrs);
    return gateOutputs(args, k, T, (weight, expert) => native.sigmoidTopK(values(backend, scores), weight, expert, T, E, k));
  };

  const sigmoidGateGrad = (args: Args): TensorInfo => {
    const backend = backendOf(args);
    const { dy, scores, weight, expert } = args.inputs as unknown as SigmoidTopKGradInputs<TensorInfo>;
    const { T, E, k } = gateShapes(SIGMOID_TOPK_GRAD_KERNEL, scores, args.attrs);
    checkGateGradInputs(SIGMOID_TOPK_GRAD_KERNEL, dy, weight, expert, k, T);
    const dscores = outputArray(T * E);
    if (T > 0) native.sigmoidTopKGrad(values(backend, dy), values(backend, weight), ints(backend, expert), dscores, T, E, k);
    return backend.makeTensorInfo([T, E], 'float32', dscores);
  };

  return [
    { kernelName: SOFTMAX_TOPK_KERNEL, backendName, kernelFunc: gate as unknown as KernelFunc },
    { kernelName: SOFTMAX_TOPK_GRAD_KERNEL, backendName, kernelFunc: gateGrad as unknown as KernelFunc },
    { kernelName: SIGMOID_TOPK_KERNEL, backendName, kernelFunc: sigmoidGate as unknown as KernelFunc },
    { kernelName: SIGMOID_TOPK_GRAD_KERNEL, backendName, kernelFunc: sigmoidGateGrad as unknown as KernelFunc },
  ];
}

/** The gates' gradients, registered once for every backend: the backward work is the Grad kernel. */
export function registerRouterGradients(tf: Tf): void {
  // The scores' gradient: `gradKernel` on the weight output's gradient (the expert indices have none)
  // and the saved scores and outputs.
  const scoresGrad = (gradKernel: string, dy: Tensor | Tensor[], scores: Tensor, weight: Tensor, expert: Tensor, attrs: unknown) => () =>
    tf
      .engine()
      .runKernel(
        gradKernel,
        { dy: Array.isArray(dy) ? dy[0]! : dy, scores, weight, expert } satisfies SoftmaxTopKGradInputs<Tensor> &
          SigmoidTopKGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
        attrs as tfTypes.NamedAttrMap,
      ) as Tensor;
  tf.registerGradient({
    kernelName: SOFTMAX_TOPK_KERNEL,
    inputsToSave: ['scores', 'bias'],
    outputsToSave: [true, true],
    gradFunc: (dy, saved, attrs) => {
      const [scores, bias, weight, expert] = saved as Tensor[];
      return {
        scores: scoresGrad(SOFTMAX_TOPK_GRAD_KERNEL, dy, scores!, weight!, expert!, attrs),
        // The bias moves the selection only: no gradient.
        bias: () => tf.zeros(bias!.shape, 'float32'),
      };
    },
  });
  tf.registerGradient({
    kernelName: SIGMOID_TOPK_KERNEL,
    inputsToSave: ['scores'],
    outputsToSave: [true, true],
    gradFunc: (dy, saved, attrs) => {
      const [scores, weight, expert] = saved as Tensor[];
      return { scores: scoresGrad(SIGMOID_TOPK_GRAD_KERNEL, dy, scores!, weight!, expert!, attrs) };
    },
  });
}
