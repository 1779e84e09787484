import { describe, expect, it } from 'vitest';
import { createDefaultRegistry } from './registry.js';
import { firstRouter, sweepRouterNode, withRouter } from './sweep.js';
import { tinySpec } from '../test/helpers.js';

describe('sweep', () => {
  it('substitutes the router of every MoE layer and leaves the rest untouched', () => {
    const spec = { ...tinySpec, extra: [{ type: 'moe', router: 'a' }] };
    const out = withRouter(spec, { type: 'softmax-topk', k: 1 }) as typeof spec;
    expect(out.block.ffn.router).toEqual({ type: 'softmax-topk', k: 1 });
    expect((out.extra[0] as { router: unknown }).router).toEqual({ type: 'softmax-topk', k: 1 });
    expect(out.block.attention).toEqual(tinySpec.block.attention);
    expect(tinySpec.block.ffn.router).toEqual({ type: 'softmax-topk', k: 2 });
  });

  it('refuses a dense model', () => {
    const dense = { ...tinySpec, block: { ...tinySpec.block, ffn: { type: 'dense', hidden: 8 } } };
    expect(() => withRouter(dense, 'softmax-topk')).toThrow(/no MoE layer/);
  });

  it("carries the preset router's k to routers that have a k, and nothing they lack", () => {
    const reg = createDefaultRegistry();
    const base = firstRouter(tinySpec);
    expect(base).toEqual({ type: 'softmax-topk', k: 2 });
    expect(sweepRouterNode(reg, 'deepseek-v3', base)).toEqual({ type: 'deepseek-v3', k: 2 });
    expect(sweepRouterNode(reg, 'hash', base)).toEqual({ type: 'hash' });
    expect(sweepRouterNode(reg, 'top-p', base)).toEqual({ type: 'top-p' });
  });
});
