/**
 * The engine's narrow view of process control (src/process/control): freeze, check which threads
 * use some bytes, write, map/unmap near a module, create the record mapping, thaw. Keeping it in
 * one module makes the engine's needs explicit and its freeze window easy to audit. hijack() and
 * rollingCheck() are the same view without a whole-process freeze (issue #10).
 */
import {
  allocateNear,
  findThreadsUsing,
  freezeProcess,
  hijackThread,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  PROCESS_NOT_FROZEN,
  remoteMmap,
  remoteMprotect,
  remoteMunmap,
  RemoteSyscallError,
  rollingThreadsUsing,
  type FrozenProcess,
  type RangeUse,
} from '../../process/index.js';
import type { AddressRange } from '../../process/index.js';
import { ProcessError } from '../../errors.js';
import type { ArenaProtection } from './record.js';

// System call numbers (arch/x86/entry/syscalls/syscall_64.tbl) the engine injects itself.
const SYS_close = 3;
const SYS_ftruncate = 77;
const SYS_memfd_create = 319;
/** include/uapi/linux/memfd.h */
const MFD_CLOEXEC = 1;

/** A thread found using a range while frozen. */
export interface ThreadUse {
  tid: number;
  /** Index into the ranges passed to threadsUsing(). */
  rangeIndex: number;
  /**
   * `rip`: executing there (or will re-execute an interrupted syscall there); `return-address`: a
   * word on its stack points there; `unscannable`: its stack could not be read (counts as using all).
   */
  how: 'rip' | 'return-address' | 'unscannable';
  /** The instruction pointer or the stack word's value. */
  address: bigint;
}

/** A process with every thread stopped (hijack(): one thread stopped, the others running). */
export interface Frozen {
  readonly pid: number;
  readonly threadCount: number;
  /**
   * Threads whose rip, or any word of whose stack (rsp..end of its mapping), lies in a range.
   * Throws PROCESS_NOT_FROZEN on a hijacked process (use rollingCheck()).
   */
  threadsUsing(ranges: readonly AddressRange[]): ThreadUse[];
  /** The same for the threads this view stopped only: every thread for freeze(), the hijacked one for hijack(). */
  stoppedThreadsUsing(ranges: readonly AddressRange[]): ThreadUse[];
  /** Writes through /proc/PID/mem (works on read-only text). */
  write(address: bigint, bytes: Uint8Array): void;
  read(address: bigint, length: number): Uint8Array;
  /**
   * Maps `size` bytes of anonymous private memory within ±2 GiB of `near`, then makes it `prot`
   * at once (it is mapped read-write by the allocator and never written before the mprotect;
   * hotpatch fills it through /proc/PID/mem afterwards, so it is never writable and executable).
   * `rw-` (a patch's variables) stays as the allocator mapped it.
   * `beforeProtect` may use the still-writable page (scratch for a system call argument).
   */
  mapNear(near: bigint, size: number, prot: ArenaProtection, beforeProtect?: (start: bigint) => void): bigint;
  /** Unmaps exactly [start, start + size). */
  unmap(start: bigint, size: number): void;
  /** Maps `size` bytes of anonymous private read-write memory anywhere (state the target's own code writes). */
  mapWritable(size: number): bigint;
  /** Calls the target's function at `fn` in one thread, the others staying frozen (FrozenProcess.injectCall). */
  call(fn: bigint, args: readonly bigint[]): void;
  /**
   * Creates a memfd called `name` in the target (the name string is written at `scratch`, memory
   * of ours in the target that is writable through /proc/PID/mem), sizes it to `size`, maps it
   * PROT_READ + MAP_SHARED and closes the fd. Returns the mapping address.
   */
  createSharedMemfdMapping(name: string, size: number, scratch: bigint): bigint;
  /**
   * Like createSharedMemfdMapping, but `fill(path)` first writes the new file through
   * /proc/PID/fd/N, and the file is then mapped over exactly [at, at + size) with MAP_FIXED, so
   * the mapping there is replaced in one step (threads never see it missing or half written).
   */
  replaceWithMemfd(name: string, size: number, scratch: bigint, at: bigint, fill: (path: string) => void): void;
  /** Resumes every thread; returns the pause (first interrupt → last detach) in microseconds. */
  thaw(): number;
}

function syscallOrThrow(fp: FrozenProcess, name: string, nr: number, args: Array<number | bigint>, detail: string): bigint {
  const r = fp.injectSyscall(nr, args);
  if (r < 0n && r >= -4095n) throw new RemoteSyscallError(fp.pid, name, Number(-r), detail);
  return r;
}

/** Creates a memfd `name` of `size` bytes in the target, runs `use(fd)`, closes the fd. */
function withMemfd<T>(fp: FrozenProcess, name: string, size: number, scratch: bigint, use: (fd: number) => T): T {
  fp.writeMemory(scratch, new TextEncoder().encode(`${name}\0`));
  const fd = syscallOrThrow(fp, 'memfd_create', SYS_memfd_create, [scratch, MFD_CLOEXEC], `"${name}", MFD_CLOEXEC`);
  try {
    syscallOrThrow(fp, 'ftruncate', SYS_ftruncate, [fd, size], `${fd}, ${size}`);
    return use(Number(fd));
  } finally {
    fp.injectSyscall(SYS_close, [fd]);
  }
}

/** What rollingCheck() found. */
export interface RollingCheck {
  /** Per range: some thread was found using it (an unscannable thread counts for every range). */
  inUse: boolean[];
  uses: ThreadUse[];
  threadsChecked: number;
  /** Of those, threads seen at rest through /proc without being stopped (blocked, stopped). */
  threadsNotStopped: number;
  /** Running threads left unchecked (stopRunning false); they count as using every range. */
  threadsRunning: number;
  /** Longest time one thread was stopped, in microseconds (no two threads are stopped together). */
  longestStopMicros: number;
  /** Threads created faster than they could be checked, left unchecked (0 normally; see maxRounds). */
  threadsUnchecked: number;
}

function toThreadUse(u: RangeUse): ThreadUse {
  return {
    tid: u.tid,
    rangeIndex: u.rangeIndex,
    how: u.kind === 'stack' ? 'return-address' : u.kind === 'unscannable' ? 'unscannable' : 'rip',
    address: u.value,
  };
}

/** The shortest wait for threads to stop and for an injected call, whatever `--timeout` says (ms). */
export const MIN_FREEZE_TIMEOUT_MS = 500;

/**
 * Freezes every thread of `pid` (see src/process/control for the protocol and its errors).
 * `timeoutMs` (the command's --timeout) bounds the wait for every thread to stop and each injected
 * system call (at least MIN_FREEZE_TIMEOUT_MS); without it, freezeProcess's defaults.
 */
export function freeze(pid: number, timeoutMs?: number): Frozen {
  const fp = freezeProcess(pid, freezeOptions(timeoutMs));
  const using = (ranges: readonly AddressRange[]): ThreadUse[] => findThreadsUsing(fp, ranges).map(toThreadUse);
  return view(pid, fp, () => fp.threads.length, using, using);
}

/**
 * Stops one thread of `pid` only, preferably one blocked in a system call (hijackThread), and
 * returns the same view as freeze(): injected calls run on that thread while every other thread
 * runs. threadCount is 1; threadsUsing throws (the running threads cannot be checked: rollingCheck).
 */
export function hijack(pid: number, timeoutMs?: number): Frozen {
  const fp = hijackThread(pid, freezeOptions(timeoutMs));
  return view(
    pid,
    fp,
    () => 1,
    () => {
      throw new ProcessError(PROCESS_NOT_FROZEN, `only one thread of process ${pid} is stopped (hijacked): which threads use a range needs rollingCheck()`);
    },
    (ranges) => findThreadsUsing(fp, ranges).map(toThreadUse),
  );
}

/**
 * Which threads of `pid` use `ranges`, stopping no thread that is off its CPU and the running ones
 * one at a time (rollingThreadsUsing; `stopRunning: false` stops none and counts them as users).
 * Sound only after every path into the ranges was removed (see src/process/control/hijack.ts).
 */
export function rollingCheck(pid: number, ranges: readonly AddressRange[], timeoutMs?: number, options: { stopRunning?: boolean; patienceMs?: number } = {}): RollingCheck {
  const r = rollingThreadsUsing(pid, ranges, { ...freezeOptions(timeoutMs), ...options });
  return {
    inUse: r.inUse,
    uses: r.uses.map(toThreadUse),
    threadsChecked: r.threadsChecked,
    threadsNotStopped: r.threadsNotStopped,
    threadsRunning: r.threadsRunning,
    longestStopMicros: r.longestStopMicros,
    threadsUnchecked: r.threadsUnchecked,
  };
}

function freezeOptions(timeoutMs: number | undefined): { timeoutMs?: number } {
  return timeoutMs === undefined ? {} : { timeoutMs: Math.max(MIN_FREEZE_TIMEOUT_MS, timeoutMs) };
}

function view(pid: number, fp: FrozenProcess, threadCount: () => number, threadsUsing: Frozen['threadsUsing'], stoppedThreadsUsing: Frozen['stoppedThreadsUsing']): Frozen {
  return {
    pid,
    get threadCount() {
      return threadCount();
    },
    threadsUsing,
    stoppedThreadsUsing,
    write: (address, bytes) => fp.writeMemory(address, bytes),
    read: (address, length) => fp.readMemory(address, length),
    mapNear(near, size, prot, beforeProtect) {
      const a = allocateNear(fp, near, size);
      try {
        beforeProtect?.(a.address);
        remoteMprotect(fp, a.address, a.size, prot === 'r-x' ? PROT_READ | PROT_EXEC : prot === 'rw-' ? PROT_READ | PROT_WRITE : PROT_READ);
      } catch (e) {
        try {
          remoteMunmap(fp, a.address, a.size);
        } catch {
          /* report the first error */
        }
        throw e;
      }
      return a.address;
    },
    unmap: (start, size) => remoteMunmap(fp, start, size),
    mapWritable: (size) => remoteMmap(fp, 0n, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS),
    call: (fn, args) => fp.injectCall(fn, args),
    createSharedMemfdMapping: (name, size, scratch) => withMemfd(fp, name, size, scratch, (fd) => remoteMmap(fp, 0n, size, PROT_READ, MAP_SHARED, fd, 0n)),
    replaceWithMemfd(name, size, scratch, at, fill) {
      withMemfd(fp, name, size, scratch, (fd) => {
        fill(`/proc/${pid}/fd/${fd}`);
        remoteMmap(fp, at, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0n);
      });
    },
    thaw: () => fp.thaw(),
  };
}
