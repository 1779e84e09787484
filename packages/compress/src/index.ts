/**
 * @moelab/compress — compression, control and analysis of trained MoE models: the routing observer
 * (calibration statistics), model surgery, expert pruning and merging, steering, analysis.
 * Works on any moelab model through the registry; isomorphic (no fs, no native code).
 * @packageDocumentation
 */
export { easyTokenWeight, type ObserverOptions, type ObserveTag, type Phase, LayerStats, RoutingObserver } from './observer.js';
export { asMlpBank, type MlpBank, mlpHidden } from './bank.js';
export { type MoEPrunerOptions, type MoEPrunerReport, moePrune, wandaMask } from './moe-pruner.js';
export {
  type EEPMergeOptions,
  type EEPMergeResult,
  type EEPOptions,
  type EEPResult,
  eepMerge,
  eepSearch,
  keepMapping,
  routerRemap,
} from './eep.js';
export { windowBatches, windowsLoss } from './windows.js';
export { rankRouting, type SCMoEOptions, scmoeContrast } from './scmoe.js';
export {
  bindExperts,
  checkPartition,
  collapseGroups,
  type ExpertReduction,
  expertAxesOf,
  logitOverride,
  maskExperts,
  type Model,
  type MoELayerInfo,
  moeLayer,
  moeLayers,
  reduceExperts,
  type RouterRowRule,
  type SpecModel,
  selection,
  sliceExperts,
  specWithExperts,
} from './surgery.js';
export {
  expertScores,
  mixedDomainScores,
  PRUNE_SCORES,
  type PruneOptions,
  type PrunePlan,
  type PruneScore,
  planPruning,
  pruneExperts,
  type SuperExpertOptions,
  superExperts,
} from './prune.js';
export { alignmentPermutation, groupExperts, type MergeOptions, type MergeReport, maxAssignment, mergeExperts, permuteExpert } from './merge.js';
export { parseSteerFile, planSteering, STEER_FORMAT, type SteerFile, type SteerOptions, type SteerScore, steerEdits, steerScores } from './steer.js';
export { type AnalysisReport, analyse, type LayerReport } from './analyse.js';
export * from './quant/index.js';
export {
  collectExpertTargets,
  type DistilOptions,
  type DistilReport,
  distilExperts,
  distillationLoss,
  type ExpertTargets,
} from './expert-distill.js';
