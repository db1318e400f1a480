/**
 * Running one engine operation per process, many processes at once, without ever interleaving two
 * operations on the same process.
 *
 * Concurrency model: every ptrace request must come from the thread that attached, and the engine
 * calls ptrace synchronously from the JavaScript thread; each freeze → check → write → thaw is one
 * synchronous stretch. Operations on different processes therefore interleave only between
 * freezes (while one waits for a busy function, reads /proc or backs off), all on this one thread:
 * correct for ptrace, and a freeze is never lengthened by another process's work. `concurrency`
 * bounds how many operations are in flight.
 *
 * Locking: the engine takes a per-target lock for every operation (src/patch/engine/lock.ts: an
 * flock on a file per pid + start time, dropped by the kernel when its holder dies, so a SIGKILLed
 * holder never blocks the next command). The updater does not add a second lock; it only waits (up
 * to `lockWaitMs`) while another hotpatch process holds it.
 */
import { HotpatchError } from '../../errors.js';
import type { ProcessResult } from './result.js';

/** Error code of the engine's lock when another live hotpatch process holds it. */
export const PROCESS_LOCKED = 'PROCESS_LOCKED';

/** Default bound of concurrent per-process operations. */
export const DEFAULT_CONCURRENCY = 4;
/** Default time to wait for another hotpatch process to release a target (ms). */
export const DEFAULT_LOCK_WAIT_MS = 10_000;

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

/**
 * Maps `items` through `fn` with at most `limit` calls in flight; results keep the input order.
 * `fn` must not throw (turn errors into results).
 */
export async function mapBounded<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency must be a positive integer, got ${limit}`);
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]!, i);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Runs `op` (one engine call, which takes the target's lock itself); while another hotpatch
 * process holds that lock, retries every 50–100 ms until `lockWaitMs` has passed, calling
 * `onWait` once with the holder's message. After the wait the PROCESS_LOCKED error propagates.
 */
export async function withLockWait<T>(op: () => Promise<T>, lockWaitMs: number, onWait?: (message: string) => void): Promise<T> {
  const deadline = Date.now() + Math.max(0, lockWaitMs);
  let announced = false;
  for (;;) {
    try {
      return await op();
    } catch (e) {
      if (!(e instanceof HotpatchError) || e.code !== PROCESS_LOCKED || Date.now() >= deadline) {
        if (e instanceof HotpatchError && e.code === PROCESS_LOCKED && announced) {
          throw new HotpatchError(PROCESS_LOCKED, `${e.message} (waited ${(lockWaitMs / 1000).toFixed(1)} s; raise --lock-wait to wait longer)`, { cause: e });
        }
        throw e;
      }
      if (!announced) {
        announced = true;
        onWait?.(e.message);
      }
      await sleep(50 + Math.random() * 50);
    }
  }
}

/**
 * Awaits `p`, calling `tick` every `everyMs` while it is pending (for progress lines during long
 * waits: a busy function being retried, a lock being waited for). The timer never keeps Node alive.
 */
export async function withTicker<T>(p: Promise<T>, everyMs: number, tick: (elapsedMs: number) => void): Promise<T> {
  const t0 = Date.now();
  const timer = setInterval(() => tick(Date.now() - t0), everyMs);
  timer.unref();
  try {
    return await p;
  } finally {
    clearInterval(timer);
  }
}

/** Interval of "still working" progress lines (ms). */
export const TICK_MS = 2000;

/**
 * One engine operation on `pid` as the updater runs it: waits for the target's lock (see
 * {@link withLockWait}) and prints a "still working" line every {@link TICK_MS} during long waits.
 */
export function runEngineOp<T>(pid: number, op: () => Promise<T>, options: { lockWaitMs?: number; onProgress?: (line: string) => void }): Promise<T> {
  const progress = options.onProgress ?? (() => {});
  return withTicker(
    withLockWait(op, options.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS, (msg) => progress(`pid ${pid}: waiting: ${msg}`)),
    TICK_MS,
    (ms) => progress(`pid ${pid}: still working after ${(ms / 1000).toFixed(0)} s (a thread may be inside the code to switch: retrying up to --timeout)`),
  );
}

/** One short line per finished process for the progress output on stderr. */
export function progressLine(done: number, total: number, r: ProcessResult): string {
  return `[${done}/${total}] pid ${r.pid}: ${r.status}${r.code && r.status !== 'patched' && r.status !== 'removed' ? ` (${r.code})` : ''}`;
}

/**
 * Runs `op` (which must turn errors into results) for every target, at most `concurrency` at
 * once, with a progress line per finished process when there are several. Results keep the
 * targets' order.
 */
export async function forEachProcess<T>(
  targets: readonly T[],
  options: { concurrency?: number; all?: boolean; onProgress?: (line: string) => void },
  op: (target: T) => Promise<ProcessResult>,
): Promise<ProcessResult[]> {
  let done = 0;
  return mapBounded(targets, options.concurrency ?? DEFAULT_CONCURRENCY, async (t) => {
    const r = await op(t);
    done++;
    if (options.all || targets.length > 1) options.onProgress?.(progressLine(done, targets.length, r));
    return r;
  });
}
