/** `hotpatch remove PATCH_ID --pid PID`: restore the original code of a patch (library: removePatch). */
import type { Command } from 'commander';
import { removePatch } from '../../patch/engine/index.js';
import { parsePidOption, parseTimeoutOption, resultJson, runForCli } from './apply.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('remove')
    .description('remove a patch from a running process, restoring the original bytes of every site in one short freeze')
    .argument('<PATCH_ID>', 'the patch id (see `hotpatch list`)')
    .requiredOption('--pid <PID>', 'the process')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch remove 3f2a9c0d1e2b4a5c --pid 1234\n')
    .action(async (patchId: string, opts: { pid: string; timeout: string; json?: boolean }) => {
      const pid = parsePidOption(opts.pid);
      const timeoutMs = parseTimeoutOption(opts.timeout);
      await runForCli(opts.json ?? false, pid, patchId, setExitCode, () => removePatch(pid, patchId, { timeoutMs }), (r) => ({
        results: [resultJson(pid, patchId, r.status, r.pauseMicros, { totalPauseMicros: r.totalPauseMicros, attempts: r.attempts, threads: r.threads, totalMicros: r.totalMicros, codeFreed: r.codeFreed })],
        text: `removed patch ${patchId} from process ${pid} (${r.threads} threads, pause ${r.pauseMicros.toFixed(0)} µs${r.codeFreed ? '' : '; its code is still in use and will be freed later'})`,
      }));
    });
}
