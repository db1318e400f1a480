/** `hotpatch demo`: the whole system on a real program (see src/demo/demo.ts). */
import type { Command } from 'commander';
import { EXIT_ERROR } from '../exit-codes.js';
import { printJson } from '../output.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('demo')
    .description('build a buggy sample service, patch it live under load, remove, re-apply, cold-patch, and guard it')
    .option('--json', 'print a JSON report on stdout (the narration goes to stderr)')
    .option('--keep', 'keep the work directory (binaries, keys, package)')
    .addHelpText('after', '\nExample:\n  hotpatch demo            # about 10 seconds; needs gcc and root (ptrace)\n')
    .action(async (opts: { json?: boolean; keep?: boolean }) => {
      const { runDemo } = await import('../../demo/demo.js');
      const report = await runDemo({ json: opts.json ?? false, keep: opts.keep ?? false });
      if (opts.json) printJson(report);
      if (!report.ok) setExitCode(EXIT_ERROR);
    });
}
