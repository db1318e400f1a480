/**
 * Per-process results of the updater's operations, and how a whole run is summarised (the CLI
 * maps the summary to its exit code: ok 0, error 1, refused 3, partial 4).
 */
import { HotpatchError, RefusedError } from '../../errors.js';
import { PROCESS_NOT_FOUND, PROCESS_ZOMBIE } from '../../process/index.js';

/**
 * What happened to one process (the statuses of /work/shared/cli.md).
 * - `patched` / `removed`: the operation changed the process (`removed` also for `recover`, which
 *   undoes an interrupted apply or finishes an interrupted remove: see `actions`).
 * - `already-patched`: the patch was already applied (nothing to do).
 * - `refused`: a documented reason stopped it; nothing was changed in that process.
 * - `failed`: an error; the engine is all-or-nothing per process, so nothing is half-done.
 * - `skipped`: left alone, `code` says why: DRY_RUN (every check passed, `--dry-run`),
 *   NOTHING_TO_RECOVER, RUNS_FIXED_BUILD, OTHER_BUILD, PROCESS_NOT_FOUND (exited meanwhile).
 */
export type UpdateStatus = 'patched' | 'already-patched' | 'removed' | 'refused' | 'failed' | 'skipped';

/** Codes of `skipped` results that count as success (the operation had nothing left to do). */
export const SKIP_SUCCESS_CODES: ReadonlySet<string> = new Set(['DRY_RUN', 'NOTHING_TO_RECOVER']);

/** Result for one process (the `results[]` entries of the CLI's JSON). */
export interface ProcessResult {
  pid: number;
  status: UpdateStatus;
  patchId: string | null;
  /** Pause of the freeze that switched the code (µs); 0 when nothing was switched or it was switched live. */
  pauseMicros: number;
  /** How the code was switched: `live` (no thread stopped) or `freeze` (every thread, briefly). */
  protocol?: 'live' | 'freeze';
  /** Why it was refused, failed or skipped (a sentence that says what to do next). */
  reason?: string;
  /** Stable error code behind `reason` (e.g. BUILD_ID_MISMATCH, TARGET_BUSY, PROCESS_LOCKED). */
  code?: string;
  /** Executable of the process. */
  exe?: string;
  /** Path of the module the patch targets in that process (as mapped; may be a deleted file). */
  module?: string;
  /** Build-id of that module. */
  buildId?: string;
  /** Sum of every freeze of the operation, busy retries and the setup freeze included (µs). */
  totalPauseMicros?: number;
  /** Freeze attempts (more than 1 when a thread was in the way). */
  attempts?: number;
  threads?: number;
  /** Wall time of the operation on this process (µs). */
  totalMicros?: number;
  /** True for a `--dry-run` result. */
  dryRun?: boolean;
  /** Functions switched (apply) or what recover did. */
  functions?: string[];
  actions?: Array<{ patchId: string; action: 'undone' | 'finished' | 'reconciled'; sitesRestored: number }>;
}

/** Summary of a run over one or more processes. */
export type RunOutcome = 'ok' | 'refused' | 'partial' | 'error';

const GOOD: ReadonlySet<UpdateStatus> = new Set(['patched', 'already-patched', 'removed']);

function succeeded(r: ProcessResult): boolean {
  return GOOD.has(r.status) || (r.status === 'skipped' && r.code !== undefined && SKIP_SUCCESS_CODES.has(r.code));
}

/**
 * `ok` when nothing was refused or failed; `partial` when some processes succeeded and others did
 * not; `refused` when nothing succeeded and every problem was a refusal (nothing changed anywhere);
 * `error` otherwise.
 */
export function outcomeOf(results: readonly ProcessResult[]): RunOutcome {
  const bad = results.filter((r) => r.status === 'refused' || r.status === 'failed');
  if (bad.length === 0) return 'ok';
  if (results.some(succeeded)) return 'partial';
  return bad.every((r) => r.status === 'refused') ? 'refused' : 'error';
}

/** True when the error means the process exited while we worked on it. */
export function isProcessGone(e: unknown): boolean {
  return e instanceof HotpatchError && (e.code === PROCESS_NOT_FOUND || e.code === PROCESS_ZOMBIE);
}

/**
 * Turns an error of an engine call on `pid` into a result (refused / skipped / failed). A process
 * that exited is `skipped` when `goneIsSkip` (found by a scan: it simply ended), else `failed`
 * (the operator named it).
 */
export function resultFromError(pid: number, patchId: string | null, e: unknown, goneIsSkip = false): ProcessResult {
  if (goneIsSkip && isProcessGone(e)) return { pid, status: 'skipped', patchId, pauseMicros: 0, reason: `process ${pid} exited`, code: (e as HotpatchError).code };
  if (e instanceof RefusedError) return { pid, status: 'refused', patchId, pauseMicros: 0, reason: e.message, code: e.code };
  if (e instanceof HotpatchError) return { pid, status: 'failed', patchId, pauseMicros: 0, reason: e.message, code: e.code };
  const err = e as { message?: string; code?: unknown };
  return {
    pid, status: 'failed', patchId, pauseMicros: 0,
    reason: `internal error: ${err?.message ?? String(e)}`, code: typeof err?.code === 'string' ? err.code : 'INTERNAL',
  };
}
