#!/usr/bin/env node
/**
 * Checks the repository's own documentation links, which TypeDoc only partly covers:
 *
 * 1. every relative link in `docs/*.md`, the root README and the package / app READMEs points to a file
 *    or folder that exists, and a `#anchor` on a markdown target names one of its headings;
 * 2. every `docs/<page>.md#<anchor>` pointer in source files (comments and registry `reference`
 *    fields of packages and apps: .ts, .mjs, .cc, .h) names an existing page and heading;
 * 3. nothing cites the design notes that do not ship with the repository (`specs/<x>.md`,
 *    `ENGINE-NOTES`), in sources or in markdown.
 *
 * Anchors use TypeDoc's heading slugs (lowercased; punctuation dropped; spaces become hyphens), which
 * equal GitHub's for headings made of letters, digits, spaces and hyphens.
 *
 * Usage: node scripts/check-docs.mjs [repo root]. Prints one line per problem and exits 1 if any.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SKIP_DIRS = new Set(['node_modules', 'dist', 'build', '.turbo', 'docs-site', '.git', 'runs', 'coverage', 'test-results', '.vite']);
const SOURCE_EXT = /\.(ts|mts|mjs|cc|h)$/;
const FORBIDDEN = [/\bspecs\/[\w-]+\.md\b/, /ENGINE-NOTES/];

/** TypeDoc's heading slug (Slugger.serialize + lowercase). */
export function slug(text) {
  const s = text
    .trim()
    .replace(/[\u2000-\u206F\u2E00-\u2E7F\\'!"#$%&()*+,./:;<=>?@[\]^`{|}~]/g, '')
    .replace(/\s/g, '-')
    .replace(/--+/, '-');
  return (s || '_').toLocaleLowerCase();
}

/** Lines of a markdown file outside fenced code blocks, with their 1-based line numbers. */
function proseLines(text) {
  const out = [];
  let fence = null;
  text.split('\n').forEach((line, i) => {
    const m = /^\s*(```+|~~~+)/.exec(line);
    if (m) {
      if (!fence) fence = m[1][0];
      else if (m[1][0] === fence) fence = null;
      return;
    }
    if (!fence) out.push({ line, n: i + 1 });
  });
  return out;
}

const anchorCache = new Map();
/** The anchors of a markdown file's headings, numbered like TypeDoc numbers repeated headings. */
export function anchorsOf(file) {
  let set = anchorCache.get(file);
  if (set) return set;
  set = new Set();
  const seen = new Map();
  for (const { line } of proseLines(readFileSync(file, 'utf8'))) {
    const h = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!h) continue;
    // Rendered text: inline code and links keep their text only.
    const text = h[1].replace(/\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/`/g, '');
    const base = slug(text);
    let s = base;
    if (seen.has(base)) {
      let count = seen.get(base);
      do {
        count++;
        s = `${base}-${count}`;
      } while (seen.has(s));
      seen.set(base, count);
    } else seen.set(base, 0);
    set.add(s);
  }
  anchorCache.set(file, set);
  return set;
}

function walk(dir, keep, out = []) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    if (SKIP_DIRS.has(name)) continue;
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) walk(p, keep, out);
    else if (keep(p)) out.push(p);
  }
  return out;
}

/** Markdown files whose links are checked. */
export function markdownFiles(root) {
  const files = [join(root, 'README.md')];
  files.push(...walk(join(root, 'docs'), (p) => p.endsWith('.md')));
  for (const group of ['packages', 'apps']) {
    const dir = join(root, group);
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir)) {
      const readme = join(dir, name, 'README.md');
      if (existsSync(readme)) files.push(readme);
    }
  }
  return files.filter((f) => existsSync(f));
}

/** Source files whose `docs/…` pointers are checked. */
export function sourceFiles(root) {
  return [...walk(join(root, 'packages'), (p) => SOURCE_EXT.test(p)), ...walk(join(root, 'apps'), (p) => SOURCE_EXT.test(p))];
}

function checkTarget(root, fromFile, target, where, problems) {
  const hash = target.indexOf('#');
  const pathPart = hash >= 0 ? target.slice(0, hash) : target;
  const anchor = hash >= 0 ? decodeURIComponent(target.slice(hash + 1)) : '';
  const file = pathPart ? resolve(dirname(fromFile), decodeURIComponent(pathPart)) : fromFile;
  if (!file.startsWith(root)) {
    problems.push(`${where}: ${target} points outside the repository`);
    return;
  }
  if (!existsSync(file)) {
    problems.push(`${where}: ${target}: ${relative(root, file)} does not exist`);
    return;
  }
  if (anchor && file.endsWith('.md') && !anchorsOf(file).has(anchor)) {
    problems.push(`${where}: ${target}: no heading with anchor #${anchor} in ${relative(root, file)}`);
  }
}

export function checkDocs(root) {
  root = resolve(root);
  const problems = [];
  for (const file of markdownFiles(root)) {
    const rel = relative(root, file);
    for (const { line, n } of proseLines(readFileSync(file, 'utf8'))) {
      for (const re of FORBIDDEN) if (re.test(line)) problems.push(`${rel}:${n}: cites ${re.exec(line)[0]}, which is not part of the repository`);
      // Inline code spans are not links.
      const prose = line.replace(/`[^`]*`/g, '');
      for (const m of prose.matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
        const target = m[1];
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:, ...
        checkTarget(root, file, target, `${rel}:${n}`, problems);
      }
    }
  }
  for (const file of sourceFiles(root)) {
    const rel = relative(root, file);
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        for (const re of FORBIDDEN) if (re.test(line)) problems.push(`${rel}:${i + 1}: cites ${re.exec(line)[0]}, which is not part of the repository`);
        for (const m of line.matchAll(/\bdocs\/([\w-]+\.md)(#[\w-]+)?/g)) {
          checkTarget(root, join(root, 'README.md'), `docs/${m[1]}${m[2] ?? ''}`, `${rel}:${i + 1}`, problems);
        }
      });
  }
  return problems;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = process.argv[2] ?? fileURLToPath(new URL('..', import.meta.url));
  const problems = checkDocs(root);
  for (const p of problems) console.error(p);
  if (problems.length) {
    console.error(`check-docs: ${problems.length} broken documentation link(s)`);
    process.exit(1);
  }
  console.log('check-docs: every documentation link resolves');
}
