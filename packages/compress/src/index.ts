/**
 * @moelab/compress — compression, control and analysis of trained MoE models: the routing observer
 * (calibration statistics), model surgery, expert pruning and merging, steering, analysis.
 * Works on any moelab model through the registry; isomorphic (no fs, no native code).
 * @packageDocumentation
 */
export { type ObserverOptions, type ObserveTag, type Phase, LayerStats, RoutingObserver } from './observer.js';
