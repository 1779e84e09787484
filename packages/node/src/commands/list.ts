/** `moelab list`: the registry's entries by kind (routers, experts, attention, presets, …), or their JSON Schemas. */
import { Command } from '@commander-js/extra-typings';
import { closeMatches, MoelabError } from '@moelab/core';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { jsonOption } from './options.js';

export const list = defineCommand({
  define: () =>
    new Command('list')
      .summary('registry contents (--json for machine-readable output)')
      .description('List the registered entries (name and description), grouped by kind; --json adds defaults and JSON Schemas.')
      .argument('[kind]', 'only this kind (router, expert, ffn, attention, preset, …)')
      .argument('[pattern]', 'only names containing this text')
      .addOption(jsonOption()),
  run([kind, pattern], o) {
    const registry = createDefaultRegistry();
    const kinds = [...registry.kinds(), 'preset'].sort();
    if (kind && !kinds.includes(kind)) {
      const close = closeMatches(kind, kinds);
      throw new MoelabError(`unknown kind "${kind}".${close.length ? ` Did you mean: ${close.join(', ')}?` : ''} Kinds: ${kinds.join(', ')}`);
    }
    const entries = kind === 'preset' ? [] : registry.list(kind, pattern);
    const presets = !kind || kind === 'preset' ? registry.presets(pattern) : [];
    if (o.json) {
      const described = [...entries.map((e) => registry.describe(e.kind, e.name)), ...presets.map((p) => ({ kind: 'preset', ...p }))];
      process.stdout.write(`${JSON.stringify(described, null, 2)}\n`);
      return 0;
    }
    const rows = [
      ...entries.map((e) => ({ kind: e.kind as string, name: e.name, description: e.description })),
      ...presets.map((p) => ({ kind: 'preset', ...p })),
    ];
    rows.sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
    let current = '';
    const width = Math.max(22, ...rows.map((e) => e.name.length));
    for (const e of rows) {
      if (e.kind !== current) {
        current = e.kind;
        process.stdout.write(`\n${current}:\n`);
      }
      process.stdout.write(`  ${e.name.padEnd(width)} ${e.description}\n`);
    }
    return 0;
  },
});
