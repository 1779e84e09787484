/**
 * @moelab/experts — expert types for MoE layers.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { mlpExperts } from './mlp.js';

export { MLPExperts, mlpExperts, type MLPExpertOptions } from './mlp.js';

export const experts = definePlugin({ name: '@moelab/experts', entries: [mlpExperts] });
export default experts;
