/**
 * The guard service: checks (process, structure) items at randomised times, follows processes that
 * start and exit, re-checks a finding before acting, and reacts as the policy says.
 *
 * Scheduling and its bound: time is cut into cycles of `interval`. At the start of a cycle every
 * item of every protected process is given a uniformly random time inside the cycle, and the items
 * run in that (random) order. A cycle ends when its last item ran. Hence any item is checked at
 * least once every 2 × interval (+ the time the checks themselves take): checked at the very start
 * of one cycle, it is checked again at the latest at the very end of the next. Processes that
 * appear during a cycle get their items spread over the rest of that cycle.
 *
 * Cheap signals first: inside that bound, a module mapping whose smaps shows no private
 * (copy-on-write) page is compared byte for byte at most once per `fullInterval`
 * (default 6 × interval); a mapping with a written page is compared at every check.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { ProcessError } from '../errors.js';
import { enumerateProcessIds, openProcess, readProcStat } from '../process/index.js';
import { performAction, type ActionOutcome } from './actions.js';
import { CodeWriteSignal, DEFAULT_SIGNAL_INTERVAL_MS } from './code-signal.js';
import { DEFAULT_FREEZE_TIMEOUT_MS, ProcessContext, VerifierCaches, type CheckOptions } from './context.js';
import { ALL_STRUCTURES, findingKey, formatFinding, type Finding, type StructureCode } from './finding.js';
import type { LogLevel } from './log.js';
import { levelOfSeverity } from './log.js';
import { GuardMetrics } from './metrics.js';
import { actionFor, DEFAULT_INTERVAL_MS, defaultPolicy, isAllowed, matchesAny, shouldAct, type GuardAction, type Policy, type ProcessIdentity } from './policy.js';
import { GuardState } from './state.js';
import { loadVerifierTrust, runChecks } from './verify.js';

export { DEFAULT_INTERVAL_MS } from './policy.js';

/** What the guard protects. With none of these, the policy's `protect` list decides. */
export interface GuardSelection {
  pids?: number[];
  all?: boolean;
  /** Executable paths or build-ids (hex) of the main executable. */
  exe?: string[];
}

/** Events the guard emits (one JSON line each in the CLI). */
export type GuardEvent =
  | { type: 'finding'; time: string; finding: Finding; action: GuardAction; outcome: ActionOutcome }
  | { type: 'resolved'; time: string; pid: number; code: StructureCode; key: string }
  | { type: 'process'; time: string; event: 'watch' | 'exit' | 'unwatch'; pid: number; exe: string }
  | { type: 'error'; time: string; kind: 'check' | 'action'; pid: number; code: StructureCode; message: string }
  | { type: 'cycle'; time: string; seconds: number; items: number; processes: number };

export interface GuardOptions extends GuardSelection {
  intervalMs?: number;
  /** Longest time a clean (no private pages) mapping may go without a byte comparison. */
  fullIntervalMs?: number;
  /** Overrides the policy's default action. */
  action?: GuardAction;
  policy?: Policy;
  state?: GuardState;
  /** Trusted signer public key files (see VerifyOptions.trustFiles). */
  trustFiles?: string[];
  /** @deprecated the old name of `trustFiles` (still honoured). */
  trustedKeys?: string[];
  /** Structure 7 stops targets briefly with ptrace; false skips it. Default true. */
  allowPtrace?: boolean;
  /** How long a target may take to stop for structure 7 and for restores (ms, default 2000). */
  freezeTimeoutMs?: number;
  /** Delay before re-checking a new finding (ms, default 200). */
  recheckDelayMs?: number;
  /** How often to look for new and exited processes (ms, default 1000). */
  rescanMs?: number;
  structures?: readonly StructureCode[];
  onEvent?: (e: GuardEvent) => void;
  /** Called after each check of a cycle: checks done and queued in this cycle, processes watched. */
  onCheck?: (done: number, total: number, processes: number) => void;
  /** Human-readable log lines, with the level they are logged at (log.ts). */
  log?: (line: string, level: LogLevel) => void;
  metrics?: GuardMetrics;
  caches?: VerifierCaches;
  /**
   * How often (ms) the cheap code-write signal (code-signal.ts) is polled for every watched
   * process; a change triggers an immediate check of its code (0) and executable memory (5, 6).
   * Default 500; 0 disables it.
   */
  signalIntervalMs?: number;
  /** Random source in [0, 1) (tests pass a seeded one). */
  random?: () => number;
}

interface Watched {
  pid: number;
  startTime: bigint;
  identity: ProcessIdentity;
  /** Reported findings per structure, by findingKey. */
  known: Map<StructureCode, Set<string>>;
  lastChecked: Map<StructureCode, number>;
}

interface Item {
  key: string;
  code: StructureCode;
  at: number;
}

function identityOf(pid: number): ProcessIdentity | undefined {
  let exe = '';
  try {
    exe = readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
  } catch {
    return undefined;
  }
  let comm = '';
  try {
    comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined;
  }
  return { exe, comm };
}

/** The long-running guard. `start()` runs the loop until `stop()`. */
export class Guard {
  readonly metrics: GuardMetrics;
  #policy: Policy;
  readonly state: GuardState;
  readonly intervalMs: number;
  readonly #opts: GuardOptions;
  readonly #check: CheckOptions;
  readonly #watched = new Map<string, Watched>();
  readonly #rejected = new Set<string>();
  readonly #random: () => number;
  readonly #structures: StructureCode[];
  #running = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #queue: Item[] = [];
  /** The continuous cheap signal against hooks that exist only between two checks. */
  readonly signal = new CodeWriteSignal();
  readonly #signalMs: number;
  #nextSignal = 0;

  constructor(options: GuardOptions) {
    this.#opts = options;
    this.#policy = options.policy ?? defaultPolicy();
    this.state = options.state ?? new GuardState(null, false);
    this.intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
    this.metrics = options.metrics ?? new GuardMetrics();
    this.#random = options.random ?? Math.random;
    this.#structures = [...(options.structures ?? ALL_STRUCTURES)];
    this.#signalMs = options.signalIntervalMs ?? DEFAULT_SIGNAL_INTERVAL_MS;
    this.#check = {
      policy: this.#policy,
      state: this.state,
      caches: options.caches ?? new VerifierCaches(),
      cleanCacheMs: options.fullIntervalMs ?? 6 * this.intervalMs,
      trust: loadVerifierTrust({ ...options, policy: this.policy }),
      allowPtrace: options.allowPtrace ?? true,
      freezeTimeoutMs: options.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS,
    };
  }

  /** The policy in force (replaced by `reloadPolicy`). */
  get policy(): Policy {
    return this.#policy;
  }

  /**
   * Puts a new policy in force from the next check on (SIGHUP in the CLI): trusted signers are
   * loaded again (a key file that is missing or unparsable throws and the old policy stays), and
   * every process is selected again (a process the new policy no longer selects is dropped, one it
   * now selects is picked up by the next rescan).
   */
  reloadPolicy(policy: Policy, trustedKeys: string[] = this.#opts.trustedKeys ?? []): void {
    const trust = loadVerifierTrust({ trustedKeys, policy });
    this.#policy = policy;
    this.#check.policy = policy;
    this.#check.trust = trust;
    this.#rejected.clear();
    for (const [key, w] of this.#watched) {
      if (this.#selects(w.pid, w.identity)) continue;
      this.#watched.delete(key);
      this.signal.forget(key);
      this.#emit({ type: 'process', time: new Date().toISOString(), event: 'unwatch', pid: w.pid, exe: w.identity.exe });
      this.#log(`guard: no longer watching ${w.pid} (${w.identity.exe}): the new policy does not select it`);
    }
    this.#queue = this.#queue.filter((i) => this.#watched.has(i.key));
    this.metrics.processesWatched = this.#watched.size;
  }

  get running(): boolean {
    return this.#running;
  }

  /** Pids currently protected. */
  get watchedPids(): number[] {
    return [...this.#watched.values()].map((w) => w.pid);
  }

  #emit(e: GuardEvent): void {
    this.#opts.onEvent?.(e);
  }

  #log(line: string, level: LogLevel = 'info'): void {
    this.#opts.log?.(line, level);
  }

  /** Whether a (new) process is to be protected. */
  #selects(pid: number, id: ProcessIdentity): boolean {
    if (this.policy.ignore.length > 0 && matchesAny(this.policy.ignore, id)) return false;
    const o = this.#opts;
    if (o.all) return true;
    if (o.pids !== undefined && o.pids.length > 0) return o.pids.includes(pid);
    if (o.exe !== undefined && o.exe.length > 0) {
      if (o.exe.includes(id.exe)) return true;
      const ids = o.exe.filter((e) => /^[0-9a-f]{16,}$/i.test(e)).map((e) => e.toLowerCase());
      if (ids.length === 0) return false;
      try {
        const p = openProcess(pid);
        try {
          const bid = p.enumerateModules().find((m) => m.kind === 'executable')?.buildId;
          if (bid !== undefined) id.buildId = bid;
          return bid !== undefined && ids.includes(bid);
        } finally {
          p.close();
        }
      } catch {
        return false;
      }
    }
    return this.policy.protect.length > 0 && matchesAny(this.policy.protect, id);
  }

  /** Finds new and exited processes. New ones get their items spread over the rest of the cycle. */
  rescan(cycleEnd: number): void {
    const live = new Set<string>();
    const pids = this.#opts.pids !== undefined && this.#opts.pids.length > 0 && !this.#opts.all ? this.#opts.pids : enumerateProcessIds();
    for (const pid of pids) {
      if (pid === process.pid) continue;
      let startTime: bigint;
      try {
        const st = readProcStat(pid);
        if ((st.flags & 0x00200000) !== 0 || st.state === 'Z') continue; // kernel thread, zombie
        startTime = st.startTime;
      } catch {
        continue;
      }
      const key = `${pid}:${startTime}`;
      live.add(key);
      if (this.#watched.has(key) || this.#rejected.has(key)) continue;
      const id = identityOf(pid);
      if (id === undefined || !this.#selects(pid, id)) {
        this.#rejected.add(key);
        continue;
      }
      const w: Watched = { pid, startTime, identity: id, known: new Map(), lastChecked: new Map() };
      this.#watched.set(key, w);
      this.#emit({ type: 'process', time: new Date().toISOString(), event: 'watch', pid, exe: id.exe });
      this.#log(`guard: watching ${pid} (${id.exe})`);
      const now = Date.now();
      const span = Math.max(0, cycleEnd - now);
      for (const code of this.#structures) this.#queue.push({ key, code, at: now + this.#random() * span });
      this.#queue.sort((a, b) => a.at - b.at);
    }
    for (const [key, w] of this.#watched) {
      if (live.has(key)) continue;
      this.#watched.delete(key);
      this.signal.forget(key);
      this.#emit({ type: 'process', time: new Date().toISOString(), event: 'exit', pid: w.pid, exe: w.identity.exe });
      this.#log(`guard: ${w.pid} (${w.identity.exe}) exited`);
    }
    for (const key of this.#rejected) if (!live.has(key)) this.#rejected.delete(key);
    this.state.pruneBaselines(live);
    this.metrics.processesWatched = this.#watched.size;
  }

  /** Runs one structure check on one process; undefined when the process is gone. */
  async #run(w: Watched, code: StructureCode): Promise<Finding[] | undefined> {
    let ctx: ProcessContext;
    try {
      ctx = new ProcessContext(w.pid, this.#check);
    } catch {
      return undefined;
    }
    try {
      if (ctx.proc.startTime !== w.startTime) return undefined;
      const found = await runChecks(ctx, [code]);
      this.metrics.checksTotal++;
      this.metrics.bytesVerifiedTotal += ctx.bytesVerified;
      if (!ctx.proc.isAlive()) return undefined;
      return found.filter((f) => !isAllowed(this.policy, f, w.identity));
    } catch (e) {
      if (e instanceof ProcessError) return undefined;
      throw e;
    } finally {
      ctx.close();
    }
  }

  /** Checks one item: new findings are re-checked, then reported and acted on. */
  async checkItem(w: Watched, code: StructureCode): Promise<void> {
    const now = Date.now();
    const last = w.lastChecked.get(code);
    if (last !== undefined) this.metrics.maxItemAgeSeconds = Math.max(this.metrics.maxItemAgeSeconds, (now - last) / 1000);
    w.lastChecked.set(code, now);
    const found = await this.#run(w, code);
    if (found === undefined) return;
    const known = w.known.get(code) ?? new Set<string>();
    w.known.set(code, known);
    const keys = new Map(found.map((f) => [findingKey(f), f]));
    for (const k of [...known]) {
      if (!keys.has(k)) {
        known.delete(k);
        this.#emit({ type: 'resolved', time: new Date().toISOString(), pid: w.pid, code, key: k });
      }
    }
    const fresh = [...keys].filter(([k]) => !known.has(k));
    if (fresh.length === 0) return;
    // Re-check before acting: a transient state (a dlopen in progress, a write being undone) must
    // not trigger an action.
    await new Promise((r) => setTimeout(r, this.#opts.recheckDelayMs ?? 200));
    const again = await this.#run(w, code);
    if (again === undefined) return;
    const confirmed = new Map(again.map((f) => [findingKey(f), f]));
    for (const [k] of fresh) {
      const f = confirmed.get(k);
      if (f === undefined) continue;
      known.add(k);
      const action = shouldAct(this.policy, f) ? (this.#opts.action ?? actionFor(this.policy, code)) : 'log';
      const outcome = await performAction(action, f, { state: this.state, trustConfigured: this.#check.trust.keys.length > 0, freezeTimeoutMs: this.#check.freezeTimeoutMs });
      this.metrics.countFinding(code, f.severity);
      this.metrics.countAction(outcome.performed, outcome.ok);
      if (!outcome.ok) this.metrics.countError('action');
      this.#emit({ type: 'finding', time: new Date().toISOString(), finding: f, action, outcome });
      this.#log(`guard: ${formatFinding(f)} [action ${outcome.performed}${outcome.ok ? '' : ' FAILED'}: ${outcome.detail}]`, levelOfSeverity(f.severity));
      if (outcome.performed === 'restore' && outcome.ok) known.delete(k); // re-verified by the next check
    }
  }

  /** `checkItem`, but an error is counted and logged: one failing check must not end the service. */
  async #safeCheck(w: Watched, code: StructureCode): Promise<void> {
    try {
      await this.checkItem(w, code);
    } catch (e) {
      this.metrics.countError('check');
      const message = e instanceof Error ? e.message : String(e);
      this.#emit({ type: 'error', time: new Date().toISOString(), kind: 'check', pid: w.pid, code, message });
      this.#log(`guard: check of structure ${code} of ${w.pid} failed: ${message}`, 'err');
    }
  }

  async #sleepUntil(t: number): Promise<void> {
    const ms = t - Date.now();
    if (ms <= 0 || !this.#running) return;
    await new Promise<void>((res) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        res();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        res();
      };
    });
  }

  /**
   * Polls the code-write signal of every watched process; a process whose signal changed gets its
   * code (0) and, when its executable mappings changed, structures 5 and 6 checked now. The
   * baseline is re-taken after those checks (so after a restore the guard itself wrote).
   */
  async #pollSignal(): Promise<void> {
    for (const [key, w] of [...this.#watched]) {
      if (!this.#running) return;
      const change = this.signal.poll(key, w.pid);
      if (change === null) continue;
      const codes = (change === 'mappings' ? [0, 5, 6] : [0]).filter((c) => this.#structures.includes(c as StructureCode)) as StructureCode[];
      for (const code of codes) await this.#safeCheck(w, code);
      this.signal.rebaseline(key, w.pid);
    }
  }

  /** Sleeps until `t`, polling the code-write signal on its own schedule meanwhile. */
  async #sleepPolling(t: number): Promise<void> {
    while (this.#running) {
      if (this.#signalMs <= 0) return this.#sleepUntil(t);
      if (Date.now() >= this.#nextSignal) {
        await this.#pollSignal();
        this.#nextSignal = Date.now() + this.#signalMs;
      }
      if (Date.now() >= t) return;
      await this.#sleepUntil(Math.min(t, this.#nextSignal));
    }
  }

  /** One full cycle over every item (randomised times and order). */
  async cycle(): Promise<void> {
    const start = Date.now();
    const end = start + this.intervalMs;
    this.#queue = [];
    this.rescan(end);
    // Items of processes already watched (rescan queued only new ones).
    const queued = new Set(this.#queue.map((i) => `${i.key}|${i.code}`));
    for (const key of this.#watched.keys()) {
      for (const code of this.#structures) if (!queued.has(`${key}|${code}`)) this.#queue.push({ key, code, at: start + this.#random() * this.intervalMs });
    }
    this.#queue.sort((a, b) => a.at - b.at);
    let items = 0;
    let nextScan = Date.now() + (this.#opts.rescanMs ?? 1000);
    while (this.#running && this.#queue.length > 0) {
      const item = this.#queue[0]!;
      const wait = Math.min(item.at, nextScan);
      await this.#sleepPolling(wait);
      if (!this.#running) break;
      if (Date.now() >= nextScan) {
        this.rescan(end);
        nextScan = Date.now() + (this.#opts.rescanMs ?? 1000);
        continue;
      }
      this.#queue.shift();
      const w = this.#watched.get(item.key);
      if (w === undefined) continue;
      await this.#safeCheck(w, item.code);
      items++;
      this.#opts.onCheck?.(items, items + this.#queue.length, this.#watched.size);
    }
    // A cycle lasts the whole interval even when its last item ran earlier (keeps the rate fixed).
    await this.#sleepPolling(end);
    if (!this.#running) return;
    const seconds = (Date.now() - start) / 1000;
    this.metrics.lastFullCycleSeconds = seconds;
    this.metrics.cyclesTotal++;
    this.state.save();
    this.#emit({ type: 'cycle', time: new Date().toISOString(), seconds, items, processes: this.#watched.size });
  }

  /** Starts the loop (returns at once). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = (async () => {
      while (this.#running) {
        const t = Date.now();
        await this.cycle();
        // Nothing to watch: do not spin; the next cycle rescans.
        if (this.#running && this.#watched.size === 0) await this.#sleepUntil(t + Math.min(this.intervalMs, this.#opts.rescanMs ?? 1000));
      }
    })();
  }

  /** Stops the loop after the current check and saves the state. */
  async stop(): Promise<void> {
    this.#running = false;
    this.#wake?.();
    await this.#loop;
    this.state.save();
  }
}
