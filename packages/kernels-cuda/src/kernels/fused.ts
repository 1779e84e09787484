/**
 * The fused kernels of core's contract (@moelab/core/kernels) that run on CUDA:
 *
 *   MoelabMoeMLP:     out[t] = sum_{n: tokenIndex[n]=t} weight[n] act(x[t] w1[e_n]) w2[e_n]
 *   MoelabMoeGLU:     out[t] = sum_{n: tokenIndex[n]=t} weight[n] (act(x[t] w1[e_n]) * x[t] w3[e_n]) w2[e_n]   (arXiv:2002.05202)
 *   MoelabMoePacked:  the MLP / GLU experts on weight-only quantized weights, W[e,i,j] =
 *                     scale[e, i/group, j] (u[e,i,j] - zero[e, i/group, j]), dequantized as the
 *                     expert GEMMs load their tiles (the backward gives dx and dweight: frozen weights)
 *   MoelabMoeLinear:  out[outRow[n]] += weight[n] x[inRow[n]] w[e_n]
 *   MoelabLayerNorm:  y = (x - mean) rstd gamma + beta
 *   MoelabAdamW:      m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2, p' = p - lr (m'/bc1)/(sqrt(v'/bc2)+eps) - lr wd p
 *
 * and their backward kernels. MoeMLP's `hidden` output is each assignment's pre-activation x w1 in
 * assignment order (GLU and gated packed experts: [x w1 | x w3]) (moelab-cpu keeps its own order: the pair forward / backward always runs on the
 * same backend). The gradients are the contract's, registered once for every backend
 * (@moelab/kernels-cpu's registerFusedGradients).
 */
import {
  ADAMW_KERNEL,
  LAYER_NORM_GRAD_KERNEL,
  LAYER_NORM_KERNEL,
  MOE_ACTIVATION_CODE,
  MOE_LINEAR_GRAD_KERNEL,
  MOE_LINEAR_KERNEL,
  MOE_MLP_GRAD_KERNEL,
  MOE_GLU_GRAD_KERNEL,
  MOE_GLU_KERNEL,
  MOE_MLP_KERNEL,
  MOE_PACKED_GRAD_KERNEL,
  MOE_PACKED_KERNEL,
  PACKED_BITS,
  isMoeActivation,
  packedGroups,
  packedRowWords,
} from '@moelab/core/kernels';
import type { Ptr } from '../native.js';
import { type Args, backendOf, type Ctx, devInputs, expectDtype, expectShape, inputs, prod, type TensorInfo } from './context.js';

function activationCode(kernel: string, a: unknown): number {
  if (typeof a !== 'string' || !isMoeActivation(a))
    throw new Error(`${kernel}: unknown activation '${String(a)}' (expected ${Object.keys(MOE_ACTIVATION_CODE).join(', ')})`);
  return MOE_ACTIVATION_CODE[a];
}

function mlpShapes(kernel: string, ins: Record<string, TensorInfo>, gated = false) {
  expectDtype(kernel, ins, gated ? ['x', 'w1', 'w3', 'w2', 'weight'] : ['x', 'w1', 'w2', 'weight']);
  expectDtype(kernel, ins, ['tokenIndex', 'expertIndex'], 'int32');
  const { x, w1 } = ins;
  if (x!.shape.length !== 2 || w1!.shape.length !== 3) throw new Error(`${kernel}: x must be [T,d] and w1 [E,d,h]`);
  const [T, d] = x!.shape as [number, number];
  const [E, , h] = w1!.shape as [number, number, number];
  const N = prod(ins.tokenIndex!.shape);
  expectShape(kernel, 'w1', w1!, [E, d, h]);
  if (gated) expectShape(kernel, 'w3', ins.w3!, [E, d, h]);
  expectShape(kernel, 'w2', ins.w2!, [E, h, d]);
  for (const n of ['tokenIndex', 'expertIndex', 'weight']) expectShape(kernel, n, ins[n]!, [N]);
  return { T, d, h, E, N };
}

/** Checks a packed kernel's inputs and attrs (ungated experts pass empty w3 tensors). */
function packedShapes(kernel: string, ins: Record<string, TensorInfo>, attrs: Args['attrs']) {
  const bits = Number(attrs?.bits);
  const group = Number(attrs?.group ?? 0);
  if (!(PACKED_BITS as readonly number[]).includes(bits))
    throw new Error(`${kernel}: attr bits must be one of ${PACKED_BITS.join(', ')}, got ${String(attrs?.bits)}`);
  if (!Number.isInteger(group) || group < 0) throw new Error(`${kernel}: attr group must be a non-negative integer, got ${String(attrs?.group)}`);
  const gated = ins.w3Codes !== undefined && prod(ins.w3Codes.shape) > 0;
  const present = (['w1', 'w3', 'w2'] as const).filter((w) => w !== 'w3' || gated);
  expectDtype(kernel, ins, ['x', 'weight', ...present.flatMap((w) => [`${w}Scale`, `${w}Zero`])]);
  expectDtype(kernel, ins, ['tokenIndex', 'expertIndex', ...present.map((w) => `${w}Codes`)], 'int32');
  const { x, w1Scale } = ins;
  if (x!.shape.length !== 2 || w1Scale!.shape.length !== 3) throw new Error(`${kernel}: x must be [T,d] and w1Scale [E,G,h]`);
  const [T, d] = x!.shape as [number, number];
  const [E, , h] = w1Scale!.shape as [number, number, number];
  const N = prod(ins.tokenIndex!.shape);
  for (const w of present) {
    const [din, dout] = w === 'w2' ? [h, d] : [d, h];
    expectShape(kernel, `${w}Codes`, ins[`${w}Codes`]!, [E, din, packedRowWords(dout, bits)]);
    expectShape(kernel, `${w}Scale`, ins[`${w}Scale`]!, [E, packedGroups(din, group), dout]);
    expectShape(kernel, `${w}Zero`, ins[`${w}Zero`]!, [E, packedGroups(din, group), dout]);
  }
  for (const n of ['tokenIndex', 'expertIndex', 'weight']) expectShape(kernel, n, ins[n]!, [N]);
  return { T, d, h, E, N, bits, group, gated };
}

function linearShapes(kernel: string, ins: Record<string, TensorInfo>, outRows: number) {
  expectDtype(kernel, ins, ['x', 'w', 'weight']);
  expectDtype(kernel, ins, ['inRow', 'outRow', 'expertIndex'], 'int32');
  const { x, w } = ins;
  if (x!.shape.length !== 2 || w!.shape.length !== 3) throw new Error(`${kernel}: x must be [R,din] and w [E,din,dout]`);
  if (!Number.isInteger(outRows) || outRows < 0) throw new Error(`${kernel}: attr outRows must be a non-negative integer`);
  const [R, din] = x!.shape as [number, number];
  const [E, , dout] = w!.shape as [number, number, number];
  const N = prod(ins.inRow!.shape);
  expectShape(kernel, 'w', w!, [E, din, dout]);
  for (const n of ['inRow', 'outRow', 'expertIndex', 'weight']) expectShape(kernel, n, ins[n]!, [N]);
  return { R, din, dout, E, N };
}

/**
 * Runs `launch` with fresh float32 outputs named as in `shapes` (in the kernel's output order),
 * disposing them when it throws (a bad index).
 */
function withOutputs<K extends string>(args: Args, shapes: Record<K, number[]>, launch: (outs: Record<K, Ptr>) => void): TensorInfo[] {
  const be = backendOf(args);
  const outs = (Object.entries(shapes) as [K, number[]][]).map(([name, shape]) => ({ name, out: be.makeOutput(shape, 'float32') }));
  try {
    launch(Object.fromEntries(outs.map((o) => [o.name, o.out.ptr])) as Record<K, Ptr>);
  } catch (e) {
    for (const o of outs) be.disposeData(o.out.info.dataId, true);
    throw e;
  }
  return outs.map((o) => o.out.info);
}

const ROUTING = ['tokenIndex', 'expertIndex', 'weight'] as const;
const FLOAT_EXPERTS = ['x', 'w1', 'w3', 'w2', ...ROUTING] as const;
const PACKED_WEIGHTS = ['w1', 'w3', 'w2'].flatMap((w) => [`${w}Codes`, `${w}Scale`, `${w}Zero`]);

export function registerFused({ native, add }: Ctx): void {
  // MoelabMoeMLP and MoelabMoeGLU (gated: w3 and a hidden of [x w1 | x w3]) and their backward kernels.
  for (const [kernel, grad, gated] of [
    [MOE_MLP_KERNEL, MOE_MLP_GRAD_KERNEL, false],
    [MOE_GLU_KERNEL, MOE_GLU_GRAD_KERNEL, true],
  ] as const) {
    const names = FLOAT_EXPERTS.filter((n) => gated || n !== 'w3');
    add(kernel, (args: Args) => {
      const ins = inputs(args);
      const dims = { ...mlpShapes(kernel, ins, gated), act: activationCode(kernel, args.attrs?.activation) };
      const { T, d, h, N } = dims;
      return withOutputs(args, { out: [T, d], hidden: [N, gated ? 2 * h : h] }, (outs) =>
        native.moeExperts('forward', { ...devInputs(args, names), ...outs }, dims),
      );
    });
    add(grad, (args: Args) => {
      const ins = inputs(args);
      const dims = { ...mlpShapes(grad, ins, gated), act: activationCode(grad, args.attrs?.activation) };
      const { T, d, h, E, N } = dims;
      expectShape(grad, 'dy', ins.dy!, [T, d]);
      expectShape(grad, 'hidden', ins.hidden!, [N, gated ? 2 * h : h]);
      const shapes: Record<string, number[]> = gated
        ? { dx: [T, d], dw1: [E, d, h], dw3: [E, d, h], dw2: [E, h, d], dweight: [N] }
        : { dx: [T, d], dw1: [E, d, h], dw2: [E, h, d], dweight: [N] };
      return withOutputs(args, shapes, (outs) => native.moeExperts('backward', { ...devInputs(args, [...names, 'dy', 'hidden']), ...outs }, dims));
    });
  }

  // MoelabMoePacked: the same launches on packed weights (w3Codes only for gated experts).
  add(MOE_PACKED_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const { gated, ...dims } = { ...packedShapes(MOE_PACKED_KERNEL, ins, args.attrs), act: activationCode(MOE_PACKED_KERNEL, args.attrs?.activation) };
    const weights = devInputs(
      args,
      PACKED_WEIGHTS.filter((n) => gated || !n.startsWith('w3')),
    );
    return withOutputs(args, { out: [dims.T, dims.d], hidden: [dims.N, gated ? 2 * dims.h : dims.h] }, (outs) =>
      native.moeExperts('forward', { ...devInputs(args, ['x', ...ROUTING]), ...weights, ...outs }, dims),
    );
  });

  add(MOE_PACKED_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const { gated, ...dims } = {
      ...packedShapes(MOE_PACKED_GRAD_KERNEL, ins, args.attrs),
      act: activationCode(MOE_PACKED_GRAD_KERNEL, args.attrs?.activation),
    };
    expectShape(MOE_PACKED_GRAD_KERNEL, 'dy', ins.dy!, [dims.T, dims.d]);
    expectShape(MOE_PACKED_GRAD_KERNEL, 'hidden', ins.hidden!, [dims.N, gated ? 2 * dims.h : dims.h]);
    const weights = devInputs(
      args,
      PACKED_WEIGHTS.filter((n) => gated || !n.startsWith('w3')),
    );
    return withOutputs(args, { dx: [dims.T, dims.d], dweight: [dims.N] }, (outs) =>
      native.moeExperts('backward', { ...devInputs(args, ['x', ...ROUTING, 'dy', 'hidden']), ...weights, ...outs }, dims),
    );
  });

  const LINEAR = ['x', 'w', 'inRow', 'outRow', 'expertIndex', 'weight'] as const;
  add(MOE_LINEAR_KERNEL, (args: Args) => {
    const outRows = Number(args.attrs?.outRows);
    const dims = { ...linearShapes(MOE_LINEAR_KERNEL, inputs(args), outRows), outRows };
    const [out] = withOutputs(args, { out: [outRows, dims.dout] }, (outs) => {
      if (outRows * dims.dout > 0) native.moeLinear('forward', { ...devInputs(args, LINEAR), ...outs }, dims);
    });
    return out!;
  });

  add(MOE_LINEAR_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const outRows = Number(args.attrs?.outRows);
    const dims = { ...linearShapes(MOE_LINEAR_GRAD_KERNEL, ins, outRows), outRows };
    const { R, din, dout, E, N } = dims;
    expectShape(MOE_LINEAR_GRAD_KERNEL, 'dy', ins.dy!, [outRows, dout]);
    return withOutputs(args, { dx: [R, din], dw: [E, din, dout], dweight: [N] }, (outs) =>
      native.moeLinear('backward', { ...devInputs(args, [...LINEAR, 'dy']), ...outs }, dims),
    );
  });

  const normShapes = (kernel: string, ins: Record<string, TensorInfo>, names: string[]) => {
    expectDtype(kernel, ins, names);
    const x = ins.x!;
    if (x.shape.length < 1) throw new Error(`${kernel}: x must have at least one axis`);
    const D = x.shape[x.shape.length - 1]!;
    const rows = D === 0 ? 0 : prod(x.shape) / D;
    for (const n of ['gamma', 'beta']) if (ins[n]) expectShape(kernel, n, ins[n], [D]);
    return { D, rows, statShape: x.shape.slice(0, -1) };
  };

  add(LAYER_NORM_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const { D, rows, statShape } = normShapes(LAYER_NORM_KERNEL, ins, ins.beta ? ['x', 'gamma', 'beta'] : ['x', 'gamma']);
    const eps = Number(args.attrs?.eps);
    if (!(eps >= 0)) throw new Error(`${LAYER_NORM_KERNEL}: attr eps must be a non-negative number`);
    const be = backendOf(args);
    const y = be.makeOutput(ins.x!.shape, 'float32');
    const mean = be.makeOutput(statShape, 'float32');
    const rstd = be.makeOutput(statShape, 'float32');
    if (rows * D > 0) native.layerNorm('forward', { ...devInputs(args, ['x', 'gamma', 'beta']), y: y.ptr, mean: mean.ptr, rstd: rstd.ptr }, { rows, D, eps });
    return [y.info, mean.info, rstd.info];
  });

  add(LAYER_NORM_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const { D, rows } = normShapes(LAYER_NORM_GRAD_KERNEL, ins, ['dy', 'x', 'gamma', 'mean', 'rstd']);
    const hasBeta = !!args.attrs?.hasBeta;
    const be = backendOf(args);
    const dx = be.makeOutput(ins.x!.shape, 'float32');
    const dgamma = be.makeOutput([D], 'float32');
    const dbeta = hasBeta ? be.makeOutput([D], 'float32') : null;
    if (D > 0) {
      const grads = { dx: dx.ptr, dgamma: dgamma.ptr, dbeta: dbeta ? dbeta.ptr : null };
      native.layerNorm('backward', { ...devInputs(args, ['dy', 'x', 'gamma', 'mean', 'rstd']), ...grads }, { rows, D });
    }
    return dbeta ? [dx.info, dgamma.info, dbeta.info] : [dx.info, dgamma.info];
  });

  add(ADAMW_KERNEL, (args: Args) => {
    const ins = inputs(args);
    expectDtype(ADAMW_KERNEL, ins, ['p', 'g', 'm', 'v']);
    const shape = ins.p!.shape;
    for (const n of ['g', 'm', 'v']) expectShape(ADAMW_KERNEL, n, ins[n]!, shape);
    const a = (args.attrs ?? {}) as Record<string, unknown>;
    const num = (name: string) => {
      const x = Number(a[name]);
      if (!Number.isFinite(x)) throw new Error(`${ADAMW_KERNEL}: attr ${name} must be a finite number, got ${String(a[name])}`);
      return x;
    };
    const [lr, beta1, beta2, eps, wd, bc1, bc2] = ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'bc1', 'bc2'].map(num) as number[];
    const be = backendOf(args);
    const outs = [be.makeOutput(shape, 'float32'), be.makeOutput(shape, 'float32'), be.makeOutput(shape, 'float32')];
    const n = prod(shape);
    if (n > 0) {
      const [pOut, mOut, vOut] = outs.map((o) => o.ptr) as [number, number, number];
      native.adamw(
        { ...devInputs(args, ['p', 'g', 'm', 'v']), pOut, mOut, vOut },
        {
          n,
          beta1: beta1!,
          oneMinusBeta1: 1 - beta1!,
          beta2: beta2!,
          oneMinusBeta2: 1 - beta2!,
          eps: eps!,
          bc1: bc1!,
          bc2: bc2!,
          lr: lr!,
          lrTimesDecay: lr! * wd!,
          decay: wd! > 0,
        },
      );
    }
    return outs.map((o) => o.info);
  });
}
