/** What a web app imports: core and the routers, with nothing from Node (bundled for the browser platform). */
import { buildModel, corePlugin, createRegistry, type NodeSpec } from '@moelab/core';
import { routers } from '@moelab/routers';

const registry = createRegistry(corePlugin, routers);
export const routerNames = registry.names('router');
export const build = (spec: NodeSpec) => buildModel(spec, registry, 0);
