/**
 * The attention kernels of core's contract (@moelab/core/kernels) on CUDA:
 *
 *   MoelabCausalAttention:  out_i = sum_{j<=i} softmax_j(scale q_i.k_j) v_j, lse_i = log sum_{j<=i} exp(scale q_i.k_j)
 *   MoelabCausalAttentionGrad: with P = exp(S - lse), D_i = dy_i.out_i, dS = P (dy v^T - D):
 *                           dq = scale dS k, dk = scale dS^T q, dv = P^T dy
 *   MoelabCachedAttention:  out_i = sum_{j <= length - m + i} softmax_j(scale q_i.k_j) v_j over a KV
 *                           cache, query head h reading key / value head floor(h Hkv / H) (GQA)
 *   MoelabCacheWrite:       out = cache with positions position .. position + m - 1 replaced by rows
 *   MoelabRope:             rotate-half RoPE of the first `dims` channels (arXiv:2104.09864);
 *                           `inverse` rotates by the negative angle (its gradient)
 *
 * in both layouts of the contract ('bhtd' [B, H, T, d] and 'bthd' [B, T, H, d]). The kernels keep
 * one query (or key) row per block with an online softmax (kernels_attention.cuh), any head size.
 * The gradients are the contract's, registered once for
 * every backend (@moelab/kernels-cpu's registerFusedGradients).
 */
import {
  ATTENTION_LAYOUTS,
  type AttentionLayout,
  CACHE_WRITE_KERNEL,
  CACHED_ATTENTION_KERNEL,
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  ROPE_KERNEL,
} from '@moelab/core/kernels';
import type { AttentionShape } from '../native.js';
import { type Args, backendOf, type Ctx, expectDtype, expectShape, inputs, prod, stridesOf, type TensorInfo } from './context.js';
import { stridedCopy } from './layout.js';

/** 'bhtd' (default) or 'bthd'; returns whether bthd. */
function layoutOf(kernel: string, attrs: unknown): boolean {
  const layout = (attrs as { layout?: unknown } | undefined)?.layout ?? 'bhtd';
  if (!ATTENTION_LAYOUTS.includes(layout as AttentionLayout)) {
    throw new Error(`${kernel}: attr layout must be ${ATTENTION_LAYOUTS.map((l) => `'${l}'`).join(' or ')}, got '${String(layout)}'`);
  }
  return layout === 'bthd';
}

function scaleOf(kernel: string, attrs: unknown): number {
  const scale = Number((attrs as { scale?: unknown } | undefined)?.scale);
  if (!Number.isFinite(scale)) throw new Error(`${kernel}: attr scale must be a finite number`);
  return scale;
}

/** An integer attribute in [min, max]. */
function intAttr(kernel: string, attrs: unknown, name: string, min: number, max: number): number {
  const v = (attrs as Record<string, unknown> | undefined)?.[name];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new Error(`${kernel}: attr ${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  return v;
}

const shaped = (bthd: boolean, B: number, H: number, T: number, d: number) => (bthd ? [B, T, H, d] : [B, H, T, d]);

function causalShapes(kernel: string, ins: Record<string, TensorInfo>, bthd: boolean, scale: number) {
  expectDtype(kernel, ins, ['q', 'k', 'v']);
  const { q, v } = ins;
  const name = bthd ? 'B,T,H' : 'B,H,T';
  if (q!.shape.length !== 4) throw new Error(`${kernel}: q must be [${name},dk], got [${q!.shape}]`);
  const [B, a, b, dk] = q!.shape as [number, number, number, number];
  const [H, T] = bthd ? [b, a] : [a, b];
  expectShape(kernel, 'k', ins.k!, q!.shape);
  if (v!.shape.length !== 4) throw new Error(`${kernel}: v must be [${name},dv], got [${v!.shape}]`);
  const dv = v!.shape[3]!;
  expectShape(kernel, 'v', v!, shaped(bthd, B, H, T, dv));
  const shape: AttentionShape = { H, Hkv: H, Tq: T, Tk: T, dk, dv, qOffset: 0, bthd, scale };
  return { B, H, T, dk, dv, shape };
}

export function registerAttention({ native, fallback, add }: Ctx): void {
  add(CAUSAL_ATTENTION_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const bthd = layoutOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const scale = scaleOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const { B, H, T, dv, shape } = causalShapes(CAUSAL_ATTENTION_KERNEL, ins, bthd, scale);
    const be = backendOf(args);
    const out = be.makeOutput(shaped(bthd, B, H, T, dv), 'float32');
    const lse = be.makeOutput([B, H, T], 'float32');
    if (B * H * T > 0) native.attentionForward(be.dev(ins.q!), be.dev(ins.k!), be.dev(ins.v!), out.ptr, lse.ptr, B, shape);
    return [out.info, lse.info];
  });

  add(CAUSAL_ATTENTION_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CAUSAL_ATTENTION_GRAD_KERNEL;
    const bthd = layoutOf(kernel, args.attrs);
    const scale = scaleOf(kernel, args.attrs);
    const { B, H, T, dv, shape } = causalShapes(kernel, ins, bthd, scale);
    expectDtype(kernel, ins, ['dy', 'out', 'lse']);
    expectShape(kernel, 'dy', ins.dy!, shaped(bthd, B, H, T, dv));
    expectShape(kernel, 'out', ins.out!, shaped(bthd, B, H, T, dv));
    expectShape(kernel, 'lse', ins.lse!, [B, H, T]);
    const be = backendOf(args);
    const outs = [be.makeOutput(ins.q!.shape, 'float32'), be.makeOutput(ins.q!.shape, 'float32'), be.makeOutput(ins.v!.shape, 'float32')];
    if (B * H * T > 0) {
      const p = (n: string) => be.dev(ins[n]!);
      native.attentionBackward(p('dy'), p('q'), p('k'), p('v'), p('out'), p('lse'), outs[0]!.ptr, outs[1]!.ptr, outs[2]!.ptr, B, shape);
    }
    return outs.map((o) => o.info);
  });

  add(CACHED_ATTENTION_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CACHED_ATTENTION_KERNEL;
    expectDtype(kernel, ins, ['q', 'k', 'v']);
    const { q, k, v } = ins as Record<'q' | 'k' | 'v', TensorInfo>;
    if (q.shape.length !== 4) throw new Error(`${kernel}: q must be [B,H,m,dk], got [${q.shape}]`);
    const [B, H, m, dk] = q.shape as [number, number, number, number];
    if (k.shape.length !== 4) throw new Error(`${kernel}: k must be [B=${B},Hkv,Tk,dk=${dk}], got [${k.shape}]`);
    const [, Hkv, Tk] = k.shape as [number, number, number, number];
    if (Hkv < 1 || H % Hkv !== 0) throw new Error(`${kernel}: k has ${Hkv} heads, which must divide q's ${H}`);
    expectShape(kernel, 'k', k, [B, Hkv, Tk, dk]);
    if (v.shape.length !== 4) throw new Error(`${kernel}: v must be [B=${B},Hkv=${Hkv},Tk=${Tk},dv], got [${v.shape}]`);
    const dv = v.shape[3]!;
    expectShape(kernel, 'v', v, [B, Hkv, Tk, dv]);
    const scale = scaleOf(kernel, args.attrs);
    const length = intAttr(kernel, args.attrs, 'length', m, Tk);
    const be = backendOf(args);
    const out = be.makeOutput([B, H, m, dv], 'float32');
    if (B * H * m * dv > 0) {
      native.attentionForward(be.dev(q), be.dev(k), be.dev(v), out.ptr, null, B, { H, Hkv, Tq: m, Tk, dk, dv, qOffset: length - m, bthd: false, scale });
    }
    return out.info;
  });

  add(CACHE_WRITE_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CACHE_WRITE_KERNEL;
    expectDtype(kernel, ins, ['cache', 'rows']);
    const { cache, rows } = ins as Record<'cache' | 'rows', TensorInfo>;
    const rank = cache.shape.length;
    const axis = intAttr(kernel, args.attrs, 'axis', 0, rank - 1);
    const C = cache.shape[axis]!;
    const m = rows.shape[axis];
    if (m === undefined) throw new Error(`${kernel}: input 'rows' has shape [${rows.shape}], expected rank ${rank}`);
    expectShape(
      kernel,
      'rows',
      rows,
      cache.shape.map((s, i) => (i === axis ? m : s)),
    );
    const position = intAttr(kernel, args.attrs, 'position', 0, C - m);
    if (rank > 6) return fallback(kernel)(args);
    const be = backendOf(args);
    const out = be.makeOutput(cache.shape, 'float32');
    const n = prod(cache.shape);
    if (n > 0) native.copy(out.ptr, be.dev(cache), n * 4);
    const cs = stridesOf(cache.shape);
    stridedCopy(native, be.dev(rows), 0, out.ptr, position * cs[axis]!, rows.shape, stridesOf(rows.shape), cs, 4);
    return out.info;
  });

  add(ROPE_KERNEL, (args: Args) => {
    const ins = inputs(args);
    expectDtype(ROPE_KERNEL, ins, ['x', 'cos', 'sin']);
    const { x, cos } = ins as Record<'x' | 'cos', TensorInfo>;
    const bthd = layoutOf(ROPE_KERNEL, args.attrs);
    if (x.shape.length !== 4) throw new Error(`${ROPE_KERNEL}: x must be [${bthd ? 'B,T,H' : 'B,H,T'},dh], got [${x.shape}]`);
    const [B, a, b, dh] = x.shape as [number, number, number, number];
    const [H, T] = bthd ? [b, a] : [a, b];
    if (cos.shape.length !== 2 || cos.shape[0] !== T) throw new Error(`${ROPE_KERNEL}: cos must be [T=${T}, dims], got [${cos.shape}]`);
    const dims = cos.shape[1]!;
    if (dims % 2 !== 0 || dims > dh) throw new Error(`${ROPE_KERNEL}: rotated channels (${dims}) must be even and <= head size ${dh}`);
    expectShape(ROPE_KERNEL, 'sin', ins.sin!, [T, dims]);
    const be = backendOf(args);
    const out = be.makeOutput(x.shape, 'float32');
    if (prod(x.shape) > 0) native.rope(be.dev(x), be.dev(cos), be.dev(ins.sin!), out.ptr, B * H, H, T, dh, dims, !!args.attrs?.inverse, bthd);
    return out.info;
  });
}
