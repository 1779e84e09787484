import { beforeAll, describe, expect, it } from 'vitest';
import { buildModel, Config, createRegistry, defineEntry, definePlugin, definePreset, MoelabError, Registry, resolveConfig, Type, tf } from './index.js';
import { testRegistry } from '../test/helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const toy = defineEntry({
  kind: 'router',
  name: 'toy',
  description: 'a toy',
  schema: Config({ k: Type.Integer({ minimum: 1, default: 2 }) }),
  create: (c) => c,
});

describe('registry', () => {
  it('rejects duplicate names, also through a plugin used twice', () => {
    const r = new Registry().register(toy);
    expect(() => r.register(toy)).toThrow(/duplicate router "toy"/);
    const p = definePlugin({ name: 'p', entries: [] });
    const r2 = createRegistry(p);
    expect(() => r2.use(p)).toThrow(/plugin "p" is already in use/);
  });

  it('lists close matches for an unknown name', () => {
    const r = testRegistry();
    expect(() => r.get('router', 'softmax-top-k')).toThrow(/unknown router "softmax-top-k"\. Did you mean: softmax-topk/);
    expect(() => r.get('router', 'zzzzzzzzzzzzzzzzzz')).toThrow(/Known router types: (.*, )?softmax-topk/);
  });

  it('lists and filters entries by kind and wildcard; describes defaults and JSON Schema', () => {
    const r = testRegistry();
    expect(r.list('ffn').map((e) => e.name)).toEqual(expect.arrayContaining(['dense', 'moe']));
    expect(r.list('ffn', 'd*').map((e) => e.name)).toEqual(['dense']);
    expect(r.list(undefined, 'softmax*').map((e) => e.name)).toEqual(['softmax-topk']);
    const d = r.describe('router', 'softmax-topk');
    expect(d.defaults).toMatchObject({ k: 2, renormalize: true, balanceCoef: 0.01 });
    expect((d.jsonSchema as { type?: string }).type).toBe('object');
    expect(JSON.parse(JSON.stringify(d.jsonSchema)).properties.k.minimum).toBe(1);
    expect(r.describe('ffn', 'moe').defaults.router).toBe('softmax-topk');
  });

  it('rejects invalid entry names', () => {
    expect(() => new Registry().register({ ...toy, name: 'Bad_Name' })).toThrow(/invalid router name/);
  });
});

describe('presets', () => {
  const tiny = definePreset('tiny', 'a tiny model', { type: 'transformer-lm', dModel: 8 }, { steps: 3 });
  const plugin = definePlugin({ name: 'presets', presets: [tiny, definePreset('tinier', 'smaller', { type: 'transformer-lm', dModel: 4 })] });

  it('a plugin contributes presets to their own table; each read is a fresh copy', () => {
    const r = createRegistry(plugin);
    expect(r.presetNames()).toEqual(['tinier', 'tiny']);
    expect(r.presets('tin?').map((p) => p.name)).toEqual(['tiny']);
    expect(r.kinds()).toEqual([]);
    const a = r.preset('tiny');
    expect(a).toEqual({ spec: { type: 'transformer-lm', dModel: 8 }, train: { steps: 3 } });
    (a.spec as Record<string, unknown>).dModel = 99;
    a.train.steps = 99;
    expect(r.preset('tiny')).toEqual({ spec: { type: 'transformer-lm', dModel: 8 }, train: { steps: 3 } });
  });

  it('unknown and duplicate presets are errors naming them', () => {
    const r = createRegistry(plugin);
    expect(() => r.preset('tinny', '--preset')).toThrow(/--preset: unknown preset "tinny"\. Did you mean: tiny/);
    expect(() => r.registerPreset(tiny)).toThrow(/duplicate preset "tiny"/);
    expect(() => new Registry().registerPreset(definePreset('Big Model', '', { type: 'x' }))).toThrow(/invalid preset name "Big Model"/);
    expect(() => new Registry().preset('tiny')).toThrow(/unknown preset "tiny"\. No presets are registered/);
  });
});

describe('model builder errors carry the JSON path', () => {
  const base = () => ({
    type: 'transformer-lm',
    vocabSize: 16,
    dModel: 8,
    contextLength: 8,
    stack: { groupSize: 1, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } },
    },
  });
  const r = testRegistry();

  it('unknown type name', () => {
    const s = base();
    s.block.ffn.router.type = 'sigmoid-topk';
    expect(() => buildModel(s, r)).toThrow(MoelabError);
    expect(() => buildModel(s, r)).toThrow(/\$\.block\.ffn\.router\.type: unknown router "sigmoid-topk"/);
  });

  it('wrong field type', () => {
    const s = base() as Record<string, unknown> & ReturnType<typeof base>;
    (s.block.ffn.router as Record<string, unknown>).k = 'two';
    expect(() => buildModel(s, r)).toThrow(/\$\.block\.ffn\.router\.k: Expected integer \(got "two"\)/);
  });

  it('unknown field (typo) names the allowed fields', () => {
    const s = base();
    (s.block.ffn as Record<string, unknown>).expertz = 3;
    expect(() => buildModel(s, r)).toThrow(/\$\.block\.ffn: unknown field "expertz"; allowed: experts, router, expert, shared, capacityFactor/);
  });

  it('k larger than the number of experts', () => {
    const s = base();
    s.block.ffn.router.k = 5;
    expect(() => buildModel(s, r)).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds the number of experts \(4\)/);
  });

  it('a node that is not an object or a name', () => {
    const s = base() as unknown as { block: { ffn: unknown } };
    s.block.ffn = 42;
    expect(() => buildModel(s as never, r)).toThrow(/\$\.block\.ffn/);
  });

  it('refuses a batch-dependent router in a causal model', () => {
    const reg = testRegistry();
    reg.register(
      defineEntry({
        kind: 'router',
        name: 'batchy',
        description: 'batch-dependent test router',
        flags: { causalSafe: false, batchDependent: true },
        schema: Config({}),
        create: (_c, ctx) => ({ numExperts: ctx.need('numExperts'), flags: { causalSafe: false, batchDependent: true } }),
      }),
    );
    const s = base() as unknown as { block: { ffn: { router: unknown } } };
    s.block.ffn.router = 'batchy';
    expect(() => buildModel(s as never, reg)).toThrow(/\$\.block\.ffn\.router: this router is batch-dependent/);
  });

  it('fills defaults', () => {
    const { config } = resolveConfig(r, 'ffn', { type: 'moe' });
    expect(config).toMatchObject({ experts: 8, capacityFactor: 0, router: 'softmax-topk', expert: 'mlp' });
  });
});
