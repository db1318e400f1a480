/** The `hotpatch` command: a thin layer over the library; one top-level catch maps errors to exit codes. */
import { Command, CommanderError, Help, type Option } from 'commander';
import { HotpatchError, RefusedError, UsageError } from '../errors.js';
import { EXIT_ERROR, EXIT_REFUSED, EXIT_USAGE } from './exit-codes.js';
import { registerCommands } from './commands/index.js';
import { printedJson, printJson } from './output.js';

/**
 * Help text within 80 columns: prose lines (not indented) are wrapped at spaces; indented lines
 * (examples, option tables — commander wraps those itself) are left as they are.
 */
export function wrapProse(text: string, width = 80): string {
  return text
    .split('\n')
    .map((line) => {
      if (line.length <= width || /^\s/.test(line)) return line;
      const out: string[] = [];
      let cur = '';
      for (const word of line.split(' ')) {
        if (cur !== '' && cur.length + 1 + word.length > width) {
          out.push(cur);
          cur = word;
        } else cur = cur === '' ? word : `${cur} ${word}`;
      }
      out.push(cur);
      return out.join('\n');
    })
    .join('\n');
}

/** Option help without "(default: [])" for repeatable options that start empty. */
function describeOption(option: Option): string {
  const help = new Help();
  if (!Array.isArray(option.defaultValue) || option.defaultValue.length > 0) return help.optionDescription(option);
  const saved: unknown = option.defaultValue;
  option.defaultValue = undefined;
  try {
    return help.optionDescription(option);
  } finally {
    option.defaultValue = saved;
  }
}

/** Whether the command line asks for JSON output (errors then come as one JSON document too). */
function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).includes('--json');
}
import { hotpatchVersion } from '../version.js';

export async function main(argv: string[]): Promise<number> {
  // A closed pipe (`hotpatch scan --all | head`) ends the output, not the command with a trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  const program = new Command('hotpatch')
    .description('Live patching and patch protection for running Linux x86-64 processes')
    .version(hotpatchVersion())
    .exitOverride()
    .configureOutput({ writeOut: (s) => process.stdout.write(wrapProse(s)), writeErr: (s) => process.stderr.write(s) })
    .configureHelp({ optionDescription: describeOption });
  let exitCode = 0;
  registerCommands(program, (code) => {
    exitCode = code;
  });
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    const code = reportError(e);
    if (code !== 0 && wantsJson(argv) && !printedJson()) printJson({ error: errorJson(e) });
    return code;
  }
}

function errorJson(e: unknown): { code: string; message: string } {
  if (e instanceof HotpatchError) return { code: e.code, message: e.message };
  if (e instanceof CommanderError) return { code: 'USAGE', message: e.message.replace(/^error: /, '') };
  return { code: 'INTERNAL', message: (e as Error)?.message ?? String(e) };
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
