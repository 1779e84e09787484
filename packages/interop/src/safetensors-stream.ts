/**
 * safetensors one tensor at a time: parse a header without the data, decode or encode one tensor's
 * bytes, and lay out a header before the data exists, so that a converter holds one tensor (or one
 * expert bank) in memory instead of a whole checkpoint. Layout: u64 little-endian N, N bytes of JSON
 * header (padded with spaces to a multiple of 8), then the data section, each tensor at
 * `data_offsets` [begin, end) relative to it.
 */
import { decodeSafeTensor, MoelabError, type SafeDType, safeDTypeSize } from '@moelab/core';

export interface TensorEntry {
  dtype: SafeDType;
  shape: number[];
  /** Byte offsets of the data, relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Bytes before the data section (8 + header length). */
  dataStart: number;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

const FLOAT_DTYPES: SafeDType[] = ['F32', 'F16', 'BF16', 'F64'];

/** The header length N from the first 8 bytes, checked against the file size. */
export function headerLength(first8: Uint8Array, fileSize: number, source: string): number {
  if (first8.byteLength < 8 || fileSize < 8) throw new MoelabError(`file is ${fileSize} bytes; a safetensors file starts with an 8-byte header length`, source);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8))
    throw new MoelabError(`header length ${n} runs past the end of the file (${fileSize} bytes): truncated or not a safetensors file`, source);
  return Number(n);
}

/** Parse and check the JSON header (the N bytes after the length) of a file of `fileSize` bytes. */
export function parseHeader(headerBytes: Uint8Array, fileSize: number, source: string): SafetensorsHeader {
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new MoelabError(`header is not valid UTF-8 JSON (${(e as Error).message})`, source);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw new MoelabError('header is not a JSON object', source);
  const dataStart = 8 + headerBytes.byteLength;
  const dataLen = fileSize - dataStart;
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (info && typeof info === 'object') metadata = info as Record<string, string>;
      continue;
    }
    const where = `${source}: tensor "${name}"`;
    const t = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!t || typeof t !== 'object') throw new MoelabError('entry is not an object', where);
    if (typeof t.dtype !== 'string') throw new MoelabError(`dtype ${JSON.stringify(t.dtype)} is not a string`, where);
    const size = safeDTypeSize(t.dtype as SafeDType);
    if (!size) throw new MoelabError(`unsupported dtype ${JSON.stringify(t.dtype)}`, where);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isInteger(d) && d >= 0))
      throw new MoelabError(`shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`, where);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0))
      throw new MoelabError(`data_offsets ${JSON.stringify(off)} is not [begin, end]`, where);
    const [begin, end] = off as [number, number];
    const numel = (t.shape as number[]).reduce((a, c) => a * c, 1);
    if (end < begin || end > dataLen)
      throw new MoelabError(`data_offsets [${begin}, ${end}] run past the data section (${dataLen} bytes): truncated file?`, where);
    if (end - begin !== numel * size)
      throw new MoelabError(`shape ${JSON.stringify(t.shape)} x ${t.dtype} needs ${numel * size} bytes but data_offsets span ${end - begin}`, where);
    tensors.set(name, { dtype: t.dtype as SafeDType, shape: t.shape as number[], begin, end });
  }
  return { dataStart, tensors, metadata };
}

/** Decode one floating-point tensor's bytes to float32 (F32, F16, BF16 exactly; F64 rounded). */
export function decodeFloatTensor(bytes: Uint8Array, entry: Pick<TensorEntry, 'dtype' | 'shape'>, where: string): Float32Array {
  if (!FLOAT_DTYPES.includes(entry.dtype))
    throw new MoelabError(`dtype ${entry.dtype} is not a floating-point type (expected ${FLOAT_DTYPES.join(', ')})`, where);
  const numel = entry.shape.reduce((a, c) => a * c, 1);
  return decodeSafeTensor(bytes, entry.dtype, numel) as Float32Array;
}

export type WriteDType = 'F32' | 'BF16';

/** float32 -> bfloat16 bits, round to nearest even (NaN stays NaN). */
function bf16Bits(u: number): number {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encode float32 data as `dtype` bytes (little-endian). F32 is exact; BF16 rounds to nearest even. */
export function encodeFloatTensor(data: Float32Array, dtype: WriteDType): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.length * 2);
  const view = new DataView(out.buffer);
  const u = new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < data.length; i++) view.setUint16(2 * i, bf16Bits(u[i]!), true);
  return out;
}

export interface PlannedTensor {
  name: string;
  dtype: WriteDType;
  shape: number[];
}

/**
 * The first bytes of a safetensors file whose tensors will follow in this order, packed: the 8-byte
 * length and the space-padded JSON header. `dataBytes` is the size of the data section that must follow.
 */
export function safetensorsPrefix(tensors: readonly PlannedTensor[], metadata: Record<string, string> = {}): { prefix: Uint8Array; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    const bytes = t.shape.reduce((a, c) => a * c, 1) * safeDTypeSize(t.dtype);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const hb = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8 + hb.length);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(hb.length), true);
  prefix.set(hb, 8);
  return { prefix, dataBytes: off };
}
