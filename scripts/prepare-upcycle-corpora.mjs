#!/usr/bin/env node
/**
 * Text of the upcycling scenario's scripture domain (recipes/upcycle-toy.json): the King James Bible from
 * Debian's `bible-kjv` package, `bible -f "Gen1:1-Rev22:21"` with the leading verse references
 * ("Ge1:1 ", "SSol1:1 ") stripped, written to runs/corpora/kjv.txt (4,137,850 bytes). The two other
 * domains are read directly from /usr/share/dictd/{jargon,devil}.dict.dz (packages dict-jargon,
 * dict-devil). Nothing is downloaded: install the packages with
 *   apt-get install bible-kjv dict-jargon dict-devil
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'runs', 'corpora', 'kjv.txt');
const INSTALL = 'apt-get install bible-kjv dict-jargon dict-devil';

const missing = ['/usr/share/dictd/jargon.dict.dz', '/usr/share/dictd/devil.dict.dz'].filter((f) => !existsSync(f));
if (missing.length) {
  process.stderr.write(`prepare-upcycle-corpora: ${missing.join(', ')} missing; install the Debian packages: ${INSTALL}\n`);
  process.exit(2);
}
if (existsSync(out)) {
  process.stderr.write(`prepare-upcycle-corpora: ${out} is there\n`);
  process.exit(0);
}
let raw;
try {
  raw = execFileSync('bible', ['-f', 'Gen1:1-Rev22:21'], { encoding: 'utf8', maxBuffer: 64 << 20 });
} catch (e) {
  process.stderr.write(`prepare-upcycle-corpora: could not run \`bible\` (${e.code ?? e.message}); install the Debian packages: ${INSTALL}\n`);
  process.exit(2);
}
const text = raw.replace(/^\S+?\d+:\d+ /gm, '');
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
writeFileSync(tmp, text);
renameSync(tmp, out);
process.stderr.write(`prepare-upcycle-corpora: wrote ${out} (${Buffer.byteLength(text)} bytes)\n`);
