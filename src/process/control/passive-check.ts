/**
 * Where a thread that is not running stands, read without stopping it (issue #10: the rolling
 * check then stops only the threads that are on a CPU).
 *
 * /proc/PID/task/TID/syscall gives the user-space stack and instruction pointers of a thread that
 * is off its CPU (blocked in a system call, or stopped), and `running` otherwise; the kernel takes
 * that snapshot with the thread inactive (wait_task_inactive). The thread's stack is then read
 * through /proc/PID/mem and the snapshot read again. The result is trusted only when both
 * snapshots are the same and the thread's scheduler counters (/proc/PID/task/TID/schedstat: time
 * on a CPU and times run, read before the first snapshot and after the second) did not change: a
 * thread that ran in between — even if it came back to the same call — shows in them.
 * So the pointers and the stack words belong to one moment at which the thread was not running,
 * exactly what stopping it with ptrace would have shown (rip - 2 counts too: a restart of the
 * interrupted call re-executes the `syscall` instruction).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import type { Mapping } from '../inspect/procfs.js';
import { findThreadsUsing, type AddressRange, type RangeUse, type StackScanOptions } from './stack-scan.js';

/** User-space position of a thread off its CPU, from one /proc/PID/task/TID/syscall snapshot. */
export interface BlockedPosition {
  /** The raw snapshot (compared before and after the stack read). */
  text: string;
  /** The thread is inside a system call (it may restart it at pc - 2). */
  inSyscall: boolean;
  sp: bigint;
  pc: bigint;
}

/**
 * Parses /proc/PID/task/TID/syscall: `running`, `NR ARG1..ARG6 SP PC` (in a system call) or
 * `-1 SP PC` (blocked elsewhere, e.g. stopped). Undefined for `running` or anything unexpected.
 */
export function parseSyscallFile(text: string): BlockedPosition | undefined {
  const t = text.trim();
  const f = t.split(' ');
  if (f.length !== 9 && f.length !== 3) return undefined;
  const nr = Number(f[0]);
  if (!Number.isSafeInteger(nr) || (f.length === 3) !== (nr === -1)) return undefined;
  const sp = parseHex(f[f.length - 2]!);
  const pc = parseHex(f[f.length - 1]!);
  if (sp === undefined || pc === undefined) return undefined;
  return { text: t, inSyscall: nr >= 0, sp, pc };
}

function parseHex(s: string): bigint | undefined {
  return /^0x[0-9a-f]+$/.test(s) ? BigInt(s) : undefined;
}

/**
 * The scheduler's counters of a thread (/proc/PID/task/TID/schedstat: time on a CPU, time waiting
 * for one, times run). A thread that ran in between changes the first and the last.
 */
export function parseSchedstat(text: string): string | undefined {
  const t = text.trim();
  return /^\d+ \d+ \d+$/.test(t) ? t : undefined;
}

/** A /proc file of one thread, re-read from offset 0 without reopening (the kernel regenerates it). */
class ProcFile {
  readonly #fd: number | undefined;
  static readonly #buf = Buffer.alloc(512);

  constructor(path: string) {
    try {
      this.#fd = openSync(path, 'r');
    } catch {
      this.#fd = undefined;
    }
  }

  read(): string | undefined {
    if (this.#fd === undefined) return undefined;
    try {
      const n = readSync(this.#fd, ProcFile.#buf, 0, ProcFile.#buf.length, 0);
      return ProcFile.#buf.toString('latin1', 0, n);
    } catch {
      return undefined;
    }
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
  }
}

/** What checkWithoutStop needs: the process's mappings and a reader of its memory (no ptrace stop). */
export interface PassiveView {
  maps: () => readonly Mapping[];
  readMemoryInto: (address: bigint, buf: Uint8Array, offset: number, length: number) => number;
}

/**
 * The uses of `ranges` by thread `tid` (as findThreadsUsing would report them for the stopped
 * thread), or undefined when it could not be seen at rest without stopping it: it is running, it
 * ran during the read, or it is gone. The caller then stops it (or tries again later).
 */
export function checkWithoutStop(pid: number, tid: number, ranges: readonly AddressRange[], view: PassiveView, scan: StackScanOptions = {}): RangeUse[] | undefined {
  const dir = `/proc/${pid}/task/${tid}`;
  const sched = new ProcFile(`${dir}/schedstat`);
  const syscall = new ProcFile(`${dir}/syscall`);
  try {
    const ranBefore = parseSchedstat(sched.read() ?? '');
    if (ranBefore === undefined) return undefined;
    const before = parseSyscallFile(syscall.read() ?? '');
    if (before === undefined) return undefined;
    const thread = { tid, regs: { rip: before.pc, rsp: before.sp }, restartPending: before.inSyscall };
    const uses = findThreadsUsing({ threads: [thread], maps: view.maps, readMemoryInto: view.readMemoryInto }, ranges, scan);
    const after = syscall.read()?.trim();
    const ranAfter = parseSchedstat(sched.read() ?? '');
    if (after !== before.text || ranAfter !== ranBefore) return undefined;
    return uses;
  } finally {
    sched.close();
    syscall.close();
  }
}
