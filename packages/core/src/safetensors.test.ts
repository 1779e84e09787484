import { describe, expect, it } from 'vitest';
import { readSafetensors, writeSafetensors } from './safetensors.js';

function header(h: object, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

describe('safetensors', () => {
  it('round-trips tensors, dtypes and metadata, with 8-byte aligned data', () => {
    const a = Float32Array.from([1.5, -2, 3.25, 0, 1e-8, 7]);
    const b = Int32Array.from([1, -2, 3]);
    const bytes = writeSafetensors({ 'w.a': { shape: [2, 3], data: a }, idx: { shape: [3], data: b } }, { note: 'hi' });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    const f = readSafetensors(bytes);
    expect(f.metadata).toEqual({ note: 'hi' });
    expect(f.tensors.get('w.a')).toMatchObject({ dtype: 'F32', shape: [2, 3] });
    expect(Array.from(f.tensors.get('w.a')!.data)).toEqual(Array.from(a));
    expect(f.tensors.get('idx')!.dtype).toBe('I32');
    expect(Array.from(f.tensors.get('idx')!.data)).toEqual([1, -2, 3]);
  });

  it('reads I64, F16 and BF16', () => {
    const bytes = header(
      {
        i: { dtype: 'I64', shape: [2], data_offsets: [0, 16] },
        h: { dtype: 'F16', shape: [1], data_offsets: [16, 18] },
        b: { dtype: 'BF16', shape: [1], data_offsets: [18, 20] },
      },
      20,
    );
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const dv = new DataView(bytes.buffer, 8 + n);
    dv.setBigInt64(0, -5n, true);
    dv.setBigInt64(8, 7n, true);
    dv.setUint16(16, 0x3c00, true); // 1.0 in f16
    dv.setUint16(18, 0xc000, true); // -2.0 in bf16
    const f = readSafetensors(bytes);
    expect(Array.from(f.tensors.get('i')!.data)).toEqual([-5, 7]);
    expect(f.tensors.get('h')!.data[0]).toBe(1);
    expect(f.tensors.get('b')!.data[0]).toBe(-2);
  });

  it('rejects a file shorter than its header length field', () => {
    expect(() => readSafetensors(new Uint8Array(5), 'x.safetensors')).toThrow(/x\.safetensors: file is 5 bytes/);
  });

  it('rejects a truncated file (header length past the end)', () => {
    const good = writeSafetensors({ a: { shape: [4], data: new Float32Array(4) } });
    expect(() => readSafetensors(good.slice(0, 20), 'm.safetensors')).toThrow(/header length \d+ runs past the end/);
  });

  it('rejects a truncated data section, naming the tensor', () => {
    const good = writeSafetensors({ a: { shape: [4], data: new Float32Array(4) } });
    expect(() => readSafetensors(good.slice(0, good.length - 4), 'm.safetensors')).toThrow(/tensor "a": data_offsets \[0, 16\] run past the data section/);
  });

  it('rejects a header that is not JSON', () => {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setBigUint64(0, 8n, true);
    bytes.set(new TextEncoder().encode('{"a": 1x'), 8);
    expect(() => readSafetensors(bytes)).toThrow(/header is not valid UTF-8 JSON/);
  });

  it('rejects shape/size disagreement, bad dtype, overlaps', () => {
    expect(() => readSafetensors(header({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8))).toThrow(
      /tensor "a": shape \[3\] x F32 needs 12 bytes but data_offsets span 8/,
    );
    expect(() => readSafetensors(header({ a: { dtype: 'Q4', shape: [1], data_offsets: [0, 4] } }, 4))).toThrow(/tensor "a": unsupported dtype "Q4"/);
    expect(() =>
      readSafetensors(header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12)),
    ).toThrow(/data of tensors "a" and "b" overlap/);
    expect(() => readSafetensors(header({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4))).toThrow(
      /shape \[-1\] is not a list of non-negative integers/,
    );
    expect(() => readSafetensors(header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4))).toThrow(/end 0 < begin 4/);
  });

  it('refuses to write data whose size disagrees with the shape', () => {
    expect(() => writeSafetensors({ a: { shape: [3], data: new Float32Array(2) } })).toThrow(/tensor "a": shape \[3\] has 3 elements but data has 2/);
  });
});
