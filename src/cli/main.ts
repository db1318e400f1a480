#!/usr/bin/env node
/** The `hotpatch` command: a thin layer over the library; one top-level catch maps errors to exit codes. */
import { Command, CommanderError } from 'commander';
import { HotpatchError, RefusedError, UsageError } from '../errors.js';
import { EXIT_ERROR, EXIT_REFUSED, EXIT_USAGE } from './exit-codes.js';
import { registerCommands } from './commands/index.js';
import { hotpatchVersion } from '../version.js';

export async function main(argv: string[]): Promise<number> {
  const program = new Command('hotpatch')
    .description('Live patching and patch protection for running Linux x86-64 processes')
    .version(hotpatchVersion())
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  let exitCode = 0;
  registerCommands(program, (code) => {
    exitCode = code;
  });
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    return reportError(e);
  }
}

function reportError(e: unknown): number {
  if (e instanceof CommanderError) {
    // --help and --version arrive here with exit code 0.
    return e.exitCode === 0 ? 0 : EXIT_USAGE;
  }
  if (e instanceof HotpatchError) {
    process.stderr.write(`hotpatch: ${e.message} [${e.code}]\n`);
    if (e instanceof UsageError) return EXIT_USAGE;
    if (e instanceof RefusedError) return EXIT_REFUSED;
    return EXIT_ERROR;
  }
  const err = e as { code?: string; message?: string };
  if (err && err.code === 'EPIPE') return 0;
  process.stderr.write(`hotpatch: internal error: ${err?.message ?? String(e)}\n`);
  if (process.env.HOTPATCH_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
  return EXIT_ERROR;
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`hotpatch: internal error: ${String(e)}\n`);
    process.exitCode = EXIT_ERROR;
  },
);
