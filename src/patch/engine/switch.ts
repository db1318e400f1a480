/**
 * The freeze-check-write loop: freeze every thread, check that none is inside (or will return
 * into) the bytes about to change, write, thaw. When a thread is in the way: thaw, back off
 * (exponential, jittered), retry until the timeout, then refuse naming the thread, the function
 * and why — and say so when the same thread was in the same place on every attempt (a thread that
 * never leaves: an infinite loop or a call that never returns).
 */
import { readFileSync } from 'node:fs';
import { RefusedError } from '../../errors.js';
import { freeze, type Frozen, type ThreadUse } from './control.js';
import type { AddressRange } from '../../process/index.js';

/** A range that must be free of threads, and what to call it in a refusal. */
export interface GuardedRange {
  range: AddressRange;
  /** Function name (with file for statics). */
  function: string;
  /** E.g. "the 5 bytes at the entry" or "the 2-byte switch". */
  what: string;
}

export interface SwitchOptions {
  pid: number;
  /** Ranges that block the switch while a thread uses them. */
  guarded: readonly GuardedRange[];
  /** Ranges only reported (used to decide whether retired code can be freed). */
  observed: readonly AddressRange[];
  timeoutMs: number;
  /** Performs the writes while frozen; must restore what it wrote before rethrowing. */
  write: (frozen: Frozen, observedInUse: boolean[]) => void;
}

export interface SwitchOutcome {
  /** Pause of the freeze that performed the writes, in microseconds. */
  pauseMicros: number;
  /** Of `pauseMicros`, the time the engine itself spent while frozen (thread check + writes). */
  workMicros: number;
  /** Sum of the pauses of every attempt (busy ones included). */
  totalPauseMicros: number;
  attempts: number;
  /** For each observed range: whether a thread used it during the successful freeze. */
  observedInUse: boolean[];
  threads: number;
}

function threadName(pid: number, tid: number): string {
  try {
    return readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

function describeUse(pid: number, use: ThreadUse, g: GuardedRange): string {
  const where = `0x${use.address.toString(16)}`;
  return use.how === 'rip'
    ? `thread ${use.tid} (${threadName(pid, use.tid)}) is executing inside ${g.what} of ${g.function} (rip ${where})`
    : `thread ${use.tid} (${threadName(pid, use.tid)}) has a return address into ${g.what} of ${g.function} on its stack (${where})`;
}

/** Runs the loop; throws RefusedError(TARGET_BUSY) after `timeoutMs` of busy attempts. */
export async function switchWithRetry(o: SwitchOptions): Promise<SwitchOutcome> {
  const started = Date.now();
  let attempts = 0;
  let totalPause = 0;
  let delay = 1;
  // (tid, guarded index) pairs seen on every attempt so far: candidates for "never leaves".
  let persistent: Set<string> | undefined;
  let lastBusy: { use: ThreadUse; g: GuardedRange }[] = [];
  const all = [...o.guarded.map((g) => g.range), ...o.observed];
  for (;;) {
    attempts++;
    const frozen = freeze(o.pid, o.timeoutMs);
    let pause: number;
    let busy: { use: ThreadUse; g: GuardedRange }[];
    let observedInUse: boolean[];
    let threads: number;
    let work = 0;
    try {
      const w0 = process.hrtime.bigint();
      threads = frozen.threadCount;
      const uses = all.length > 0 ? frozen.threadsUsing(all) : [];
      busy = uses.filter((u) => u.rangeIndex < o.guarded.length).map((u) => ({ use: u, g: o.guarded[u.rangeIndex]! }));
      observedInUse = o.observed.map((_, i) => uses.some((u) => u.rangeIndex === o.guarded.length + i));
      if (busy.length === 0) o.write(frozen, observedInUse);
      work = Number(process.hrtime.bigint() - w0) / 1000;
    } finally {
      pause = frozen.thaw();
      totalPause += pause;
    }
    if (busy.length === 0) return { pauseMicros: pause, workMicros: work, totalPauseMicros: totalPause, attempts, observedInUse, threads };
    lastBusy = busy;
    const keys = new Set(busy.map((b) => `${b.use.tid}:${o.guarded.indexOf(b.g)}`));
    persistent = persistent === undefined ? keys : new Set([...persistent].filter((k) => keys.has(k)));
    const elapsed = Date.now() - started;
    if (elapsed >= o.timeoutMs) {
      const first = lastBusy[0]!;
      const stuck = persistent.size > 0 && attempts >= 3;
      const detail = describeUse(o.pid, first.use, first.g);
      throw new RefusedError(
        stuck ? 'TARGET_NEVER_LEAVES' : 'TARGET_BUSY',
        stuck
          ? `${detail} on every one of ${attempts} attempts over ${elapsed} ms: the thread never leaves ${first.g.function} (an infinite loop, or a call that never returns); ` +
              'hotpatch cannot switch a function a thread never leaves — nothing was changed'
          : `${detail}; still busy after ${attempts} attempts over ${elapsed} ms — nothing was changed: retry later or with a longer --timeout`,
      );
    }
    // Exponential backoff with ±50 % jitter, capped so we never sleep past the deadline.
    const jittered = delay * (0.5 + Math.random());
    await sleep(Math.max(0, Math.min(jittered, o.timeoutMs - elapsed)));
    delay = Math.min(delay * 2, 100);
  }
}
