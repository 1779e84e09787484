import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '@moelab/core';
import { createDefaultRegistry } from '../registry.js';
import { lineage, planRecipe } from './plan.js';
import { prepareRecipe, readRecipeFile, runRecipe } from './runner.js';
import { parseRecipe } from './schema.js';

const root = mkdtempSync(join(tmpdir(), 'moelab-recipe-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const registry = createDefaultRegistry();

/** Three tiny synthetic domains with different vocabularies (a few kB each); `devil` is gzip-compressed. */
function writeCorpora(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(7);
  const vocab = {
    kjv: 'and the lord said unto them thou shalt not behold'.split(' '),
    jargon: 'hack kludge foo bar cruft grok frob daemon wizard'.split(' '),
    devil: 'CYNIC n. A BLACKGUARD WHOSE FAULTY VISION SEES THINGS'.split(' '),
  };
  for (const [d, words] of Object.entries(vocab)) {
    const text = Array.from({ length: 700 }, () => words[rng.int(words.length)]).join(' ');
    if (d === 'devil') writeFileSync(join(dir, `${d}.dict.dz`), gzipSync(Buffer.from(text)));
    else writeFileSync(join(dir, `${d}.txt`), text);
  }
}
const corpora = join(root, 'corpora');
writeCorpora(corpora);

const model = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 16,
  positionEmbedding: 'learned',
  outNorm: 'rmsnorm',
  stack: { groupSize: 2, repeats: 1 },
  block: {
    type: 'transformer',
    layout: 'parallel',
    normType: 'rmsnorm',
    attention: { type: 'mha', heads: 2, ropeDims: 0 },
    ffn: { type: 'dense', hidden: 32, activation: 'silu', glu: true },
  },
};

/** A CI-sized recipe with every phase type and every baseline kind. */
function tinyRecipe(): Record<string, unknown> {
  return {
    recipe: 'tiny',
    corpus: { domains: { kjv: 'corpora/kjv.txt', jargon: 'corpora/jargon.txt', devil: 'corpora/devil.dict.dz' }, heldOut: 0.1 },
    model: structuredClone(model),
    train: { batchSize: 4, seqLen: 16, warmup: 2, weightDecay: 0.1 },
    eval: { batches: 2 },
    phases: [
      { type: 'train', name: 'seed', steps: 6, lr: 3e-3 },
      { type: 'train', name: 'branch', forEach: 'domain', from: 'seed', data: 'domain+mix:0.1', steps: 3, lr: 1e-3 },
      { type: 'merge', name: 'merge', from: ['seed'], upcyclers: [{ type: 'sparse-upcycle', experts: 4, layers: 'all' }], steps: 3, lr: 1e-3 },
      {
        type: 'baselines',
        name: 'baselines',
        runs: ['dense-continue:DM', { kind: 'upcycle', upcycler: 'sparse-upcycle-t5', match: 'compute', from: 'branch.kjv' }, 'moe-scratch:CM'],
      },
    ],
  };
}

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
}

describe('recipe validation', () => {
  const withPhases = (mutate: (r: Record<string, unknown> & { phases: Record<string, unknown>[] }) => void) => {
    const r = tinyRecipe() as Record<string, unknown> & { phases: Record<string, unknown>[] };
    mutate(r);
    return r;
  };

  it('an unknown phase type names its JSON path and suggests the close name', () => {
    const r = withPhases((x) => (x.phases[1]!.type = 'trian'));
    expect(errorOf(() => parseRecipe(r, registry))).toBe('$.phases[1].type: unknown phase type "trian". Did you mean: train?');
  });

  it('an unknown upcycler suggests close names', () => {
    const r = withPhases((x) => (x.phases[2]!.upcyclers = ['sparse-upcycl']));
    expect(errorOf(() => parseRecipe(r, registry))).toMatch(
      /^\$\.phases\[2\]\.upcyclers\[0\]: unknown upcycler "sparse-upcycl"\. Did you mean: sparse-upcycle/,
    );
    const r2 = withPhases((x) => (x.phases[2]!.upcyclers = [{ type: 'sparse-upcycle', expertz: 4 }]));
    expect(errorOf(() => parseRecipe(r2, registry))).toMatch(/^\$\.phases\[2\]\.upcyclers\[0\]: unknown field "expertz"/);
  });

  it('a phase that refers to one that does not exist (or comes later) is refused with its path', () => {
    const r = withPhases((x) => (x.phases[1]!.from = 'sed'));
    expect(errorOf(() => parseRecipe(r, registry))).toBe('$.phases[1].from: no phase named "sed". Did you mean: seed?');
    const r2 = withPhases((x) => (x.phases[0]!.from = 'branch'));
    expect(errorOf(() => parseRecipe(r2, registry))).toBe(
      '$.phases[0].from: phase "branch" comes later in the recipe; a phase can only use the phases before it',
    );
    const r3 = withPhases((x) => (x.phases[2]!.from = ['seed', 'branch.kjb']));
    expect(errorOf(() => parseRecipe(r3, registry))).toBe('$.phases[2].from[1]: phase "branch" has no run "kjb". Did you mean: kjv?');
    const r4 = withPhases((x) => (x.phases[3]!.runs = [{ kind: 'dense-continue', from: 'branch' }]));
    expect(errorOf(() => parseRecipe(r4, registry))).toBe('$.phases[3].runs[0].from: phase "branch" has several runs; name one (branch.<run>)');
  });

  it('bad data mixtures, baselines and fields name their path', () => {
    expect(
      errorOf(() =>
        parseRecipe(
          withPhases((x) => (x.phases[0]!.data = 'domain:kvj')),
          registry,
        ),
      ),
    ).toBe('$.phases[0].data: unknown domain "kvj". Did you mean: kjv?');
    expect(
      errorOf(() =>
        parseRecipe(
          withPhases((x) => (x.phases[3]!.runs = ['dense-contine:DM'])),
          registry,
        ),
      ),
    ).toMatch(/^\$\.phases\[3\]\.runs\[0\]: unknown baseline "dense-contine"\. Did you mean: dense-continue/);
    expect(
      errorOf(() =>
        parseRecipe(
          withPhases((x) => (x.phases[0]!.stpes = 3)),
          registry,
        ),
      ),
    ).toMatch(/^\$\.phases\[0\]: unknown field "stpes"/);
    expect(
      errorOf(() =>
        parseRecipe(
          withPhases((x) => (x.phases[0]!.type = undefined)),
          registry,
        ),
      ),
    ).toBe('$.phases[0]: a phase needs a "type": train, merge, baselines');
  });

  it('a missing domain file names the domain and the path; a bad model spec names $.model', () => {
    const r = tinyRecipe();
    (r.corpus as { domains: Record<string, string> }).domains.jargon = 'corpora/jargon.dict.dz';
    expect(errorOf(() => prepareRecipe(r, root, registry))).toBe(
      `$.corpus.domains.jargon: the file of domain "jargon" does not exist: ${join(root, 'corpora/jargon.dict.dz')}`,
    );
    const r2 = tinyRecipe();
    (r2.model as { dModel: unknown }).dModel = 'wide';
    expect(errorOf(() => prepareRecipe(r2, root, registry))).toMatch(/^\$\.model\.dModel: /);
    expect(errorOf(() => readRecipeFile(join(root, 'none.json')))).toBe(`${join(root, 'none.json')}: no such recipe file`);
  });

  it('expands phases into runs with dependencies', () => {
    const p = prepareRecipe(tinyRecipe(), root, registry);
    expect(p.data.domains).toEqual(['kjv', 'jargon', 'devil']);
    expect(p.units.map((u) => u.id)).toEqual([
      'seed',
      'branch.kjv',
      'branch.jargon',
      'branch.devil',
      'merge.sparse-upcycle',
      'baselines.dense-continue',
      'baselines.sparse-upcycle-t5',
      'baselines.moe-scratch',
    ]);
    const btx = planRecipe(
      parseRecipe(
        {
          ...tinyRecipe(),
          phases: [
            { type: 'train', name: 'seed', steps: 2 },
            { type: 'train', name: 'branch', forEach: 'domain', from: 'seed', data: 'domain', steps: 2 },
            { type: 'merge', name: 'm', from: ['seed', 'branch.*'], upcyclers: ['sparse-upcycle'], steps: 2 },
          ],
        },
        registry,
      ),
      ['kjv', 'jargon', 'devil'],
    );
    const m = btx.find((u) => u.id === 'm.sparse-upcycle')!;
    expect(m.kind === 'merge' && [m.seed, ...m.experts]).toEqual(['seed', 'branch.kjv', 'branch.jargon', 'branch.devil']);
    expect([...lineage('m.sparse-upcycle', btx)].sort()).toEqual(['branch.devil', 'branch.jargon', 'branch.kjv', 'm.sparse-upcycle', 'seed']);
  });
});

describe('the bundled toy recipe (recipes/upcycle-toy.json)', () => {
  it('validates against the registry and expands into the 14 runs of the scenario', () => {
    const file = fileURLToPath(new URL('../../../../recipes/upcycle-toy.json', import.meta.url));
    const recipe = parseRecipe(readRecipeFile(file), registry);
    const units = planRecipe(recipe, ['kjv', 'jargon', 'devil']);
    expect(units.map((u) => u.id)).toEqual([
      'seed',
      'branch.kjv',
      'branch.jargon',
      'branch.devil',
      'merge.btx',
      'merge.bam',
      'merge.bam-kvshare',
      'merge.nexus',
      'merge.nexus-linear',
      'merge800.btx',
      'baselines.dense-dm200',
      'baselines.dense-dm800',
      'baselines.sparse-upcycle-cm',
      'baselines.moe-scratch-cm',
    ]);
    const steps = Object.fromEntries(units.map((u) => [u.id, u.train.steps]));
    expect([steps.seed, steps['branch.kjv'], steps['merge.btx'], steps['merge800.btx']]).toEqual([1200, 300, 200, 800]);
    expect(units.find((u) => u.id === 'baselines.dense-dm800')!.deps).toEqual(['seed', 'merge800.btx']);
  });
});

describe('running a recipe', () => {
  const out = join(root, 'runs', 'tiny');

  it('runs every phase type: checkpoints, rows, matched baselines, step-0 equality, results files', async () => {
    let printed = '';
    const res = await runRecipe({ recipe: tinyRecipe(), baseDir: root, outDir: out, quiet: true, registry, write: (s) => (printed += s) });
    expect(res.trained.length).toBe(8);
    const row = (id: string) => res.rows.find((r) => r.id === id)!;
    for (const r of res.rows) {
      expect(existsSync(join(out, r.id, 'checkpoint', 'model.safetensors'))).toBe(true);
      expect(existsSync(join(out, r.id, 'row.json'))).toBe(true);
      expect(Object.keys(r.heldOut.bitsPerByte)).toEqual(['kjv', 'jargon', 'devil']);
    }
    const seed = row('seed');
    const merge = row('merge.sparse-upcycle');
    // Sparse upcycling with a renormalised router reproduces the seed exactly at step 0 (every domain).
    for (const d of ['kjv', 'jargon', 'devil']) expect(Math.abs(merge.step0!.bitsPerByte[d]! - seed.heldOut.bitsPerByte[d]!)).toBeLessThan(1e-4);
    // Raw (T5) weights scale the FFN by the top-2 probability mass < 1: the step-0 loss differs from its source's.
    const t5 = row('baselines.sparse-upcycle-t5');
    expect(Math.abs(t5.step0!.mean - row('branch.kjv').heldOut.mean)).toBeGreaterThan(1e-3);
    // Data-matched dense continuation: the tokens of the reference pipeline after the seed (the merge's 3 steps).
    expect(row('baselines.dense-continue').steps).toBe(3);
    expect(row('baselines.dense-continue').tokens).toBe(merge.tokens);
    // Compute-matched from branch.kjv: the merge's pipeline minus the seed = the merge's own 3 steps.
    expect(t5.steps).toBe(Math.round(merge.trainFlops / (3 * t5.forwardFlopsPerToken * 4 * 16)));
    // Scratch: the whole pipeline of the merge (seed + merge) in FLOPs of the MoE architecture.
    const scratch = row('baselines.moe-scratch');
    expect(scratch.steps).toBe(Math.round(merge.pipelineFlops / (3 * scratch.forwardFlopsPerToken * 4 * 16)));
    expect(scratch.parameters).toBe(merge.parameters);
    expect(merge.pipelineFlops).toBeCloseTo(seed.trainFlops + merge.trainFlops, 0);
    // Routing shares: per domain a distribution over the 4 experts.
    for (const d of ['kjv', 'jargon', 'devil']) {
      const s = merge.heldOut.routingShares![d]!;
      expect(s.length).toBe(4);
      expect(s.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    }
    expect(seed.heldOut.routingShares).toBeUndefined();
    // The table: printed and written.
    expect(printed).toMatch(/run\s+steps\s+kjv\s+jargon\s+devil\s+mean\s+step 0/);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toContain('| merge.sparse-upcycle');
    const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as { rows: { id: string }[] };
    expect(json.rows.map((r) => r.id)).toEqual(res.rows.map((r) => r.id));
  });

  it('resumes: finished runs are skipped, an interrupted run is redone, a changed recipe is refused', async () => {
    const dir = join(root, 'runs', 'resume');
    const first = await runRecipe({ recipe: tinyRecipe(), baseDir: root, outDir: dir, quiet: true, registry, write: () => {}, maxRuns: 2 });
    expect(first.trained).toEqual(['seed', 'branch.kjv']);
    const seedRow = statSync(join(dir, 'seed', 'row.json')).mtimeMs;
    const seedCkpt = statSync(join(dir, 'seed', 'checkpoint', 'model.safetensors')).mtimeMs;
    // A crash inside a run leaves its directory without row.json: it is redone.
    rmSync(join(dir, 'branch.kjv', 'row.json'));
    const second = await runRecipe({ recipe: tinyRecipe(), baseDir: root, outDir: dir, quiet: true, registry, write: () => {} });
    expect(second.skipped).toEqual(['seed']);
    expect(second.trained).toContain('branch.kjv');
    expect(second.trained).not.toContain('seed');
    expect(statSync(join(dir, 'seed', 'row.json')).mtimeMs).toBe(seedRow);
    expect(statSync(join(dir, 'seed', 'checkpoint', 'model.safetensors')).mtimeMs).toBe(seedCkpt);
    // Same results as the uninterrupted run of the previous test (every step is seeded).
    const full = JSON.parse(readFileSync(join(root, 'runs', 'tiny', 'results.json'), 'utf8')) as { rows: { id: string; heldOut: { mean: number } }[] };
    for (const r of second.rows) expect(r.heldOut.mean).toBeCloseTo(full.rows.find((x) => x.id === r.id)!.heldOut.mean, 5);
    const third = await runRecipe({ recipe: tinyRecipe(), baseDir: root, outDir: dir, quiet: true, registry, write: () => {} });
    expect(third.trained).toEqual([]);
    const changed = tinyRecipe();
    (changed.phases as { lr?: number }[])[0]!.lr = 1e-2;
    await expect(runRecipe({ recipe: changed, baseDir: root, outDir: dir, quiet: true, registry, write: () => {} })).rejects.toThrow(
      /run "seed" was finished with a different recipe, corpus or upstream run .*delete .*seed to re-run it/,
    );
  });

  it('--workers: independent runs train in parallel processes with the same results', async () => {
    const script = fileURLToPath(new URL('../../dist/recipe/worker.js', import.meta.url));
    const dir = join(root, 'runs', 'workers');
    const recipe = tinyRecipe();
    recipe.phases = (recipe.phases as unknown[]).slice(0, 2);
    // The seed finished in an earlier run directory: copied over, it is skipped; the 3 branches run at once.
    cpSync(join(root, 'runs', 'tiny', 'seed'), join(dir, 'seed'), { recursive: true });
    const res = await runRecipe({ recipe, baseDir: root, outDir: dir, quiet: true, registry, write: () => {}, workers: 3, workerScript: script });
    expect(res.skipped).toEqual(['seed']);
    expect(res.trained.sort()).toEqual(['branch.devil', 'branch.jargon', 'branch.kjv']);
    const full = JSON.parse(readFileSync(join(root, 'runs', 'tiny', 'results.json'), 'utf8')) as { rows: { id: string; heldOut: { mean: number } }[] };
    for (const r of res.rows) expect(r.heldOut.mean).toBeCloseTo(full.rows.find((x) => x.id === r.id)!.heldOut.mean, 5);
  });
});
