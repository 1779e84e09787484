/**
 * @moelab/routers — gates that decide which experts process each token.
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { sigmaTopK } from './sigma-topk.js';
import { softmaxTopK } from './softmax-topk.js';

export { SoftmaxTopKRouter, softmaxTopK, type SoftmaxTopKOptions } from './softmax-topk.js';
export { SigmaTopKRouter, sigmaTopK, renormRowsKeepStd, type SigmaTopKOptions, type BalanceMode } from './sigma-topk.js';

/** Every router of this package, ready for `registry.use(routers)`. */
export const routers = definePlugin({ name: '@moelab/routers', entries: [softmaxTopK, sigmaTopK] });
export default routers;
