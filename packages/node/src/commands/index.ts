/**
 * Every `moelab` command, in the order `moelab --help` lists them. A new command is one file in this
 * folder exporting a `MoelabCommand` (see `./command.ts`) plus one line here.
 */
import { analyseCommand } from './analyse.js';
import { bench } from './bench.js';
import type { MoelabCommand } from './command.js';
import { compare, main } from './compare.js';
import { esftScoresCommand } from './esft-scores.js';
import { evaluate } from './eval.js';
import { exportCommand } from './export.js';
import { finetune } from './finetune.js';
import { generate } from './generate.js';
import { importCommand } from './import.js';
import { inspect } from './inspect.js';
import { list } from './list.js';
import { mask } from './mask.js';
import { mergeExpertsCommand } from './merge-experts.js';
import { prune } from './prune.js';
import { quantize } from './quantize.js';
import { mergeAdapter } from './merge-adapter.js';
import { recipe } from './recipe.js';
import { steer } from './steer.js';
import { sweep } from './sweep.js';
import { train } from './train.js';
import { upcycleCommand } from './upcycle.js';
import { verify } from './verify.js';

// biome-ignore lint/suspicious/noExplicitAny: each command has its own argument and flag types
export const commands: MoelabCommand<any, any>[] = [
  train,
  evaluate,
  generate,
  list,
  inspect,
  verify,
  compare,
  main,
  sweep,
  bench,
  mask,
  recipe,
  exportCommand,
  importCommand,
  esftScoresCommand,
  upcycleCommand,
  prune,
  mergeExpertsCommand,
  steer,
  analyseCommand,
  quantize,
  finetune,
  mergeAdapter,
];

export { type MoelabCommand, defineCommand, parseCommandLine } from './command.js';
