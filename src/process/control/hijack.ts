/**
 * Process control that never stops more than one thread at a time (issue #10, zero-stall
 * patching): hijack one thread to run injected system calls while every other thread runs, and a
 * rolling check of which threads use some code ranges, one thread stopped at a time.
 *
 * hijackThread prefers a thread blocked in a system call (task state S, /proc/PID/task/TID/syscall
 * not `running`): it was not running anyway, and the kernel restarts its call after the thaw
 * (freeze.ts handles the restart, the frame and the signal mask exactly as in a full freeze).
 *
 * rollingThreadsUsing looks at each thread that is off its CPU without stopping it
 * (passive-check.ts: blocked in a system call or stopped, seen at rest through /proc), tries the
 * ones caught running once more, and stops each thread still running alone (seize, interrupt,
 * registers, stack words, detach); then it re-reads the task list and checks the threads that
 * appeared meanwhile, until none is new.
 * Why that is sound: the caller runs it only after every code path leading into `ranges` was
 * removed (entries switched away, nothing left that jumps or calls there). A thread found with
 * neither its rip (nor rip - 2 for a pending syscall restart) nor any stack word in a range can
 * therefore never enter a range later, so it does not matter that it runs on after its check and
 * that the threads are seen at different instants; a thread found inside keeps the range in use.
 * A thread created during the check starts from code outside the ranges for the same reason; it
 * is checked anyway (conservative, and it covers a thread created from inside a range).
 * The stack scan's own limits apply (stack-scan.ts: user-space coroutines, sigaltstack).
 */
import { readFileSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import { PROCESS_NOT_FOUND, PROCESS_ZOMBIE } from '../inspect/errors.js';
import type { Mapping } from '../inspect/procfs.js';
import { SYS_clock_nanosleep, SYS_nanosleep, SYS_restart_syscall } from '../ptrace/constants.js';
import { sleepMicros } from '../ptrace/tracee.js';
import { PROCESS_EXITED, PROCESS_FREEZE_TIMEOUT, PROCESS_INJECTION_FAILED } from './errors.js';
import { freezeProcess, type FreezeOptions, type FrozenProcess } from './freeze.js';
import { listTaskIds, readMappings, readStartTime, readStatusOrUndefined } from './procfs.js';
import { openProcessMemory, type ProcessMemory } from './memory.js';
import { checkWithoutStop } from './passive-check.js';
import { findThreadsUsing, type AddressRange, type RangeUse, type StackScanOptions } from './stack-scan.js';

/** Options of hijackThread. */
export type HijackOptions = Omit<FreezeOptions, 'threads'>;

/** Options of rollingThreadsUsing. */
export interface RollingCheckOptions extends Omit<FreezeOptions, 'threads'> {
  /** Upper bound on stack bytes read per thread (findThreadsUsing's maxStackBytes). */
  maxStackBytes?: number;
  /**
   * Task-list reads before giving up on threads that keep appearing (default 100): a process
   * creating threads faster than they are checked would otherwise keep the check going forever.
   * The threads left are counted in `threadsUnchecked`.
   */
  maxRounds?: number;
  /** Called after each thread was checked, with its stop in microseconds (0: seen at rest, not stopped). */
  onThreadChecked?: (tid: number, stopMicros: number) => void;
  /**
   * Stop the threads that are running (default true). false: a running thread is not checked but
   * counted in `threadsRunning` (a check that stops nothing; the caller treats it as a use).
   */
  stopRunning?: boolean;
  /**
   * With `stopRunning` false: how long (ms) threads found running keep being looked at again,
   * about every half millisecond, before they are left unchecked (default 0: two looks). A thread
   * that blocks now and then (a server between requests) is seen at rest within it.
   */
  patienceMs?: number;
}

/** What rollingThreadsUsing found. */
export interface RollingCheckResult {
  /** Per range (same index as `ranges`): some thread uses it (an `unscannable` thread counts for all). */
  inUse: boolean[];
  /** Every use found (findThreadsUsing's records; `tid` is the thread checked). */
  uses: RangeUse[];
  /** Threads checked, stopped or not (threads that exited before their turn are not counted). */
  threadsChecked: number;
  /** Of those, the threads seen at rest without a stop (passive-check.ts). */
  threadsNotStopped: number;
  /** Running threads left unchecked because `stopRunning` was false. */
  threadsRunning: number;
  /** Longest single-thread stop, first PTRACE_SEIZE to PTRACE_DETACH, in microseconds. */
  longestStopMicros: number;
  /** Task-list reads: 1 + the rounds that found threads created meanwhile. */
  rounds: number;
  /** New threads still listed when `maxRounds` was reached (0: every thread was checked). */
  threadsUnchecked: number;
}

/** pselect6, ppoll, epoll_pwait, rt_sigsuspend, io_pgetevents, epoll_pwait2: temporary signal mask (see freeze.ts). */
const TEMP_MASK_CALLS = new Set([270, 271, 281, 130, 333, 441]);
const TIMED_SLEEPS = new Set([SYS_nanosleep, SYS_clock_nanosleep, SYS_restart_syscall]);

function codeOf(e: unknown): string | undefined {
  return e instanceof ProcessError ? e.code : undefined;
}

/** The process `pid` started at `startTime` still exists (a zombie leader with live threads counts). */
function processAlive(pid: number, startTime: bigint): boolean {
  if (readStartTime(pid) !== startTime) return false;
  const st = readStatusOrUndefined(`/proc/${pid}/status`);
  return st !== undefined && ((st.state !== 'Z' && st.state !== 'X') || (st.threads ?? 1) > 1);
}

/**
 * Preference for hijacking thread `tid`, lower first; undefined = never (gone, zombie). Blocked in
 * a call the kernel restarts plainly (read, futex, poll...) first; blocked in a timed sleep or a
 * call with a temporary signal mask next (their injections have caveats, see freeze.ts); running
 * (stops within microseconds, in user space) next; uninterruptible sleep (D) last, as it may not
 * stop before the timeout.
 */
function hijackRank(pid: number, tid: number): number | undefined {
  let stat: string;
  let call: string;
  try {
    stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    call = readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').trim();
  } catch {
    return undefined;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return undefined;
  if (state === 'D') return 4;
  if (state === 'T' || state === 't') return 5;
  const nr = Number(call.split(' ')[0]);
  if (state !== 'S' || call === 'running' || !Number.isSafeInteger(nr) || nr < 0) return 2;
  return TIMED_SLEEPS.has(nr) || TEMP_MASK_CALLS.has(nr) ? 1 : 0;
}

/**
 * Stops one thread of process `pid` — preferably one blocked in a system call, see hijackRank —
 * and returns it as a FrozenProcess whose `threads` is that one thread; every other thread keeps
 * running. Injected system calls and calls (injectSyscall/injectCall) run on it; it has been
 * checked to take one (restore frame written). A thread that exits or cannot take an injection
 * is released and the next one tried. Always thaw() the result.
 *
 * Errors: those of freezeProcess (PROCESS_NOT_FOUND, PROCESS_ZOMBIE, PROCESS_EXITED...), and
 * PROCESS_INJECTION_FAILED or PROCESS_FREEZE_TIMEOUT when no thread could be used.
 */
export function hijackThread(pid: number, options: HijackOptions = {}): FrozenProcess {
  const startTime = readStartTime(pid);
  const tids = listTaskIds(pid) ?? [];
  const ranked = tids
    .map((tid) => ({ tid, rank: hijackRank(pid, tid) }))
    .filter((c): c is { tid: number; rank: number } => c.rank !== undefined)
    .sort((a, b) => a.rank - b.rank || a.tid - b.tid);
  // Nothing to rank (gone, zombie...): freezeProcess reports why.
  if (ranked.length === 0 || startTime === undefined) return freezeProcess(pid, { ...options, threads: [pid] });
  let last: unknown;
  for (const { tid } of ranked) {
    let fp: FrozenProcess;
    try {
      fp = freezeProcess(pid, { ...options, threads: [tid] });
    } catch (e) {
      const code = codeOf(e);
      if ((code === PROCESS_EXITED || code === PROCESS_FREEZE_TIMEOUT) && processAlive(pid, startTime)) {
        last = e;
        continue;
      }
      throw e;
    }
    try {
      fp.prepareInjection();
      return fp;
    } catch (e) {
      fp.thaw();
      const code = codeOf(e);
      if ((code === PROCESS_INJECTION_FAILED || code === PROCESS_EXITED) && processAlive(pid, startTime)) {
        last = e;
        continue;
      }
      throw e;
    }
  }
  if (!processAlive(pid, startTime)) throw new ProcessError(PROCESS_EXITED, `process ${pid} exited while a thread was being hijacked`);
  throw new ProcessError(
    codeOf(last) === PROCESS_FREEZE_TIMEOUT ? PROCESS_FREEZE_TIMEOUT : PROCESS_INJECTION_FAILED,
    `no thread of process ${pid} could be hijacked for an injected system call (${ranked.length} tried)` +
      (last instanceof Error ? `; last: ${last.message}` : ''),
    last === undefined ? undefined : { cause: last },
  );
}

/**
 * Which threads of `pid` use `ranges` (rip, rip - 2 of a pending restart, or a stack word in a
 * range), stopping no thread that is off its CPU and the running ones one at a time — never two
 * together. Sound only once nothing can enter the ranges any more (see the top of this file).
 * Threads that exit during the check are skipped; PROCESS_EXITED when the process exits, and
 * freezeProcess's errors for a pid that cannot be traced (PROCESS_NOT_FOUND, PROCESS_ZOMBIE,
 * PROCESS_ALREADY_TRACED...).
 */
export function rollingThreadsUsing(pid: number, ranges: readonly AddressRange[], options: RollingCheckOptions = {}): RollingCheckResult {
  for (const [i, r] of ranges.entries()) {
    if (r.end < r.start || r.start < 0n) throw new RangeError(`bad range ${i}: [0x${r.start.toString(16)}, 0x${r.end.toString(16)})`);
  }
  const startTime = readStartTime(pid);
  // Gone already: freezeProcess throws the precise error (PROCESS_NOT_FOUND...).
  if (startTime === undefined) freezeProcess(pid, options).thaw();
  const check = new RollingCheck(pid, startTime!, ranges, options);
  try {
    return check.run();
  } finally {
    check.close();
  }
}

/** One run of rollingThreadsUsing. */
class RollingCheck {
  readonly #result: RollingCheckResult;
  readonly #scan: StackScanOptions;
  readonly #freezeOptions: FreezeOptions;
  #memory: ProcessMemory | undefined;
  #memoryFailed = false;
  #maps: readonly Mapping[] = [];

  constructor(
    readonly pid: number,
    readonly startTime: bigint,
    readonly ranges: readonly AddressRange[],
    readonly options: RollingCheckOptions,
  ) {
    const { maxStackBytes, maxRounds: _rounds, onThreadChecked: _cb, stopRunning: _stop, patienceMs: _patience, ...freezeOptions } = options;
    this.#scan = maxStackBytes === undefined ? {} : { maxStackBytes };
    this.#freezeOptions = freezeOptions;
    this.#result = {
      inUse: ranges.map(() => false),
      uses: [],
      threadsChecked: 0,
      threadsNotStopped: 0,
      threadsRunning: 0,
      longestStopMicros: 0,
      rounds: 0,
      threadsUnchecked: 0,
    };
  }

  run(): RollingCheckResult {
    const result = this.#result;
    const seen = new Set<number>();
    const maxRounds = this.options.maxRounds ?? 100;
    for (;;) {
      const tids = listTaskIds(this.pid);
      result.rounds++;
      if (tids === undefined) throw this.#exited();
      const fresh = tids.filter((tid) => !seen.has(tid));
      if (fresh.length === 0) break;
      if (result.rounds > maxRounds) {
        result.threadsUnchecked = fresh.length;
        break;
      }
      for (const tid of fresh) seen.add(tid);
      // Read after the task list: every listed thread's stack is mapped in this snapshot.
      this.#maps = this.#mapsNow();
      // Threads at rest first, without a stop; the ones caught running get a second look (a thread
      // that sleeps between short bursts is seldom on its CPU twice); the rest is stopped.
      let running = fresh;
      for (let look = 0; look < 2 && running.length > 0; look++) running = running.filter((tid) => !this.#checkAtRest(tid));
      if (this.options.stopRunning === false) {
        const until = process.hrtime.bigint() + BigInt(Math.round((this.options.patienceMs ?? 0) * 1e6));
        while (running.length > 0 && process.hrtime.bigint() < until) {
          sleepMicros(500);
          running = running.filter((tid) => !this.#checkAtRest(tid));
        }
        result.threadsRunning += running.length;
      } else for (const tid of running) this.#checkStopped(tid);
    }
    for (const u of result.uses) {
      if (u.rangeIndex >= 0) result.inUse[u.rangeIndex] = true;
      else result.inUse.fill(true);
    }
    if (result.threadsRunning > 0) result.inUse.fill(true);
    return result;
  }

  close(): void {
    this.#memory?.close();
  }

  /** Checks `tid` without stopping it; false when it could not be seen at rest. */
  #checkAtRest(tid: number): boolean {
    const memory = this.#openMemory();
    if (memory === undefined) return false;
    const view = { maps: () => this.#maps, readMemoryInto: (a: bigint, b: Uint8Array, o: number, l: number) => memory.readInto(a, b, o, l) };
    let uses = checkWithoutStop(this.pid, tid, this.ranges, view, this.#scan);
    // A stack the snapshot does not cover (main stack grown, stack switched): read the maps again.
    if (uses?.some((u) => u.kind === 'unscannable')) {
      this.#maps = this.#mapsNow();
      uses = checkWithoutStop(this.pid, tid, this.ranges, view, this.#scan);
    }
    if (uses === undefined) return false;
    this.#result.uses.push(...uses);
    this.#result.threadsChecked++;
    this.#result.threadsNotStopped++;
    this.options.onThreadChecked?.(tid, 0);
    return true;
  }

  /** /proc/PID/mem, or undefined when it cannot be opened (zombie...: the stop reports why). */
  #openMemory(): ProcessMemory | undefined {
    if (this.#memory === undefined && !this.#memoryFailed) {
      try {
        this.#memory = openProcessMemory(this.pid, { writable: false });
      } catch {
        this.#memoryFailed = true;
      }
    }
    return this.#memory;
  }

  /** Stops `tid` alone, checks it, resumes it. */
  #checkStopped(tid: number): void {
    const result = this.#result;
    let fp: FrozenProcess;
    try {
      fp = freezeProcess(this.pid, { ...this.#freezeOptions, threads: [tid] });
    } catch (e) {
      const code = codeOf(e);
      if (code === PROCESS_EXITED && processAlive(this.pid, this.startTime)) return;
      if (code === PROCESS_EXITED || code === PROCESS_NOT_FOUND || (code === PROCESS_ZOMBIE && result.threadsChecked > 0)) throw this.#exited();
      throw e;
    }
    if (fp.startTime !== this.startTime) {
      fp.thaw();
      throw new ProcessError(PROCESS_EXITED, `process ${this.pid} exited during the rolling check (the pid now names another process)`);
    }
    let checked = false;
    try {
      const t = fp.threads[0];
      if (t === undefined) return;
      // A stack the snapshot does not cover (main stack grown, stack switched): read the maps again.
      const rsp = t.regs.rsp;
      if (!this.#maps.some((m) => m.start <= rsp && rsp < m.end)) this.#maps = this.#mapsNow();
      const snapshot = this.#maps;
      const view = { threads: fp.threads, maps: () => snapshot, readMemoryInto: fp.readMemoryInto.bind(fp) };
      result.uses.push(...findThreadsUsing(view, this.ranges, this.#scan));
      result.threadsChecked++;
      checked = true;
    } finally {
      const stop = fp.thaw();
      if (stop > result.longestStopMicros) result.longestStopMicros = stop;
      if (checked) this.options.onThreadChecked?.(tid, stop);
    }
  }

  #mapsNow(): Mapping[] {
    try {
      return readMappings(this.pid);
    } catch (e) {
      if (processAlive(this.pid, this.startTime)) throw e;
      throw this.#exited();
    }
  }

  #exited(): ProcessError {
    return new ProcessError(PROCESS_EXITED, `process ${this.pid} exited during the rolling check`);
  }
}
