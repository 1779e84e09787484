/**
 * Shape and stride arithmetic of the stock-kernel overrides: numpy broadcasting (binary ops, batched
 * matmul) and strided block copies (Slice, PadV2, SplitV).
 */
import { prod } from './helpers.js';

/** numpy-style broadcast of two shapes; throws with tfjs's wording when incompatible. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`Operands could not be broadcast together with shapes ${a} and ${b}.`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Element strides of `shape` seen through the broadcast `outShape` (0 on broadcast axes). */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const rank = outShape.length;
  const str = new Array<number>(rank).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const o = rank - shape.length + i;
    str[o] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return str;
}

/** For each output batch index, the batch index of an input with batch shape `shape` (or null if identical). */
export function batchMap(shape: readonly number[], outShape: readonly number[]): Int32Array | null {
  const n = prod(outShape);
  if (prod(shape) === n) return null;
  const str = broadcastStrides(shape, outShape);
  const map = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let rem = i;
    let off = 0;
    for (let k = outShape.length - 1; k >= 0; k--) {
      off += (rem % outShape[k]) * str[k];
      rem = Math.floor(rem / outShape[k]);
    }
    map[i] = off;
  }
  return map;
}

/**
 * Copy the block of extent `ext` starting at `srcBegin` in src (shape srcShape) to `dstBegin` in dst
 * (shape dstShape), row by row along the last axis.
 */
export function copyBlock(
  src: Float32Array,
  srcShape: readonly number[],
  srcBegin: readonly number[],
  dst: Float32Array,
  dstShape: readonly number[],
  dstBegin: readonly number[],
  ext: readonly number[],
): void {
  const rank = ext.length;
  const inner = ext[rank - 1];
  if (prod(ext) === 0) return;
  const sStr = new Array<number>(rank);
  const dStr = new Array<number>(rank);
  sStr[rank - 1] = 1;
  dStr[rank - 1] = 1;
  for (let k = rank - 2; k >= 0; k--) {
    sStr[k] = sStr[k + 1] * srcShape[k + 1];
    dStr[k] = dStr[k + 1] * dstShape[k + 1];
  }
  let so = 0;
  let dO = 0;
  for (let k = 0; k < rank; k++) {
    so += srcBegin[k] * sStr[k];
    dO += dstBegin[k] * dStr[k];
  }
  const idx = new Array<number>(rank).fill(0);
  const rows = prod(ext) / inner;
  for (let r = 0; r < rows; r++) {
    if (inner >= 64) dst.set(src.subarray(so, so + inner), dO);
    else for (let j = 0; j < inner; j++) dst[dO + j] = src[so + j];
    // Odometer over the outer axes.
    for (let k = rank - 2; k >= 0; k--) {
      idx[k]++;
      so += sStr[k];
      dO += dStr[k];
      if (idx[k] < ext[k]) break;
      so -= ext[k] * sStr[k];
      dO -= ext[k] * dStr[k];
      idx[k] = 0;
    }
  }
}
