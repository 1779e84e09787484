/** The side-file layout: which tensors move, their aligned offsets, and the bytes at each offset. */
import { describe, expect, it } from 'vitest';
import { checkExternalDataLocation, toExternalData } from './external-data.js';
import { ONNX_FLOAT, type OnnxInlineTensor } from './proto.js';

function tensor(name: string, bytes: number): OnnxInlineTensor {
  const rawData = Uint8Array.from({ length: bytes }, (_, i) => (i * 31 + name.length) % 251);
  return { name, dims: [bytes / 4], dataType: ONNX_FLOAT, rawData };
}

describe('toExternalData', () => {
  it('keeps tensors under 1 KiB inline and puts the others at 64-byte (>= 1 MiB: 64 KiB) aligned offsets', () => {
    const input = [tensor('small', 1020), tensor('a', 2000), tensor('big', 1 << 20), tensor('b', 3000)];
    const { tensors, data } = toExternalData(input, 'w.data');
    expect(tensors[0]).toBe(input[0]);
    const where = tensors.slice(1).map((t) => {
      expect(t.dataLocation).toBe(1);
      expect(t.rawData).toBeUndefined();
      return Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
    });
    expect(where).toEqual([
      { location: 'w.data', offset: '0', length: '2000' },
      { location: 'w.data', offset: '65536', length: String(1 << 20) },
      { location: 'w.data', offset: String(65536 + (1 << 20)), length: '3000' },
    ]);
    const file = new Uint8Array(data.byteLength);
    let at = 0;
    for (const c of data.chunks) {
      file.set(c, at);
      at += c.byteLength;
    }
    expect(data.byteLength).toBe(65536 + (1 << 20) + 3000);
    expect(data.tensors).toBe(3);
    for (const [i, w] of where.entries()) {
      const original = input[i + 1]!.rawData;
      // Buffer.equals: a deep toEqual over a 1 MiB array takes seconds.
      expect(Buffer.from(file.subarray(Number(w.offset), Number(w.offset) + Number(w.length))).equals(original)).toBe(true);
    }
    expect(file.subarray(2000, 65536).every((b) => b === 0)).toBe(true);
  });

  it('accepts a plain file name only', () => {
    expect(() => checkExternalDataLocation('model.onnx.data')).not.toThrow();
    for (const bad of ['', '..', 'weights/model.data', 'C:\\w.data'])
      expect(() => checkExternalDataLocation(bad)).toThrow(`external data location "${bad}" must be a file name beside the .onnx file`);
  });
});
