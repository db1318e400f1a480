/**
 * `hotpatch status`: for every stored patch, its signed metadata and the processes it is applied
 * to, pending on or failed on (with the reason); for every withdrawn patch, the processes that
 * still have it.
 *
 * "Applied" always comes from the processes' own records. Pending and failed are the agent's
 * scheduling state (a busy target being retried, an error): the agent publishes them in its status
 * file (default /run/hotpatch/agent-status.json, written atomically after each cycle that changed
 * something and at least every 5 s), and `status` merges them in when that agent is alive.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, basename } from 'node:path';
import { findImageProcesses, findPatchedProcesses } from '../patch/updater/index.js';
import { readStore, writeStoreFile, type StoreContents, type StoreOptions } from '../store/index.js';

/** Default path of the agent's status file. */
export const DEFAULT_AGENT_STATUS_FILE = '/run/hotpatch/agent-status.json';
/** Environment variable overriding it. */
export const AGENT_STATUS_ENV = 'HOTPATCH_AGENT_STATUS';

/** The agent's retry state for one (process, patch). */
export interface AgentAttempt {
  pid: number;
  patchId: string;
  action: 'apply' | 'remove';
  state: 'pending' | 'failed';
  code: string;
  reason: string;
  attempts: number;
  since: string;
  /** Epoch ms of the next try (internal). */
  nextAt: number;
  nextRetryAt: string;
}

/** One process in a patch's status. */
export interface StatusProcess {
  pid: number;
  exe: string;
  /** `applied` (read from the record), `pending` / `failed` (agent), `not-applied` (no agent has tried yet). */
  state: 'applied' | 'pending' | 'failed' | 'not-applied';
  code?: string;
  reason?: string;
  attempts?: number;
  since?: string;
  nextRetryAt?: string;
}

export interface StatusPatch {
  id: string;
  target: { name: string; buildId: string };
  description: string | null;
  cves: string[];
  severity: string | null;
  signer: string | null;
  addedAt: string;
  counts: { applied: number; pending: number; failed: number; notApplied: number };
  processes: StatusProcess[];
}

/** The whole status (`hotpatch status --json`, the agent's /status and status file). */
export interface FleetStatus {
  store: string;
  agent: { pid: number; startedAt: string; updatedAt: string } | null;
  patches: StatusPatch[];
  withdrawn: Array<{ id: string; withdrawnAt: string; processes: StatusProcess[] }>;
  invalid: Array<{ file: string; code: string; reason: string }>;
}

/** A process as the status sees it: which stored patches' target it maps, which patches it has. */
export interface StatusInput {
  pid: number;
  exe: string;
  applied: ReadonlySet<string>;
  matches: ReadonlySet<string>;
}

function attemptFields(a: AgentAttempt | undefined): Partial<StatusProcess> {
  return a ? { code: a.code, reason: a.reason, attempts: a.attempts, since: a.since, nextRetryAt: a.nextRetryAt } : {};
}

/** Assembles the status from the store, the processes and the agent's attempts. */
export function buildStatus(store: StoreContents, procs: readonly StatusInput[], attempts: readonly AgentAttempt[], agent: FleetStatus['agent']): FleetStatus {
  const att = new Map(attempts.map((a) => [`${a.pid}:${a.patchId}`, a]));
  const sorted = [...procs].sort((a, b) => a.pid - b.pid);
  const patches: StatusPatch[] = store.packages.map((sp) => {
    const processes: StatusProcess[] = [];
    for (const p of sorted) {
      if (!p.matches.has(sp.id) && !p.applied.has(sp.id)) continue;
      const a = att.get(`${p.pid}:${sp.id}`);
      const state: StatusProcess['state'] = p.applied.has(sp.id) ? 'applied' : a ? a.state : 'not-applied';
      processes.push({ pid: p.pid, exe: p.exe, state, ...(state === 'applied' ? {} : attemptFields(a)) });
    }
    const n = (s: StatusProcess['state']) => processes.filter((x) => x.state === s).length;
    const s = sp.verdict.signer;
    return {
      id: sp.id, target: { name: sp.pkg.plan.target.name, buildId: sp.pkg.plan.target.buildId },
      description: sp.pkg.meta.description ?? null, cves: sp.pkg.meta.cves ?? [], severity: sp.pkg.meta.severity ?? null,
      signer: s ? (s.name ? `${s.name} (${s.keyId})` : s.keyId) : null, addedAt: new Date(sp.addedAt).toISOString(),
      counts: { applied: n('applied'), pending: n('pending'), failed: n('failed'), notApplied: n('not-applied') }, processes,
    };
  });
  const withdrawn = store.withdrawn.map((w) => ({
    id: w.id, withdrawnAt: w.withdrawnAt,
    processes: sorted.filter((p) => p.applied.has(w.id)).map((p): StatusProcess => {
      const a = att.get(`${p.pid}:${w.id}`);
      return { pid: p.pid, exe: p.exe, state: a ? a.state : 'applied', ...attemptFields(a) };
    }),
  }));
  return { store: store.dir, agent, patches, withdrawn, invalid: store.invalid };
}

/** The agent status file path: `explicit`, else $HOTPATCH_AGENT_STATUS, else the default. */
export function agentStatusFile(explicit?: string): string {
  return explicit ?? process.env[AGENT_STATUS_ENV] ?? DEFAULT_AGENT_STATUS_FILE;
}

/** Writes the agent's status file atomically (directory created 0700 when missing). */
export function writeAgentStatus(path: string, status: FleetStatus, attempts: readonly AgentAttempt[]): void {
  const dir = dirname(path);
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeStoreFile(dir, basename(path), new TextEncoder().encode(`${JSON.stringify({ status, attempts })}\n`), 0o644);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The running agent's published state, or null (no file, unreadable, or its agent is gone). */
export function readAgentStatus(path: string): { status: FleetStatus; attempts: AgentAttempt[] } | null {
  try {
    const x = JSON.parse(readFileSync(path, 'utf8')) as { status: FleetStatus; attempts: AgentAttempt[] };
    if (!x.status?.agent || !alive(x.status.agent.pid)) return null;
    return x;
  } catch {
    return null;
  }
}

/**
 * Computes the status now: reads the store (every package verified), scans every process for the
 * stored targets (by build-id) and reads every patch record, then merges the live agent's
 * pending/failed entries.
 */
export function computeStatus(options: StoreOptions & { statusFile?: string } = {}): FleetStatus {
  const store = readStore(options);
  const procs = new Map<number, { pid: number; exe: string; applied: Set<string>; matches: Set<string> }>();
  const get = (pid: number, exe: string) => {
    let p = procs.get(pid);
    if (!p) procs.set(pid, (p = { pid, exe, applied: new Set(), matches: new Set() }));
    return p;
  };
  for (const sp of store.packages) {
    for (const m of findImageProcesses(sp.pkg.plan.target).matches) get(m.pid, m.exe).matches.add(sp.id);
  }
  for (const pp of findPatchedProcesses()) {
    for (const x of pp.patches) if (x.state === 'applied') get(pp.pid, pp.exe).applied.add(x.id);
  }
  const agent = readAgentStatus(agentStatusFile(options.statusFile));
  return buildStatus(store, [...procs.values()], agent?.attempts ?? [], agent?.status.agent ?? null);
}
