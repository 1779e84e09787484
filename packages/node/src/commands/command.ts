/**
 * What a `moelab` command is: a commander definition (name, arguments, flags with descriptions and
 * defaults — `moelab <command> --help` is generated from it) and a `run` that gets the parsed, typed
 * values. A new command is one file exporting a `MoelabCommand` plus one line in `./index.ts`.
 */
import type { Command, CommanderError, OptionValues } from '@commander-js/extra-typings';
import { closeMatches, MoelabError } from '@moelab/core';

export interface MoelabCommand<Args extends unknown[] = unknown[], Opts extends OptionValues = OptionValues> {
  /** A fresh commander `Command`: name, summary, arguments and flags. Never has side effects. */
  define(): Command<Args, Opts>;
  /** Does the work with the parsed arguments and flags; resolves to the exit code (0 when nothing is returned). */
  run(args: Args, opts: Opts): Promise<number | undefined> | number | undefined;
}

/** Identity with inference: `defineCommand({ define: () => new Command('x').option(…), run(args, opts) {…} })`. */
export function defineCommand<Args extends unknown[], Opts extends OptionValues>(c: MoelabCommand<Args, Opts>): MoelabCommand<Args, Opts> {
  return c;
}

/**
 * Turns commander's usage errors into one-line MoelabErrors, with close names for an unknown flag or
 * command, and lets help/version through as exit code 0.
 */
export class UsageExit extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

function quoted(message: string): string | undefined {
  return /'([^']+)'/.exec(message)?.[1];
}

function didYouMean(name: string, candidates: readonly string[]): string {
  const close = closeMatches(name, candidates);
  return close.length ? `. Did you mean: ${close.join(', ')}?` : '.';
}

/** `unknown command "trian". Did you mean: train? …` */
export function unknownCommand(name: string, names: readonly string[]): MoelabError {
  return new MoelabError(`unknown command "${name}"${didYouMean(name, names)} Run \`moelab --help\` for the list.`);
}

/** The MoelabError (or clean exit) for a commander error raised while parsing `cmd`'s arguments. */
export function usageError(err: CommanderError, cmd: Command<unknown[], OptionValues, OptionValues>): Error {
  if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return new UsageExit(err.exitCode);
  const path = commandPath(cmd);
  const firstLine = err.message.replace(/^error: /, '').split('\n')[0]!;
  if (err.code === 'commander.unknownOption') {
    const flag = quoted(firstLine) ?? firstLine;
    const flagsOf = (c: typeof cmd) => c.options.flatMap((o) => [o.long, o.short]).filter((f): f is string => !!f);
    const users = cmd.commands.filter((c) => flagsOf(c as typeof cmd).includes(flag)).map((c) => c.name());
    // `moelab --backend cpu train`: the flag belongs to commands, and goes after the command's name.
    if (users.length) return new MoelabError(`"${flag}" is a flag of ${users.join(', ')}: put it after the command (\`moelab ${users[0]} ${flag} …\`).`);
    return new MoelabError(`unknown option "${flag}" for \`${path}\`${didYouMean(flag, [...flagsOf(cmd), '--help'])} See \`${path} --help\`.`);
  }
  if (err.code === 'commander.unknownCommand')
    return unknownCommand(
      quoted(firstLine) ?? firstLine,
      cmd.commands.map((c) => c.name()),
    );
  // Missing or extra arguments, a flag without its value, a value outside the choices: say it and show the usage.
  return new MoelabError(`${firstLine.replace(/\.$/, '')} (usage: ${path} ${cmd.usage()})`);
}

function commandPath(cmd: Command<unknown[], OptionValues, OptionValues>): string {
  const names: string[] = [];
  for (let c: typeof cmd | null = cmd; c; c = c.parent as typeof cmd | null) names.unshift(c.name());
  return names.join(' ');
}

/**
 * Settings every moelab command shares: errors come back as exceptions (see `usageError`) instead of
 * `process.exit`, commander prints nothing itself on error, and help goes to `write`.
 */
export function configureCommand<C extends Command<unknown[], OptionValues, OptionValues>>(
  cmd: C,
  write: (s: string) => void = (s) => process.stdout.write(s),
): C {
  cmd.exitOverride((err) => {
    throw usageError(err, cmd);
  });
  cmd.configureOutput({ writeOut: write, writeErr: write, outputError: () => {} });
  cmd.showHelpAfterError(false);
  cmd.allowExcessArguments(false);
  return cmd;
}

/**
 * Parse `argv` (the words after the command name) with `c`'s definition, without running it: the
 * arguments and the typed flag values `run` would get. Throws the same one-line MoelabErrors as the CLI.
 */
export function parseCommandLine<Args extends unknown[], Opts extends OptionValues>(c: MoelabCommand<Args, Opts>, argv: string[]): { args: Args; opts: Opts } {
  const cmd = configureCommand(c.define(), () => {});
  cmd.action(() => {});
  cmd.parse(argv, { from: 'user' });
  return { args: cmd.processedArgs, opts: cmd.opts() };
}
