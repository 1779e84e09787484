/**
 * `runRecipe`: run a recipe's units in dependency order, `workers` at a time (child processes when more
 * than one), skipping every unit whose `row.json` is already there with the same fingerprint — so a
 * re-run after a crash or Ctrl-C redoes at most the runs that were in flight. The results table is
 * written to `results.md` / `results.json` (atomically) after every finished run.
 */
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildModel, MoelabError, type Registry, tf } from '@moelab/core';
import { type Corpus, loadDomains, loadTextPath } from '../corpus.js';
import { DomainTokens } from '../domains.js';
import { writeFileAtomic } from '../fsutil.js';
import { fmtTime } from '../progress.js';
import { createDefaultRegistry } from '../registry.js';
import { planRecipe, type Unit } from './plan.js';
import { formatResults } from './results.js';
import { parseRecipe, type Recipe } from './schema.js';
import { executeUnit, type RecipeRow, readRow } from './unit.js';

export interface RecipeRunOptions {
  /** The recipe's JSON value. */
  recipe: unknown;
  /** Relative corpus paths are resolved against this folder (the recipe file's). */
  baseDir: string;
  outDir: string;
  /** Runs trained at the same time, each in its own process (default 1: one after the other, in this process). */
  workers?: number;
  /** Backend name the worker processes select (the parent's choice is made by the caller). */
  backend?: string;
  quiet?: boolean;
  registry?: Registry;
  /** Output for the summary lines and the table (default stdout). */
  write?: (s: string) => void;
  /** Stop after this many runs have been trained in this call (for tests of resuming). */
  maxRuns?: number;
  /** The worker script (default: `worker.js` beside this module, i.e. the built package's). */
  workerScript?: string;
}

export interface RecipeRunResult {
  rows: RecipeRow[];
  /** Units trained by this call (the others were finished before). */
  trained: string[];
  skipped: string[];
  table: string;
}

/** Read a recipe file: JSON with a clear error naming the file and the position of a syntax error. */
export function readRecipeFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new MoelabError('no such recipe file', path);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new MoelabError(`not valid JSON: ${(e as Error).message}`, path);
  }
}

/** The recipe's domains, read from disk (missing files are errors naming `$.corpus.domains.<name>`). */
export function loadRecipeCorpus(recipe: Recipe, baseDir: string): Corpus {
  const heldOut = recipe.corpus.heldOut;
  if (recipe.corpus.domains) return loadDomains(recipe.corpus.domains, { heldOut, baseDir, where: '$.corpus.domains', name: recipe.recipe });
  const folder = resolve(baseDir, recipe.corpus.folder!);
  if (!existsSync(folder)) throw new MoelabError(`the corpus folder does not exist: ${folder}`, '$.corpus.folder');
  return loadTextPath(folder, { heldOut });
}

/** Everything a recipe run needs, validated: recipe, corpus, units. */
export interface PreparedRecipe {
  registry: Registry;
  recipe: Recipe;
  data: DomainTokens;
  units: Unit[];
  corpusHash: string;
}

export function prepareRecipe(value: unknown, baseDir: string, registry: Registry = createDefaultRegistry()): PreparedRecipe {
  const recipe = parseRecipe(value, registry);
  try {
    buildModel(recipe.model, registry, 0).dispose();
  } catch (e) {
    if (e instanceof MoelabError && e.where?.startsWith('$')) throw new MoelabError(e.message.slice(e.where.length + 2), `$.model${e.where.slice(1)}`);
    throw e;
  }
  const data = new DomainTokens(loadRecipeCorpus(recipe, baseDir));
  const seqLen = Math.max(recipe.train.seqLen ?? 64, recipe.eval.seqLen ?? 0);
  data.checkWindows(seqLen, '$.corpus');
  const units = planRecipe(recipe, data.domains);
  const h = createHash('sha256');
  for (const d of data.domains) {
    h.update(d);
    for (const s of ['train', 'val'] as const) {
      const t = data.tokens(d, s);
      h.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
    }
  }
  return { registry, recipe, data, units, corpusHash: h.digest('hex').slice(0, 16) };
}

/** Hash of everything that decides a unit's result; dependencies enter through their fingerprints. */
export function unitFingerprint(u: Unit, p: PreparedRecipe, depPrints: readonly string[]): string {
  const { id: _id, phase: _phase, run: _run, deps: _deps, ...rest } = u;
  const content = {
    ...rest,
    model: u.kind === 'train' && !u.from ? p.recipe.model : undefined,
    eval: p.recipe.eval,
    seed: p.recipe.seed,
    corpus: p.corpusHash,
    deps: depPrints,
  };
  return createHash('sha256').update(JSON.stringify(content)).digest('hex').slice(0, 16);
}

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

interface WorkerRequest {
  recipe: unknown;
  baseDir: string;
  outDir: string;
  unit: string;
  fingerprint: string;
  backend: string;
  quiet: boolean;
}

/** Train one unit in a child process; resolves to its row. */
function runInWorker(req: WorkerRequest, script = WORKER): Promise<RecipeRow> {
  if (!existsSync(script))
    return Promise.reject(new MoelabError(`the worker script ${script} is missing: run \`pnpm build\` (parallel runs need the built package)`, '--workers'));
  return new Promise((resolvePromise, reject) => {
    const child = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let settled = false;
    child.on('message', (m: { ok: boolean; row?: RecipeRow; message?: string }) => {
      settled = true;
      if (m.ok) resolvePromise(m.row!);
      else reject(new MoelabError(m.message ?? 'failed'));
    });
    child.on('exit', (code, signal) => {
      if (!settled) reject(new MoelabError(`the worker training "${req.unit}" exited (${signal ?? `code ${code}`}) before finishing`));
    });
    child.send(req);
  });
}

/** Run (or resume) a recipe. */
export async function runRecipe(o: RecipeRunOptions): Promise<RecipeRunResult> {
  const write = o.write ?? ((s: string) => process.stdout.write(s));
  const prepared = prepareRecipe(o.recipe, o.baseDir, o.registry);
  const { recipe, units, data } = prepared;
  const workers = Math.max(1, o.workers ?? 1);
  writeFileAtomic(resolve(o.outDir, 'recipe.json'), `${JSON.stringify(o.recipe, null, 2)}\n`);

  const rows = new Map<string, RecipeRow>();
  const prints = new Map<string, string>();
  const trained: string[] = [];
  const skipped: string[] = [];
  const t0 = performance.now();
  const log = (s: string) => {
    if (!o.quiet) process.stderr.write(`${s}\n`);
  };
  log(
    `recipe ${recipe.recipe}: ${units.length} runs (${data.domains.length} domains: ${data.domains.join(', ')}), ${workers} worker${workers > 1 ? 's' : ''}, output in ${o.outDir}`,
  );

  const writeResults = () => {
    const done = units.filter((u) => rows.has(u.id)).map((u) => rows.get(u.id)!);
    const res = formatResults(recipe, data.domains, done);
    writeFileAtomic(
      resolve(o.outDir, 'results.md'),
      `# moelab recipe ${recipe.recipe}\n\nbackend: ${tf.getBackend()}, ${new Date().toISOString()}\n\n${res.markdown}\n`,
    );
    writeFileAtomic(
      resolve(o.outDir, 'results.json'),
      `${JSON.stringify({ recipe: recipe.recipe, domains: data.domains, backend: tf.getBackend(), rows: done }, null, 2)}\n`,
    );
    return res;
  };

  const pending = new Set(units.map((u) => u.id));
  const running = new Map<string, Promise<void>>();
  let failure: Error | undefined;
  let budget = o.maxRuns ?? Number.POSITIVE_INFINITY;

  const start = (u: Unit, fingerprint: string) => {
    pending.delete(u.id);
    const n = units.indexOf(u) + 1;
    log(`[${n}/${units.length}] ${u.id}: start`);
    const finish = (row: RecipeRow) => {
      rows.set(u.id, row);
      trained.push(u.id);
      log(`[${n}/${units.length}] ${u.id}: done in ${fmtTime(row.wallSec)}, held-out mean ${row.heldOut.mean.toFixed(3)} bits/byte`);
      writeResults();
    };
    let p: Promise<void>;
    if (workers === 1) {
      p = Promise.resolve().then(() => finish(executeUnit(u, { ...prepared, outDir: o.outDir, rows, quiet: o.quiet }, fingerprint)));
    } else {
      p = runInWorker(
        { recipe: o.recipe, baseDir: o.baseDir, outDir: o.outDir, unit: u.id, fingerprint, backend: o.backend ?? tf.getBackend(), quiet: !!o.quiet },
        o.workerScript,
      ).then(finish);
    }
    running.set(
      u.id,
      p
        .catch((e: Error) => {
          failure ??= e;
        })
        .finally(() => running.delete(u.id)),
    );
  };

  while (pending.size > 0 || running.size > 0) {
    if (!failure) {
      // Skip finished runs, start ready ones (dependencies finished) up to the worker count.
      for (const u of units) {
        if (!pending.has(u.id) || !u.deps.every((d) => rows.has(d))) continue;
        const fingerprint = unitFingerprint(
          u,
          prepared,
          u.deps.map((d) => prints.get(d)!),
        );
        const row = readRow(o.outDir, u.id);
        if (row) {
          if (row.fingerprint !== fingerprint)
            throw new MoelabError(
              `run "${u.id}" was finished with a different recipe, corpus or upstream run (fingerprint ${row.fingerprint}, now ${fingerprint}); delete ${resolve(o.outDir, u.id)} to re-run it, or use another --out`,
            );
          pending.delete(u.id);
          rows.set(u.id, row);
          prints.set(u.id, fingerprint);
          skipped.push(u.id);
          log(`${u.id}: finished before, skipped`);
          continue;
        }
        if (running.size >= workers || budget <= 0) continue;
        budget--;
        prints.set(u.id, fingerprint);
        start(u, fingerprint);
      }
    }
    if (running.size === 0) break;
    await Promise.race(running.values());
  }
  if (failure) throw failure;
  const res = writeResults();
  if (pending.size === 0)
    log(`recipe ${recipe.recipe}: ${trained.length} runs trained, ${skipped.length} skipped, ${fmtTime((performance.now() - t0) / 1000)}`);
  write(`\n${res.text}\n\n(backend: ${tf.getBackend()}; runs, results.md and results.json in ${o.outDir})\n`);
  return { rows: units.filter((u) => rows.has(u.id)).map((u) => rows.get(u.id)!), trained, skipped, table: res.text };
}
