/**
 * `hotpatch remove PATCH_ID (--pid PID | --all) [--cold]`: restore the original code of a patch in
 * running processes (and the original file on disk). Thin: the work is in src/patch/updater.
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { exitCodeOf, printResults, runCommand } from './apply.js';
import { collect, parseConcurrencyOption, parsePidOption, parseTimeoutOption } from '../options.js';
import { progress, say } from '../output.js';
import type { SetExitCode } from './index.js';
import { yieldTimeSlices } from '../priority.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('remove')
    .description('remove a patch from running processes, restoring the original bytes of every site (live when it was applied live, else in one short freeze)')
    .argument('<PATCH_ID>', 'the patch id (see `hotpatch list`)')
    .option('--pid <PID>', 'a process (repeatable)', collect, [] as string[])
    .option('--all', 'every process that has the patch')
    .option('--cold', 'also put the original file back on disk (undo `apply --cold`)')
    .option('--file <PATH>', 'with --cold: the cold-patched file (repeatable; default: the patched module path in the processes found)', collect, [] as string[])
    .option('--package <PKG>', 'with --cold: the package (its build-ids are used instead of the state file beside the file)')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--lock-wait <SECONDS>', 'how long to wait while another hotpatch command works on a process', '10')
    .option('--concurrency <N>', 'processes worked on at once with --all', '4')
    .option('--dry-run', 'show what would be removed, change nothing')
    .option('--freeze', 'restore in a short freeze of every thread even when the patch was switched live')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText(
      'after',
      `
--cold rolls the file back by renaming the kept original (.NAME.hotpatch-PATCHID.orig) over NAME, only
while NAME still holds the fixed build; the build-ids come from .NAME.hotpatch-PATCHID.json or --package.
Without running processes, name the file: hotpatch remove PATCH_ID --cold --file PATH.

Exit codes: 0 ok, 1 error, 2 usage, 3 refused (nothing changed), 4 partial.

Examples:
  hotpatch remove 3f2a9c0d1e2b4a5c --pid 1234
  hotpatch remove 3f2a9c0d1e2b4a5c --all --cold
  hotpatch remove 3f2a9c0d1e2b4a5c --cold --file /usr/local/bin/server
`,
    )
    .action(async (patchId: string, opts: {
      pid: string[]; all?: boolean; cold?: boolean; file: string[]; package?: string; timeout: string; lockWait: string;
      concurrency: string; dryRun?: boolean; freeze?: boolean; json?: boolean;
    }) => {
      const json = opts.json ?? false;
      const { removeFromProcesses } = await import('../../patch/updater/index.js');
      await yieldTimeSlices();
      const { readPackageFile } = await import('../../patch/package/index.js');
      const report = await runCommand(json, async () => {
        if ((opts.file.length > 0 || opts.package !== undefined) && !opts.cold) throw new UsageError('USAGE', '--file and --package only make sense with --cold');
        return removeFromProcesses(patchId, {
          pids: opts.pid.map(parsePidOption), all: opts.all === true, cold: opts.cold === true, coldFiles: opts.file,
          ...(opts.package !== undefined ? { pkg: readPackageFile(opts.package).pkg } : {}),
          timeoutMs: parseTimeoutOption(opts.timeout), lockWaitMs: parseTimeoutOption(opts.lockWait, '--lock-wait'),
          concurrency: parseConcurrencyOption(opts.concurrency), dryRun: opts.dryRun === true, freeze: opts.freeze === true, onProgress: progress,
        });
      });
      if (opts.all && report.results.length === 0) progress(`no process has patch ${patchId}; nothing to remove`);
      await printResults(json, { patchId, results: report.results, cold: report.cold }, report.outcome, 'see `hotpatch list` and run the same command again');
      if (!json) for (const c of report.cold) say(false, `cold: ${c.path}: ${c.status}`);
      setExitCode(exitCodeOf(report.outcome));
    });
}
