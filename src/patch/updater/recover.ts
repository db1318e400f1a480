/** `recover` over one or many processes: finish or undo what an interrupted apply or remove left. */
import { recoverProcess } from '../engine/index.js';
import { progressLine, type RunOptions } from './apply.js';
import { findPatchedProcesses } from './discover.js';
import { outcomeOf, resultFromError, type ProcessResult, type RunOutcome } from './result.js';
import { DEFAULT_CONCURRENCY, mapBounded, runEngineOp } from './run.js';
import { UsageError } from '../../errors.js';

/** What `recover` did. */
export interface RecoverReport {
  results: ProcessResult[];
  outcome: RunOutcome;
}

/**
 * Recovers the selected processes (`all`: every process with a patch record). Each result is
 * `removed` (with `actions`: an interrupted apply `undone`, an interrupted remove `finished`; either
 * way the patch's sites hold their original bytes) or `skipped` with code NOTHING_TO_RECOVER.
 */
export async function recoverProcesses(options: RunOptions): Promise<RecoverReport> {
  const hasPids = options.pids !== undefined && options.pids.length > 0;
  if (options.all === hasPids) throw new UsageError('USAGE', 'say which processes: --pid PID or --all (not both)');
  const progress = options.onProgress ?? (() => {});
  let targets: Array<{ pid: number; exe?: string }>;
  if (options.all) {
    progress('scanning processes for patch records...');
    targets = findPatchedProcesses().map((p) => ({ pid: p.pid, exe: p.exe }));
    progress(`${targets.length} process${targets.length === 1 ? ' has' : 'es have'} a patch record`);
  } else {
    targets = [...new Set(options.pids!)].map((pid) => ({ pid }));
  }
  let done = 0;
  const results = await mapBounded(targets, options.concurrency ?? DEFAULT_CONCURRENCY, async (t): Promise<ProcessResult> => {
    let r: ProcessResult;
    try {
      const x = await runEngineOp(t.pid, () => recoverProcess(t.pid, options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}), options);
      r = {
        pid: t.pid, status: x.status === 'recovered' ? 'removed' : 'skipped', patchId: x.actions[0]?.patchId ?? null, pauseMicros: x.pauseMicros,
        totalMicros: x.totalMicros, actions: x.actions, ...(t.exe ? { exe: t.exe } : {}),
        ...(x.status === 'recovered' ? {} : { code: 'NOTHING_TO_RECOVER', reason: 'nothing to recover: the record is consistent' }),
      };
    } catch (e) {
      r = { ...resultFromError(t.pid, null, e, options.all === true), ...(t.exe ? { exe: t.exe } : {}) };
    }
    done++;
    if (options.all || targets.length > 1) progress(progressLine(done, targets.length, r));
    return r;
  });
  return { results, outcome: outcomeOf(results) };
}
