/**
 * @moelab/experts — expert types for MoE layers.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { gluExperts, heteroMLPExperts, mlpExperts } from './mlp.js';
import { sigmaMoEExperts, sigmaMoEFFN } from './sigma-moe.js';
import { monetHD, monetVD } from './monet.js';
import { peerFFN } from './peer.js';
import { fffFFN } from './fff.js';

export { gluExperts, HeteroMLPExperts, heteroMLPExperts, MLPExpert, MLPExperts, mlpExperts, type MLPExpertOptions } from './mlp.js';
export { SigmaMoEExperts, SigmaMoELayer, sigmaMoEExperts, sigmaMoEFFN, type SigmaMoEExpertOptions } from './sigma-moe.js';
export * from './monet.js';
export * from './peer.js';
export * from './fff.js';
export { expertPresets, expertPresetTrain, monetTiny, monetTinySpec, peerTiny, peerTinySpec } from './presets.js';

export const experts = definePlugin({
  name: '@moelab/experts',
  entries: [mlpExperts, gluExperts, heteroMLPExperts, sigmaMoEExperts, sigmaMoEFFN, monetHD, monetVD, peerFFN, fffFFN],
});
export default experts;
