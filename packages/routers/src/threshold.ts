/**
 * Threshold router (XMoE, Yang et al. 2024, arXiv 2403.18926; docs/routers.md#threshold): the top-p selector with XMoE's edge
 * rule and defaults. Sorted softmax; expert i is kept while the mass ranked before it is < t (at least
 * one expert); raw softmax weights; first-choice Switch loss 0.01. XMoE's launch script: t = 0.90, 64
 * small experts, capacity factor 8 with token dropping (set `capacityFactor: 8, minCapacity: 4` on the
 * `moe` layer; priority by choice rank is the layer's default `position` policy).
 */
import { Config, defineEntry, Type } from '@moelab/core';
import { balanceFields } from './balance.js';
import { CumulativeRouter } from './top-p.js';

export const thresholdRouter = defineEntry({
  kind: 'router',
  name: 'threshold',
  description: 'Threshold routing (XMoE): experts in softmax order while the mass before them is below t (0.9), raw weights, first-choice balance loss.',
  reference: 'docs/routers.md#threshold; arXiv 2403.18926',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    threshold: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.9, description: 'cumulative mass threshold t' }),
    maxExperts: Type.Optional(Type.Integer({ minimum: 1, description: 'cap on experts per token (default: all E)' })),
    balanceCoef: balanceFields(0.01).balanceCoef,
    balanceCounts: balanceFields(0.01, 'first').balanceCounts,
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'router z-loss weight' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    return new CumulativeRouter(
      ctx.need('dModel'),
      E,
      {
        threshold: c.threshold,
        maxExperts: Math.min(c.maxExperts ?? E, E),
        inclusive: false,
        balanceCoef: c.balanceCoef,
        balanceCounts: c.balanceCounts,
        entropyCoef: 0,
        zLossCoef: c.zLossCoef,
      },
      ctx.rng,
    );
  },
});
