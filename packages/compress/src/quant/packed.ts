/**
 * Running expert banks packed: the expert weights stay as `bits`-bit codes + per-group scales and
 * zero points, and the MoE op dequantizes them inside the expert GEMMs (the kernel contract's
 * `MoelabMoePacked`, which moelab-cpu implements natively), so the resident size of the expert
 * weights is what the bits say:
 *
 *   W[e,i,j] = scale[e, i/group, j] * (u[e,i,j] - zero[e, i/group, j])
 *   out[t]   = sum_{n: token n = t} weight[n] * act(x[t] W1[e_n]) W2[e_n]                  (MLP)
 *   out[t]   = sum_{n: token n = t} weight[n] * (act(x[t] W1[e_n]) * (x[t] W3[e_n])) W2[e_n]  (GLU)
 *
 * A bank qualifies when its parameters are one of the layouts below (the `mlp` / `glu` banks of
 * @moelab/experts: w1, w2 and w3 when gated; sigma-MoE's keys, values) with an activation the fused
 * kernels know. Backends without the kernel get the bank dequantized once at load instead
 * (docs/compression.md#quantization).
 */
import {
  type DispatchPlan,
  type ExpertBank,
  hasKernel,
  isMoeActivation,
  MOE_PACKED_KERNEL,
  type MoeActivation,
  type MoePackedAttrs,
  type MoePackedInputs,
  type Module,
  MoELayer,
  moeGLU,
  moeMLP,
  tf,
} from '@moelab/core';
import { dequantizeTensor, type PackedTensor } from './quantize.js';

/** Expert-bank parameter layouts that run packed: role -> parameter name. */
export const PACKED_BANK_LAYOUTS: readonly { w1: string; w2: string; w3?: string }[] = [
  { w1: 'w1', w2: 'w2', w3: 'w3' },
  { w1: 'w1', w2: 'w2' },
  { w1: 'keys', w2: 'values' },
];

/** The tensors a packed bank hands the kernel. */
export interface PackedBankTensors {
  w1: PackedTensorHandles;
  w2: PackedTensorHandles;
  w3?: PackedTensorHandles;
  bits: PackedTensor['bits'];
  group: number;
}
export interface PackedTensorHandles {
  codes: tf.Tensor;
  scale: tf.Tensor;
  zero: tf.Tensor;
  /** The host copy, for the fallback without the kernel. */
  packed: PackedTensor;
}

const EMPTY = () => ({ codes: tf.zeros([0], 'int32'), scale: tf.zeros([0]), zero: tf.zeros([0]) });

/**
 * The expert op on packed weights: the backend's `MoelabMoePacked` kernel, or (without it) the
 * float op on weights dequantized for this call. x [T, d]; returns [T, d].
 */
export function moePacked(x: tf.Tensor2D, w: PackedBankTensors, plan: DispatchPlan, weight: tf.Tensor1D | null, activation: MoeActivation): tf.Tensor2D {
  if (!hasKernel(MOE_PACKED_KERNEL)) {
    return tf.tidy(() => {
      const f = (h: PackedTensorHandles) => tf.tensor3d(dequantizeTensor(h.packed), h.packed.shape as [number, number, number]);
      return w.w3 ? moeGLU(x, f(w.w1), f(w.w3), f(w.w2), plan, weight, activation) : moeMLP(x, f(w.w1), f(w.w2), plan, weight, activation);
    });
  }
  return tf.tidy(() => {
    const w3 = w.w3 ?? EMPTY();
    const [out, hidden] = tf.engine().runKernel(
      MOE_PACKED_KERNEL,
      {
        x,
        w1Codes: w.w1.codes,
        w1Scale: w.w1.scale,
        w1Zero: w.w1.zero,
        w3Codes: w3.codes,
        w3Scale: w3.scale,
        w3Zero: w3.zero,
        w2Codes: w.w2.codes,
        w2Scale: w.w2.scale,
        w2Zero: w.w2.zero,
        tokenIndex: tf.tensor1d(plan.tokenIndex, 'int32'),
        expertIndex: tf.tensor1d(plan.expertIndex, 'int32'),
        weight: weight ?? tf.ones([plan.size]),
      } satisfies MoePackedInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
      { activation, bits: w.bits, group: w.group } satisfies MoePackedAttrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    // The second output (what the backward kernel needs) is held by the gradient tape.
    hidden!.dispose();
    return out as tf.Tensor2D;
  });
}

/** The packed parameters' tensors as the kernel takes them: [batch, din, words], [batch, G, dout]. */
export function packedHandles(p: PackedTensor): PackedTensorHandles {
  const G = p.scale.length / (p.batch * p.dout);
  return {
    codes: tf.tensor(p.codes, [p.batch, p.din, p.codes.length / (p.batch * p.din)], 'int32'),
    scale: tf.tensor(p.scale, [p.batch, G, p.dout]),
    zero: tf.tensor(p.zero, [p.batch, G, p.dout]),
    packed: p,
  };
}

/** The layout of `bank` (role -> parameter name) when it can run packed, else null. */
export function packedLayout(bank: Module): { w1: string; w2: string; w3?: string } | null {
  const names = [...bank.params.keys()].sort().join(',');
  const activation = (bank as { options?: { activation?: unknown } }).options?.activation;
  if (typeof activation !== 'string' || !isMoeActivation(activation)) return null;
  return (
    PACKED_BANK_LAYOUTS.find(
      (l) =>
        [l.w1, l.w2, l.w3]
          .filter((n): n is string => n !== undefined)
          .sort()
          .join(',') === names,
    ) ?? null
  );
}

/** Every routed expert bank of the model (the `experts` of each MoE layer) with its path. */
export function routedExpertBanks(model: Module): { path: string; layer: MoELayer; bank: ExpertBank }[] {
  const out: { path: string; layer: MoELayer; bank: ExpertBank }[] = [];
  const seen = new Set<Module>();
  for (const m of model.modules()) {
    if (!(m instanceof MoELayer) || seen.has(m.experts)) continue;
    seen.add(m.experts);
    out.push({ path: m.experts.path, layer: m, bank: m.experts });
  }
  return out;
}

/**
 * Turn `bank` into a packed bank in place: its float parameters are disposed and removed, the
 * packed tensors become its buffers `<param>.qcodes`, `.qscale`, `.qzero` (so they are disposed
 * with the model and listed by `stateDict`), and its `apply` runs {@link moePacked}. The caller
 * checked {@link packedLayout} and that all roles share one code width and group.
 */
export function installPackedBank(bank: Module & ExpertBank, layout: { w1: string; w2: string; w3?: string }, packed: Map<string, PackedTensor>): void {
  const activation = (bank as unknown as { options: { activation: MoeActivation } }).options.activation;
  const handle = (name: string): PackedTensorHandles => {
    const h = packedHandles(packed.get(name)!);
    for (const [suffix, t] of [
      ['qcodes', h.codes],
      ['qscale', h.scale],
      ['qzero', h.zero],
    ] as const) {
      const v = tf.variable(t, false);
      t.dispose();
      bank.buffers.set(`${name}.${suffix}`, v);
      if (suffix === 'qcodes') h.codes = v;
      else if (suffix === 'qscale') h.scale = v;
      else h.zero = v;
    }
    return h;
  };
  const first = packed.get(layout.w1)!;
  const tensors: PackedBankTensors = {
    w1: handle(layout.w1),
    w2: handle(layout.w2),
    w3: layout.w3 ? handle(layout.w3) : undefined,
    bits: first.bits,
    group: first.group,
  };
  for (const role of [layout.w1, layout.w2, layout.w3]) {
    if (role === undefined) continue;
    bank.params.get(role)?.dispose();
    bank.params.delete(role);
  }
  packedBanks.set(bank, tensors);
  bank.apply = (x, plan, weight) => moePacked(x, tensors, plan, weight, activation);
}

const packedBanks = new WeakMap<Module, PackedBankTensors>();

/** The packed tensors of a bank made by {@link installPackedBank}, or undefined. */
export function packedBankOf(bank: Module): PackedBankTensors | undefined {
  return packedBanks.get(bank);
}
