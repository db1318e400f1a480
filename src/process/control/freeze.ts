/**
 * Freeze every thread of a process with ptrace, look at and change it while it is frozen, thaw it.
 *
 * The frozen window is what users feel as a pause, so everything that can be done before it is:
 * the caller analyses (ELF, symbols, encodings) first, /proc/PID/mem is opened and the task list
 * read before the first PTRACE_INTERRUPT; inside the window we only attach, read registers, check,
 * write and detach. All ptrace calls are synchronous on the calling (main) thread, which is the
 * only thread the kernel accepts requests from after it attached.
 *
 * Protocol (design.md, "The freeze-and-write protocol"):
 *  1. PTRACE_SEIZE each thread of /proc/PID/task with PTRACE_O_TRACECLONE (threads created from
 *     now on are attached by the kernel and start stopped) and PTRACE_INTERRUPT it;
 *  2. wait for every thread's stop (polling with a deadline; threads that exit are dropped);
 *  3. re-read /proc/PID/task until no unknown thread appears (all known threads are stopped at
 *     that point, so nobody can create a new one);
 *  4. read every thread's registers;
 *  ... caller works ...
 *  5. thaw: restore registers changed by injected syscalls, PTRACE_DETACH every thread (handing
 *     back any signal we intercepted). thaw() is idempotent and runs on every error path.
 */
import { ProcessError } from '../../errors.js';
import {
  PROCESS_KERNEL_THREAD,
  PROCESS_NOT_FOUND,
  PROCESS_PERMISSION_DENIED,
  PROCESS_ZOMBIE,
} from '../inspect/errors.js';
import type { Mapping } from '../inspect/procfs.js';
import {
  EINTR,
  EPERM,
  ERESTARTNOHAND,
  ERESTARTNOINTR,
  ERESTARTSYS,
  ERESTART_RESTARTBLOCK,
  ESRCH,
  PTRACE_DETACH,
  PTRACE_EVENT_CLONE,
  PTRACE_EVENT_EXEC,
  PTRACE_EVENT_STOP,
  PTRACE_GETREGS,
  PTRACE_INTERRUPT,
  PTRACE_O_TRACECLONE,
  PTRACE_O_TRACEEXEC,
  PTRACE_SEIZE,
  PTRACE_SETREGS,
  PTRACE_SINGLESTEP,
  SIGTRAP,
  SYS_epoll_pwait,
  SYS_epoll_pwait2,
  SYS_epoll_wait,
  SYS_getpid,
  SYS_gettid,
  SYS_mmap,
  SYS_mprotect,
  SYS_munmap,
} from '../ptrace/constants.js';
import { boostThread, ptrace, ptraceBuffer, ptraceGetEventMsg, restoreThread, tgkill, type SchedulingState } from '../ptrace/ffi.js';
import { REG_ORIG_RAX, REG_R10, REG_R8, REG_R9, REG_RAX, REG_RDI, REG_RDX, REG_RIP, REG_RSI, RegisterSet } from '../ptrace/regs.js';
import { pollTid, sleepMicros, waitForTid, type WaitResult } from '../ptrace/tracee.js';
import {
  PROCESS_ALREADY_TRACED,
  PROCESS_EXECED,
  PROCESS_EXITED,
  PROCESS_FREEZE_TIMEOUT,
  PROCESS_INJECTION_FAILED,
  PROCESS_IS_SELF,
  PROCESS_IS_THREAD,
  PROCESS_NOT_FROZEN,
  PROCESS_PTRACE_FAILED,
  errnoName,
} from './errors.js';
import { ProcessMemory } from './memory.js';
import { listTaskIds, readMappings, readStartTime, readStatusOrUndefined, readThreadState, readThreadWchan } from './procfs.js';
import { findSyscallGadget } from './syscall-gadget.js';

/**
 * Why a frozen thread is stopped.
 * - `interrupt`: our PTRACE_INTERRUPT (PTRACE_EVENT_STOP); the normal case.
 * - `group-stop`: the process was stopped by SIGSTOP/SIGTSTP...; it stays stopped after thaw.
 * - `signal`: a signal was being delivered; it is handed back to the thread at thaw.
 * - `clone`: stopped inside clone() (PTRACE_EVENT_CLONE); registers are mid-syscall.
 * - `exec`: stopped after execve (PTRACE_EVENT_EXEC); freezeProcess fails with PROCESS_EXECED.
 * - `injected`: we ran an injected system call on it (registers restored since).
 */
export type StopKind = 'interrupt' | 'group-stop' | 'signal' | 'clone' | 'exec' | 'injected' | 'event';

/** One frozen thread as the caller sees it. */
export interface FrozenThread {
  readonly tid: number;
  /**
   * Registers as the thread will resume with them. Read-only: change them with
   * FrozenProcess.setRegisters (mutating this object would not reach the kernel).
   */
  readonly regs: RegisterSet;
  readonly stop: StopKind;
  /** WSTOPSIG of the stop (SIGTRAP for `interrupt`). */
  readonly stopSignal: number;
  /** The thread was stopped inside a system call (orig_rax != -1). */
  readonly inSyscall: boolean;
  /**
   * The kernel will restart the interrupted system call when the thread resumes, i.e. it will
   * execute again from `rip - 2` (the `syscall` instruction). Stack and rip checks must count
   * `rip - 2` as well.
   */
  readonly restartPending: boolean;
}

/** Options of freezeProcess. */
export interface FreezeOptions {
  /** How long to wait for all threads to stop (default 2000 ms), then PROCESS_FREEZE_TIMEOUT. */
  timeoutMs?: number;
  /**
   * epoll_wait/epoll_pwait/epoll_pwait2 return EINTR when their thread is ptrace-stopped (unlike
   * read, futex, nanosleep... which the kernel restarts). When true (default), a thread stopped
   * with such an EINTR and no unblocked signal pending is rewound at thaw so that it re-executes
   * the call (same arguments; a finite timeout starts over) and the program never sees the EINTR.
   */
  restartInterruptedEpoll?: boolean;
  /**
   * Scheduling of the calling thread while the target is frozen (default 'fifo'): 'fifo' =
   * SCHED_FIFO priority 1 (falls back to 'nice' when not permitted), 'nice' = nice -20, 'none'.
   * Restored at thaw. On a loaded machine this divides the pause by 10 or more: between two ptrace
   * requests the tracer would otherwise queue behind every runnable thread, including the
   * target's own threads as they are detached.
   */
  boostPriority?: 'fifo' | 'nice' | 'none';
}

const PTRACE_OPTIONS = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC;
const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn;
const RESTART_CODES = new Set<bigint>([
  BigInt.asUintN(64, BigInt(-ERESTARTSYS)),
  BigInt.asUintN(64, BigInt(-ERESTARTNOINTR)),
  BigInt.asUintN(64, BigInt(-ERESTARTNOHAND)),
  BigInt.asUintN(64, BigInt(-ERESTART_RESTARTBLOCK)),
]);
/** System calls that never sleep for long: their injection waits in a blocking waitpid. */
const QUICK_SYSCALLS = new Set<number>([SYS_mmap, SYS_mprotect, SYS_munmap, SYS_getpid, SYS_gettid, 12 /* brk */, 25 /* mremap */, 28 /* madvise */]);
const EINTR_U64 = BigInt.asUintN(64, BigInt(-EINTR));
const EPOLL_CALLS = new Set<bigint>([BigInt(SYS_epoll_wait), BigInt(SYS_epoll_pwait), BigInt(SYS_epoll_pwait2)]);

/** Internal per-thread state. */
class ThreadState implements FrozenThread {
  readonly tid: number;
  /** We are its tracer and have not detached (it may still exit under us). */
  attached = true;
  stopped = false;
  stop: StopKind = 'interrupt';
  stopSignal = 0;
  readonly regs = new RegisterSet();
  /** The kernel's copy of the registers differs from `regs` (set by an injection in progress). */
  kernelRegsDiffer = false;
  /** `regs` was changed by the caller and must be written back before detach. */
  regsDirty = false;
  /** Signals we took from the thread (signal-delivery-stops); given back at detach. */
  readonly heldSignals: number[] = [];
  /** Belongs to another thread group (a clone() without CLONE_THREAD that the kernel auto-attached). */
  foreign = false;

  constructor(tid: number) {
    this.tid = tid;
  }
  get inSyscall(): boolean {
    return this.regs.words[REG_ORIG_RAX] !== ORIG_RAX_NONE;
  }
  get restartPending(): boolean {
    return this.inSyscall && RESTART_CODES.has(this.regs.words[REG_RAX]!);
  }
  /** Stopped with EINTR from an epoll wait: a candidate for restartInterruptedEpoll. */
  get epollInterrupted(): boolean {
    const w = this.regs.words;
    return EPOLL_CALLS.has(w[REG_ORIG_RAX]!) && w[REG_RAX] === EINTR_U64;
  }
}

function fail(code: string, message: string, cause?: unknown): ProcessError {
  return new ProcessError(code, message, cause === undefined ? undefined : { cause });
}

/**
 * A process whose threads are all stopped under our ptrace. Obtain one with freezeProcess();
 * always call thaw() (in a `finally`). Not safe to keep across an `await` when the target is a
 * child of this Node process (libuv reaps children on SIGCHLD).
 */
export class FrozenProcess {
  readonly pid: number;
  /** Start time of the process (clock ticks since boot); with the pid it identifies the process. */
  readonly startTime: bigint;
  readonly #options: Required<FreezeOptions>;
  readonly #threads = new Map<number, ThreadState>();
  /** Zombie or exiting threads we found in the task list and skipped. */
  readonly #skipped = new Set<number>();
  /** The target is our own child: don't consume its leader's exit (Node's child_process needs it). */
  readonly #keepLeaderExit: boolean;
  #memory: ProcessMemory;
  #maps: Mapping[] | undefined;
  #t0 = 0n;
  #t1 = 0n;
  #thawed = false;
  #execSeen = false;
  /** Our thread's scheduling before the freeze (restored at thaw). */
  #savedScheduling: SchedulingState | undefined;
  /**
   * Where the pause went, in microseconds: seizing/interrupting, waiting for the stops, re-reading
   * the task list (summed over `rounds`), reading registers, detaching.
   */
  readonly phases = { attach: 0, wait: 0, rescan: 0, rounds: 0, regs: 0, detach: 0 };
  /** Registers scratch for injections (no allocation per call). */
  readonly #scratch = new RegisterSet();

  /** @internal use freezeProcess(). */
  constructor(pid: number, startTime: bigint, ourChild: boolean, options: Required<FreezeOptions>) {
    this.pid = pid;
    this.startTime = startTime;
    this.#keepLeaderExit = ourChild;
    this.#options = options;
    this.#memory = new ProcessMemory(pid, { writable: true });
  }

  /** The frozen threads (thread-group leader first when alive). */
  get threads(): readonly FrozenThread[] {
    const out: ThreadState[] = [];
    for (const t of this.#threads.values()) if (t.attached && t.stopped && !t.foreign) out.push(t);
    return out.sort((a, b) => (a.tid === this.pid ? -1 : b.tid === this.pid ? 1 : a.tid - b.tid));
  }

  /** Whether the process is still frozen (not yet thawed). */
  get isFrozen(): boolean {
    return !this.#thawed;
  }

  /**
   * The pause in microseconds: from the first PTRACE_SEIZE/INTERRUPT to the last PTRACE_DETACH
   * (while still frozen: until now).
   */
  get pauseMicros(): number {
    if (this.#t0 === 0n) return 0;
    const end = this.#t1 !== 0n ? this.#t1 : process.hrtime.bigint();
    return Number(end - this.#t0) / 1000;
  }

  #check(): void {
    if (this.#thawed) throw fail(PROCESS_NOT_FROZEN, `process ${this.pid} is no longer frozen (thaw() was called)`);
  }

  #thread(tid: number): ThreadState {
    this.#check();
    const t = this.#threads.get(tid);
    if (t === undefined || !t.attached || !t.stopped || t.foreign) {
      throw fail(PROCESS_NOT_FROZEN, `thread ${tid} is not a frozen thread of process ${this.pid}`);
    }
    return t;
  }

  /** The frozen thread `tid` (throws PROCESS_NOT_FROZEN if unknown). */
  thread(tid: number): FrozenThread {
    return this.#thread(tid);
  }

  /** A copy of the registers of thread `tid` as they will be when it resumes. */
  getRegisters(tid: number): RegisterSet {
    return this.#thread(tid).regs.clone();
  }

  /** Sets the registers thread `tid` will resume with (written to the kernel at once). */
  setRegisters(tid: number, regs: RegisterSet): void {
    const t = this.#thread(tid);
    const r = ptraceBuffer(PTRACE_SETREGS, tid, 0, regs.words);
    if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', tid, -r);
    t.regs.assign(regs);
    t.regsDirty = false;
  }

  // ---- memory ----------------------------------------------------------------------------------

  /** Reads exactly `length` bytes (MemoryReadError if some byte is unmapped). */
  readMemory(address: bigint, length: number): Uint8Array {
    this.#check();
    return this.#memory.read(address, length);
  }

  /** Reads up to `length` bytes into `buf`, stopping at the first unreadable byte; returns the count. */
  readMemoryInto(address: bigint, buf: Uint8Array, offset = 0, length = buf.length - offset): number {
    this.#check();
    return this.#memory.readInto(address, buf, offset, length);
  }

  /** Writes `bytes` at `address` through /proc/PID/mem (works on read-only code pages). */
  writeMemory(address: bigint, bytes: Uint8Array): void {
    this.#check();
    this.#memory.write(address, bytes);
  }

  /**
   * Writes `bytes` at `address` only if the target currently holds `expected` there (compared
   * byte for byte); otherwise throws MemoryMismatchError and writes nothing.
   */
  writeMemoryChecked(address: bigint, expected: Uint8Array, bytes: Uint8Array): void {
    this.#check();
    this.#memory.writeChecked(address, expected, bytes);
  }

  /**
   * The process's mappings, read once per freeze (they cannot change while every thread is
   * stopped, except through our own injected calls, which drop this cache).
   */
  maps(): readonly Mapping[] {
    this.#check();
    this.#maps ??= readMappings(this.pid);
    return this.#maps;
  }

  // ---- injected system calls -------------------------------------------------------------------

  /**
   * Runs system call `nr` with up to six arguments in the frozen target and returns the raw
   * result (negative = -errno). The call runs on an existing `syscall` instruction of the target
   * (vDSO, else libc; nothing is written to run it) in thread `tid` (default: the first thread
   * stopped by our interrupt). Every register — including orig_rax, so that a thread interrupted
   * in a blocking call restarts it — is restored before this returns.
   */
  injectSyscall(nr: number | bigint, args: ReadonlyArray<number | bigint> = [], options: { tid?: number } = {}): bigint {
    this.#check();
    if (args.length > 6) throw new RangeError('a system call takes at most 6 arguments');
    const t = options.tid !== undefined ? this.#thread(options.tid) : this.#pickInjectionThread();
    if (t.stop === 'clone' || t.stop === 'exec' || t.stop === 'event') {
      throw fail(
        PROCESS_INJECTION_FAILED,
        `thread ${t.tid} of process ${this.pid} is stopped inside a system call (${t.stop}); pick another thread`,
      );
    }
    let gadget: bigint;
    try {
      gadget = findSyscallGadget(this);
    } catch (e) {
      if (!this.#alive()) throw this.#exitedError(t.tid);
      throw e;
    }
    const w = this.#scratch.words;
    w.set(t.regs.words);
    w[REG_RIP] = gadget;
    w[REG_RAX] = BigInt.asUintN(64, BigInt(nr));
    // orig_rax = -1: no syscall-restart logic runs when the thread leaves its current stop.
    w[REG_ORIG_RAX] = ORIG_RAX_NONE;
    const argRegs = [REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9];
    for (let i = 0; i < 6; i++) w[argRegs[i]!] = BigInt.asUintN(64, BigInt(args[i] ?? 0));
    let r = ptraceBuffer(PTRACE_SETREGS, t.tid, 0, w);
    if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', t.tid, -r);
    t.kernelRegsDiffer = true;
    this.#maps = undefined;
    let result: bigint | undefined;
    try {
      const deadline = process.hrtime.bigint() + BigInt(this.#options.timeoutMs) * 1_000_000n;
      for (let attempt = 0; attempt < 16 && result === undefined; attempt++) {
        r = ptrace(PTRACE_SINGLESTEP, t.tid, 0, 0);
        if (r < 0) throw this.#ptraceError('PTRACE_SINGLESTEP', t.tid, -r);
        const keep = this.#keepLeaderExit && t.tid === this.pid;
        // Never a blocking waitpid here: if the target is killed meanwhile and this thread is the
        // group leader, its exit is only reported after the other (traced) threads are reaped, so
        // a blocking wait on it would hang the patcher. Quick calls are polled tightly.
        let ev = waitForTid(t.tid, keep, QUICK_SYSCALLS.has(Number(nr)) ? process.hrtime.bigint() + 2_000_000_000n : deadline);
        if (ev.kind === 'none') {
          // Still inside the call (it blocks): interrupt it, so the thread stops and can be restored.
          ptrace(PTRACE_INTERRUPT, t.tid, 0, 0);
          ev = waitForTid(t.tid, keep, process.hrtime.bigint() + 1_000_000_000n);
          if (ev.kind === 'stopped' && ev.event === 0 && ev.signal !== SIGTRAP) t.heldSignals.push(ev.signal);
          throw fail(
            PROCESS_INJECTION_FAILED,
            `injected system call ${nr} did not return within ${this.#options.timeoutMs} ms in thread ${t.tid} of process ${this.pid}; it was interrupted`,
          );
        }
        if (ev.kind !== 'stopped') {
          t.attached = false;
          throw this.#exitedError(t.tid);
        }
        if (ev.event === 0 && ev.signal !== SIGTRAP) {
          // A real signal arrived meanwhile: keep it for the thread, step again.
          t.heldSignals.push(ev.signal);
          continue;
        }
        if (ev.event !== 0) continue; // e.g. a group-stop arrived; step again
        r = ptraceBuffer(PTRACE_GETREGS, t.tid, 0, w);
        if (r < 0) throw this.#ptraceError('PTRACE_GETREGS', t.tid, -r);
        if (w[REG_RIP] === gadget + 2n) result = BigInt.asIntN(64, w[REG_RAX]!);
        else if (w[REG_RIP] !== gadget) {
          throw fail(
            PROCESS_INJECTION_FAILED,
            `injected system call in thread ${t.tid} of process ${this.pid} stopped at unexpected address 0x${w[REG_RIP]!.toString(16)}`,
          );
        }
      }
      t.stop = 'injected';
      t.stopSignal = SIGTRAP;
    } finally {
      if (t.attached) {
        const rr = ptraceBuffer(PTRACE_SETREGS, t.tid, 0, t.regs.words);
        if (rr === 0) t.kernelRegsDiffer = false;
      }
    }
    if (result === undefined) {
      throw fail(PROCESS_INJECTION_FAILED, `injected system call ${nr} did not complete in thread ${t.tid} of process ${this.pid}`);
    }
    return result;
  }

  #pickInjectionThread(): ThreadState {
    let fallback: ThreadState | undefined;
    for (const t of this.threads as ThreadState[]) {
      if (t.heldSignals.length > 0) continue;
      if (t.stop === 'interrupt' || t.stop === 'injected') return t;
      if (t.stop === 'group-stop') fallback ??= t;
    }
    if (fallback) return fallback;
    throw fail(PROCESS_INJECTION_FAILED, `no thread of process ${this.pid} is in a stop suitable to inject a system call`);
  }

  // ---- thaw ------------------------------------------------------------------------------------

  /**
   * Detaches every thread (they run on exactly where they were) and returns the pause in
   * microseconds. Idempotent; never throws for threads or a process that died meanwhile.
   */
  thaw(): number {
    if (this.#thawed) return this.pauseMicros;
    this.#thawed = true;
    const problems: string[] = [];
    const d0 = process.hrtime.bigint();
    // Leader last: if the process died, its exit is only reported once every other thread is reaped.
    const order = [...this.#threads.values()].sort((a, b) => (a.tid === this.pid ? 1 : b.tid === this.pid ? -1 : 0));
    for (const t of order) {
      if (!t.attached) continue;
      try {
        this.#detach(t);
      } catch (e) {
        problems.push(`thread ${t.tid}: ${(e as Error).message}`);
      }
    }
    if (this.#t0 !== 0n) this.#t1 = process.hrtime.bigint();
    this.phases.detach = Number(process.hrtime.bigint() - d0) / 1000;
    if (this.#savedScheduling !== undefined) restoreThread(this.#savedScheduling);
    this.#memory.close();
    if (problems.length > 0) {
      throw fail(PROCESS_PTRACE_FAILED, `thawing process ${this.pid} was incomplete: ${problems.join('; ')}`);
    }
    return this.pauseMicros;
  }

  #detach(t: ThreadState): void {
    t.attached = false;
    if (t.stopped) {
      if (t.kernelRegsDiffer || t.regsDirty) ptraceBuffer(PTRACE_SETREGS, t.tid, 0, t.regs.words);
      if (this.#options.restartInterruptedEpoll && t.heldSignals.length === 0 && t.epollInterrupted) this.#rewindEpoll(t);
    }
    const sig = t.heldSignals.shift() ?? 0;
    let r = ptrace(PTRACE_DETACH, t.tid, 0, sig);
    if (r === -ESRCH) {
      // Not in a ptrace-stop: seized but its stop not consumed yet (error path during attach), or
      // dying/dead. Stop it and detach, or reap it: a dead tracee stays a zombie attached to us
      // (and keeps its thread group from being reported to its parent) until we wait for it.
      if (sig !== 0) t.heldSignals.unshift(sig);
      const ev = this.#consumeStop(t.tid);
      if (ev.kind === 'stopped') {
        if (ev.event === 0 && ev.signal !== SIGTRAP) t.heldSignals.unshift(ev.signal);
        r = ptrace(PTRACE_DETACH, t.tid, 0, t.heldSignals.shift() ?? 0);
      } else {
        if (ev.kind === 'none') deferDetach(t.tid, this.#keepLeaderExit && t.tid === this.pid, t.heldSignals[0] ?? 0);
        t.heldSignals.length = 0;
        r = 0;
      }
    }
    // Signals beyond the first one we took are queued again.
    for (const s of t.heldSignals.splice(0)) tgkill(this.pid, t.tid, s);
    if (r < 0 && r !== -ESRCH) throw new Error(`PTRACE_DETACH failed with ${errnoName(-r)}`);
  }

  /** Waits briefly for a stop of a seized thread whose stop we never consumed. */
  #consumeStop(tid: number): WaitResult {
    ptrace(PTRACE_INTERRUPT, tid, 0, 0);
    return waitForTid(tid, this.#keepLeaderExit && tid === this.pid, process.hrtime.bigint() + 200_000_000n);
  }

  /**
   * Makes an epoll wait that returned EINTR only because of our interrupt execute again: rip back
   * onto the `syscall` instruction, rax = the call number. Skipped when a signal that could have
   * caused the EINTR is pending and unblocked (then the program must see the EINTR).
   */
  #rewindEpoll(t: ThreadState): void {
    const st = readStatusOrUndefined(`/proc/${this.pid}/task/${t.tid}/status`);
    if (st === undefined) return;
    if (((st.sigPnd | st.shdPnd) & ~st.sigBlk) !== 0n) return;
    const rip = t.regs.words[REG_RIP]!;
    let insn: Uint8Array;
    try {
      insn = this.#memory.read(rip - 2n, 2);
    } catch {
      return;
    }
    if (insn[0] !== 0x0f || insn[1] !== 0x05) return;
    const w = this.#scratch.words;
    w.set(t.regs.words);
    w[REG_RIP] = rip - 2n;
    w[REG_RAX] = w[REG_ORIG_RAX]!;
    ptraceBuffer(PTRACE_SETREGS, t.tid, 0, w);
  }

  // ---- attach (used by freezeProcess) ----------------------------------------------------------

  /** @internal Attaches and stops every thread; on failure the caller thaws. */
  attachAll(firstTids: number[]): void {
    const deadline = process.hrtime.bigint() + BigInt(this.#options.timeoutMs) * 1_000_000n;
    let tids: number[] | undefined = firstTids;
    if (this.#options.boostPriority !== 'none') this.#savedScheduling = boostThread(this.#options.boostPriority);
    this.#t0 = process.hrtime.bigint();
    for (;;) {
      const pending: ThreadState[] = [];
      const a = process.hrtime.bigint();
      for (const tid of tids) {
        if (this.#threads.has(tid) || this.#skipped.has(tid)) continue;
        const t = this.#seize(tid);
        if (t) pending.push(t);
      }
      const b = process.hrtime.bigint();
      this.#waitStops(pending, deadline);
      const c = process.hrtime.bigint();
      tids = listTaskIds(this.pid);
      this.phases.attach += Number(b - a) / 1000;
      this.phases.wait += Number(c - b) / 1000;
      this.phases.rescan += Number(process.hrtime.bigint() - c) / 1000;
      this.phases.rounds++;
      if (tids === undefined) break;
      if (!tids.some((tid) => !this.#threads.has(tid) && !this.#skipped.has(tid))) break;
    }
    const live = this.threads as ThreadState[];
    if (live.length === 0) throw fail(PROCESS_EXITED, `process ${this.pid} exited while it was being frozen`);
    if (this.#execSeen) {
      throw fail(PROCESS_EXECED, `process ${this.pid} called execve while being frozen; its code changed, analyse it again and retry`);
    }
    // Threads the kernel auto-attached that are not in our thread group.
    const final = new Set(tids ?? []);
    for (const t of this.#threads.values()) if (t.attached && !final.has(t.tid)) t.foreign = true;
    const r0 = process.hrtime.bigint();
    for (const t of this.threads as ThreadState[]) {
      const r = ptraceBuffer(PTRACE_GETREGS, t.tid, 0, t.regs.words);
      if (r < 0) {
        if (r === -ESRCH) {
          t.attached = false;
          continue;
        }
        throw this.#ptraceError('PTRACE_GETREGS', t.tid, -r);
      }
    }
    this.phases.regs = Number(process.hrtime.bigint() - r0) / 1000;
  }

  /** PTRACE_SEIZE + PTRACE_INTERRUPT one thread; undefined when it vanished or is a zombie. */
  #seize(tid: number): ThreadState | undefined {
    let r = ptrace(PTRACE_SEIZE, tid, 0, PTRACE_OPTIONS);
    if (r < 0) {
      if (r === -ESRCH) return undefined;
      if (r !== -EPERM) throw this.#ptraceError('PTRACE_SEIZE', tid, -r);
      const st = readStatusOrUndefined(`/proc/${this.pid}/task/${tid}/status`);
      if (st === undefined || st.state === 'Z' || st.state === 'X') {
        this.#skipped.add(tid);
        return undefined;
      }
      if (st.tracerPid === process.pid) {
        // Auto-attached by the kernel (clone of a thread we had seized): it starts stopped.
        const t = this.#threads.get(tid) ?? new ThreadState(tid);
        this.#threads.set(tid, t);
        return t.stopped ? undefined : t;
      }
      if (st.tracerPid !== 0) throw alreadyTraced(this.pid, st.tracerPid);
      throw permissionDenied(this.pid);
    }
    const t = new ThreadState(tid);
    this.#threads.set(tid, t);
    r = ptrace(PTRACE_INTERRUPT, tid, 0, 0);
    if (r < 0 && r !== -ESRCH) throw this.#ptraceError('PTRACE_INTERRUPT', tid, -r);
    return t;
  }

  /**
   * Waits until each pending thread has stopped or gone, in order: a non-blocking look first
   * (by the time we get to a thread it has usually stopped), else a blocking wait — which wakes
   * us the moment the thread stops, where polling would burn the CPU the target needs to reach
   * its stop or add sleep latency. A thread in uninterruptible sleep (D: vfork parent, hung NFS...)
   * may never stop, so it is only polled, until the deadline; so is the group leader (see below).
   */
  #waitStops(pending: ThreadState[], deadline: bigint): void {
    const queue = pending;
    for (let i = 0; i < queue.length; i++) {
      const t = queue[i]!;
      const keep = this.#keepLeaderExit && t.tid === this.pid;
      let ev = pollTid(t.tid, keep);
      while (ev.kind === 'none') {
        if (process.hrtime.bigint() > deadline) throw this.#timeoutError(queue.slice(i));
        // The group leader is never waited for in the kernel either: if the process is killed
        // meanwhile, the leader's exit is only reported once its other (traced) threads have been
        // reaped by us, so a blocking wait on it would never return.
        if (t.tid === this.pid || readThreadState(this.pid, t.tid) === 'D') {
          sleepMicros(t.tid === this.pid ? 20 : 100);
          ev = pollTid(t.tid, keep);
        } else ev = pollTid(t.tid, keep, true);
      }
      this.#handleWait(t, ev, queue);
    }
  }

  /** Records the outcome of a wait; a thread the kernel auto-attached meanwhile joins `queue`. */
  #handleWait(t: ThreadState, ev: WaitResult, queue: ThreadState[]): void {
    if (ev.kind === 'none') queue.push(t);
    else if (ev.kind !== 'stopped') t.attached = false;
    else {
      const child = this.#recordStop(t, ev.signal, ev.event);
      if (child) queue.push(child);
    }
  }

  /** Records why `t` stopped; returns a newly auto-attached thread to wait for, if any. */
  #recordStop(t: ThreadState, signal: number, event: number): ThreadState | undefined {
    t.stopped = true;
    t.stopSignal = signal;
    if (event === PTRACE_EVENT_STOP) t.stop = signal === SIGTRAP ? 'interrupt' : 'group-stop';
    else if (event === 0) {
      t.stop = 'signal';
      t.heldSignals.push(signal);
    } else if (event === PTRACE_EVENT_CLONE) {
      t.stop = 'clone';
      const child = ptraceGetEventMsg(t.tid);
      if (child > 0 && !this.#threads.has(child)) {
        const c = new ThreadState(child);
        this.#threads.set(child, c);
        return c;
      }
    } else if (event === PTRACE_EVENT_EXEC) {
      t.stop = 'exec';
      this.#execSeen = true;
    } else t.stop = 'event';
    return undefined;
  }

  #timeoutError(stuck: ThreadState[]): ProcessError {
    const desc = stuck
      .slice(0, 8)
      .map((t) => `${t.tid} (state ${readThreadState(this.pid, t.tid) ?? '?'}, in ${readThreadWchan(this.pid, t.tid)})`)
      .join(', ');
    return fail(
      PROCESS_FREEZE_TIMEOUT,
      `${stuck.length} thread(s) of process ${this.pid} did not stop within ${this.#options.timeoutMs} ms: ${desc}. ` +
        'A thread in uninterruptible sleep (D) or waiting for a vfork child cannot be frozen; retry later',
    );
  }

  /** Whether the process still exists and is not a zombie (it may have been killed while frozen). */
  #alive(): boolean {
    const st = readThreadState(this.pid, this.pid);
    return st !== undefined && st !== 'Z' && st !== 'X' && readStartTime(this.pid) === this.startTime;
  }

  #exitedError(tid: number): ProcessError {
    return fail(PROCESS_EXITED, `process ${this.pid} exited (thread ${tid} is gone) while it was frozen`);
  }

  #ptraceError(request: string, tid: number, errno: number): ProcessError {
    if (errno === ESRCH && !this.#alive()) return this.#exitedError(tid);
    return fail(PROCESS_PTRACE_FAILED, `${request} on thread ${tid} of process ${this.pid} failed with ${errnoName(errno)}`);
  }
}

/**
 * Threads we seized that never reached a stop (uninterruptible sleep at a freeze timeout): they
 * will enter their ptrace-stop later and would then wait for us forever, so we keep polling them
 * from this (the tracer) thread and detach each as soon as it stops. If this process exits first,
 * the kernel detaches them.
 */
const deferred = new Map<number, { keepExit: boolean; signal: number }>();
let deferredTimer: ReturnType<typeof setInterval> | undefined;

function deferDetach(tid: number, keepExit: boolean, signal: number): void {
  deferred.set(tid, { keepExit, signal });
  if (deferredTimer === undefined) {
    deferredTimer = setInterval(retryDeferredDetaches, 10);
    deferredTimer.unref();
  }
}

function retryDeferredDetaches(): void {
  for (const [tid, d] of deferred) {
    const ev = pollTid(tid, d.keepExit);
    if (ev.kind === 'none') continue;
    if (ev.kind === 'stopped') {
      const sig = ev.event === 0 && ev.signal !== SIGTRAP ? ev.signal : d.signal;
      ptrace(PTRACE_DETACH, tid, 0, sig);
    }
    deferred.delete(tid);
  }
  if (deferred.size === 0 && deferredTimer !== undefined) {
    clearInterval(deferredTimer);
    deferredTimer = undefined;
  }
}

/** Number of threads still waiting to be detached after a freeze timeout (see deferDetach). */
export function pendingDetaches(): number {
  return deferred.size;
}

function alreadyTraced(pid: number, tracer: number): ProcessError {
  const who = tracer === process.pid ? 'this process (it is already frozen here)' : `process ${tracer}`;
  return fail(
    PROCESS_ALREADY_TRACED,
    `process ${pid} is already traced by ${who}: detach the debugger/tracer (or wait for the other patcher) and retry`,
  );
}

function permissionDenied(pid: number): ProcessError {
  return fail(
    PROCESS_PERMISSION_DENIED,
    `not allowed to ptrace process ${pid}: run as root or as its owner (with CAP_SYS_PTRACE, or ` +
      '/proc/sys/kernel/yama/ptrace_scope = 0), and check that no security module forbids it',
  );
}

/**
 * Stops every thread of process `pid` (see the protocol at the top of this file) and returns the
 * frozen process. Errors, each leaving the target untouched: PROCESS_NOT_FOUND, PROCESS_ZOMBIE,
 * PROCESS_KERNEL_THREAD, PROCESS_IS_SELF, PROCESS_IS_THREAD, PROCESS_ALREADY_TRACED (names the
 * tracer), PROCESS_PERMISSION_DENIED, PROCESS_EXITED (died during the attach),
 * PROCESS_FREEZE_TIMEOUT, PROCESS_EXECED.
 */
export function freezeProcess(pid: number, options: FreezeOptions = {}): FrozenProcess {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new RangeError(`bad pid: ${pid}`);
  if (pid === process.pid) {
    throw fail(PROCESS_IS_SELF, 'refusing to freeze this process itself (the thread that would thaw it would be stopped)');
  }
  const opts: Required<FreezeOptions> = {
    timeoutMs: options.timeoutMs ?? 2000,
    restartInterruptedEpoll: options.restartInterruptedEpoll ?? true,
    boostPriority: options.boostPriority ?? 'fifo',
  };
  const st = readStatusOrUndefined(`/proc/${pid}/status`);
  if (st === undefined) throw fail(PROCESS_NOT_FOUND, `no process with pid ${pid} (it exited, or the pid is wrong)`);
  if (st.tgid !== pid) throw fail(PROCESS_IS_THREAD, `${pid} is a thread of process ${st.tgid}; pass the process id ${st.tgid}`);
  if ((st.state === 'Z' || st.state === 'X') && (st.threads ?? 1) <= 1) {
    throw fail(PROCESS_ZOMBIE, `process ${pid} is a zombie (it exited and waits for its parent ${st.ppid} to reap it)`);
  }
  // Kernel threads have no memory (no VmSize line); newer kernels also say so in `Kthread:`.
  if (st.kthread ?? (st.raw.VmSize === undefined && st.state !== 'Z')) {
    throw fail(PROCESS_KERNEL_THREAD, `process ${pid} is a kernel thread; kernel threads cannot be frozen or patched`);
  }
  if (st.tracerPid !== 0) throw alreadyTraced(pid, st.tracerPid);
  const startTime = readStartTime(pid);
  const tids = listTaskIds(pid);
  if (startTime === undefined || tids === undefined) throw fail(PROCESS_NOT_FOUND, `process ${pid} exited`);
  const fp = new FrozenProcess(pid, startTime, st.ppid === process.pid, opts);
  try {
    fp.attachAll(tids);
  } catch (e) {
    try {
      fp.thaw();
    } catch {
      // The original error is the one to report.
    }
    throw e;
  }
  return fp;
}
