/**
 * Writes the playground's bundled data: a small slice of the Brown Corpus (the CLI's default corpus),
 * read by @moelab/node's loadBrown (the same cleaning and split as the CLI). Files are taken
 * round-robin over the 15 genres; every 10th file of the sorted list is validation (the CLI's rule).
 * Output: <dir>/brown-train.txt, <dir>/brown-val.txt (about 300 KB + 40 KB). Idempotent.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadBrown } from '@moelab/node';

const TRAIN_BYTES = 300_000;
const VAL_BYTES = 40_000;

export function writeCorpusSlice(outDir) {
  const trainPath = join(outDir, 'brown-train.txt');
  const valPath = join(outDir, 'brown-val.txt');
  if (existsSync(trainPath) && existsSync(valPath)) return { trainPath, valPath };
  // The CLI's own reader (same cleaning, same file-level train/val split); build time only: the app
  // itself never imports @moelab/node.
  const { docs } = loadBrown();
  const take = (split, budget) => {
    // Round-robin over genres so that even a small slice has every genre.
    const byGenre = new Map();
    for (const d of docs.filter((d) => d.split === split)) {
      if (!byGenre.has(d.domain)) byGenre.set(d.domain, []);
      byGenre.get(d.domain).push(d.text);
    }
    const queues = [...byGenre.values()];
    const parts = [];
    let size = 0;
    while (size < budget && queues.some((q) => q.length)) {
      for (const q of queues) {
        const text = q.shift();
        if (text === undefined || size >= budget) continue;
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
