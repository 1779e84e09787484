/**
 * safetensors on bytes (no fs: this runs in browsers too). Format: u64 little-endian header length N,
 * N bytes of JSON header, then the data section; every tensor is `{dtype, shape, data_offsets}`.
 * The reader validates everything before touching data: header bounds, dtype, shape x itemsize =
 * byte length, offsets inside the data section, no overlaps — and names the offending tensor.
 */
import { MoelabError } from './errors.js';

export type SafeDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32' | 'I64' | 'I16' | 'I8' | 'U8' | 'BOOL';
const ITEMSIZE: Record<SafeDType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  /** F32/F16/BF16/F64 -> Float32Array; I32/I64/I16/I8 -> Int32Array; U8/BOOL -> Uint8Array. */
  data: Float32Array | Int32Array | Uint8Array;
}

export interface SafeTensorsFile {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

function fail(msg: string, where: string): never {
  throw new MoelabError(msg, where);
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Parse a safetensors file. `source` names the file in error messages. */
export function readSafetensors(bytes: Uint8Array, source = 'safetensors'): SafeTensorsFile {
  if (bytes.byteLength < 8) fail(`file is ${bytes.byteLength} bytes; a safetensors file starts with an 8-byte header length`, source);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n64 = view.getBigUint64(0, true);
  if (n64 > BigInt(bytes.byteLength - 8))
    fail(`header length ${n64} runs past the end of the file (${bytes.byteLength} bytes): truncated or not a safetensors file`, source);
  const n = Number(n64);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    fail(`header is not valid UTF-8 JSON (${(e as Error).message})`, source);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) fail('header is not a JSON object', source);
  const dataStart = 8 + n;
  const dataLen = bytes.byteLength - dataStart;
  const tensors = new Map<string, SafeTensor>();
  let metadata: Record<string, string> = {};
  const spans: { name: string; b: number; e: number }[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (info && typeof info === 'object') metadata = info as Record<string, string>;
      continue;
    }
    const where = `${source}: tensor "${name}"`;
    const t = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!t || typeof t !== 'object') fail('entry is not an object', where);
    if (typeof t.dtype !== 'string' || !(t.dtype in ITEMSIZE))
      fail(`unsupported dtype ${JSON.stringify(t.dtype)} (supported: ${Object.keys(ITEMSIZE).join(', ')})`, where);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isInteger(d) && d >= 0))
      fail(`shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`, where);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0))
      fail(`data_offsets ${JSON.stringify(off)} is not [begin, end]`, where);
    const dtype = t.dtype as SafeDType;
    const shape = t.shape as number[];
    const [b, e] = off as [number, number];
    const numel = shape.reduce((a, c) => a * c, 1);
    if (e < b) fail(`data_offsets end ${e} < begin ${b}`, where);
    if (e > dataLen) fail(`data_offsets [${b}, ${e}] run past the data section (${dataLen} bytes): truncated file?`, where);
    if (e - b !== numel * ITEMSIZE[dtype])
      fail(`shape ${JSON.stringify(shape)} x ${dtype} needs ${numel * ITEMSIZE[dtype]} bytes but data_offsets span ${e - b}`, where);
    spans.push({ name, b, e });
    tensors.set(name, { dtype, shape, data: decode(bytes, dataStart + b, numel, dtype, view) });
  }
  spans.sort((x, y) => x.b - y.b);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]!.b < spans[i - 1]!.e) fail(`data of tensors "${spans[i - 1]!.name}" and "${spans[i]!.name}" overlap`, source);
  }
  return { tensors, metadata };
}

/**
 * Decode `numel` elements of `dtype` from `bytes` (little-endian, as stored in a safetensors data
 * section): floats to a Float32Array (F16 / BF16 exactly, F64 rounded), integers to an Int32Array.
 * For readers that fetch one tensor at a time instead of the whole file.
 */
export function decodeSafeTensor(bytes: Uint8Array, dtype: SafeDType, numel: number): Float32Array | Int32Array | Uint8Array {
  return decode(bytes, 0, numel, dtype, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

/** Bytes per element of a safetensors dtype. */
export function safeDTypeSize(dtype: SafeDType): number {
  return ITEMSIZE[dtype];
}

function decode(bytes: Uint8Array, at: number, numel: number, dtype: SafeDType, view: DataView): Float32Array | Int32Array | Uint8Array {
  switch (dtype) {
    case 'F32': {
      if ((bytes.byteOffset + at) % 4 === 0) return new Float32Array(bytes.buffer.slice(bytes.byteOffset + at, bytes.byteOffset + at + numel * 4));
      const out = new Float32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = view.getFloat32(at + 4 * i, true);
      return out;
    }
    case 'F64': {
      const out = new Float32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = view.getFloat64(at + 8 * i, true);
      return out;
    }
    case 'F16': {
      const out = new Float32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = f16ToF32(view.getUint16(at + 2 * i, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(numel);
      const tmp = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < numel; i++) {
        tmp.setUint32(0, view.getUint16(at + 2 * i, true) << 16, true);
        out[i] = tmp.getFloat32(0, true);
      }
      return out;
    }
    case 'I32': {
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = view.getInt32(at + 4 * i, true);
      return out;
    }
    case 'I64': {
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = Number(view.getBigInt64(at + 8 * i, true));
      return out;
    }
    case 'I16': {
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = view.getInt16(at + 2 * i, true);
      return out;
    }
    case 'I8': {
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = view.getInt8(at + i);
      return out;
    }
    case 'U8':
    case 'BOOL':
      return bytes.slice(at, at + numel);
  }
}

export interface TensorToWrite {
  dtype?: 'F32' | 'I32';
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Serialise tensors (sorted by name, 8-byte aligned data start, packed without gaps). */
export function writeSafetensors(tensors: Map<string, TensorToWrite> | Record<string, TensorToWrite>, metadata: Record<string, string> = {}): Uint8Array {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const [name, t] of entries) {
    const numel = t.shape.reduce((a, c) => a * c, 1);
    if (numel !== t.data.length)
      throw new MoelabError(`shape ${JSON.stringify(t.shape)} has ${numel} elements but data has ${t.data.length}`, `tensor "${name}"`);
    const dtype = t.dtype ?? (t.data instanceof Int32Array ? 'I32' : 'F32');
    header[name] = { dtype, shape: t.shape, data_offsets: [off, off + numel * 4] };
    off += numel * 4;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  let hb = enc.encode(json);
  const pad = (8 - ((8 + hb.length) % 8)) % 8;
  json += ' '.repeat(pad);
  hb = enc.encode(json);
  const out = new Uint8Array(8 + hb.length + off);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let at = 8 + hb.length;
  for (const [, t] of entries) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}
