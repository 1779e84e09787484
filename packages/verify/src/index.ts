/**
 * @moelab/verify — conformance checking against golden fixtures: reference tensors computed by a
 * system's official implementation (parameters, inputs, outputs, losses, gradients), reproduced by
 * moelab's own modules and compared tensor by tensor with the fixture's tolerance rule. `moelab verify`
 * (@moelab/node) is its command line.
 * @packageDocumentation
 */
export * from './fixture.js';
export * from './compare.js';
export * from './verify.js';
export { type FixtureKind, fixtureKinds, fixtureRunners, isFixtureKind } from './runners/index.js';
