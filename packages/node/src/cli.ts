#!/usr/bin/env node
/**
 * The `moelab` command line. The commands live in `./commands/` (one file each); `./program.ts` wires
 * them into commander and turns every error into one line (`MOELAB_DEBUG=1` adds the stack).
 */
import { runCli } from './program.js';

runCli(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
