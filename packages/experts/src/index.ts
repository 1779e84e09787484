/**
 * @moelab/experts — expert types for MoE layers.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { sigmaMoEFixture } from './fixtures.js';
import { gluExperts, heteroMLPExperts, mlpExperts } from './mlp.js';
import { sigmaMoEExperts, sigmaMoEFFN } from './sigma-moe.js';
import { monetHD, monetVD } from './monet.js';
import { monetHDFixture, monetVDFixture, peerFixture } from './monet-peer-fixtures.js';
import { peerFFN } from './peer.js';
import { fffFFN } from './fff.js';

export { gluExperts, HeteroMLPExperts, heteroMLPExperts, MLPExpert, MLPExperts, mlpExperts, type MLPExpertOptions } from './mlp.js';
export { SigmaMoEExperts, SigmaMoELayer, sigmaMoEExperts, sigmaMoEFFN, type SigmaMoEExpertOptions } from './sigma-moe.js';
export { sigmaMoEFixture } from './fixtures.js';
export * from './monet.js';
export * from './peer.js';
export * from './fff.js';
export { monetHDFixture, monetVDFixture, peerFixture } from './monet-peer-fixtures.js';
export { expertPresets, expertPresetTrain, monetTiny, monetTinySpec, peerTiny, peerTinySpec } from './presets.js';

export const experts = definePlugin({
  name: '@moelab/experts',
  entries: [
    mlpExperts,
    gluExperts,
    heteroMLPExperts,
    sigmaMoEExperts,
    sigmaMoEFFN,
    sigmaMoEFixture,
    monetHD,
    monetVD,
    peerFFN,
    fffFFN,
    monetHDFixture,
    monetVDFixture,
    peerFixture,
  ],
});
export default experts;
