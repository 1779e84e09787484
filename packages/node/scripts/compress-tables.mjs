#!/usr/bin/env node
/**
 * The measured tables (b), (c), (d) of packages/compress/README.md, from one trained checkpoint:
 *   (b) expert pruning 25 % / 50 % by REAP, frequency, EAN, EASY-EP, EEP (default search budget) and
 *       random, calibrated on the evaluation domain, on another corpus and (REAP, EASY-EP) on both by the
 *       mixed-domain rule; EEP's merging phase after its search; MoE-Pruner at 25 % / 50 % of every
 *       expert neuron's weights, alone and followed by DISTIL_STEPS (100) of expert-wise distillation;
 *   (c) MC-SMoE merging (and plain frequency-weighted averaging) to the same expert counts;
 *   (d) SteerMoE toward one Brown genre and away from another: per-domain perplexity before/after,
 *       with a random force/block of the same size as the control.
 * Usage (repository root, after `pnpm build`):
 *   nice -n 10 node packages/node/scripts/compress-tables.mjs [CHECKPOINT] [OUT.json]
 * CHECKPOINT defaults to runs/compress-ref/moe/checkpoint (packages/compress/scripts/train-reference.sh).
 * Settings: EVAL=brown:press-reportage (evaluation domain), OTHER=sotu (the other calibration text), TOWARD=brown:press-reportage,
 * AWAY=brown:fiction, CALIB_TOKENS=16384, EVAL_TOKENS=16384, SECTIONS=prune,weights,merge,steer (the tables to
 * run, comma-separated).
 */
import { writeFileSync } from 'node:fs';
import {
  collectExpertTargets,
  distilExperts,
  eepMerge,
  eepSearch,
  mergeExperts,
  moePrune,
  planPruning,
  planSteering,
  pruneExperts,
  RoutingObserver,
  sliceExperts,
  steerEdits,
  steerScores,
} from '@moelab/compress';
import { Rng } from '@moelab/core';
import {
  calibrate,
  chooseBackend,
  createDefaultRegistry,
  CorpusTokens,
  evaluateWithMask,
  loadCheckpoint,
  loadCorpus,
  observeWindows,
  textSet,
  textWindows,
  windowsPerplexity,
} from '@moelab/node';

const ckpt = process.argv[2] ?? 'runs/compress-ref/moe/checkpoint';
const outJson = process.argv[3];
const env = (k, d) => process.env[k] ?? d;
const EVAL = env('EVAL', 'brown:press-reportage');
const OTHER = env('OTHER', 'sotu');
const TOWARD = env('TOWARD', 'brown:press-reportage');
const AWAY = env('AWAY', 'brown:fiction');
const calibTokens = Number(env('CALIB_TOKENS', 16384));
const evalTokens = Number(env('EVAL_TOKENS', 16384));
const batch = 8;
const DISTIL_STEPS = Number(env('DISTIL_STEPS', 100));
const domains = [TOWARD, AWAY, 'brown:learned', 'brown:romance', 'sotu'];
const sections = new Set(env('SECTIONS', 'prune,weights,merge,steer').split(','));

await chooseBackend('auto');
const registry = createDefaultRegistry();
const load = () => loadCheckpoint(ckpt, registry);
const { model, config } = load();
const seqLen = Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
const evalSet = textSet(EVAL, 'EVAL');
const evalWindows = textWindows(evalSet, { split: 'val', seqLen, maxTokens: evalTokens }, 'EVAL');
const brown = new CorpusTokens(loadCorpus('brown'));
const evalOpts = { seed: config.seed ?? 0, seqLen, batchSize: 16, batches: 8 };
const measure = (m) => ({ domain: windowsPerplexity(m, evalWindows, batch), brown: evaluateWithMask(m, brown, evalOpts).perplexity });
const params = (m) => m.namedParameters().reduce((a, [, v]) => a + v.size, 0);
const t0 = Date.now();
const log = (s) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0)}s] ${s}\n`);

const base = measure(model);
log(`base: ${EVAL} ${base.domain.toFixed(3)}, brown ${base.brown.toFixed(3)}`);
const calibs = {};
for (const name of [EVAL, OTHER]) {
  calibs[name] = calibrate(model, textSet(name, 'calib'), {
    seqLen,
    maxTokens: calibTokens,
    batchSize: batch,
    flag: 'calib',
    observer: new RoutingObserver({ hidden: true }),
  });
  log(`calibrated on ${name}`);
}
const E = [...calibs[EVAL].layers.values()][0].numExperts;

const MIXED = `${EVAL}+${OTHER}`; // mixed-domain calibration: one observer per text, normalised scores summed
const pruning = [];
if (sections.has('prune'))
  for (const ratio of [0.25, 0.5]) {
    const searched = new Map(); // calib -> { keep, windows }: the EEP search, shared by eep and eep+merge
    for (const method of ['reap', 'frequency', 'ean', 'easy-ep', 'eep', 'eep+merge', 'random'])
      for (const calib of [EVAL, OTHER, MIXED]) {
        if (method === 'random' && calib !== EVAL) continue; // random ignores the calibration
        if (calib === MIXED && method !== 'reap' && method !== 'easy-ep') continue;
        const source = { spec: config.spec, model };
        let pruned;
        if (method.startsWith('eep')) {
          if (!searched.has(calib)) {
            // moelab prune's defaults: population 8, 4 generations, 2048 search tokens, REAP as one starting keep-set.
            const windows = textWindows(textSet(calib, 'calib'), { split: 'train', seqLen, maxTokens: 2048 }, 'calib');
            const init = [planPruning(calibs[calib], source, { method: 'reap', ratio }).keep];
            searched.set(calib, { windows, keep: eepSearch(model, windows, { ratio, population: 8, generations: 4, seed: 0, batchSize: batch, init }).keep });
          }
          const { windows, keep } = searched.get(calib);
          // The merging phase: moelab prune --merge-generations 4 (population 8, sigma 0.05) on the same windows.
          pruned =
            method === 'eep'
              ? sliceExperts(registry, source, keep)
              : eepMerge(registry, source, windows, { keep, population: 8, generations: 4, sigma: 0.05, seed: 0, batchSize: batch });
        } else pruned = pruneExperts(registry, calib === MIXED ? [calibs[EVAL], calibs[OTHER]] : calibs[calib], source, { method, ratio, seed: 0 });
        const r = {
          ratio,
          method,
          calib: method === 'random' ? '-' : calib === MIXED ? `${EVAL} + ${OTHER} (mixed)` : calib,
          experts: E - Math.round(ratio * E),
          parameters: params(pruned.model),
          ...measure(pruned.model),
        };
        pruned.model.dispose();
        pruning.push(r);
        log(`prune ${method} ${ratio} calib ${calib}: ${r.domain.toFixed(3)} / ${r.brown.toFixed(3)}`);
      }
  }

const weightPruning = [];
if (sections.has('weights'))
  for (const sparsity of [0.25, 0.5])
    for (const distil of [0, DISTIL_STEPS])
      for (const calib of [EVAL, OTHER]) {
        const fresh = load();
        // moelab prune --method moe-pruner [--distil-steps N]: the teacher is the unpruned model on the calibration windows.
        const teacher =
          distil > 0
            ? collectExpertTargets(fresh.model, textWindows(textSet(calib, 'calib'), { split: 'train', seqLen, maxTokens: calibTokens }, 'calib'), {
                batchSize: batch,
              })
            : undefined;
        moePrune(calibs[calib], { spec: fresh.config.spec, model: fresh.model }, { sparsity });
        const kd = teacher ? distilExperts(fresh.model, teacher, { steps: distil, lr: 1e-3 }) : undefined;
        const r = { sparsity, calib, distil, ...(kd ? { kdLoss: [kd.losses[0], kd.losses.at(-1)] } : {}), ...measure(fresh.model) };
        fresh.model.dispose();
        weightPruning.push(r);
        log(`moe-pruner ${sparsity} distil ${distil} calib ${calib}: ${r.domain.toFixed(3)} / ${r.brown.toFixed(3)}`);
      }

const merging = [];
if (sections.has('merge'))
  for (const groups of [Math.round(0.75 * E), Math.round(0.5 * E)])
    for (const method of ['mc-smoe', 'average'])
      for (const calib of [EVAL, OTHER]) {
        const fresh = load();
        mergeExperts(registry, calibs[calib], { spec: fresh.config.spec, model: fresh.model }, { groups, align: method === 'mc-smoe' });
        const r = { groups, method, calib, ...measure(fresh.model) };
        fresh.model.dispose();
        merging.push(r);
        log(`merge ${method} ${groups} calib ${calib}: ${r.domain.toFixed(3)} / ${r.brown.toFixed(3)}`);
      }

// (d) steering: detection on the train split of both sets, perplexity on the validation split of several domains.
const steering = [];
if (sections.has('steer')) {
  const detect = new RoutingObserver({ outputs: false, inputs: false });
  const toward = textSet(TOWARD, 'TOWARD');
  const away = textSet(AWAY, 'AWAY');
  for (const set of [toward, away])
    observeWindows(detect, model, textWindows(set, { split: 'train', seqLen, maxTokens: calibTokens }, set.name), { domain: set.name }, batch);
  const topK = new Map([...detect.layers.keys()].map((p) => [p, 2]));
  const L = detect.layers.size;
  const domainWindows = Object.fromEntries(domains.map((d) => [d, textWindows(textSet(d, d), { split: 'val', seqLen, maxTokens: 8192 }, d)]));
  for (const [activate, deactivate] of [
    [L, 0],
    [0, 2 * L],
    [L, 2 * L],
  ]) {
    const file = planSteering(steerScores(detect, toward.name, away.name), toward.name, away.name, { activate, deactivate, topK });
    // Control: the same number of forced / blocked experts per layer, chosen at random.
    const rng = new Rng(1);
    const control = { layers: {} };
    for (const [path, l] of Object.entries(file.layers)) {
      const ids = Array.from({ length: E }, (_, e) => e);
      for (let i = E - 1; i > 0; i--) {
        const j = Math.floor(rng.next() * (i + 1));
        [ids[i], ids[j]] = [ids[j], ids[i]];
      }
      control.layers[path] = { force: ids.slice(0, l.force.length), block: ids.slice(l.force.length, l.force.length + l.block.length) };
    }
    for (const [kind, f] of [
      ['steer', file],
      ['random', control],
    ]) {
      const row = { activate, deactivate, kind };
      for (const d of domains) {
        const before = windowsPerplexity(model, domainWindows[d], batch);
        const after = windowsPerplexity(model, domainWindows[d], batch, { routerLogitEdits: steerEdits(f) });
        row[d] = { before, after };
      }
      steering.push(row);
      log(`steer ${kind} +${activate}/-${deactivate}: ${domains.map((d) => `${d} ${row[d].before.toFixed(2)}->${row[d].after.toFixed(2)}`).join(', ')}`);
    }
  }
}

const pct = (a, b) => `${a >= b ? '+' : ''}${((100 * (a - b)) / b).toFixed(1)}%`;
const lines = [];
lines.push(`base: ${EVAL} val ppl ${base.domain.toFixed(3)}, brown val ppl ${base.brown.toFixed(3)}, ${E} experts/layer, ${params(model)} parameters`);
lines.push(
  '',
  '| experts removed | method | calibration | experts left | parameters | ppl ' + EVAL + ' | ppl brown |',
  '| --- | --- | --- | --- | --- | --- | --- |',
);
for (const r of pruning)
  lines.push(
    `| ${100 * r.ratio}% | ${r.method} | ${r.calib} | ${r.experts} | ${r.parameters} | ${r.domain.toFixed(3)} (${pct(r.domain, base.domain)}) | ${r.brown.toFixed(3)} (${pct(r.brown, base.brown)}) |`,
  );
lines.push('', '| expert weights zeroed | method | calibration | ppl ' + EVAL + ' | ppl brown |', '| --- | --- | --- | --- | --- |');
for (const r of weightPruning)
  lines.push(
    `| ${100 * r.sparsity}% | ${r.distil ? `moe-pruner + ${r.distil} distillation steps` : 'moe-pruner'} | ${r.calib} | ${r.domain.toFixed(3)} (${pct(r.domain, base.domain)}) | ${r.brown.toFixed(3)} (${pct(r.brown, base.brown)}) |`,
  );
lines.push('', '| distinct experts | method | calibration | ppl ' + EVAL + ' | ppl brown |', '| --- | --- | --- | --- | --- |');
for (const r of merging)
  lines.push(
    `| ${r.groups} | ${r.method} | ${r.calib} | ${r.domain.toFixed(3)} (${pct(r.domain, base.domain)}) | ${r.brown.toFixed(3)} (${pct(r.brown, base.brown)}) |`,
  );
if (steering.length)
  lines.push('', `| forced / blocked | experts chosen by | ${domains.join(' | ')} |`, `| --- | --- | ${domains.map(() => '---').join(' | ')} |`);
for (const r of steering)
  lines.push(
    `| +${r.activate} / −${r.deactivate} | ${r.kind === 'steer' ? `SteerMoE (${TOWARD} vs ${AWAY})` : 'random (control)'} | ${domains.map((d) => `${r[d].before.toFixed(2)} → ${r[d].after.toFixed(2)} (${pct(r[d].after, r[d].before)})`).join(' | ')} |`,
  );
process.stdout.write(`${lines.join('\n')}\n`);
if (outJson) writeFileSync(outJson, `${JSON.stringify({ checkpoint: ckpt, base, pruning, weightPruning, merging, steering }, null, 2)}\n`);
log('done');
