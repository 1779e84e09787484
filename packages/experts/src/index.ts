/**
 * @moelab/experts — expert types for MoE layers.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { sigmaMoEFixture } from './fixtures.js';
import { mlpExperts } from './mlp.js';
import { sigmaMoEExperts, sigmaMoEFFN } from './sigma-moe.js';

export { MLPExperts, mlpExperts, type MLPExpertOptions } from './mlp.js';
export { SigmaMoEExperts, SigmaMoELayer, sigmaMoEExperts, sigmaMoEFFN, type SigmaMoEExpertOptions } from './sigma-moe.js';
export { sigmaMoEFixture } from './fixtures.js';

export const experts = definePlugin({ name: '@moelab/experts', entries: [mlpExperts, sigmaMoEExperts, sigmaMoEFFN, sigmaMoEFixture] });
export default experts;
