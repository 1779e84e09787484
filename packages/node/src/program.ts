/**
 * The `moelab` program: the root command with every command of `./commands/index.ts`, and `runCli`,
 * which parses argv, runs the command and turns every error into one line on stderr and an exit code:
 * 0 ok, 1 a check failed (`verify`) or no command given, 2 bad input (MOELAB_DEBUG=1 adds the stack).
 */
import { readFileSync } from 'node:fs';
import { Command } from '@commander-js/extra-typings';
import { MoelabError } from '@moelab/core';
import { configureCommand, type MoelabCommand, UsageExit, unknownCommand } from './commands/command.js';
import { commands as allCommands } from './commands/index.js';

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Where the program writes: stdout and stderr by default, buffers in tests. */
export interface CliIo {
  out: (s: string) => void;
  err: (s: string) => void;
}

const processIo: CliIo = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

/**
 * The root command with `commands` attached; `onRun` receives each command's exit code. Help and
 * usage errors surface as exceptions (see `usageError`), never as `process.exit`.
 */
// biome-ignore lint/suspicious/noExplicitAny: each command has its own argument and flag types
export function buildProgram(commands: MoelabCommand<any, any>[] = allCommands, io: CliIo = processIo, onRun: (code: number) => void = () => {}) {
  const program = configureCommand(
    new Command('moelab')
      .description('moelab — a lab for Mixture-of-Experts models')
      .usage('<command> [options]')
      .version(version(), '-v, --version', 'print the version')
      .helpOption('-h, --help', 'show this help')
      .addHelpText('after', '\nRun `moelab <command> --help` for its arguments and flags.\nEnvironment: MOELAB_DEBUG=1 prints stack traces with errors.\n'),
    io.out,
  );
  program.helpCommand('help [command]', 'show help for a command');
  for (const c of commands) {
    const cmd = configureCommand(c.define(), io.out);
    cmd.helpOption('-h, --help', 'show this help');
    cmd.action(async () => {
      onRun((await c.run(cmd.processedArgs, cmd.opts())) ?? 0);
    });
    program.addCommand(cmd);
  }
  return program;
}

/** A file-system error from Node (`ENOENT: no such file or directory, open 'x'`). */
interface SystemError extends Error {
  code: string;
  syscall?: string;
  path?: string;
}

function isSystemError(e: unknown): e is SystemError {
  return e instanceof Error && typeof (e as SystemError).code === 'string' && /^E[A-Z]+$/.test((e as SystemError).code) && 'syscall' in e;
}

/**
 * The one line a user sees for an error: a MoelabError's message; a file-system error as its path,
 * what went wrong and the system call (`runs/x: not a directory (ENOTDIR, mkdir)`); anything else
 * (a bug) as the first line of its message and where to get the stack.
 */
export function userMessage(e: unknown): string {
  if (e instanceof MoelabError) return e.message;
  if (isSystemError(e)) {
    // Node's text is "CODE: what, syscall 'path'": keep "what".
    const what = e.message.replace(/^E[A-Z]+: /, '').replace(/, \w+ '.*$/s, '');
    return new MoelabError(`${what} (${e.code}${e.syscall ? `, ${e.syscall}` : ''})`, e.path).message;
  }
  const first = (e instanceof Error ? e.message : String(e)).split('\n')[0];
  return `error: ${first}${process.env.MOELAB_DEBUG ? '' : ' (MOELAB_DEBUG=1 shows the stack)'}`;
}

/** Run `moelab` with `argv` (without `node cli.js`); resolves to the exit code and never throws. */
export async function runCli(argv: string[], io: CliIo = processIo): Promise<number> {
  let code = 0;
  const program = buildProgram(allCommands, io, (c) => {
    code = c;
  });
  if (argv.length === 0) {
    program.outputHelp();
    return 1;
  }
  try {
    // commander answers `moelab help <unknown>` with the full help; say what is wrong instead.
    const names = program.commands.map((c) => c.name());
    if (argv[0] === 'help' && argv[1] !== undefined && !names.includes(argv[1])) throw unknownCommand(argv[1], names);
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    if (e instanceof UsageExit) return e.exitCode;
    if (process.env.MOELAB_DEBUG) io.err(`${(e as Error).stack ?? e}\n`);
    io.err(`moelab: ${userMessage(e)}\n`);
    return 2;
  }
}
