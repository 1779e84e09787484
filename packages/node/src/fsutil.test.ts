import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tmp } from '../test/helpers.js';
import { writeFileAtomic, writeFilesAtomic } from './fsutil.js';

describe('writeFileAtomic', () => {
  it('writes the whole file, and on failure leaves neither a partial file nor its temporary behind', () => {
    const dir = tmp();
    writeFileAtomic(join(dir, 'sub', 'a.json'), '{"ok":true}\n');
    expect(readFileSync(join(dir, 'sub', 'a.json'), 'utf8')).toBe('{"ok":true}\n');
    mkdirSync(join(dir, 'taken'));
    // The rename onto a directory fails: the error comes through and the temporary is removed.
    expect(() => writeFileAtomic(join(dir, 'taken'), 'x')).toThrow(/EISDIR|EEXIST|ENOTEMPTY|EPERM/);
    expect(readdirSync(dir).sort()).toEqual(['sub', 'taken']);
  });
});

describe('writeFilesAtomic', () => {
  it('writes each file from its chunks, in order, and on failure leaves no temporary behind', () => {
    const dir = tmp();
    const out = join(dir, 'model');
    writeFilesAtomic(out, [
      { name: 'model.onnx.data', chunks: [Uint8Array.of(1, 2), new Uint8Array(0), Uint8Array.of(3)] },
      { name: 'model.onnx', chunks: [new TextEncoder().encode('graph')] },
    ]);
    expect(readdirSync(out).sort()).toEqual(['model.onnx', 'model.onnx.data']);
    expect([...readFileSync(join(out, 'model.onnx.data'))]).toEqual([1, 2, 3]);
    expect(readFileSync(join(out, 'model.onnx'), 'utf8')).toBe('graph');
    // The second rename targets a directory: the first file is in place, the error comes through, the temporary folder is gone.
    mkdirSync(join(out, 'b'));
    expect(() =>
      writeFilesAtomic(out, [
        { name: 'a', chunks: [Uint8Array.of(9)] },
        { name: 'b', chunks: [Uint8Array.of(8)] },
      ]),
    ).toThrow(/EISDIR|EEXIST|ENOTEMPTY|EPERM/);
    expect(readdirSync(out).sort()).toEqual(['a', 'b', 'model.onnx', 'model.onnx.data']);
  });
});
