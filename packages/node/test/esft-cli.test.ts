import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { esftExpertConfig, parseEsftConfig, parseEsftScores } from '@moelab/finetune';
import { describe, expect, it } from 'vitest';
import { runCli, textFile, tinySpec, tmp, trainedTiny } from './helpers.js';

describe('moelab esft-scores', () => {
  const fixture = trainedTiny(textFile, 2);

  it('writes the scores and the expert selection in the released ESFT formats, and prints the selection', () => {
    const out = join(fixture.root, 'esft');
    const r = runCli([
      'esft-scores',
      fixture.ckpt,
      '--data',
      fixture.data,
      '--tokens',
      '256',
      '--batch',
      '4',
      '--seq',
      '16',
      '--score',
      'token',
      '--p',
      '0.5',
      '--out',
      out,
      '--backend',
      'cpu',
    ]);
    expect(r.code, r.err).toBe(0);
    const scores = parseEsftScores(JSON.parse(readFileSync(join(out, 'scores.json'), 'utf8')));
    const config = parseEsftConfig(JSON.parse(readFileSync(join(out, 'expert_config.json'), 'utf8')));
    // tinySpec: one distinct MoE block (4 experts, top-2) run twice; each call is a routing decision per token.
    expect(Object.keys(scores.token_scores)).toEqual(['0']);
    const r0 = Object.values(scores.token_scores['0']!);
    expect(r0).toHaveLength(4);
    expect(Math.abs(r0.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-9);
    expect(config).toEqual(esftExpertConfig(scores, { score: 'token', p: 0.5 }));
    expect(config.experts['0']!.length).toBeGreaterThanOrEqual(2);
    expect(r.out).toContain('ESFT token scores of 1 MoE layers on 256 training tokens');
    expect(r.out).toMatch(
      new RegExp(
        `\\n0\\s+transformer\\.layers\\.0\\.ffn\\s+${config.experts['0']!.join(',')}\\s+4\\s+0\\.\\d{4}\\s+${config.experts['0']!.length * 2 * 16 * 16}\\s*\\n`,
      ),
    );
    const json = runCli([
      'esft-scores',
      fixture.ckpt,
      '--data',
      fixture.data,
      '--tokens',
      '64',
      '--batch',
      '4',
      '--seq',
      '16',
      '--score',
      'gate',
      '--out',
      out,
      '--json',
      '--backend',
      'cpu',
    ]);
    expect(json.code, json.err).toBe(0);
    const j = JSON.parse(json.out);
    expect(j).toMatchObject({ score: 'gate', p: 0.1, tokens: 128, parameters: expect.any(Number) });
    expect(j.layers[0].selected).toEqual(JSON.parse(readFileSync(join(out, 'expert_config.json'), 'utf8')).experts['0']);
  });

  it('one-line errors: a dense checkpoint, a bad --score, a threshold outside (0, 1]', () => {
    const denseRoot = tmp();
    const spec = { ...tinySpec, block: { ...tinySpec.block, ffn: { type: 'dense', hidden: 32 } } };
    writeFileSync(join(denseRoot, 'dense.json'), JSON.stringify(spec));
    const t = runCli([
      'train',
      join(denseRoot, 'dense.json'),
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
      '--out',
      join(denseRoot, 'run'),
      '--backend',
      'cpu',
      '--quiet',
    ]);
    expect(t.code, t.err).toBe(0);
    const e1 = runCli(['esft-scores', join(denseRoot, 'run', 'checkpoint'), '--data', fixture.data, '--backend', 'cpu']);
    expect(e1.code).toBe(2);
    expect(e1.err).toMatch(
      /\nmoelab: .*checkpoint: ESFT fine-tunes the routed experts of an MoE model, but this model has no moe layer \(a dense model: use lora or full fine-tuning\)\n$/,
    );
    const e2 = runCli(['esft-scores', fixture.ckpt, '--score', 'tokens', '--backend', 'cpu']);
    expect(e2.err).toBe('moelab: --score must be token or gate, got "tokens"\n');
    const e3 = runCli(['esft-scores', fixture.ckpt, '--p', '0', '--backend', 'cpu']);
    expect(e3.err).toBe('moelab: --p must be in (0, 1], got 0\n');
  });
});
