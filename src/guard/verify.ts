/**
 * One full verification of a process: every protected structure (design.md table, codes 0–10).
 * Read-only (/proc and /proc/PID/mem) except structure 7, which briefly stops the target to read
 * its signal handlers (only when `allowPtrace`).
 */
import { ProcessError } from '../errors.js';
import { enumerateProcessIds, PROCESS_KERNEL_THREAD, PROCESS_NOT_FOUND, PROCESS_ZOMBIE } from '../process/index.js';
import { checkCredentials } from './checks/credentials.js';
import { checkImages } from './checks/image.js';
import { checkImports, checkLinkMapForgery } from './checks/imports.js';
import { checkCodePointers } from './checks/pointers.js';
import { checkInjected, checkModuleList, checkVdso } from './checks/memory.js';
import { checkProvenance } from './checks/provenance.js';
import { checkSanctioned } from './checks/sanctioned.js';
import { checkSignalHandlers } from './checks/signals.js';
import { DEFAULT_FREEZE_TIMEOUT_MS, ProcessContext, VerifierCaches, type CheckOptions } from './context.js';
import { ALL_STRUCTURES, makeFinding, type Finding, type StructureCode } from './finding.js';
import { defaultPolicy, isAllowed, matchesAny, type Policy } from './policy.js';
import { GuardState } from './state.js';
import { loadTrustedKeySet, type TrustedKeySet } from '../patch/trust/keys.js';

/** Options of `verifyProcess` / `verifyProcesses`. All optional. */
export interface VerifyOptions {
  policy?: Policy;
  /** Guard state (first-seen identities, credential baselines). Default: in memory, empty. */
  state?: GuardState;
  /** Shared caches; pass the same object to successive calls to reuse parsed files and hashes. */
  caches?: VerifierCaches;
  /** Structures to check (default: all). */
  structures?: readonly StructureCode[];
  /**
   * Trusted signer public key files (structure 10; the same name as apply's), used with the policy's `trustedKeys`; when
   * both are empty, HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d. A file that cannot be
   * read is an error (PackageError KEY_NOT_FOUND), never "no trusted signer".
   */
  trustFiles?: string[];
  /** @deprecated the old name of `trustFiles` (still honoured). */
  trustedKeys?: string[];
  /** The trusted keys already loaded (overrides `trustedKeys`; `verifyProcesses` loads them once). */
  trust?: TrustedKeySet;
  /** Let structure 7 stop the target briefly with ptrace to read its signal handlers. Default true. */
  allowPtrace?: boolean;
  /** How long a target may take to stop for structure 7 (ms, default 2000). */
  freezeTimeoutMs?: number;
  /** See CheckOptions.cleanCacheMs. Default 0 (every byte compared). */
  cleanCacheMs?: number;
  /** Include findings the policy allows (marked in detail). Default false. */
  includeAllowed?: boolean;
  /** Called after each process of `verifyProcesses` (processes done, total, bytes compared so far). */
  onProgress?: (done: number, total: number, bytes: number) => void;
}

export interface VerifyResult {
  pid: number;
  /** False when the process vanished or could not be opened; `error` says why. */
  checked: boolean;
  error?: string;
  /** Memory bytes compared. */
  bytes: number;
  findings: Finding[];
  /** Structure codes actually checked. */
  structures: StructureCode[];
}

/** Fills CheckOptions from VerifyOptions. */
export function checkOptions(options: VerifyOptions = {}): CheckOptions {
  const policy = options.policy ?? defaultPolicy();
  return {
    policy,
    state: options.state ?? new GuardState(null, false),
    caches: options.caches ?? new VerifierCaches(),
    cleanCacheMs: options.cleanCacheMs ?? 0,
    trust: options.trust ?? loadVerifierTrust({ ...options, policy }),
    allowPtrace: options.allowPtrace ?? true,
    freezeTimeoutMs: options.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS,
  };
}

/**
 * Loads the trusted signers structure 10 will use (`trustedKeys` plus the policy's, else
 * HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d), so that a key file that is missing, invalid
 * or changeable by another user is an error (KEY_NOT_FOUND, KEY_INVALID, TRUST_UNSAFE) before
 * anything is verified, rather than every sanctioned patch turning into a finding.
 */
export function loadVerifierTrust(options: Pick<VerifyOptions, 'trustFiles' | 'trustedKeys' | 'policy'> = {}): TrustedKeySet {
  const files = [...(options.trustFiles ?? []), ...(options.trustedKeys ?? []), ...(options.policy?.trustedKeys ?? [])];
  return loadTrustedKeySet(files.length > 0 ? { trustFiles: files } : {});
}

/** Runs the checks of some structures in a context. Errors of one structure do not stop the others. */
export async function runChecks(ctx: ProcessContext, structures: readonly StructureCode[]): Promise<Finding[]> {
  const want = new Set(structures);
  const out: Finding[] = [];
  const guarded = async (code: StructureCode, fn: () => Finding[] | Promise<Finding[]>) => {
    try {
      out.push(...(await fn()));
    } catch (e) {
      if (e instanceof ProcessError && (e.code === PROCESS_NOT_FOUND || e.code === PROCESS_ZOMBIE)) throw e;
      out.push(makeFinding({ pid: ctx.pid, code, kind: 'unverifiable', severity: 'low', detail: `check failed: ${(e as Error).message}` }));
    }
  };
  const imageCodes = new Set([...want].filter((c) => c === 0 || c === 1 || c === 2 || c === 4));
  if (imageCodes.size > 0) await guarded([...imageCodes][0]!, () => checkImages(ctx, imageCodes));
  if (want.has(3)) await guarded(3, () => checkImports(ctx));
  if (want.has(3)) await guarded(3, () => checkCodePointers(ctx));
  if (want.has(5)) await guarded(5, () => checkInjected(ctx));
  if (want.has(6)) await guarded(6, () => checkModuleList(ctx));
  if (want.has(6)) await guarded(6, () => checkProvenance(ctx));
  if (want.has(6)) await guarded(6, () => checkLinkMapForgery(ctx));
  if (want.has(7)) await guarded(7, () => checkSignalHandlers(ctx));
  if (want.has(8)) await guarded(8, () => checkCredentials(ctx));
  if (want.has(9)) await guarded(9, () => checkVdso(ctx));
  if (want.has(10)) await guarded(10, () => checkSanctioned(ctx));
  return out;
}

function gone(e: unknown): boolean {
  return e instanceof ProcessError && (e.code === PROCESS_NOT_FOUND || e.code === PROCESS_ZOMBIE || e.code === PROCESS_KERNEL_THREAD);
}

/**
 * Verifies one process. A process that exits during the check gives `checked: false` and no
 * findings (it can no longer be tampered with).
 */
export async function verifyProcess(pid: number, options: VerifyOptions = {}): Promise<VerifyResult> {
  const opts = checkOptions(options);
  const structures = [...(options.structures ?? ALL_STRUCTURES)];
  let ctx: ProcessContext;
  try {
    ctx = new ProcessContext(pid, opts);
  } catch (e) {
    return { pid, checked: false, error: (e as Error).message, bytes: 0, findings: [], structures: [] };
  }
  try {
    if (opts.policy.ignore.length > 0 && matchesAny(opts.policy.ignore, ctx.identity)) {
      return { pid, checked: false, error: 'ignored by policy', bytes: 0, findings: [], structures: [] };
    }
    let findings = await runChecks(ctx, structures);
    if (!ctx.proc.isAlive()) return { pid, checked: false, error: 'process exited during the check', bytes: ctx.bytesVerified, findings: [], structures: [] };
    if (!options.includeAllowed) findings = findings.filter((f) => !isAllowed(opts.policy, f, ctx.identity));
    return { pid, checked: true, bytes: ctx.bytesVerified, findings, structures };
  } catch (e) {
    if (gone(e)) return { pid, checked: false, error: (e as Error).message, bytes: ctx.bytesVerified, findings: [], structures: [] };
    throw e;
  } finally {
    ctx.close();
  }
}

/** Pids of every user-space process except this one (kernel threads are skipped when opened). */
export function allProcessIds(): number[] {
  return enumerateProcessIds().filter((p) => p !== process.pid);
}

/** Verifies several processes sharing caches; results in pid order. */
export async function verifyProcesses(pids: readonly number[], options: VerifyOptions = {}): Promise<VerifyResult[]> {
  const trust = options.trust ?? loadVerifierTrust(options);
  const shared: VerifyOptions = { ...options, trust, caches: options.caches ?? new VerifierCaches(), state: options.state ?? new GuardState(null, false) };
  const out: VerifyResult[] = [];
  let bytes = 0;
  for (const pid of pids) {
    const r = await verifyProcess(pid, shared);
    out.push(r);
    bytes += r.bytes;
    options.onProgress?.(out.length, pids.length, bytes);
  }
  return out;
}
