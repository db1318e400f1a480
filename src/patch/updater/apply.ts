/**
 * `apply` over one or many processes: find every process that maps the package's target image
 * (by build-id), apply the hot patch to each (the engine is all-or-nothing per process), and
 * optionally install the fixed file on disk (cold patch).
 */
import { existsSync, statSync } from 'node:fs';
import { HotpatchError, RefusedError, UsageError } from '../../errors.js';
import { applyPatch, findTargetModule } from '../engine/index.js';
import type { TrustPolicyOptions } from '../trust/index.js';
import { checkColdFile, installCold, type ColdResult } from './cold.js';
import { findImageProcesses, type ImageProcess } from './discover.js';
import { loadPackage, type LoadedPackage } from './package.js';
import { outcomeOf, resultFromError, type ProcessResult, type RunOutcome } from './result.js';
import { forEachProcess, runEngineOp } from './run.js';

/** Which processes an operation works on: explicit pids, or every process (`all`). */
export interface ProcessSelection {
  pids?: readonly number[];
  all?: boolean;
}

/** Options shared by apply, remove and recover over many processes. */
export interface RunOptions extends ProcessSelection {
  /** How long the engine retries while a thread is inside the code to switch (ms, default 5000). */
  timeoutMs?: number;
  /** Switch in a freeze of every thread even where the zero-stall protocol applies. */
  freeze?: boolean;
  /** Operations in flight at once (default 4). */
  concurrency?: number;
  /** How long to wait while another hotpatch process works on a target (ms, default 10000). */
  lockWaitMs?: number;
  /** Progress lines (the CLI prints them on stderr). */
  onProgress?: (line: string) => void;
}

/** Options of {@link applyPackage}. */
export interface ApplyPackageOptions extends RunOptions {
  /** Also install the fixed file on disk. */
  cold?: boolean;
  /**
   * Files to cold-patch. Default: every distinct path from which a found process mapped the
   * target module that still holds the target build on disk.
   */
  coldFiles?: readonly string[];
  /** Check everything, change nothing. */
  dryRun?: boolean;
}

/** What `apply` did. */
export interface ApplyReport {
  package: { id: string; target: { name: string; buildId: string }; signer: string | null; signature: string; cold: boolean };
  results: ProcessResult[];
  cold: ColdResult[];
  /** Notes for the operator (paths not cold-patched and why, processes not readable...). */
  notes: string[];
  outcome: RunOutcome;
}

function selectionCheck(sel: ProcessSelection, allowNone: boolean): void {
  if (sel.all && sel.pids && sel.pids.length > 0) throw new UsageError('USAGE', 'give either --pid or --all, not both');
  if (!sel.all && (!sel.pids || sel.pids.length === 0) && !allowNone) throw new UsageError('USAGE', 'say which processes: --pid PID or --all');
  for (const p of sel.pids ?? []) if (!Number.isSafeInteger(p) || p <= 0) throw new UsageError('USAGE', `not a process id: ${p}`);
}

/** Reads `path` with the signature policy, then {@link applyPackage}. */
export async function applyPackageFile(path: string, options: ApplyPackageOptions & TrustPolicyOptions): Promise<ApplyReport> {
  selectionCheck(options, options.cold === true);
  return applyPackage(loadPackage(path, options), options);
}

/**
 * Applies a loaded package to the selected processes (and the cold patch when asked).
 * Never throws for a per-process problem: each process gets its result. Throws (nothing changed)
 * for usage errors and when the cold patch cannot be installed.
 */
export async function applyPackage(loaded: LoadedPackage, options: ApplyPackageOptions): Promise<ApplyReport> {
  selectionCheck(options, options.cold === true);
  const { pkg } = loaded;
  const progress = options.onProgress ?? (() => {});
  const notes: string[] = [];
  const fixedBuildId = pkg.cold?.buildId;
  const results: ProcessResult[] = [];
  let targets: ImageProcess[] = [];

  const selected = options.all || (options.pids !== undefined && options.pids.length > 0);
  if (selected) {
    if (options.all) progress(`scanning processes for ${pkg.plan.target.name} (build-id ${pkg.plan.target.buildId})...`);
    const scan = findImageProcesses(pkg.plan.target, { ...(options.all ? {} : { pids: options.pids! }), ...(fixedBuildId ? { fixedBuildId } : {}) });
    targets = scan.matches;
    for (const o of scan.others) {
      if (o.fixed || options.all) {
        results.push({ pid: o.pid, status: 'skipped', patchId: pkg.id, pauseMicros: 0, reason: o.reason, code: o.fixed ? 'RUNS_FIXED_BUILD' : 'OTHER_BUILD', exe: o.exe, module: o.module.path, ...(o.module.buildId ? { buildId: o.module.buildId } : {}) });
      } else {
        results.push(refusalFor(o.pid, pkg.id, () => findTargetModule([o.module], pkg.plan.target, o.pid), o.exe, o.module.path));
      }
    }
    for (const u of scan.unreadable) results.push(resultFromError(u.pid, pkg.id, u.error));
    if (options.all) {
      progress(`${targets.length} process${targets.length === 1 ? '' : 'es'} map${targets.length === 1 ? 's' : ''} the target` +
        (scan.others.length ? `; ${scan.others.length} run${scan.others.length === 1 ? 's' : ''} another build (skipped)` : ''));
    }
  }

  // Cold: decide the files and check them all before touching anything.
  const coldFiles: string[] = [];
  if (options.cold) {
    if (!pkg.cold) throw new HotpatchError('COLD_NO_PAYLOAD', `package ${pkg.id} carries no fixed file: rebuild it with \`hotpatch build ... --cold\` to use --cold`);
    if (options.coldFiles && options.coldFiles.length > 0) {
      for (const f of options.coldFiles) checkColdFile(f, pkg);
      coldFiles.push(...options.coldFiles);
    } else {
      const seen = new Set<string>();
      for (const t of targets) {
        const p = t.module.path;
        if (seen.has(p)) continue;
        seen.add(p);
        if (!existsSync(p)) {
          notes.push(`${p} (mapped by process ${t.pid}) no longer exists: not cold-patched`);
          continue;
        }
        try {
          checkColdFile(p, pkg);
          if (!coldFiles.some((c) => sameFile(c, p))) coldFiles.push(p);
        } catch (e) {
          if (!(e instanceof RefusedError)) throw e;
          notes.push(`${p} (mapped by process ${t.pid}) now holds another file: not cold-patched (${e.message})`);
        }
      }
      if (coldFiles.length === 0) {
        throw new RefusedError(
          'COLD_NO_FILE',
          `no file on disk that a process of ${pkg.plan.target.name} was started from holds build ${pkg.plan.target.buildId}` +
            `${targets.length === 0 ? ' (no process maps it)' : ''}: name the installed file with --file PATH; nothing was changed`,
        );
      }
    }
  }

  const hot = await forEachProcess(targets, options, (t) => applyOne(loaded, t, options));
  results.push(...hot);
  results.sort((a, b) => a.pid - b.pid);

  const cold: ColdResult[] = [];
  for (const f of coldFiles) {
    const c = installCold(f, pkg, { dryRun: options.dryRun === true });
    cold.push(c);
    progress(`cold: ${f} ${c.status}${c.status === 'installed' ? ` (original kept as ${c.backupPath})` : ''}`);
  }
  return {
    package: {
      id: pkg.id, target: { name: pkg.plan.target.name, buildId: pkg.plan.target.buildId }, signer: loaded.signer,
      signature: loaded.verdict.status, cold: pkg.cold !== undefined,
    },
    results, cold, notes, outcome: outcomeOf(results),
  };
}

function sameFile(a: string, b: string): boolean {
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return a === b;
  }
}

function refusalFor(pid: number, patchId: string, f: () => unknown, exe: string, module: string): ProcessResult {
  try {
    f();
    return { pid, status: 'refused', patchId, pauseMicros: 0, reason: 'does not map the target build', code: 'BUILD_ID_MISMATCH', exe, module };
  } catch (e) {
    return { ...resultFromError(pid, patchId, e), exe, module };
  }
}

const RECOVER_ACTION_TEXT = {
  undone: 'undid the interrupted apply of',
  finished: 'finished the interrupted removal of',
  reconciled: 'reconciled the record with the code (the patch\'s jump was gone; it is now recorded as removed) for',
} as const;

function pauseText(r: ProcessResult): string {
  return r.protocol === 'live' ? 'live (no thread stopped)' : `pause ${Math.round(r.pauseMicros)} µs`;
}

/** One line describing a result (the CLI's human output). */
export function describe(r: ProcessResult): string {
  const who = `pid ${r.pid}${r.exe ? ` (${r.exe})` : ''}`;
  switch (r.status) {
    case 'patched':
      return `${who}: patched ${r.patchId}, ${pauseText(r)}`;
    case 'removed':
      return r.actions && r.actions.length > 0
        ? `${who}: recovered (${r.actions.map((a) => `${RECOVER_ACTION_TEXT[a.action]} ${a.patchId}`).join(', ')})`
        : `${who}: removed ${r.patchId}, ${pauseText(r)}`;
    default:
      return `${who}: ${r.status}${r.reason ? `: ${r.reason}` : ''}`;
  }
}

async function applyOne(loaded: LoadedPackage, t: ImageProcess, options: ApplyPackageOptions): Promise<ProcessResult> {
  const { pkg } = loaded;
  const base = { exe: t.exe, module: t.module.path, ...(t.module.buildId ? { buildId: t.module.buildId } : {}) };
  try {
    const r = await runEngineOp(t.pid, () =>
        applyPatch(t.pid, pkg.plan, {
          patchId: pkg.id, packageHash: loaded.packageHash, signer: loaded.signer,
          ...(loaded.signing ? { signing: loaded.signing } : {}),
          ...(loaded.content ? { content: loaded.content } : {}),
          ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
          ...(options.dryRun ? { dryRun: true } : {}),
          ...(options.freeze ? { freeze: true } : {}),
        }), options);
    const dry = r.status === 'dry-run';
    return {
      pid: t.pid, status: r.status === 'dry-run' ? 'skipped' : r.status, patchId: pkg.id, pauseMicros: r.pauseMicros, ...base,
      ...(r.status === 'patched' ? { protocol: r.protocol } : {}),
      ...(dry ? { dryRun: true, code: 'DRY_RUN', reason: 'dry run: every check passed, nothing was changed' } : {}),
      totalPauseMicros: r.totalPauseMicros, attempts: r.attempts, threads: r.threads, totalMicros: r.totalMicros,
      functions: r.functions.map((f) => f.name),
    };
  } catch (e) {
    return { ...resultFromError(t.pid, pkg.id, e, options.all === true), ...base };
  }
}
