/** `recover` over one or many processes: finish or undo what an interrupted apply or remove left. */
import { recoverProcess, type ProcessPatches } from '../engine/index.js';
import { readProcStat } from '../../process/index.js';
import type { RunOptions } from './apply.js';
import { findPatchedProcesses } from './discover.js';
import { outcomeOf, resultFromError, type ProcessResult, type RunOutcome } from './result.js';
import { forEachProcess, runEngineOp } from './run.js';
import { UsageError } from '../../errors.js';

/** What `recover` did. */
export interface RecoverReport {
  results: ProcessResult[];
  outcome: RunOutcome;
}

/** Whether a process's record shows an operation interrupted by a patcher that died, or code that disagrees with it. */
export function recoveryNeed(p: ProcessPatches): { need: true } | { need: false; code: string; reason: string } {
  const unfinished = p.patches.some((x) => x.state === 'pending' || x.state === 'removing');
  if (!p.transaction && !unfinished && p.disagreements.length === 0) return { need: false, code: 'NOTHING_TO_RECOVER', reason: 'nothing to recover: the record is consistent' };
  const owner = p.transaction?.ownerPid;
  if (owner !== undefined && owner !== process.pid && isAlive(owner)) {
    return { need: false, code: 'IN_PROGRESS', reason: `hotpatch process ${owner} is working on it right now (${p.transaction!.op} of ${p.transaction!.patchId}); nothing was changed (if that process is not hotpatch, run \`hotpatch recover --pid ${p.pid}\`)` };
  }
  return { need: true };
}

function isAlive(pid: number): boolean {
  try {
    const st = readProcStat(pid);
    return st.state !== 'Z' && st.state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Recovers the selected processes (`all`: every process whose record shows an interrupted
 * operation; the other patched processes are listed as skipped). Each result is
 * `removed` (with `actions`: an interrupted apply `undone`, an interrupted remove `finished`, code
 * that disagreed with the record `reconciled`; in each case
 * way the patch's sites hold their original bytes) or `skipped` with code NOTHING_TO_RECOVER.
 */
export async function recoverProcesses(options: RunOptions): Promise<RecoverReport> {
  const hasPids = options.pids !== undefined && options.pids.length > 0;
  if (Boolean(options.all) === hasPids) throw new UsageError('USAGE', 'say which processes: --pid PID or --all (not both)');
  const progress = options.onProgress ?? (() => {});
  let targets: Array<{ pid: number; exe?: string }>;
  const untouched: ProcessResult[] = [];
  if (options.all) {
    // Only processes whose record shows an interrupted operation are locked and repaired; the
    // others are reported from their record alone (a consistent process is never frozen, and an
    // operation a live hotpatch process is performing right now is left to it).
    progress('scanning processes for patch records...');
    const found = findPatchedProcesses();
    targets = [];
    for (const p of found) {
      const state = recoveryNeed(p);
      if (state.need) targets.push({ pid: p.pid, exe: p.exe });
      else untouched.push({ pid: p.pid, status: 'skipped', patchId: p.transaction?.patchId ?? null, pauseMicros: 0, exe: p.exe, code: state.code, reason: state.reason });
    }
    progress(`${found.length} process${found.length === 1 ? ' has' : 'es have'} a patch record; ${targets.length} need${targets.length === 1 ? 's' : ''} recovery`);
  } else {
    targets = [...new Set(options.pids!)].map((pid) => ({ pid }));
  }
  const results = await forEachProcess(targets, options, async (t): Promise<ProcessResult> => {
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
    return r;
  });
  const all = [...results, ...untouched].sort((a, b) => a.pid - b.pid);
  return { results: all, outcome: outcomeOf(all) };
}
