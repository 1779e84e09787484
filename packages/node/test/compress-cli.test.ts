/**
 * The compression commands end to end on a tiny trained MoE (4 experts, top-2, one block repeated
 * twice): prune (expert scores, EASY-EP, EEP, MoE-Pruner), merge-experts, steer (+ eval/generate --steer,
 * generate --scmoe), quantize --qat-steps, analyse; their outputs load in `eval`;
 * the one-line errors of bad input.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli as run, tinySpec, trainedTiny, twoDomains } from './helpers.js';

const cpu = ['--backend', 'cpu'];
/** The error line (the backend line may come first on stderr). */
const last = (err: string) => err.trim().split('\n').at(-1)!;
/** `moelab eval` of a written checkpoint on one small batch. */
const evalCheckpoint = (ckpt: string) => run(['eval', ckpt, '--eval-batches', '1', '--batch', '2', ...cpu]);
/** Experts per MoE layer in a written checkpoint's spec. */
const expertsIn = (ckpt: string): number => JSON.parse(readFileSync(join(ckpt, 'config.json'), 'utf8')).spec.block.ffn.experts;
/** A small calibration pass and one validation batch, the summary as JSON, on cpu. */
const smallJson = ['--calib-tokens', '64', '--batch', '2', '--eval-batches', '1', '--json', ...cpu];

describe('moelab prune / merge-experts / steer / analyse', () => {
  const fixture = trainedTiny(twoDomains, 3);

  it('prune writes a checkpoint with fewer experts that eval loads; bad ratios and empty calibration are one-line errors', () => {
    const out = join(fixture.root, 'pruned');
    const r = run([
      'prune',
      fixture.ckpt,
      '--method',
      'reap',
      '--ratio',
      '0.5',
      '--calib',
      `${fixture.data}:numbers`,
      '--calib-tokens',
      '64',
      '--batch',
      '2',
      '--eval-batches',
      '1',
      '--out',
      out,
      ...cpu,
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/pruned 2 experts by reap \(ratio 0.5, calibration ".*:numbers", \d+ tokens\)/);
    expect(r.out).toMatch(/transformer\.layers\.0\.ffn: kept \d,\d; removed \d,\d/);
    expect(r.out).toMatch(/validation perplexity on .*: \d+\.\d{3} -> \d+\.\d{3}/);
    expect(expertsIn(out)).toBe(2);
    const ev = evalCheckpoint(out);
    expect(ev.code, ev.err).toBe(0);
    expect(ev.out).toMatch(/perplexity \d+\.\d{3}/);

    const few = run(['prune', fixture.ckpt, '--ratio', '0.75', '--calib-tokens', '64', '--batch', '2', '--out', join(fixture.root, 'x'), ...cpu]);
    expect(few.code).toBe(2);
    expect(last(few.err)).toMatch(
      /^moelab: transformer\.layers\.0\.ffn: 1 experts would be left in this layer, fewer than the router's top-k = 2; keep at least 2$/,
    );
    const short = join(fixture.root, 'short.txt');
    writeFileSync(short, 'too short');
    const empty = run(['prune', fixture.ckpt, '--ratio', '0.5', '--calib', short, '--out', join(fixture.root, 'y'), ...cpu]);
    expect(empty.code).toBe(2);
    expect(last(empty.err)).toMatch(/^moelab: .*short\.txt: only 9 characters of text/);
    const none = run([
      'prune',
      fixture.ckpt,
      '--ratio',
      '0.5',
      '--calib',
      `${fixture.data}:numbers`,
      '--calib-tokens',
      '8',
      '--out',
      join(fixture.root, 'y'),
      ...cpu,
    ]);
    expect(none.code).toBe(2);
    expect(last(none.err)).toMatch(
      /^moelab: --calib: the train split of ".*:numbers" has no tokens to calibrate on \(\d+ tokens, one window needs 17; --calib-tokens 8\)$/,
    );
    const method = run(['prune', fixture.ckpt, '--ratio', '0.5', '--method', 'reaper', '--out', join(fixture.root, 'z'), ...cpu]);
    expect(last(method.err)).toMatch(/^moelab: --method: unknown method "reaper"; one of reap, frequency/);
  });

  it('prune --method moe-pruner zeroes half of every expert neuron’s weights; the checkpoint loads', () => {
    const out = join(fixture.root, 'moe-pruned');
    const r = run(['prune', fixture.ckpt, '--method', 'moe-pruner', '--ratio', '0.5', ...smallJson, '--out', out]);
    expect(r.code, r.err).toBe(0);
    const summary = JSON.parse(r.out);
    expect(summary.method).toBe('moe-pruner');
    expect(summary.expertWeights.zeroed * 2).toBe(summary.expertWeights.total);
    expect(summary.tensors.map((t: { tensor: string }) => t.tensor).sort()).toEqual(['w1', 'w2']);
    expect(summary.perplexity.after).toBeGreaterThan(0);
    expect(expertsIn(out)).toBe(4);
    expect(evalCheckpoint(out).code).toBe(0);

    const kdOut = join(fixture.root, 'moe-pruned-kd');
    const kd = run([
      'prune',
      fixture.ckpt,
      '--method',
      'moe-pruner',
      '--ratio',
      '0.5',
      '--distil-steps',
      '5',
      '--distil-lr',
      '0.01',
      ...smallJson,
      '--out',
      kdOut,
    ]);
    expect(kd.code, kd.err).toBe(0);
    const k = JSON.parse(kd.out);
    // Distillation keeps the pruning mask: the same number of zeros, and the loss toward the unpruned experts falls.
    expect(k.expertWeights.zeroed).toBe(summary.expertWeights.zeroed);
    expect(k.distillation.steps).toBe(5);
    expect(k.distillation.lossAfter).toBeLessThan(k.distillation.lossBefore);
    expect(evalCheckpoint(kdOut).code).toBe(0);
    const wrong = run(['prune', fixture.ckpt, '--method', 'reap', '--ratio', '0.5', '--distil-steps', '5', '--out', join(fixture.root, 'kd-reap'), ...cpu]);
    expect(last(wrong.err)).toBe("moelab: --distil-steps: --distil-steps is MoE-Pruner's recovery; it needs --method moe-pruner, not reap");
  });

  it('prune --method easy-ep and --method eep (tiny search budget) write sliced checkpoints', () => {
    const common = ['--ratio', '0.5', '--calib', `${fixture.data}:numbers`, '--calib-tokens', '64', '--batch', '2', '--eval-batches', '0', '--json', ...cpu];
    const easy = run(['prune', fixture.ckpt, '--method', 'easy-ep', ...common, '--out', join(fixture.root, 'easy')]);
    expect(easy.code, easy.err).toBe(0);
    const e = JSON.parse(easy.out);
    expect(e.layers[0].kept).toHaveLength(2);
    const keptScores = e.layers[0].kept.map((i: number) => e.layers[0].scores[i]);
    for (const i of e.layers[0].removed) expect(e.layers[0].scores[i]).toBeLessThanOrEqual(Math.min(...keptScores));
    // A tiny search budget: 3 candidates, one generation, 32 tokens per evaluation.
    const eepSearch = ['--method', 'eep', '--population', '3', '--generations', '1', '--search-tokens', '32', ...common];
    const eep = run(['prune', fixture.ckpt, ...eepSearch, '--out', join(fixture.root, 'eep')]);
    expect(eep.code, eep.err).toBe(0);
    const s = JSON.parse(eep.out);
    expect(s.search.history).toHaveLength(2);
    expect(s.search.history[1]).toBeLessThanOrEqual(s.search.history[0]);
    expect(expertsIn(join(fixture.root, 'eep'))).toBe(2);
    const bad = run(['prune', fixture.ckpt, '--method', 'eep', '--population', '1', ...common, '--out', join(fixture.root, 'eep1')]);
    expect(last(bad.err)).toBe('moelab: --population: the population must be an integer of at least 2, got 1');

    // EEP's merging phase after the search: never worse than the pruned start on the search windows; an ordinary checkpoint.
    const merged = run(['prune', fixture.ckpt, ...eepSearch, '--merge-generations', '2', '--merge-sigma', '0.2', '--out', join(fixture.root, 'eep-merged')]);
    expect(merged.code, merged.err).toBe(0);
    const m = JSON.parse(merged.out);
    expect(m.merge.history).toHaveLength(3);
    expect(m.merge.loss).toBeLessThanOrEqual(m.merge.startLoss);
    expect(m.merge.startLoss).toBeCloseTo(m.search.loss, 4);
    expect(expertsIn(join(fixture.root, 'eep-merged'))).toBe(2);
    expect(evalCheckpoint(join(fixture.root, 'eep-merged')).code).toBe(0);
    const noEep = run(['prune', fixture.ckpt, '--method', 'reap', '--merge-generations', '2', ...common, '--out', join(fixture.root, 'm-reap')]);
    expect(last(noEep.err)).toBe("moelab: --merge-generations: --merge-generations is EEP's merging phase; it needs --method eep, not reap");

    // Mixed-domain calibration: one pass per text, the normalised scores summed (each text's scores sum to 1 per layer).
    const mixed = run([
      'prune',
      fixture.ckpt,
      '--method',
      'easy-ep',
      ...['--ratio', '0.5', '--calib-tokens', '64', '--batch', '2', '--eval-batches', '0', '--json', ...cpu],
      '--calib',
      `${fixture.data}:numbers,${fixture.data}:animals`,
      '--out',
      join(fixture.root, 'easy-mixed'),
    ]);
    expect(mixed.code, mixed.err).toBe(0);
    const x = JSON.parse(mixed.out);
    expect(x.calib).toBe(`${fixture.data}:numbers,${fixture.data}:animals`);
    for (const l of x.layers) expect(l.scores.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(2, 9);
    const blank = run(['prune', fixture.ckpt, '--ratio', '0.5', '--calib', `${fixture.data}:numbers,`, '--out', join(fixture.root, 'blank'), ...cpu]);
    expect(last(blank.err)).toMatch(/^moelab: --calib: ".*:numbers," has an empty calibration text; separate the texts with single commas$/);
  });

  it('quantize --bits 2 --qat-steps trains before packing; the checkpoint loads; --qat-steps without --data is a one-line error', () => {
    const out = join(fixture.root, 'q2qat');
    const r = run(['quantize', fixture.ckpt, '--bits', '2', '--qat-steps', '2', '--data', fixture.data, '--batch', '2', '--seq', '16', '--json', '--out', out]);
    expect(r.code, r.err).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.bits).toBe(2);
    expect(report.qat.steps).toBe(2);
    expect(Number.isFinite(report.qat.lastLoss)).toBe(true);
    expect(evalCheckpoint(out).code).toBe(0);
    const bad = run(['quantize', fixture.ckpt, '--bits', '2', '--qat-steps', '2', '--out', join(fixture.root, 'q2bad')]);
    expect(last(bad.err)).toBe('moelab: --data: --qat-steps needs the text to train on: --data brown|sotu|PATH|corpus:domain');
  });

  it('merge-experts binds the experts into --groups distinct experts; a dense model is a one-line error', () => {
    const out = join(fixture.root, 'merged');
    const r = run(['merge-experts', fixture.ckpt, '--groups', '2', '--calib-tokens', '64', '--batch', '2', '--eval-batches', '1', '--out', out, ...cpu]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/merged every MoE layer into 2 experts \(mc-smoe/);
    expect(r.out).toMatch(/transformer\.layers\.0\.ffn: \{\d(,\d)*\} \{\d(,\d)*\}/);
    expect(expertsIn(out)).toBe(4);
    expect(evalCheckpoint(out).code).toBe(0);

    const dense = join(fixture.root, 'dense');
    mkdirSync(dense);
    writeFileSync(join(dense, 'spec.json'), JSON.stringify({ ...tinySpec, block: { ...tinySpec.block, ffn: { type: 'dense', hidden: 16 } } }));
    const t = run([
      'train',
      join(dense, 'spec.json'),
      '--data',
      fixture.data,
      '--steps',
      '1',
      '--batch',
      '2',
      '--seq',
      '16',
      '--eval-batches',
      '1',
      '--eval-every',
      '0',
      '--quiet',
      '--out',
      dense,
      ...cpu,
    ]);
    expect(t.code, t.err).toBe(0);
    const m = run([
      'merge-experts',
      join(dense, 'checkpoint'),
      '--groups',
      '2',
      '--calib-tokens',
      '64',
      '--eval-batches',
      '0',
      '--out',
      join(fixture.root, 'w'),
      ...cpu,
    ]);
    expect(m.code).toBe(2);
    expect(last(m.err)).toBe('moelab: the model has no moe layer with routed experts to merge');
  });

  it('steer writes a force/block file that eval --steer and generate --steer apply; analyse prints the report', () => {
    const out = join(fixture.root, 'steer.json');
    const r = run([
      'steer',
      fixture.ckpt,
      '--toward',
      `${fixture.data}:numbers`,
      '--away',
      `${fixture.data}:animals`,
      '--activate',
      '1',
      '--deactivate',
      '1',
      '--calib-tokens',
      '64',
      '--eval-tokens',
      '32',
      '--batch',
      '2',
      '--out',
      out,
      ...cpu,
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/steering toward ".*:numbers", away from ".*:animals": 1 experts forced, 1 blocked/);
    expect(r.out).toMatch(/validation perplexity of ".*:numbers": \d+\.\d{3} -> \d+\.\d{3}/);
    const file = JSON.parse(readFileSync(out, 'utf8'));
    expect(file.format).toBe('moelab-steer-v1');
    const ev = run(['eval', fixture.ckpt, '--steer', out, '--eval-batches', '1', '--batch', '2', ...cpu]);
    expect(ev.code, ev.err).toBe(0);
    expect(ev.out).toMatch(/steered toward ".*:numbers" away from ".*:animals": 1 forced, 1 blocked/);
    const g = run(['generate', fixture.ckpt, '--steer', out, '--tokens', '5', '--prompt', 'the ', ...cpu]);
    expect(g.code, g.err).toBe(0);
    const sc = run([
      'generate',
      fixture.ckpt,
      '--steer',
      out,
      '--scmoe',
      '0.5',
      '--scmoe-rank',
      '1',
      '--tokens',
      '5',
      '--temperature',
      '0',
      '--prompt',
      'the ',
      ...cpu,
    ]);
    expect(sc.code, sc.err).toBe(0);
    expect(sc.out.startsWith('the ')).toBe(true);
    const badRank = run(['generate', fixture.ckpt, '--scmoe', '0.5', '--scmoe-rank', '4', '--tokens', '2', ...cpu]);
    expect(last(badRank.err)).toBe('moelab: --scmoe-rank: the weak rank 4 needs more than 4 experts (ranks are 0-based)');
    writeFileSync(join(fixture.root, 'bad.json'), '{"format":"nope"}');
    const bad = run(['eval', fixture.ckpt, '--steer', join(fixture.root, 'bad.json'), ...cpu]);
    expect(last(bad.err)).toMatch(/^moelab: .*bad\.json: \$\.format: unknown steering format "nope"/);

    const a = run(['analyse', fixture.ckpt, '--tokens', '64', '--batch', '2', '--json', ...cpu]);
    expect(a.code, a.err).toBe(0);
    const report = JSON.parse(a.out);
    expect(report.layers).toHaveLength(1);
    expect(report.layers[0].load.reduce((x: number, y: number) => x + y, 0)).toBeCloseTo(1, 9);
    expect(Object.keys(report.layers[0].domainJS).sort()).toEqual(['animals', 'numbers']);
    const table = run(['analyse', fixture.ckpt, '--tokens', '64', '--batch', '2', ...cpu]);
    expect(table.out).toMatch(/layer\s+experts\s+tokens\s+load CV\s+MaxVio/);
  });
});
