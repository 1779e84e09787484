/**
 * The input and attribute checks of the attention kernels of core's contract (@moelab/core/kernels:
 * causal attention and its Grad kernel, RoPE, cached attention, cache write), shared by every backend
 * that implements them (`@moelab/kernels-cpu/attention-checks`), so that each refuses the same inputs
 * with the same one-line message. Side-effect free: importing it registers no backend and loads no
 * native addon.
 *
 * Layouts: 'bhtd' (default) holds a head's rows together, [B, H, T, d]; 'bthd' is the projections'
 * own layout, [B, T, H, d].
 */
import { ATTENTION_LAYOUTS, type AttentionLayout } from '@moelab/core/kernels';
import { expectDtype, expectShape, type TensorInfo } from './helpers.js';

/** The attr `layout`: 'bhtd' (default) or 'bthd'; returns whether bthd. */
export function layoutOf(kernel: string, attrs: unknown): boolean {
  const layout = (attrs as { layout?: unknown } | undefined)?.layout ?? 'bhtd';
  if (!ATTENTION_LAYOUTS.includes(layout as AttentionLayout)) {
    throw new Error(`${kernel}: attr layout must be ${ATTENTION_LAYOUTS.map((l) => `'${l}'`).join(' or ')}, got '${String(layout)}'`);
  }
  return layout === 'bthd';
}

/** The shape of a [B, H, T, d] or [B, T, H, d] tensor in the given layout. */
export const shaped = (bthd: boolean, B: number, H: number, T: number, d: number): number[] => (bthd ? [B, T, H, d] : [B, H, T, d]);

/** The attr `scale`, a finite number. */
export function scaleOf(kernel: string, attrs: unknown): number {
  const scale = Number((attrs as { scale?: unknown } | undefined)?.scale);
  if (!Number.isFinite(scale)) throw new Error(`${kernel}: attr scale must be a finite number`);
  return scale;
}

/** An integer attribute in [min, max]; throws `${kernel}: attr name must be ...` otherwise. */
export function intAttr(kernel: string, attrs: unknown, name: string, min: number, max: number): number {
  const v = (attrs as Record<string, unknown> | undefined)?.[name];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new Error(`${kernel}: attr ${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  return v;
}

/** Causal attention's q, k [B,H,T,dk] and v [B,H,T,dv] (in the layout): float32, consistent; returns the sizes. */
export function causalAttentionShapes(kernel: string, ins: Record<string, TensorInfo>, bthd: boolean) {
  expectDtype(kernel, ins, ['q', 'k', 'v']);
  const q = ins.q!;
  const v = ins.v!;
  const name = bthd ? 'B,T,H' : 'B,H,T';
  if (q.shape.length !== 4) throw new Error(`${kernel}: q must be [${name},dk], got [${q.shape}]`);
  const [B, a, b, dk] = q.shape as [number, number, number, number];
  const [H, T] = bthd ? [b, a] : [a, b];
  expectShape(kernel, 'k', ins.k!, q.shape);
  if (v.shape.length !== 4) throw new Error(`${kernel}: v must be [${name},dv], got [${v.shape}]`);
  const dv = v.shape[3]!;
  expectShape(kernel, 'v', v, shaped(bthd, B, H, T, dv));
  return { B, H, T, dk, dv };
}

/** The Grad kernel's extra inputs: dy and out shaped like v's output, lse [B, H, T]. */
export function expectCausalAttentionGradInputs(
  kernel: string,
  ins: Record<string, TensorInfo>,
  bthd: boolean,
  s: { B: number; H: number; T: number; dv: number },
): void {
  expectDtype(kernel, ins, ['dy', 'out', 'lse']);
  expectShape(kernel, 'dy', ins.dy!, shaped(bthd, s.B, s.H, s.T, s.dv));
  expectShape(kernel, 'out', ins.out!, shaped(bthd, s.B, s.H, s.T, s.dv));
  expectShape(kernel, 'lse', ins.lse!, [s.B, s.H, s.T]);
}

/** RoPE's x [B,H,T,dh] (in the layout), cos and sin [T, dims] with dims even and <= dh; returns the sizes. */
export function ropeShapes(kernel: string, ins: Record<string, TensorInfo>, bthd: boolean) {
  expectDtype(kernel, ins, ['x', 'cos', 'sin']);
  const x = ins.x!;
  const cos = ins.cos!;
  if (x.shape.length !== 4) throw new Error(`${kernel}: x must be [${bthd ? 'B,T,H' : 'B,H,T'},dh], got [${x.shape}]`);
  const [B, a, b, dh] = x.shape as [number, number, number, number];
  const [H, T] = bthd ? [b, a] : [a, b];
  if (cos.shape.length !== 2 || cos.shape[0] !== T) throw new Error(`${kernel}: cos must be [T=${T}, dims], got [${cos.shape}]`);
  const dims = cos.shape[1]!;
  if (dims % 2 !== 0 || dims > dh) throw new Error(`${kernel}: rotated channels (${dims}) must be even and <= head size ${dh}`);
  expectShape(kernel, 'sin', ins.sin!, [T, dims]);
  return { B, H, T, dh, dims };
}

/**
 * Cached attention's q [B,H,m,dk], k [B,Hkv,Tk,dk], v [B,Hkv,Tk,dv] with Hkv dividing H, the attrs
 * scale and length (m <= length <= Tk); returns the sizes.
 */
export function cachedAttentionShapes(kernel: string, ins: Record<string, TensorInfo>, attrs: unknown) {
  expectDtype(kernel, ins, ['q', 'k', 'v']);
  const q = ins.q!;
  const k = ins.k!;
  const v = ins.v!;
  if (q.shape.length !== 4) throw new Error(`${kernel}: q must be [B,H,m,dk], got [${q.shape}]`);
  const [B, H, m, dk] = q.shape as [number, number, number, number];
  if (k.shape.length !== 4) throw new Error(`${kernel}: k must be [B=${B},Hkv,Tk,dk=${dk}], got [${k.shape}]`);
  const [, Hkv, Tk] = k.shape as [number, number, number, number];
  if (Hkv < 1 || H % Hkv !== 0) throw new Error(`${kernel}: k has ${Hkv} heads, which must divide q's ${H}`);
  expectShape(kernel, 'k', k, [B, Hkv, Tk, dk]);
  if (v.shape.length !== 4) throw new Error(`${kernel}: v must be [B=${B},Hkv=${Hkv},Tk=${Tk},dv], got [${v.shape}]`);
  const dv = v.shape[3]!;
  expectShape(kernel, 'v', v, [B, Hkv, Tk, dv]);
  const scale = scaleOf(kernel, attrs);
  const length = intAttr(kernel, attrs, 'length', m, Tk);
  return { B, H, Hkv, m, Tk, dk, dv, scale, length };
}

/** Cache write's cache and rows (float32, equal but along `axis`), the attrs axis and position (rows fit from there); returns them. */
export function cacheWriteShapes(kernel: string, ins: Record<string, TensorInfo>, attrs: unknown) {
  expectDtype(kernel, ins, ['cache', 'rows']);
  const cache = ins.cache!;
  const rows = ins.rows!;
  const rank = cache.shape.length;
  const axis = intAttr(kernel, attrs, 'axis', 0, rank - 1);
  const C = cache.shape[axis]!;
  const m = rows.shape[axis];
  if (m === undefined) throw new Error(`${kernel}: input 'rows' has shape [${rows.shape}], expected rank ${rank}`);
  expectShape(
    kernel,
    'rows',
    rows,
    cache.shape.map((s, i) => (i === axis ? m : s)),
  );
  const position = intAttr(kernel, attrs, 'position', 0, C - m);
  return { axis, C, m, position };
}
