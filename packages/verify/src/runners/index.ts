/**
 * The table of fixture kinds: one line per kind, naming the runner that reproduces it. A new system adds
 * its runner file beside these and one line here (see this package's README).
 */
import type { FixtureRunner } from '../fixture.js';
import { moaRunner } from './moa.js';
import { moeutLMRunner } from './moeut-lm.js';
import { monetHDRunner, monetVDRunner } from './monet.js';
import { peerRunner } from './peer.js';
import { sigmaMoERunner } from './sigma-moe.js';
import { smoreRunner } from './smore.js';
import { switchheadRunner } from './switchhead.js';

export const fixtureRunners = {
  sigma_moe: sigmaMoERunner,
  switchhead: switchheadRunner,
  moeut_lm: moeutLMRunner,
  monet_hd: monetHDRunner,
  monet_vd: monetVDRunner,
  peer: peerRunner,
  moa: moaRunner,
  smore_layer: smoreRunner,
} as const satisfies Record<string, FixtureRunner>;

/** A fixture kind this package can check (the `kind` field of a fixture document). */
export type FixtureKind = keyof typeof fixtureRunners;

export const fixtureKinds = Object.keys(fixtureRunners).sort() as FixtureKind[];

export function isFixtureKind(kind: string): kind is FixtureKind {
  return Object.hasOwn(fixtureRunners, kind);
}
