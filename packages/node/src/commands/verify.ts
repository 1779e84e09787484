/** `moelab verify`: check golden fixtures (JSON + safetensors beside it) against this implementation. */
import { Command } from '@commander-js/extra-typings';
import { createDefaultRegistry } from '../registry.js';
import { verifyFiles } from '../verify.js';
import { defineCommand } from './command.js';
import { backendOption, jsonOption, useBackend } from './options.js';

export const verify = defineCommand({
  define: () =>
    new Command('verify')
      .summary('check golden fixtures against this implementation')
      .description('Run golden fixtures (fixture.json with fixture.safetensors beside it) and print a line per tensor; exit code 1 when one fails.')
      .argument('[fixture...]', 'fixture JSON files (the .safetensors file of the same name beside each)')
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([fixtures], o) {
    await useBackend(o.backend, true);
    return verifyFiles(fixtures, createDefaultRegistry(), o.json ?? false);
  },
});
