/** `hotpatch recover --pid PID`: finish or undo an operation a dead patcher left (library: recoverProcess). */
import type { Command } from 'commander';
import { recoverProcess } from '../../patch/engine/index.js';
import { parsePidOption, parseTimeoutOption, resultJson, runForCli } from './apply.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('recover')
    .description('bring a process whose patcher was killed mid-way to a consistent state (an unfinished apply is undone, an unfinished remove is finished)')
    .requiredOption('--pid <PID>', 'the process')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch recover --pid 1234\n')
    .action(async (opts: { pid: string; timeout: string; json?: boolean }) => {
      const pid = parsePidOption(opts.pid);
      const timeoutMs = parseTimeoutOption(opts.timeout);
      await runForCli(opts.json ?? false, pid, '', setExitCode, () => recoverProcess(pid, { timeoutMs }), (r) => ({
        results:
          r.actions.length > 0
            ? r.actions.map((a) => resultJson(pid, a.patchId, 'removed', r.pauseMicros, { action: a.action, sitesRestored: a.sitesRestored, freed: r.freed }))
            : [resultJson(pid, '', 'skipped', r.pauseMicros, { freed: r.freed }, 'nothing to recover: the record is consistent')],
        text:
          r.actions.length === 0
            ? `process ${pid}: nothing to recover${r.freed > 0 ? ` (freed ${r.freed} retired patch code range(s))` : ''}`
            : r.actions
                .map((a) => `process ${pid}: ${a.action === 'undone' ? 'undid the interrupted apply of' : 'finished the interrupted removal of'} ${a.patchId} (${a.sitesRestored} site(s) restored)`)
                .join('\n'),
      }));
    });
}
