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
 * in both layouts of the contract ('bhtd' [B, H, T, d] and 'bthd' [B, T, H, d]). The kernels are
 * flash-tiled (arXiv:2205.14135, backward as arXiv:2307.08691): a block owns a tile of query (or key)
 * rows and walks the other side's tiles through shared memory with an online softmax
 * (kernels_attention.cuh), any head size.
 * The gradients are the contract's, registered once for
 * every backend (@moelab/kernels-cpu's registerFusedGradients).
 */
import { CACHE_WRITE_KERNEL, CACHED_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, ROPE_KERNEL } from '@moelab/core/kernels';
import type { AttentionShape } from '../native.js';
import {
  cacheWriteShapes,
  cachedAttentionShapes,
  causalAttentionShapes,
  expectCausalAttentionGradInputs,
  layoutOf,
  ropeShapes,
  scaleOf,
  shaped,
} from '@moelab/kernels-cpu/attention-checks';
import { type Args, backendOf, type Ctx, devInputs, inputs, prod, stridesOf, type TensorInfo } from './context.js';
import { stridedCopy } from './layout.js';

/** The kernels' sizes as the addon takes them (self-attention: Tq = Tk = T, one key head per query head). */
function causalShapes(kernel: string, ins: Record<string, TensorInfo>, bthd: boolean, scale: number) {
  const { B, H, T, dk, dv } = causalAttentionShapes(kernel, ins, bthd);
  const shape: AttentionShape = { B, H, Hkv: H, Tq: T, Tk: T, dk, dv, qOffset: 0, bthd, scale };
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
    if (B * H * T > 0) native.attention('forward', { ...devInputs(args, ['q', 'k', 'v']), out: out.ptr, lse: lse.ptr }, shape);
    return [out.info, lse.info];
  });

  add(CAUSAL_ATTENTION_GRAD_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CAUSAL_ATTENTION_GRAD_KERNEL;
    const bthd = layoutOf(kernel, args.attrs);
    const scale = scaleOf(kernel, args.attrs);
    const { B, H, T, dv, shape } = causalShapes(kernel, ins, bthd, scale);
    expectCausalAttentionGradInputs(kernel, ins, bthd, { B, H, T, dv });
    const be = backendOf(args);
    const outs = [be.makeOutput(ins.q!.shape, 'float32'), be.makeOutput(ins.q!.shape, 'float32'), be.makeOutput(ins.v!.shape, 'float32')];
    if (B * H * T > 0) {
      const [dq, dk, dv] = outs.map((o) => o.ptr) as [number, number, number];
      native.attention('backward', { ...devInputs(args, ['dy', 'q', 'k', 'v', 'out', 'lse']), dq, dk, dv }, shape);
    }
    return outs.map((o) => o.info);
  });

  add(CACHED_ATTENTION_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CACHED_ATTENTION_KERNEL;
    const { q, k, v } = ins as Record<'q' | 'k' | 'v', TensorInfo>;
    const { B, H, Hkv, m, Tk, dk, dv, scale, length } = cachedAttentionShapes(kernel, ins, args.attrs);
    const be = backendOf(args);
    const out = be.makeOutput([B, H, m, dv], 'float32');
    if (B * H * m * dv > 0) {
      const shape: AttentionShape = { B, H, Hkv, Tq: m, Tk, dk, dv, qOffset: length - m, bthd: false, scale };
      native.attention('forward', { q: be.dev(q), k: be.dev(k), v: be.dev(v), out: out.ptr, lse: null }, shape);
    }
    return out.info;
  });

  add(CACHE_WRITE_KERNEL, (args: Args) => {
    const ins = inputs(args);
    const kernel = CACHE_WRITE_KERNEL;
    const { cache, rows } = ins as Record<'cache' | 'rows', TensorInfo>;
    const rank = cache.shape.length;
    const { axis, position } = cacheWriteShapes(kernel, ins, args.attrs);
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
    const { x, cos } = ins as Record<'x' | 'cos', TensorInfo>;
    const bthd = layoutOf(ROPE_KERNEL, args.attrs);
    const { B, H, T, dh, dims } = ropeShapes(ROPE_KERNEL, ins, bthd);
    const be = backendOf(args);
    const out = be.makeOutput(x.shape, 'float32');
    const buffers = { x: be.dev(x), cos: be.dev(cos), sin: be.dev(ins.sin!), out: out.ptr };
    if (prod(x.shape) > 0) native.rope(buffers, { BH: B * H, H, T, dh, dims, inverse: !!args.attrs?.inverse, bthd });
    return out.info;
  });
}
