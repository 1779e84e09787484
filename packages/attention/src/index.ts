/**
 * @moelab/attention — attention modules: dense multi-head attention and attention-MoE variants.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { bamSoftMoA } from './bam.js';
import { mae } from './mae.js';
import { mha } from './mha.js';
import { moa } from './moa.js';
import { switchhead } from './switchhead.js';

export { mha } from './mha.js';
export { BamSoftMoA, bamSoftMoA, type BamOptions } from './bam.js';
export { MixtureOfHeadDroppedExperts, mae, type MAEOptions } from './mae.js';
export { MixtureOfAttentionHeads, moa, type MoAOptions } from './moa.js';
export { ParamGroup, expandKvHeads, routingStatsOf } from './common.js';
export { SwitchHead, switchhead, renormRows, type SwitchHeadOptions } from './switchhead.js';
export { moeutSpecFromOfficialConfig } from './moeut-config.js';
export {
  DENSE_COMPUTE_HIDDEN,
  DENSE_PARAMS_HIDDEN,
  moeutPresets,
  moeutTiny,
  moeutTinyDenseCompute,
  moeutTinyDenseComputeSpec,
  moeutTinyDenseParams,
  moeutTinyDenseParamsSpec,
  moeutTinySpec,
  moeutTinyTrain,
} from './presets/moeut.js';

export const attention = definePlugin({ name: '@moelab/attention', entries: [mha, switchhead, bamSoftMoA, moa, mae] });
export default attention;
export { attentionMoePresets, bamAttnTiny, bamAttnTinySpec, moaTiny, moaTinySpec } from './presets/attention-moe.js';
