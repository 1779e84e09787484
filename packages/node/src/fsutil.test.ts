import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tmp } from '../test/helpers.js';
import { writeFileAtomic } from './fsutil.js';

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
