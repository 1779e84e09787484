/**
 * @moelab/upcycle — turn dense checkpoints into Mixture-of-Experts models without training: the registry
 * kind `upcycler`, the generic tensor operators, precondition checks, provenance, and the upcyclers
 * (docs/upcycling.md).
 * @packageDocumentation
 */
import { definePlugin } from '@moelab/core';
import { bam, bamKvShare } from './upcyclers/bam.js';
import { btx } from './upcyclers/btx.js';
import { nexus, nexusExtend, nexusLinear } from './upcyclers/nexus.js';
import { cmoe } from './upcyclers/cmoe.js';
import { llamaMoE, moefication, moeSplit } from './upcyclers/split.js';
import { sparseUpcycle, sparseUpcycleT5 } from './upcyclers/sparse-upcycle.js';

export type {
  ProvenanceEntry,
  UpcycleDraft,
  UpcycleInput,
  UpcycleReport,
  UpcycleResult,
  UpcycleSource,
  UpcycleTools,
  Upcycler,
} from './contract.js';
export { upcycle, upcyclerNames, methodName, type UpcycleOptions } from './upcycle.js';
export { checkCompatible, meanSpread, sourceLabel } from './check.js';
export { formatProvenance, formatReport, groupedProvenance, provenanceRows, type ProvenanceRow } from './provenance.js';
export {
  averageTensors,
  copyTensor,
  gatherColumns,
  gatherRows,
  numel,
  relativeSpread,
  sameShape,
  stackTensors,
  transpose2d,
  unstack,
  zerosTensor,
  type WeightMap,
  type WeightTensor,
} from './weights.js';
export { layerPrefix, modelView, selectLayers, specWithBlocks, type LayerView, type ModelView } from './model-view.js';
export { sparseUpcycle, sparseUpcycleT5 } from './upcyclers/sparse-upcycle.js';
export { btx, chunkExpert } from './upcyclers/btx.js';
export { bam, bamKvShare } from './upcyclers/bam.js';
export { nexus, nexusExtend, nexusLinear } from './upcyclers/nexus.js';
export { hashedNgramEmbeddings, seedMeanEmbeddings } from './embed.js';
export { llamaMoE, moefication, moeSplit } from './upcyclers/split.js';
export { cmoe } from './upcyclers/cmoe.js';
export { ffnInputs, ffnOutputGrads, hiddenActivations, type SequenceGrads } from './calibrate.js';
export {
  balancedAssignment,
  balancedGraphPartition,
  balancedKMeans,
  checkPartition,
  coactivationGraph,
  contiguousPartition,
  EXACT_ASSIGNMENT_LIMIT,
  edgeCut,
  importancePartition,
  normalisedRows,
  randomPartition,
  sharingInnerPartition,
  sharingInterPartition,
  type Partition,
} from './partition.js';
export { fitSelectionRouter, groupMass, type RouterFitOptions, type RouterFitResult } from './router-fit.js';
export { PARTITIONS, type PartitionKind } from './upcyclers/split.js';
export { averageInto, mergeSources, type MergeSources } from './merge.js';

/** The upcyclers as a registry plugin: `createRegistry(corePlugin, routers, experts, attention, upcycle)`. */
export const upcyclePlugin = definePlugin({
  name: '@moelab/upcycle',
  entries: [sparseUpcycle, sparseUpcycleT5, btx, bam, bamKvShare, nexus, nexusLinear, nexusExtend, moeSplit, moefication, llamaMoE, cmoe],
});
export default upcyclePlugin;
