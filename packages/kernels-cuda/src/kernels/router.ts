/**
 * The softmax top-k router gate of core's kernel contract (@moelab/core/kernels:
 * SOFTMAX_TOPK_KERNEL and SOFTMAX_TOPK_GRAD_KERNEL) on CUDA, one thread per token row:
 *
 *   p = softmax(scores)   S = top-k(scores + bias)   weight_s = p[e_s] / sum_{r in S} p[e_r]  (renormalize)
 *                                                    weight_s = p[e_s]                        (raw)
 *   backward, dot = sum_s weight_s dy_s: renormalised dscores[e_s] = weight_s (dy_s - dot);
 *                                        raw dscores[j] = p_j (dy_j - dot), dy_j the slot gradient of j
 *
 * Outputs slot-major [k, T] (the dispatch plan's order); ties choose the lower index; -Infinity and
 * NaN are never chosen (expert -1, weight 0 in a slot without a choice). The gradient is the
 * contract's, registered once for every backend (@moelab/kernels-cpu's registerFusedGradients).
 */
import { SOFTMAX_TOPK_GRAD_KERNEL, SOFTMAX_TOPK_KERNEL } from '@moelab/core/kernels';
import { type Args, backendOf, type Ctx, devInputs, expectDtype, expectShape, inputs, type TensorInfo } from './context.js';

/** Checks scores [T,E] and the attrs (1 <= k <= E); returns the sizes. */
function gateShapes(kernel: string, scores: TensorInfo | undefined, attrs: Args['attrs']) {
  if (scores?.dtype !== 'float32' || scores.shape.length !== 2) throw new Error(`${kernel}: input 'scores' must be float32 [T,E]`);
  const [T, E] = scores.shape as [number, number];
  const { k, renormalize } = (attrs ?? {}) as { k?: unknown; renormalize?: unknown };
  if (typeof k !== 'number' || !Number.isInteger(k) || k < 1 || k > E) throw new Error(`${kernel}: attr k must be an integer in [1, ${E}], got ${String(k)}`);
  return { T, E, k, renormalize: !!renormalize };
}

export function registerRouter({ native, add }: Ctx): void {
  add(SOFTMAX_TOPK_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const { T, E, k, renormalize } = gateShapes(SOFTMAX_TOPK_KERNEL, ins.scores, args.attrs);
    expectDtype(SOFTMAX_TOPK_KERNEL, ins, ['bias']);
    const biased = ins.bias!.shape.length === 1 && ins.bias!.shape[0] === E;
    if (!biased) expectShape(SOFTMAX_TOPK_KERNEL, 'bias', ins.bias!, [0]);
    const be = backendOf(args);
    const weight = be.makeOutput([k, T], 'float32');
    const expert = be.makeOutput([k, T], 'int32');
    const bias = biased ? be.dev(ins.bias!) : null;
    if (T > 0) native.softmaxTopK('forward', { scores: be.dev(ins.scores!), bias, weight: weight.ptr, expert: expert.ptr }, { T, E, k, renormalize });
    return [weight.info, expert.info];
  });

  add(SOFTMAX_TOPK_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = SOFTMAX_TOPK_GRAD_KERNEL;
    const { T, E, k, renormalize } = gateShapes(kernel, ins.scores, args.attrs);
    expectDtype(kernel, ins, ['dy', 'weight']);
    expectDtype(kernel, ins, ['expert'], 'int32');
    for (const name of ['dy', 'weight', 'expert']) expectShape(kernel, name, ins[name]!, [k, T]);
    const be = backendOf(args);
    const dscores = be.makeOutput([T, E], 'float32');
    if (T > 0) native.softmaxTopK('backward', { ...devInputs(args, ['dy', 'scores', 'weight', 'expert']), dscores: dscores.ptr }, { T, E, k, renormalize });
    return dscores.info;
  });
}
