/**
 * @moelab/routers — gates that decide which experts process each token: the router catalogue of
 * docs/routers.md (token choice, expert choice, hash, DeepSeek, dynamic, soft/merging, estimators),
 * its balancing losses and controllers.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { autonomyOfExperts } from './aoe.js';
import { chainOfExperts } from './chain-of-experts.js';
import { cosineTopK } from './cosine.js';
import { deepseekMoE } from './deepseek-moe.js';
import { deepseekV3, topkSigmoidNormalised } from './deepseek-v3.js';
import { expertChoice } from './expert-choice.js';
import { gshardTop2, stMoE } from './gshard-top2.js';
import { hashRouter } from './hash.js';
import { hyperRouter } from './hyper-router.js';
import { maskMoE } from './maskmoe.js';
import { mixtureOfTokens } from './mixture-of-tokens.js';
import { nexusProjection } from './nexus.js';
import { moeficationMlp } from './moefication.js';
import { cmoeAnalytic } from './cmoe.js';
import { reluRouter } from './relu.js';
import { rmoeRouter } from './rmoe.js';
import { sigmaTopK } from './sigma-topk.js';
import { sinkhornRouter } from './sinkhorn.js';
import { smear } from './smear.js';
import { softMoE } from './soft-moe.js';
import { mixtralRouter, noisyTopK, olmoeRouter, qwen2MoERouter, softmaxTopK, switchTop1 } from './softmax-topk.js';
import { sparseMixer } from './sparsemixer.js';
import { thresholdRouter } from './threshold.js';
import { topP } from './top-p.js';
import { uniformRouter } from './uniform.js';

export {
  SoftmaxTopKRouter,
  softmaxTopK,
  noisyTopK,
  switchTop1,
  mixtralRouter,
  olmoeRouter,
  qwen2MoERouter,
  softmaxTopKSchema,
  type SoftmaxTopKOptions,
} from './softmax-topk.js';
export { SigmaTopKRouter, sigmaTopK, renormRowsKeepStd, type SigmaTopKOptions, type BalanceMode } from './sigma-topk.js';
export { GShardTop2Router, gshardTop2, stMoE, type GShardOptions, type SecondPolicy } from './gshard-top2.js';
export { ExpertChoiceRouter, expertChoice, type ExpertChoiceOptions } from './expert-choice.js';
export { HashRouter, hashRouter, balancedTable, type HashKind, type HashOptions } from './hash.js';
export { HyperRouter, hyperRouter, type HyperRouterOptions } from './hyper-router.js';
export { MaskMoERouter, maskMoE, buildMasks, type MaskMoEOptions } from './maskmoe.js';
export { DeepSeekMoERouter, deepseekMoE, limitGroups, type DeepSeekMoEOptions } from './deepseek-moe.js';
export { DeepSeekV3Router, deepseekV3, topkSigmoidNormalised, type DeepSeekV3Options } from './deepseek-v3.js';
export { CumulativeRouter, topP, cumulativeSelect, type CumulativeOptions } from './top-p.js';
export { thresholdRouter } from './threshold.js';
export { ReLURouter, reluRouter, type ReLURouterOptions } from './relu.js';
export { RMoERouter, RecurrentRouterCell, rmoeRouter, type RMoEOptions, type RMoECarry, type RecurrentCellType } from './rmoe.js';
export { SoftMoERouter, softMoE, type SoftMoEOptions } from './soft-moe.js';
export { SmearRouter, smear, type SmearOptions, type SmearRouteOn } from './smear.js';
export { MixtureOfTokensRouter, mixtureOfTokens, type MixtureOfTokensOptions } from './mixture-of-tokens.js';
export { SparseMixerRouter, sparseMixer, sparseMixerChoices, sparseMixerWeights, type SparseMixerOptions } from './sparsemixer.js';
export { CosineRouter, cosineTopK, type CosineOptions } from './cosine.js';
export { SinkhornRouter, sinkhornRouter, sinkhorn } from './sinkhorn.js';
export { UniformRouter, uniformRouter } from './uniform.js';
export { NexusRouter, nexusProjection, type NexusRouterOptions } from './nexus.js';
export { MoEficationRouter, moeficationMlp } from './moefication.js';
export { CMoERouter, cmoeAnalytic } from './cmoe.js';
export { AutonomyOfExperts, autonomyOfExperts, type AoEOptions } from './aoe.js';
export { ChainOfExperts, chainOfExperts } from './chain-of-experts.js';
export * from './balance.js';
export {
  BiasController,
  biasSchema,
  topkRows,
  planFromChoices,
  gatherAt,
  renormPerToken,
  densify,
  jitter,
  sequenceLayout,
  type BiasOptions,
} from './common.js';

/** Every router of this package (and the two router-shaped ffn entries: aoe, chain-of-experts), ready for `registry.use(routers)`. */
export const routers = definePlugin({
  name: '@moelab/routers',
  entries: [
    softmaxTopK,
    sigmaTopK,
    noisyTopK,
    switchTop1,
    mixtralRouter,
    olmoeRouter,
    qwen2MoERouter,
    gshardTop2,
    stMoE,
    expertChoice,
    hashRouter,
    hyperRouter,
    rmoeRouter,
    maskMoE,
    deepseekMoE,
    deepseekV3,
    topkSigmoidNormalised,
    topP,
    thresholdRouter,
    reluRouter,
    softMoE,
    smear,
    mixtureOfTokens,
    sparseMixer,
    cosineTopK,
    sinkhornRouter,
    uniformRouter,
    nexusProjection,
    moeficationMlp,
    cmoeAnalytic,
    autonomyOfExperts,
    chainOfExperts,
  ],
});
export default routers;
