/**
 * ptrace-stop bookkeeping on top of the raw FFI: decode wait statuses and poll a thread for its
 * next state change with a deadline (a blocking waitpid could hang forever on a thread in
 * uninterruptible sleep, so we poll with WNOHANG and yield the CPU to the target in between).
 */
import {
  CLD_STOPPED,
  CLD_TRAPPED,
  WEXITED,
  WNOHANG,
  WNOWAIT,
  WSTOPPED,
  __WALL,
} from './constants.js';
import { siginfo, waitidPeek, waitStatus, waitTid } from './ffi.js';

/** What waiting on a traced thread found. */
export type WaitResult =
  /** Nothing yet (WNOHANG). */
  | { kind: 'none' }
  /** A ptrace-stop: `signal` = WSTOPSIG, `event` = status >> 16 (PTRACE_EVENT_*; 0 for a signal-delivery-stop). */
  | { kind: 'stopped'; signal: number; event: number }
  /** The thread exited (or was killed); it no longer exists as a tracee. */
  | { kind: 'exited'; status: number }
  /** No such tracee (ECHILD): already reaped or never ours. */
  | { kind: 'gone' };

const NONE: WaitResult = { kind: 'none' };
const GONE: WaitResult = { kind: 'gone' };

/** Decodes a waitpid status word (the W* macros of <sys/wait.h>). */
export function decodeWaitStatus(status: number): WaitResult {
  if ((status & 0xff) === 0x7f) return { kind: 'stopped', signal: (status >> 8) & 0xff, event: (status >>> 16) & 0xffff };
  return { kind: 'exited', status };
}

/**
 * One look at `tid` (non-blocking unless `block`). With `keepExit`, an exit is reported but NOT
 * consumed (waitid WNOWAIT): used for a thread-group leader that is also our own child, so that
 * Node's child process bookkeeping (libuv's waitpid) still sees its exit status.
 */
export function pollTid(tid: number, keepExit: boolean, block = false): WaitResult {
  const nohang = block ? 0 : WNOHANG;
  if (keepExit) {
    const r = waitidPeek(tid, WEXITED | WSTOPPED | __WALL | nohang | WNOWAIT);
    if (r < 0) return GONE;
    if (siginfo[4] === 0) return NONE; // si_pid == 0: nothing to report
    const code = siginfo[2]!;
    if (code !== CLD_TRAPPED && code !== CLD_STOPPED) return { kind: 'exited', status: siginfo[6]! };
  }
  const r = waitTid(tid, __WALL | nohang);
  if (r === 0) return NONE;
  if (r < 0) return GONE; // ECHILD: reaped already, or not our tracee
  return decodeWaitStatus(waitStatus[0]!);
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Sleeps about `micros` microseconds without spinning (the target needs the CPU to stop). */
export function sleepMicros(micros: number): void {
  Atomics.wait(sleepCell, 0, 0, micros / 1000);
}

/**
 * Polls `tid` until it reports a state change or `deadlineNs` passes (then returns `none`).
 * Never blocks in the kernel: for a thread that may sleep for a long time.
 */
export function waitForTid(tid: number, keepExit: boolean, deadlineNs: bigint): WaitResult {
  const start = process.hrtime.bigint();
  for (;;) {
    const r = pollTid(tid, keepExit);
    if (r.kind !== 'none') return r;
    const now = process.hrtime.bigint();
    if (now > deadlineNs) return r;
    // Tight at first (an injected mmap takes microseconds), then back off.
    sleepMicros(now - start < 2_000_000n ? 20 : 500);
  }
}
