/**
 * @moelab/attention — attention modules: dense multi-head attention and attention-MoE variants.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { mha } from './mha.js';

export { mha } from './mha.js';

export const attention = definePlugin({ name: '@moelab/attention', entries: [mha] });
export default attention;
