/**
 * `hotpatch recover (--pid PID | --all)`: finish or undo an operation a dead patcher left.
 * Thin: the work is in src/patch/updater (recoverProcesses) and the engine (recoverProcess).
 */
import type { Command } from 'commander';
import { exitCodeOf, printResults, runCommand } from './apply.js';
import { collect, parseConcurrencyOption, parsePidOption, parseTimeoutOption } from '../options.js';
import { progress } from '../output.js';
import type { SetExitCode } from './index.js';
import { yieldTimeSlices } from '../priority.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('recover')
    .description('bring processes whose patcher was killed mid-way to a consistent state (an unfinished apply is undone, an unfinished remove is finished)')
    .option('--pid <PID>', 'a process (repeatable)', collect, [] as string[])
    .option('--all', 'every process that has a patch record')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--lock-wait <SECONDS>', 'how long to wait while another hotpatch command works on a process', '10')
    .option('--concurrency <N>', 'processes worked on at once with --all', '4')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText(
      'after',
      `
Results: "removed" with an action (undone: an interrupted apply was rolled
back; finished: an interrupted remove was completed; reconciled: the code
disagreed with the record, e.g. a patch's jump was gone, and the patch is now
recorded as removed), or "skipped" when there was nothing to recover.
Exit codes: 0 ok, 1 error, 2 usage, 4 partial.

Examples:
  hotpatch recover --pid 1234
  hotpatch recover --all --json
`,
    )
    .action(async (opts: { pid: string[]; all?: boolean; timeout: string; lockWait: string; concurrency: string; json?: boolean }) => {
      const json = opts.json ?? false;
      const { recoverProcesses } = await import('../../patch/updater/index.js');
      await yieldTimeSlices();
      const report = await runCommand(json, () =>
        recoverProcesses({
          pids: opts.pid.map(parsePidOption), all: opts.all === true,
          timeoutMs: parseTimeoutOption(opts.timeout), lockWaitMs: parseTimeoutOption(opts.lockWait, '--lock-wait'),
          concurrency: parseConcurrencyOption(opts.concurrency), onProgress: progress,
        }),
      );
      const results = report.results.map((r) => ({ ...r, ...(r.actions && r.actions[0] ? { action: r.actions[0].action, sitesRestored: r.actions[0].sitesRestored } : {}) }));
      await printResults(json, { results }, report.outcome, 'run `hotpatch recover` again, or restart the process if it keeps failing');
      setExitCode(exitCodeOf(report.outcome));
    });
}
