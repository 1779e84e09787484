/** The registry the tests of this package build models from: core, routers, experts and attention (no CLI). */
import { attention } from '@moelab/attention';
import { corePlugin, createRegistry, type Registry } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';

export function testRegistry(): Registry {
  return createRegistry(corePlugin, routers, experts, attention);
}
