/**
 * `hotpatch agent`: keeps every running process that maps a stored package's target (matched by
 * build-id) patched, and takes withdrawn patches out of every process.
 *
 * State: the store (src/store) is the desired state; what is applied is read back from each
 * process's in-process record on every decision (`listPatches`) — the agent keeps no applied-state
 * of its own, so a SIGKILLed agent restarts where it was: an apply or remove it was killed in is
 * finished or undone by `recover` (the record's transaction), a patch already applied is seen in
 * the record and never applied twice (the engine also answers `already-patched`). What it keeps in
 * memory is only scheduling: which processes it has looked at, and back-off timers for busy or
 * failing targets (reported as pending / failed in its status and metrics).
 *
 * Discovery: the netlink process connector (./proc-connector.ts) where it is available — every
 * `pollMs` (default 200 ms) its non-blocking socket is drained and only the processes that forked
 * or exec'ed are looked at — else a walk of /proc every `pollMs`. Either way a new process's maps
 * are read at once and re-read while it is young (< {@link YOUNG_MS}; at doubling intervals), so
 * the dynamic loader mapping the target library after the exec is seen, and every process is rechecked
 * every `rescanMs` (default 5 s: a library dlopen'ed later, a patch removed by hand, lost events).
 *
 * Removal order: when a withdrawn patch has other patches stacked above it on a function, those
 * are removed first (top of the stack first); a stored one among them is applied again on the next
 * cycle.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { HotpatchError } from '../errors.js';
import { listPatches, RECORD_MAPS_PATH, type ProcessPatches } from '../patch/engine/index.js';
import { applyPackage, loadPackage, mapBounded, recoverProcesses, removeFromProcesses, type LoadedPackage, type ProcessResult } from '../patch/updater/index.js';
import type { TrustOptions } from '../patch/trust/index.js';
import { openProcess } from '../process/index.js';
import { readStore, storeDir, type StoreContents, type StoredPackage } from '../store/index.js';
import { AgentMetrics } from './metrics.js';
import { openProcConnector, type ProcConnector, type ProcEvents } from './proc-connector.js';
import { agentStatusFile, buildStatus, writeAgentStatus, type AgentAttempt, type FleetStatus } from './status.js';

/** A process younger than this has its maps re-read now and then (ms). */
export const YOUNG_MS = 3000;
/** Codes that mean "try again soon": the target is busy, not broken. */
export const PENDING_CODES: ReadonlySet<string> = new Set(['TARGET_BUSY', 'TARGET_NEVER_LEAVES', 'PROCESS_LOCKED', 'RECORD_INCOMPLETE']);

/** One JSON log line. */
export type AgentLogEntry = Record<string, unknown> & { event: string };

/** Options of {@link Agent}. */
export interface AgentOptions extends TrustOptions {
  storeDir?: string;
  /**
   * How new processes are found: 'auto' (default) = the netlink process connector when available,
   * else /proc polling; 'poll' = always poll.
   */
  discovery?: 'auto' | 'poll';
  /** Interval of the discovery loop (ms, default 200): /proc walk, or connector drain. */
  pollMs?: number;
  /** Full recheck interval (ms, default 5000). */
  rescanMs?: number;
  /** How long one engine attempt waits for a busy function (ms, default 1000); then back-off. */
  timeoutMs?: number;
  /** Longest back-off between retries of one process (ms, default 60000). */
  maxBackoffMs?: number;
  /** Operations in flight at once (default 4). */
  concurrency?: number;
  /** Where the agent publishes its status for `hotpatch status` ('' = nowhere; default /run/hotpatch/agent-status.json). */
  statusFile?: string;
  /** Where each action is logged (default: one JSON line on stdout). */
  log?: (entry: AgentLogEntry) => void;
}

interface KnownProcess {
  /** Start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused PID apart. */
  start: string;
  /** Boot-relative start (ms; of the last exec when the connector reported one). */
  startMs: number;
  /** While young: when its maps are read next (boot-relative ms; the gaps double with its age). */
  nextLookMs: number;
  /** Whether its maps name a stored target or a patch record. */
  interesting: boolean;
  mapsKey: string;
  exe: string;
}

interface ProcessView {
  pid: number;
  exe: string;
  applied: Set<string>;
  /** Stored patch ids whose target build this process maps. */
  matches: Set<string>;
}

const CLK_TCK = 100;

/** Time since boot (ms): /proc/uptime read once per full walk, the monotonic clock in between. */
const uptime = { base: 0, at: -Infinity };
function uptimeMs(fresh: boolean): number {
  if (fresh || performance.now() - uptime.at > 60_000) {
    uptime.base = Number(readFileSync('/proc/uptime', 'latin1').split(' ')[0]) * 1000;
    uptime.at = performance.now();
  }
  return uptime.base + (performance.now() - uptime.at);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done); // one listener per sleep would pile up
      res();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** The agent. `run()` until the signal aborts; `cycle()` is one reconciliation (tests call it). */
export class Agent {
  readonly metrics = new AgentMetrics();
  readonly startedAt = new Date().toISOString();
  private readonly o: Required<Pick<AgentOptions, 'pollMs' | 'rescanMs' | 'timeoutMs' | 'maxBackoffMs' | 'concurrency'>>;
  private readonly log: (e: AgentLogEntry) => void;
  private readonly dir: string;
  private store: StoreContents | null = null;
  private storeStamp = '';
  private lastRescan = 0;
  private readonly known = new Map<number, KnownProcess>();
  private readonly views = new Map<number, ProcessView>();
  private readonly attempts = new Map<string, AgentAttempt>();
  private status: FleetStatus | null = null;
  private invalidLogged = new Set<string>();
  private lastPublished = '';
  private lastPublishedStatus: FleetStatus | null = null;
  private lastPublishedAt = 0;

  constructor(private readonly options: AgentOptions = {}) {
    this.o = {
      pollMs: options.pollMs ?? 200, rescanMs: options.rescanMs ?? 5000, timeoutMs: options.timeoutMs ?? 1000,
      maxBackoffMs: options.maxBackoffMs ?? 60_000, concurrency: options.concurrency ?? 4,
    };
    this.log = options.log ?? ((e) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`));
    this.dir = storeDir(options.storeDir);
  }

  /** The agent's view (the shape of `hotpatch status --json`). */
  snapshot(): FleetStatus {
    if (!this.status) this.status = this.computeStatus();
    return this.status;
  }

  /** Runs cycles until `signal` aborts. `onReady` is called after the first complete cycle. */
  async run(signal: AbortSignal, onReady?: () => void): Promise<void> {
    let connector: ProcConnector | undefined;
    let reason = 'disabled (--discovery poll)';
    if (this.options.discovery !== 'poll') {
      try {
        connector = await openProcConnector();
      } catch (e) {
        reason = (e as Error).message;
      }
    }
    this.log({ event: 'start', store: this.dir, pid: process.pid, discovery: connector ? 'netlink' : 'poll', pollMs: this.o.pollMs, ...(connector ? {} : { reason }) });
    let first = true;
    try {
      while (!signal.aborted) {
        try {
          // The first cycle walks /proc in any case; then the connector says what is new.
          await this.cycle(connector && !first ? connector.drain() : undefined);
          this.publish();
        } catch (e) {
          this.log({ event: 'error', code: (e as { code?: string }).code ?? 'INTERNAL', reason: (e as Error).message });
        }
        if (first) {
          first = false;
          this.log({ event: 'ready', patches: this.store?.packages.length ?? 0, processes: this.views.size });
          onReady?.();
        }
        await sleep(this.o.pollMs, signal);
      }
    } finally {
      connector?.close();
    }
    this.log({ event: 'stop' });
  }

  /** Writes the status file when the status changed, and at least every 5 s (freshness). */
  private publish(): void {
    const file = this.options.statusFile ?? agentStatusFile();
    if (file === '') return;
    const s = this.snapshot();
    if (s === this.lastPublishedStatus && Date.now() - this.lastPublishedAt < 5000) return; // an idle cycle
    this.lastPublishedStatus = s;
    const key = JSON.stringify({ ...s, agent: null, attempts: [...this.attempts.values()].map((a) => [a.pid, a.patchId, a.state, a.attempts]) });
    if (key === this.lastPublished && Date.now() - this.lastPublishedAt < 5000) return;
    try {
      writeAgentStatus(file, s, [...this.attempts.values()]);
      this.lastPublished = key;
      this.lastPublishedAt = Date.now();
    } catch (e) {
      this.log({ event: 'error', code: 'STATUS_WRITE', reason: `cannot write ${file}: ${(e as Error).message}` });
      this.lastPublishedAt = Date.now();
    }
  }

  private storeChanged(now: number): boolean {
    let stamp = '';
    for (const d of [this.dir, `${this.dir}/withdrawn`]) {
      try {
        const s = statSync(d);
        stamp += `${s.mtimeMs}:${s.ino};`;
      } catch {
        stamp += '-;';
      }
    }
    const rescan = now - this.lastRescan >= this.o.rescanMs;
    if (stamp === this.storeStamp && this.store && !rescan) return false;
    this.storeStamp = stamp;
    const before = this.store ? this.store.packages.map((p) => p.sha256).join() + this.store.withdrawn.map((w) => w.id).join() : null;
    this.store = readStore({ ...this.options, dir: this.dir });
    for (const bad of this.store.invalid) {
      const k = `${bad.file}:${bad.code}`;
      if (!this.invalidLogged.has(k)) {
        this.invalidLogged.add(k);
        this.log({ event: 'store-invalid', file: bad.file, code: bad.code, reason: bad.reason });
      }
    }
    const after = this.store.packages.map((p) => p.sha256).join() + this.store.withdrawn.map((w) => w.id).join();
    if (before !== after) this.log({ event: 'store', patches: this.store.packages.map((p) => p.id), withdrawn: this.store.withdrawn.map((w) => w.id) });
    return before !== after;
  }

  /**
   * One reconciliation: read the store if it changed, find processes, apply / remove / retry.
   * With `events` (from the process connector) only the processes named there, young ones and
   * those with a retry due are looked at, unless a full walk of /proc is due anyway (rescan,
   * store change, lost events); without, /proc is walked.
   */
  async cycle(events?: ProcEvents): Promise<void> {
    const now = Date.now();
    const storeChanged = this.storeChanged(now);
    const rescan = now - this.lastRescan >= this.o.rescanMs;
    if (rescan) this.lastRescan = now;
    const store = this.store!;
    const names = new Set<string>(store.packages.map((p) => `/${p.pkg.plan.target.name}`));
    const full = !events || events.overflow || rescan || storeChanged;
    const up = uptimeMs(full);
    const due = new Set<number>();
    if (full) {
      const seen = new Set<number>();
      for (const e of readdirSync('/proc')) {
        if (!/^\d+$/.test(e)) continue;
        const pid = Number(e);
        if (pid === process.pid) continue;
        seen.add(pid);
        this.examine(pid, up, names, rescan || storeChanged, due);
      }
      for (const pid of [...this.known.keys()]) if (!seen.has(pid)) this.forget(pid);
    } else {
      for (const pid of events.exited) this.forget(pid);
      const look = new Set(events.started.filter((pid) => pid !== process.pid));
      for (const pid of look) {
        const k = this.known.get(pid);
        if (k) {
          k.startMs = up; // an exec: a new image, young again
          k.nextLookMs = 0;
        }
      }
      for (const [pid, k] of this.known) if (up - k.startMs < YOUNG_MS) look.add(pid);
      for (const pid of look) if (!this.examine(pid, up, names, false, due)) this.forget(pid);
    }
    let retries = false;
    for (const [key, a] of this.attempts) {
      if (a.nextAt <= now) {
        due.add(Number(key.split(':')[0]));
        retries = true;
      }
    }
    this.metrics.cycles++;
    if (due.size > 0) {
      const loaded = new Map<string, LoadedPackage | Error>();
      await mapBounded([...due].sort((a, b) => a - b), this.o.concurrency, (pid) => this.reconcile(pid, store, loaded));
    }
    // Nothing looked at and nothing changed: the status stands (keeps an idle agent idle).
    if (!full && due.size === 0 && !retries && this.status && events.exited.length === 0) return;
    this.metrics.processesWatched = this.views.size;
    this.status = this.computeStatus();
    for (const p of this.status.patches) this.metrics.perPatch.set(p.id, { patched: p.counts.applied, pending: p.counts.pending, failed: p.counts.failed });
    for (const id of [...this.metrics.perPatch.keys()]) if (!this.status.patches.some((p) => p.id === id)) this.metrics.perPatch.delete(id);
  }

  /**
   * Reads what is needed of /proc/PID (stat once, maps while young or when `recheck`) and adds it
   * to `due` when it maps a stored target or a patch record it did not before. False when the
   * process is gone or is a kernel thread.
   */
  private examine(pid: number, up: number, names: ReadonlySet<string>, recheck: boolean, due: Set<number>): boolean {
    let k = this.known.get(pid);
    let fresh = false;
    if (!k) {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if ((Number(fields[6]) & 0x00200000) !== 0) return false; // PF_KTHREAD: kernel thread
        const start = fields[19]!;
        k = { start, startMs: (Number(start) / CLK_TCK) * 1000, nextLookMs: 0, interesting: false, mapsKey: '', exe: '' };
        this.known.set(pid, k);
        fresh = true;
      } catch {
        return false;
      }
    }
    const age = up - k.startMs;
    const look = age < YOUNG_MS && up >= k.nextLookMs;
    if (!fresh && !look && !recheck) return true;
    // The loader maps the libraries right after the exec, so the first look nearly always sees
    // them; later looks (a dlopen soon after start) thin out: at about twice the age each time.
    k.nextLookMs = up + Math.max(this.o.pollMs, age);
    let maps: string;
    try {
      maps = readFileSync(`/proc/${pid}/maps`, 'latin1');
    } catch {
      return false;
    }
    const hits: string[] = [];
    for (const n of names) if (maps.includes(n)) hits.push(n);
    const hasRecord = maps.includes(RECORD_MAPS_PATH);
    const key = `${hits.join(',')}|${hasRecord}`;
    const interesting = hits.length > 0 || hasRecord;
    if (interesting && (fresh || key !== k.mapsKey || recheck)) due.add(pid);
    k.interesting = interesting;
    k.mapsKey = key;
    return true;
  }

  private forget(pid: number): void {
    this.known.delete(pid);
    this.views.delete(pid);
    for (const k of [...this.attempts.keys()]) if (k.startsWith(`${pid}:`)) this.attempts.delete(k);
  }

  private loadedFor(sp: StoredPackage, cache: Map<string, LoadedPackage | Error>): LoadedPackage | Error {
    let l = cache.get(sp.id);
    if (!l) {
      try {
        // Read and verified again right before use: a file tampered with since the store read is refused.
        const x = loadPackage(sp.path, this.options);
        if (x.pkg.id !== sp.id || x.packageHash !== sp.sha256) throw new HotpatchError('STORE_FILE_INVALID', `${sp.path} changed since it was read; will read the store again`);
        l = x;
      } catch (e) {
        l = e as Error;
        this.storeStamp = ''; // force a re-read
      }
      cache.set(sp.id, l);
    }
    return l;
  }

  private setAttempt(pid: number, id: string, action: 'apply' | 'remove', r: { code?: string; reason?: string }): void {
    const key = `${pid}:${id}`;
    const prev = this.attempts.get(key);
    const n = (prev?.attempts ?? 0) + 1;
    const state = r.code !== undefined && PENDING_CODES.has(r.code) ? 'pending' : 'failed';
    const base = state === 'pending' ? 250 : 1000;
    const delay = Math.min(this.o.maxBackoffMs, base * 2 ** Math.min(n - 1, 20)) * (0.75 + Math.random() * 0.5);
    this.attempts.set(key, {
      pid, patchId: id, action, state, code: r.code ?? 'INTERNAL', reason: r.reason ?? '', attempts: n,
      since: prev?.since ?? new Date().toISOString(), nextAt: Date.now() + delay, nextRetryAt: new Date(Date.now() + delay).toISOString(),
    });
  }

  private async reconcile(pid: number, store: StoreContents, cache: Map<string, LoadedPackage | Error>): Promise<void> {
    let listed: ProcessPatches;
    let buildIds: Set<string>;
    try {
      listed = listPatches(pid);
      const proc = openProcess(pid);
      try {
        buildIds = new Set(proc.enumerateModules().map((m) => m.buildId).filter((b): b is string => b !== undefined));
      } finally {
        proc.close();
      }
    } catch {
      this.forget(pid);
      return;
    }
    const exe = listed.exe;
    // An interrupted apply/remove of one of its patches (e.g. a previous agent was killed mid-way):
    // finish or undo it. One of a patch it does not manage (a person's `hotpatch apply`) is left
    // to `hotpatch recover`; nothing is done to that process meanwhile.
    const interrupted = [...(listed.transaction ? [listed.transaction.patchId] : []), ...listed.patches.filter((p) => p.state === 'pending' || p.state === 'removing').map((p) => p.id)];
    if (interrupted.length > 0) {
      const ours = new Set([...store.packages.map((p) => p.id), ...store.withdrawn.map((w) => w.id)]);
      if (!interrupted.some((id) => ours.has(id))) {
        this.views.delete(pid);
        return;
      }
      const rep = await recoverProcesses({ pids: [pid], lockWaitMs: 0 });
      for (const r of rep.results) this.log({ event: 'recover', pid, exe, status: r.status, ...(r.actions ? { actions: r.actions } : {}), ...(r.code ? { code: r.code, reason: r.reason } : {}) });
      try {
        listed = listPatches(pid);
      } catch {
        this.forget(pid);
        return;
      }
      if (listed.transaction) return; // someone else is working on it: next cycle
    }
    const live = listed.patches.filter((p) => p.state === 'applied');
    const withdrawn = new Set(store.withdrawn.map((w) => w.id));
    const matches = store.packages.filter((p) => buildIds.has(p.pkg.plan.target.buildId));
    const view: ProcessView = { pid, exe, applied: new Set(live.map((p) => p.id)), matches: new Set(matches.map((p) => p.id)) };
    if (matches.length === 0 && !live.some((p) => withdrawn.has(p.id))) {
      this.views.delete(pid);
      return;
    }
    this.views.set(pid, view);

    // Withdrawals, respecting the stacks: bottom-up closure of what has to come off, then top first.
    const off: typeof live = [];
    const offAddrs = new Set<bigint>();
    for (const p of live) {
      if (withdrawn.has(p.id) || p.sites.some((s) => offAddrs.has(s.address))) {
        off.push(p);
        for (const s of p.sites) offAddrs.add(s.address);
      }
    }
    for (const p of off.reverse()) {
      const key = `${pid}:${p.id}`;
      const a = this.attempts.get(key);
      if (a && a.nextAt > Date.now()) return; // keep the order: nothing below it before it is off
      const t0 = performance.now();
      const rep = await removeFromProcesses(p.id, { pids: [pid], timeoutMs: this.o.timeoutMs, lockWaitMs: 0 });
      const r = rep.results[0]!;
      const secs = (performance.now() - t0) / 1000;
      this.metrics.countAction('remove', r.status);
      this.logResult('remove', r, secs, withdrawn.has(p.id) ? 'withdrawn' : 'stacked above a withdrawn patch');
      if (r.status === 'removed') {
        this.metrics.remove.observe(secs);
        this.attempts.delete(key);
        view.applied.delete(p.id);
      } else if (r.status === 'skipped' && r.code !== undefined && /PROCESS_NOT_FOUND|PROCESS_ZOMBIE/.test(r.code)) {
        this.forget(pid);
        return;
      } else {
        this.setAttempt(pid, p.id, 'remove', r);
        return;
      }
    }
    if (withdrawn.size > 0 && [...view.applied].some((id) => withdrawn.has(id))) return;

    // Applies, in store order (a later package may stack on an earlier one).
    for (const sp of matches) {
      if (view.applied.has(sp.id)) {
        this.attempts.delete(`${pid}:${sp.id}`);
        continue;
      }
      const key = `${pid}:${sp.id}`;
      const a = this.attempts.get(key);
      if (a && a.nextAt > Date.now()) continue;
      const loaded = this.loadedFor(sp, cache);
      if (loaded instanceof Error) {
        this.setAttempt(pid, sp.id, 'apply', { code: (loaded as { code?: string }).code ?? 'STORE_FILE_INVALID', reason: loaded.message });
        continue;
      }
      const t0 = performance.now();
      const rep = await applyPackage(loaded, { pids: [pid], timeoutMs: this.o.timeoutMs, lockWaitMs: 0 });
      const r = rep.results.find((x) => x.pid === pid) ?? { pid, status: 'failed' as const, patchId: sp.id, pauseMicros: 0, code: 'INTERNAL', reason: 'no result' };
      const secs = (performance.now() - t0) / 1000;
      this.metrics.countAction('apply', r.status);
      if (r.status === 'patched' || r.status === 'already-patched') {
        if (r.status === 'patched') this.metrics.apply.observe(secs);
        this.logResult('apply', r, secs);
        this.attempts.delete(key);
        view.applied.add(sp.id);
      } else if (r.status === 'skipped') {
        this.logResult('apply', r, secs);
        this.forget(pid);
        return;
      } else {
        const prev = this.attempts.get(key);
        // Log a repeated identical failure only at its first occurrence and then every 10th.
        if (!prev || prev.code !== r.code || (prev.attempts + 1) % 10 === 0) this.logResult('apply', r, secs);
        this.setAttempt(pid, sp.id, 'apply', r);
      }
    }
  }

  private logResult(action: string, r: ProcessResult, secs: number, why?: string): void {
    const entry: AgentLogEntry = {
      event: action, patch: r.patchId, pid: r.pid, status: r.status, ms: Math.round(secs * 10000) / 10,
      ...(r.exe ? { exe: r.exe } : {}), ...(r.pauseMicros ? { pauseMicros: Math.round(r.pauseMicros) } : {}),
      ...(r.code ? { code: r.code } : {}), ...(r.reason ? { reason: r.reason } : {}), ...(why ? { why } : {}),
    };
    if (r.status !== 'patched' && r.status !== 'removed' && r.status !== 'already-patched') {
      entry.state = r.code !== undefined && PENDING_CODES.has(r.code) ? 'pending' : r.status === 'skipped' ? 'gone' : 'failed';
    }
    this.log(entry);
  }

  private computeStatus(): FleetStatus {
    const store = this.store ?? { dir: this.dir, packages: [], invalid: [], withdrawn: [] };
    const procs = [...this.views.values()].map((v) => ({ pid: v.pid, exe: v.exe, applied: v.applied, matches: v.matches }));
    return buildStatus(store, procs, [...this.attempts.values()], { pid: process.pid, startedAt: this.startedAt, updatedAt: new Date().toISOString() });
  }
}
