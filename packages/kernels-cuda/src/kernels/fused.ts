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
import { type Args, backendOf, type Ctx, expectDtype, expectShape, inputs, prod, type TensorInfo } from './context.js';

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

export function registerFused({ native, add }: Ctx): void {
  add(MOE_MLP_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_MLP_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = mlpShapes(MOE_MLP_KERNEL, ins);
    const be = backendOf(args);
    const out = be.makeOutput([T, d], 'float32');
    const hidden = be.makeOutput([N, h], 'float32');
    const p = (n: string) => be.dev(ins[n]!);
    try {
      native.moeMlpForward(p('x'), p('w1'), p('w2'), p('tokenIndex'), p('expertIndex'), p('weight'), out.ptr, hidden.ptr, T, d, h, E, N, act);
    } catch (e) {
      be.disposeData(out.info.dataId, true);
      be.disposeData(hidden.info.dataId, true);
      throw e;
    }
    return [out.info, hidden.info];
  });

  add(MOE_MLP_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_MLP_GRAD_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = mlpShapes(MOE_MLP_GRAD_KERNEL, ins);
    expectShape(MOE_MLP_GRAD_KERNEL, 'dy', ins.dy!, [T, d]);
    expectShape(MOE_MLP_GRAD_KERNEL, 'hidden', ins.hidden!, [N, h]);
    const be = backendOf(args);
    const outs = [be.makeOutput([T, d], 'float32'), be.makeOutput([E, d, h], 'float32'), be.makeOutput([E, h, d], 'float32'), be.makeOutput([N], 'float32')];
    const p = (n: string) => be.dev(ins[n]!);
    try {
      native.moeMlpBackward(
        p('dy'),
        p('x'),
        p('w1'),
        p('w2'),
        p('tokenIndex'),
        p('expertIndex'),
        p('weight'),
        p('hidden'),
        outs[0]!.ptr,
        outs[1]!.ptr,
        outs[2]!.ptr,
        outs[3]!.ptr,
        T,
        d,
        h,
        E,
        N,
        act,
      );
    } catch (e) {
      for (const o of outs) be.disposeData(o.info.dataId, true);
      throw e;
    }
    return outs.map((o) => o.info);
  });

  // Runs `launch` with fresh outputs of `shapes`, disposing them when it throws (a bad index).
  const withOutputs = (args: Args, shapes: number[][], launch: (ptrs: number[]) => void): TensorInfo[] => {
    const be = backendOf(args);
    const outs = shapes.map((s) => be.makeOutput(s, 'float32'));
    try {
      launch(outs.map((o) => o.ptr));
    } catch (e) {
      for (const o of outs) be.disposeData(o.info.dataId, true);
      throw e;
    }
    return outs.map((o) => o.info);
  };

  add(MOE_GLU_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_GLU_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = mlpShapes(MOE_GLU_KERNEL, ins, true);
    const p = (n: string) => backendOf(args).dev(ins[n]!);
    return withOutputs(
      args,
      [
        [T, d],
        [N, 2 * h],
      ],
      ([out, hidden]) =>
        native.moeGluForward(p('x'), p('w1'), p('w3'), p('w2'), p('tokenIndex'), p('expertIndex'), p('weight'), out!, hidden!, T, d, h, E, N, act),
    );
  });

  add(MOE_GLU_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_GLU_GRAD_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = mlpShapes(MOE_GLU_GRAD_KERNEL, ins, true);
    expectShape(MOE_GLU_GRAD_KERNEL, 'dy', ins.dy!, [T, d]);
    expectShape(MOE_GLU_GRAD_KERNEL, 'hidden', ins.hidden!, [N, 2 * h]);
    const p = (n: string) => backendOf(args).dev(ins[n]!);
    return withOutputs(args, [[T, d], [E, d, h], [E, d, h], [E, h, d], [N]], ([dx, dw1, dw3, dw2, dweight]) =>
      native.moeGluBackward(
        p('dy'),
        p('x'),
        p('w1'),
        p('w3'),
        p('w2'),
        p('tokenIndex'),
        p('expertIndex'),
        p('weight'),
        p('hidden'),
        dx!,
        dw1!,
        dw3!,
        dw2!,
        dweight!,
        T,
        d,
        h,
        E,
        N,
        act,
      ),
    );
  });

  // The packed weights in the addon's order (w3's null for ungated experts), then bits and group.
  const packedArgs = (args: Args, gated: boolean, bits: number, group: number): (number | null)[] => {
    const ins = inputs(args);
    const be = backendOf(args);
    const list: (number | null)[] = [];
    for (const w of ['w1', 'w3', 'w2']) {
      for (const part of ['Codes', 'Scale', 'Zero']) list.push(w === 'w3' && !gated ? null : be.dev(ins[`${w}${part}`]!));
    }
    return [...list, bits, group];
  };

  add(MOE_PACKED_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_PACKED_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N, bits, group, gated } = packedShapes(MOE_PACKED_KERNEL, ins, args.attrs);
    const p = (n: string) => backendOf(args).dev(ins[n]!);
    return withOutputs(
      args,
      [
        [T, d],
        [N, gated ? 2 * h : h],
      ],
      ([out, hidden]) =>
        native.moePackedForward(
          packedArgs(args, gated, bits, group),
          p('x'),
          p('tokenIndex'),
          p('expertIndex'),
          p('weight'),
          out!,
          hidden!,
          T,
          d,
          h,
          E,
          N,
          act,
        ),
    );
  });

  add(MOE_PACKED_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const act = activationCode(MOE_PACKED_GRAD_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N, bits, group, gated } = packedShapes(MOE_PACKED_GRAD_KERNEL, ins, args.attrs);
    expectShape(MOE_PACKED_GRAD_KERNEL, 'dy', ins.dy!, [T, d]);
    expectShape(MOE_PACKED_GRAD_KERNEL, 'hidden', ins.hidden!, [N, gated ? 2 * h : h]);
    const p = (n: string) => backendOf(args).dev(ins[n]!);
    return withOutputs(args, [[T, d], [N]], ([dx, dweight]) =>
      native.moePackedBackward(
        packedArgs(args, gated, bits, group),
        p('dy'),
        p('x'),
        p('tokenIndex'),
        p('expertIndex'),
        p('weight'),
        p('hidden'),
        dx!,
        dweight!,
        T,
        d,
        h,
        E,
        N,
        act,
      ),
    );
  });

  add(MOE_LINEAR_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_KERNEL, ins, outRows);
    const be = backendOf(args);
    const out = be.makeOutput([outRows, dout], 'float32');
    const p = (n: string) => be.dev(ins[n]!);
    try {
      if (outRows * dout > 0)
        native.moeLinearForward(p('x'), p('w'), p('inRow'), p('outRow'), p('expertIndex'), p('weight'), out.ptr, R, din, dout, E, N, outRows);
    } catch (e) {
      be.disposeData(out.info.dataId, true);
      throw e;
    }
    return out.info;
  });

  add(MOE_LINEAR_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_GRAD_KERNEL, ins, outRows);
    expectShape(MOE_LINEAR_GRAD_KERNEL, 'dy', ins.dy!, [outRows, dout]);
    const be = backendOf(args);
    const outs = [be.makeOutput([R, din], 'float32'), be.makeOutput([E, din, dout], 'float32'), be.makeOutput([N], 'float32')];
    const p = (n: string) => be.dev(ins[n]!);
    try {
      native.moeLinearBackward(
        p('dy'),
        p('x'),
        p('w'),
        p('inRow'),
        p('outRow'),
        p('expertIndex'),
        p('weight'),
        outs[0]!.ptr,
        outs[1]!.ptr,
        outs[2]!.ptr,
        R,
        din,
        dout,
        E,
        N,
        outRows,
      );
    } catch (e) {
      for (const o of outs) be.disposeData(o.info.dataId, true);
      throw e;
    }
    return outs.map((o) => o.info);
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
    if (rows * D > 0) native.layerNormForward(be.dev(ins.x!), be.dev(ins.gamma!), ins.beta ? be.dev(ins.beta) : null, y.ptr, mean.ptr, rstd.ptr, rows, D, eps);
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
      const p = (n: string) => be.dev(ins[n]!);
      native.layerNormBackward(p('dy'), p('x'), p('gamma'), p('mean'), p('rstd'), dx.ptr, dgamma.ptr, dbeta ? dbeta.ptr : null, rows, D);
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
      const p = (k: string) => be.dev(ins[k]!);
      native.adamw(
        p('p'),
        p('g'),
        p('m'),
        p('v'),
        outs[0]!.ptr,
        outs[1]!.ptr,
        outs[2]!.ptr,
        n,
        [beta1!, 1 - beta1!, beta2!, 1 - beta2!, eps!, bc1!, bc2!, lr!, lr! * wd!],
        wd! > 0,
      );
    }
    return outs.map((o) => o.info);
  });
}
