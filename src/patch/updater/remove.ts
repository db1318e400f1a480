/**
 * `remove` over one or many processes (restore the recorded original bytes live), and the cold
 * rollback (put the original file back on disk).
 */
import { HotpatchError, UsageError } from '../../errors.js';
import { removePatch } from '../engine/index.js';
import type { PatchPackage } from '../package/index.js';
import type { RunOptions } from './apply.js';
import { coldStatePath, removeCold, type ColdResult } from './cold.js';
import { findPatchedProcesses } from './discover.js';
import { outcomeOf, resultFromError, type ProcessResult, type RunOutcome } from './result.js';
import { forEachProcess, runEngineOp } from './run.js';
import { existsSync } from 'node:fs';

/** Options of {@link removeFromProcesses}. */
export interface RemovePatchOptions extends RunOptions {
  /** Also roll back the cold patch (put the original file back). */
  cold?: boolean;
  /**
   * Files to roll back. Default: the module paths the patch was applied to in the processes found
   * that have a cold state file (.NAME.hotpatch-PATCHID.json) beside them.
   */
  coldFiles?: readonly string[];
  /** The package, when at hand: its build-ids are used instead of the state file's. */
  pkg?: PatchPackage;
  /** Report what would be removed, change nothing. */
  dryRun?: boolean;
}

/** What `remove` did. */
export interface RemoveReport {
  patchId: string;
  results: ProcessResult[];
  cold: ColdResult[];
  notes: string[];
  outcome: RunOutcome;
}

const PATCH_ID = /^[0-9a-f]{16}$/;

/** Removes patch `patchId` from the selected processes (see {@link RemovePatchOptions}). */
export async function removeFromProcesses(patchId: string, options: RemovePatchOptions): Promise<RemoveReport> {
  if (!PATCH_ID.test(patchId)) throw new UsageError('USAGE', `not a patch id: ${patchId} (16 hex digits, see \`hotpatch list\`)`);
  const hasPids = options.pids !== undefined && options.pids.length > 0;
  if (options.all && hasPids) throw new UsageError('USAGE', 'give either --pid or --all, not both');
  if (!options.all && !hasPids && !options.cold) throw new UsageError('USAGE', 'say which processes: --pid PID or --all (or --cold --file PATH for the file only)');
  const progress = options.onProgress ?? (() => {});
  const notes: string[] = [];
  const results: ProcessResult[] = [];
  let targets: Array<{ pid: number; exe: string; module?: string }> = [];
  const modulePaths = new Set<string>();

  if (options.all) {
    progress(`scanning processes for patch ${patchId}...`);
    for (const p of findPatchedProcesses()) {
      const patch = p.patches.find((x) => x.id === patchId && x.state !== 'retired');
      if (patch) {
        targets.push({ pid: p.pid, exe: p.exe, module: patch.module });
        modulePaths.add(patch.module);
      }
    }
    progress(`${targets.length} process${targets.length === 1 ? ' has' : 'es have'} patch ${patchId}`);
  } else if (hasPids) {
    targets = [...new Set(options.pids!)].map((pid) => ({ pid, exe: '' }));
    for (const t of targets) {
      try {
        const listed = findPatchedProcesses([t.pid])[0];
        if (listed) {
          t.exe = listed.exe;
          const patch = listed.patches.find((x) => x.id === patchId);
          if (patch) {
            t.module = patch.module;
            modulePaths.add(patch.module);
          }
        }
      } catch {
        /* removePatch reports the problem */
      }
    }
  }

  const hot = await forEachProcess(targets, options, async (t) => {
    const base = { ...(t.exe ? { exe: t.exe } : {}), ...(t.module ? { module: t.module } : {}) };
    let r: ProcessResult;
    if (options.dryRun) {
      r = t.module
        ? { pid: t.pid, status: 'skipped', patchId, pauseMicros: 0, dryRun: true, code: 'DRY_RUN', reason: 'dry run: the patch is applied and would be removed; nothing was changed', ...base }
        : { pid: t.pid, status: 'failed', patchId, pauseMicros: 0, reason: `patch ${patchId} is not applied to process ${t.pid} (see \`hotpatch list --pid ${t.pid}\`)`, code: 'PATCH_NOT_APPLIED', ...base };
    } else {
      try {
        const x = await runEngineOp(t.pid, () => removePatch(t.pid, patchId, { ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}), ...(options.freeze ? { freeze: true } : {}) }), options);
        r = {
          pid: t.pid, status: 'removed', patchId, pauseMicros: x.pauseMicros, protocol: x.protocol, ...base,
          totalPauseMicros: x.totalPauseMicros, attempts: x.attempts, threads: x.threads, totalMicros: x.totalMicros,
        };
      } catch (e) {
        r = { ...resultFromError(t.pid, patchId, e, options.all === true), ...base };
      }
    }
    return r;
  });
  results.push(...hot);
  results.sort((a, b) => a.pid - b.pid);

  const cold: ColdResult[] = [];
  if (options.cold) {
    let files = options.coldFiles && options.coldFiles.length > 0 ? [...options.coldFiles] : [];
    if (files.length === 0) {
      files = [...modulePaths].filter((p) => options.pkg !== undefined || existsSync(coldStatePath(p, patchId)));
      if (files.length === 0) {
        throw new HotpatchError(
          'COLD_NOT_FOUND',
          `cannot tell which file holds cold patch ${patchId}${targets.length === 0 ? ' (no process has the patch)' : ''}: name it with --file PATH`,
        );
      }
    }
    for (const f of files) {
      const c = removeCold(f, patchId, { ...(options.pkg ? { pkg: options.pkg } : {}), ...(options.dryRun ? { dryRun: true } : {}) });
      cold.push(c);
      progress(`cold: ${f} ${c.status}`);
    }
  }
  return { patchId, results, cold, notes, outcome: outcomeOf(results) };
}
