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
 *
 * Partial stop (FreezeOptions.threads, used by hijack.ts): only the named threads are seized and
 * step 3 is skipped; the others keep running. A clone by a seized thread (during its stop or an
 * injected call) still auto-attaches the child: it is kept out of `threads` and detached at thaw.
 */
import type { ErrorCode } from '../../errors.js';
import { faultInjectionAllowed } from '../../internal/fault-gate.js';
import { readFileSync } from 'node:fs';
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
  PTRACE_O_TRACESYSGOOD,
  PTRACE_SEIZE,
  PTRACE_SETREGS,
  PTRACE_SYSCALL,
  SIGTRAP,
  SYS_epoll_pwait,
  SYS_epoll_pwait2,
  SYS_epoll_wait,
  SYS_getpid,
  SYS_restart_syscall,
} from '../ptrace/constants.js';
import {
  boostThread,
  ptrace,
  ptraceBuffer,
  ptraceGetEventMsg,
  ptraceGetSigmask,
  ptraceGetXstate,
  ptraceSetSigmask,
  restoreThread,
  tgkill,
  type SchedulingState,
} from '../ptrace/ffi.js';
import { REG_ORIG_RAX, REG_R10, REG_R8, REG_R9, REG_RAX, REG_RCX, REG_RDI, REG_RDX, REG_RIP, REG_RSI, REG_RSP, RegisterSet } from '../ptrace/regs.js';
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
import { buildSigframe, frameLayout, RED_ZONE, sigframeXstate } from './sigframe.js';
import { findInjectionGadgets, type InjectionGadgets } from './syscall-gadget.js';

/** Stack an injected call may use below its restore frame (libgcc's registration needs < 1 KiB). */
const CALL_STACK_ROOM = 16n << 10n;
/** rt_sigreturn (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_rt_sigreturn = 15;
/** Signals a fault of the thread itself raises (never blocked by a signal mask). */
const SYNCHRONOUS_FAULTS = new Set([4, 5, 7, 8, 11]); // SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV

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
   * How long an injected system call may take, quick ones (mmap, mprotect, …) included, before it
   * is interrupted with PROCESS_INJECTION_FAILED (default: `timeoutMs`). The CLI passes its
   * `--timeout`, so a loaded machine needs no other knob.
   */
  syscallTimeoutMs?: number;
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
  /**
   * Stop only these threads of the process (thread ids from /proc/PID/task); every other thread
   * keeps running and the task list is not re-read. `threads` then lists only these (those that
   * did not exit), and maps() is a snapshot the running threads may change meanwhile (allocation
   * is race-safe: MAP_FIXED_NOREPLACE). PROCESS_EXITED when none of them is left to stop.
   */
  threads?: readonly number[];
}

/** FreezeOptions with every default applied. */
type ResolvedFreezeOptions = Required<Omit<FreezeOptions, 'threads'>> & { threads: readonly number[] | undefined };

// TRACESYSGOOD: syscall stops (only injections ask for them) report SIGTRAP | 0x80.
const PTRACE_OPTIONS = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD;
const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn;
const RESTART_CODES = new Set<bigint>([
  BigInt.asUintN(64, BigInt(-ERESTARTSYS)),
  BigInt.asUintN(64, BigInt(-ERESTARTNOINTR)),
  BigInt.asUintN(64, BigInt(-ERESTARTNOHAND)),
  BigInt.asUintN(64, BigInt(-ERESTART_RESTARTBLOCK)),
]);
const EINTR_U64 = BigInt.asUintN(64, BigInt(-EINTR));
const EPOLL_CALLS = new Set<bigint>([BigInt(SYS_epoll_wait), BigInt(SYS_epoll_pwait), BigInt(SYS_epoll_pwait2)]);
const RESTART_SYS = BigInt.asUintN(64, BigInt(-ERESTARTSYS));
const RESTART_NOINTR = BigInt.asUintN(64, BigInt(-ERESTARTNOINTR));
const RESTART_NOHAND = BigInt.asUintN(64, BigInt(-ERESTARTNOHAND));
const RESTART_BLOCK = BigInt.asUintN(64, BigInt(-ERESTART_RESTARTBLOCK));
/** pselect6 270, ppoll 271, epoll_pwait 281, rt_sigsuspend 130, io_pgetevents 333, epoll_pwait2 441 (syscall_64.tbl). */
const TEMP_MASK_CALLS = new Set<bigint>([270n, 271n, 281n, 130n, 333n, 441n]);
/** Every signal (PTRACE_SETSIGMASK drops SIGKILL and SIGSTOP itself). */
const ALL_SIGNALS = 0xffff_ffff_ffff_ffffn;

/** Injected system calls run by this process so far (numbers the HOTPATCH_FAULT_INJECT points). */
let injectionCount = 0;

/** Where inside an injection HOTPATCH_FAULT_INJECT may kill the patcher. */
export const INJECT_FAULT_PHASES = ['frame-written', 'armed', 'blocked', 'entered', 'exited', 'mask-restored'] as const;
export type InjectFaultPhase = (typeof INJECT_FAULT_PHASES)[number];
/**
 * Test-only: `PHASE` or `PHASE@N` kills this process with SIGKILL at the first point PHASE of an
 * injection (or of the thaw that disarms, for `mask-restored`) once N calls were injected (1-based).
 */
export const INJECT_FAULT_ENV = 'HOTPATCH_FAULT_INJECT';

/**
 * The fault hook for the current injection, or undefined (the normal case: one env lookup).
 * `mask-restored` counts the injection that armed the thread last.
 */
function injectFault(): ((phase: InjectFaultPhase) => void) | undefined {
  const spec = process.env[INJECT_FAULT_ENV];
  if (spec === undefined || spec === '' || !faultInjectionAllowed()) return undefined;
  const [phase, n] = spec.split('@');
  if (n !== undefined && injectionCount < Number(n)) return undefined;
  return (p) => {
    if (p === phase) process.kill(process.pid, 'SIGKILL');
  };
}

/**
 * Waits for a ptrace stop of a thread that runs a quick system call: a few hundred non-blocking
 * looks first (the stop comes within microseconds on another core), then the usual polling.
 */
function waitSpinning(tid: number, keep: boolean, deadline: bigint): WaitResult {
  for (let i = 0; i < 200; i++) {
    const ev = pollTid(tid, keep);
    if (ev.kind !== 'none') return ev;
  }
  return waitForTid(tid, keep, deadline);
}

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
  /**
   * What the kernel holds for this thread: `same` = `regs` (or `regs` plus a pending write, see
   * kernelRegsDiffer/regsDirty); `armed` = stopped inside or after an injected call with rsp at its
   * restore frame; `resume` = at a syscall stop of ours with the resume state (#resumeWords).
   */
  kernel: 'same' | 'armed' | 'resume' = 'same';
  /** rip of an armed thread at its syscall-exit stop (just after the gadget's `syscall`). */
  armedRip = 0n;
  /** Address of its restore frame (0 = none yet) and whether it still matches `regs`. */
  frameSp = 0n;
  frameValid = false;
  /** Blocked mask at the freeze (PTRACE_GETSIGMASK), read at the first injection. */
  sigmask: bigint | undefined;
  /** We blocked every signal (PTRACE_SETSIGMASK) while it is armed. */
  maskBlocked = false;
  /** Signal-frame FPU state (sigframe.ts), read at the first injection. */
  fpstate: Uint8Array | undefined;
  /** The stack has no room for a restore frame: never picked for injections. */
  noFrameRoom = false;

  constructor(tid: number) {
    this.tid = tid;
  }
  get inSyscall(): boolean {
    return this.regs.words[REG_ORIG_RAX] !== ORIG_RAX_NONE;
  }
  get restartPending(): boolean {
    return this.inSyscall && RESTART_CODES.has(this.regs.words[REG_RAX]!);
  }
  /**
   * Stopped in a call that runs with a temporary signal mask (ppoll, pselect6, epoll_pwait(2),
   * rt_sigsuspend, io_pgetevents): the kernel restores the real mask on the way out, which
   * PTRACE_SETSIGMASK would cancel, and which we cannot read.
   */
  get temporaryMask(): boolean {
    if (!this.inSyscall) return false;
    const w = this.regs.words;
    const nr = w[REG_ORIG_RAX]!;
    // A NULL sigmask argument means no temporary mask: ppoll (4th, r10), epoll_pwait(2) (5th, r8).
    if (nr === 271n) return w[REG_R10] !== 0n;
    if (nr === 281n || nr === 441n) return w[REG_R8] !== 0n;
    return TEMP_MASK_CALLS.has(nr);
  }
  /**
   * Sleeping in restart_syscall (a timed call restarted once already): rt_sigreturn resets the
   * restart block, so a frame could only make it return EINTR. Never picked by default.
   */
  get inRestartedSleep(): boolean {
    const w = this.regs.words;
    return this.inSyscall && w[REG_ORIG_RAX] === BigInt(SYS_restart_syscall) && w[REG_RAX] === RESTART_BLOCK;
  }
  /** Stopped with EINTR from an epoll wait: a candidate for restartInterruptedEpoll. */
  get epollInterrupted(): boolean {
    const w = this.regs.words;
    return EPOLL_CALLS.has(w[REG_ORIG_RAX]!) && w[REG_RAX] === EINTR_U64;
  }
}

function fail(code: ErrorCode, message: string, cause?: unknown): ProcessError {
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
  readonly #options: ResolvedFreezeOptions;
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
  /** The thread default injections run on (see #pickInjectionThread). */
  #injector: ThreadState | undefined;

  /** @internal use freezeProcess(). */
  constructor(pid: number, startTime: bigint, ourChild: boolean, options: ResolvedFreezeOptions) {
    this.pid = pid;
    this.startTime = startTime;
    this.#keepLeaderExit = ourChild;
    this.#options = options;
    this.#memory = new ProcessMemory(pid, { writable: true });
  }

  /** Only the threads named in FreezeOptions.threads are stopped; the others run. */
  get partial(): boolean {
    return this.#options.threads !== undefined;
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
    if (t.kernel !== 'same') {
      // At a syscall stop of ours: the kernel takes the new state as the resume state.
      t.regs.assign(regs);
      t.frameValid = false;
      this.#disarm(t);
      return;
    }
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
   * result (negative = -errno), in thread `tid` (default: the thread the picker prefers, see
   * #pickInjectionThread). No instruction of the target is written and no single-step is used.
   *
   * Self-restoring (issue #14: the target survives anything the patcher suffers): before the
   * thread is redirected, a signal frame holding the state it resumes in (registers with the
   * kernel's syscall restart already applied, blocked mask, full XSAVE image) is written below its
   * red zone (sigframe.ts). The thread then runs an existing `syscall; ret` with rsp at that frame,
   * and `ret` lands on an existing rt_sigreturn sequence. With the patcher alive we stop it at the
   * syscall-enter and syscall-exit stops (PTRACE_SYSCALL) and read the result; it stays "armed"
   * (stopped after the `syscall`, before the `ret`) until thaw or the next injection. If the
   * patcher is killed at any instant, the kernel detaches the thread and it finishes the call,
   * returns through rt_sigreturn and resumes where it was. All signals except SIGKILL/SIGSTOP are
   * blocked while it is armed (the frame restores the mask), so no signal is taken from it.
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
    // A thread in restart_syscall (t.inRestartedSleep) is only used when named: a patcher killed
    // mid-injection there makes its sleep return EINTR (docs/limitations.md).
    if (t.heldSignals.length > 0 && t.kernel !== 'armed') {
      throw fail(
        PROCESS_INJECTION_FAILED,
        `thread ${t.tid} of process ${this.pid} is stopped delivering signal ${t.heldSignals[0]}: a patcher killed during an ` +
          'injection there would lose the signal; pick another thread',
      );
    }
    let g: InjectionGadgets;
    try {
      g = findInjectionGadgets(this);
    } catch (e) {
      if (!this.#alive()) throw this.#exitedError(t.tid);
      throw e;
    }
    injectionCount++;
    const fault = injectFault();
    this.#maps = undefined;
    const w = this.#scratch.words;
    if (t.kernel !== 'armed') {
      let frame: bigint;
      try {
        frame = this.#writeFrame(t, g);
      } catch (e) {
        if (options.tid === undefined && t.noFrameRoom) {
          this.#injector = undefined;
          return this.injectSyscall(nr, args, options); // the picker skips this thread now
        }
        throw e;
      }
      fault?.('frame-written');
      w.set(t.regs.words);
      w[REG_RSP] = frame;
    } else {
      const r = ptraceBuffer(PTRACE_GETREGS, t.tid, 0, w);
      if (r < 0) throw this.#ptraceError('PTRACE_GETREGS', t.tid, -r);
      // Armed: rip is just after our last `syscall`, rsp at the frame.
      if (w[REG_RIP] !== t.armedRip || w[REG_RSP] !== t.frameSp) {
        throw fail(PROCESS_INJECTION_FAILED, `thread ${t.tid} of process ${this.pid} is not where the last injection left it`);
      }
    }
    w[REG_RIP] = g.syscallRet;
    w[REG_RAX] = BigInt.asUintN(64, BigInt(nr));
    // orig_rax = -1: no syscall-restart logic runs when the thread leaves its current stop.
    w[REG_ORIG_RAX] = ORIG_RAX_NONE;
    const argRegs = [REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9];
    for (let i = 0; i < 6; i++) w[argRegs[i]!] = BigInt.asUintN(64, BigInt(args[i] ?? 0));
    let r = ptraceBuffer(PTRACE_SETREGS, t.tid, 0, w);
    if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', t.tid, -r);
    t.kernel = 'armed';
    t.armedRip = g.syscallRet + 2n;
    t.stop = 'injected';
    t.stopSignal = SIGTRAP | 0x80;
    fault?.('armed');
    if (!t.maskBlocked && !t.temporaryMask) {
      // After the redirect, never before: a patcher killed in between must not leave the thread
      // at its own code with every signal blocked. rt_sigreturn restores the mask from the frame.
      r = ptraceSetSigmask(t.tid, ALL_SIGNALS);
      if (r < 0) throw this.#ptraceError('PTRACE_SETSIGMASK', t.tid, -r);
      t.maskBlocked = true;
    }
    fault?.('blocked');
    const keep = this.#keepLeaderExit && t.tid === this.pid;
    const deadline = process.hrtime.bigint() + BigInt(this.#options.syscallTimeoutMs) * 1_000_000n;
    let entered = false;
    let result: bigint | undefined;
    for (let attempt = 0; attempt < 16 && result === undefined; attempt++) {
      r = ptrace(PTRACE_SYSCALL, t.tid, 0, 0);
      if (r < 0) throw this.#ptraceError('PTRACE_SYSCALL', t.tid, -r);
      // Never a blocking waitpid here: if the target is killed meanwhile and this thread is the
      // group leader, its exit is only reported after the other (traced) threads are reaped, so a
      // blocking wait on it would hang the patcher. A quick call stops within microseconds.
      const ev = waitSpinning(t.tid, keep, deadline);
      if (ev.kind === 'none') {
        this.#abandonCall(t, keep, entered);
        throw fail(
          PROCESS_INJECTION_FAILED,
          `injected system call ${nr} did not return within ${this.#options.syscallTimeoutMs} ms in thread ${t.tid} of process ${this.pid}; it was interrupted`,
        );
      }
      if (ev.kind !== 'stopped') {
        t.attached = false;
        throw this.#exitedError(t.tid);
      }
      if (ev.event === 0 && ev.signal === (SIGTRAP | 0x80)) {
        if (!entered) {
          entered = true;
          fault?.('entered');
          continue;
        }
        r = ptraceBuffer(PTRACE_GETREGS, t.tid, 0, w);
        if (r < 0) throw this.#ptraceError('PTRACE_GETREGS', t.tid, -r);
        if (w[REG_RIP] !== g.syscallRet + 2n || w[REG_ORIG_RAX] !== BigInt.asUintN(64, BigInt(nr))) {
          throw fail(
            PROCESS_INJECTION_FAILED,
            `injected system call ${nr} in thread ${t.tid} of process ${this.pid} stopped at unexpected address 0x${w[REG_RIP]!.toString(16)} (orig_rax ${BigInt.asIntN(64, w[REG_ORIG_RAX]!)})`,
          );
        }
        result = BigInt.asIntN(64, w[REG_RAX]!);
        fault?.('exited');
        break;
      }
      // A signal that cannot be blocked (SIGSTOP) or one that arrived on a thread whose mask we
      // leave alone: keep it for the thread. A group-stop or other event: resume again.
      if (ev.event === 0 && ev.signal !== SIGTRAP) t.heldSignals.push(ev.signal);
      if (ev.event === PTRACE_EVENT_CLONE) this.#adoptClone(t);
      attempt--; // stops that are not ours do not count
      if (t.heldSignals.length > 64) break;
    }
    if (result === undefined) {
      throw fail(PROCESS_INJECTION_FAILED, `injected system call ${nr} did not complete in thread ${t.tid} of process ${this.pid}`);
    }
    return result;
  }

  /**
   * Picks the thread default injections run on and writes its restore frame now (as the first
   * injection would), so that a thread unfit for injections is found before anything is changed:
   * hijack.ts then tries another thread. Returns its tid; PROCESS_INJECTION_FAILED when no
   * frozen thread can take one.
   */
  prepareInjection(): number {
    this.#check();
    for (;;) {
      const t = this.#pickInjectionThread();
      if (t.kernel === 'armed') return t.tid;
      try {
        this.#writeFrame(t, findInjectionGadgets(this));
        return t.tid;
      } catch (e) {
        if (!t.noFrameRoom) throw e;
        this.#injector = undefined; // the picker skips it now
      }
    }
  }

  /**
   * Calls the function at `fn` with up to six integer arguments (System V ABI) in a frozen thread
   * and returns when it has returned. The other threads stay frozen: the callee must not wait for
   * anything they could hold (the caller's duty, e.g. by checking no thread is inside the callee's
   * library, see src/patch/engine/unwind.ts). Its return value is not available.
   *
   * Same self-restoring frame as injectSyscall (the thread is armed with an injected getpid first):
   * the thread enters `fn` with rsp at the frame, so the frame's `pretcode` (an rt_sigreturn
   * sequence) is the return address; the frame sits at 8 mod 16 as a real signal frame does (the
   * ABI's alignment at a function entry). With the patcher alive, we catch the rt_sigreturn at its
   * syscall-enter stop and turn it into a getpid that leaves the thread armed again; if the patcher
   * is killed at any instant, the kernel detaches the thread, the call completes, and rt_sigreturn
   * resumes the thread where it was. A fault in the callee is not delivered: the thread is put back
   * armed (the call abandoned) and PROCESS_INJECTION_FAILED thrown.
   */
  injectCall(fn: bigint, args: ReadonlyArray<number | bigint> = [], options: { tid?: number } = {}): void {
    if (args.length > 6) throw new RangeError('an injected call takes at most 6 register arguments');
    const tid = options.tid ?? this.#pickInjectionThread().tid;
    this.injectSyscall(SYS_getpid, [], { tid });
    const t = this.#thread(tid);
    const stack = this.maps().find((m) => m.start <= t.frameSp && t.frameSp < m.end);
    // The main thread's [stack] grows on demand; a thread stack is a fixed mapping.
    if (!stack || (stack.path !== '[stack]' && t.frameSp - stack.start < CALL_STACK_ROOM)) {
      throw fail(PROCESS_INJECTION_FAILED, `thread ${tid} of process ${this.pid} has less than ${CALL_STACK_ROOM} bytes of stack below its restore frame for an injected call`);
    }
    const w = this.#scratch.words;
    let r = ptraceBuffer(PTRACE_GETREGS, tid, 0, w);
    if (r < 0) throw this.#ptraceError('PTRACE_GETREGS', tid, -r);
    const armed = w.slice();
    const argRegs = [REG_RDI, REG_RSI, REG_RDX, REG_RCX, REG_R8, REG_R9];
    for (let i = 0; i < 6; i++) w[argRegs[i]!] = BigInt.asUintN(64, BigInt(args[i] ?? 0));
    w[REG_RIP] = fn;
    w[REG_RSP] = t.frameSp;
    w[REG_RAX] = 0n;
    w[REG_ORIG_RAX] = ORIG_RAX_NONE;
    r = ptraceBuffer(PTRACE_SETREGS, tid, 0, w);
    if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', tid, -r);
    const rearm = (): void => {
      armed[REG_RAX] = 0n;
      armed[REG_ORIG_RAX] = ORIG_RAX_NONE;
      ptraceBuffer(PTRACE_SETREGS, tid, 0, armed);
    };
    const keep = this.#keepLeaderExit && tid === this.pid;
    const deadline = process.hrtime.bigint() + BigInt(this.#options.syscallTimeoutMs) * 1_000_000n;
    let returned = false;
    for (let stops = 0; stops < 10_000; stops++) {
      r = ptrace(PTRACE_SYSCALL, tid, 0, 0);
      if (r < 0) throw this.#ptraceError('PTRACE_SYSCALL', tid, -r);
      const ev = waitSpinning(tid, keep, deadline);
      if (ev.kind === 'none') {
        // Stuck (a lock held by a frozen thread?): interrupt and abandon the call.
        ptrace(PTRACE_INTERRUPT, tid, 0, 0);
        const stopped = waitForTid(tid, keep, process.hrtime.bigint() + 1_000_000_000n);
        if (stopped.kind === 'stopped') rearm();
        throw fail(PROCESS_INJECTION_FAILED, `injected call of 0x${fn.toString(16)} did not return within ${this.#options.syscallTimeoutMs} ms in thread ${tid} of process ${this.pid}; it was abandoned`);
      }
      if (ev.kind !== 'stopped') {
        t.attached = false;
        throw this.#exitedError(tid);
      }
      if (ev.event === PTRACE_EVENT_CLONE) this.#adoptClone(t);
      if (ev.event !== 0 || ev.signal === SIGTRAP) continue;
      if (ev.signal !== (SIGTRAP | 0x80)) {
        if (SYNCHRONOUS_FAULTS.has(ev.signal)) {
          rearm();
          throw fail(PROCESS_INJECTION_FAILED, `injected call of 0x${fn.toString(16)} faulted (signal ${ev.signal}) in thread ${tid} of process ${this.pid}; it was abandoned and the signal dropped`);
        }
        t.heldSignals.push(ev.signal);
        continue;
      }
      r = ptraceBuffer(PTRACE_GETREGS, tid, 0, w);
      if (r < 0) throw this.#ptraceError('PTRACE_GETREGS', tid, -r);
      if (!returned) {
        // Any other system call of the callee: its enter and exit stops pass.
        if (w[REG_ORIG_RAX] !== BigInt(SYS_rt_sigreturn) || w[REG_RSP] !== t.frameSp + 8n) continue;
        // The callee returned into the frame's rt_sigreturn: run a getpid at the armed position instead.
        returned = true;
        armed[REG_ORIG_RAX] = BigInt(SYS_getpid);
        r = ptraceBuffer(PTRACE_SETREGS, tid, 0, armed);
        if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', tid, -r);
        continue;
      }
      if (w[REG_RIP] === t.armedRip && w[REG_RSP] === t.frameSp) return;
    }
    throw fail(PROCESS_INJECTION_FAILED, `injected call of 0x${fn.toString(16)} did not complete in thread ${tid} of process ${this.pid}`);
  }

  /**
   * A thread of ours cloned during an injection: the kernel auto-attached the child (it starts in
   * a ptrace-stop we have not consumed). Recorded so that thaw detaches it; never a frozen thread.
   */
  #adoptClone(t: ThreadState): void {
    const child = ptraceGetEventMsg(t.tid);
    if (child <= 0 || this.#threads.has(child)) return;
    const c = new ThreadState(child);
    c.foreign = true;
    this.#threads.set(child, c);
  }

  /**
   * A blocking injected call overran: interrupt it so the thread stops (it stays armed; the
   * interrupted call is not restarted: rax = -EINTR, orig_rax = -1).
   */
  #abandonCall(t: ThreadState, keep: boolean, entered: boolean): void {
    ptrace(PTRACE_INTERRUPT, t.tid, 0, 0);
    for (let i = 0; i < 4; i++) {
      const ev = waitForTid(t.tid, keep, process.hrtime.bigint() + 1_000_000_000n);
      if (ev.kind !== 'stopped') {
        if (ev.kind !== 'none') t.attached = false;
        return;
      }
      if (ev.event === 0 && ev.signal !== SIGTRAP && ev.signal !== (SIGTRAP | 0x80)) t.heldSignals.push(ev.signal);
      const w = this.#scratch.words;
      if (ptraceBuffer(PTRACE_GETREGS, t.tid, 0, w) < 0) return;
      if (w[REG_RIP] === t.armedRip) {
        w[REG_RAX] = EINTR_U64;
        w[REG_ORIG_RAX] = ORIG_RAX_NONE;
        ptraceBuffer(PTRACE_SETREGS, t.tid, 0, w);
        return;
      }
      if (!entered) return; // stopped before the `syscall`: rip = gadget, the frame still holds
      ptrace(PTRACE_SYSCALL, t.tid, 0, 0);
    }
  }

  /**
   * Writes the self-restoring frame for `t` below its red zone (once per freeze while its resume
   * state is unchanged) and returns its address. Written while the thread's registers do not
   * reference it, so a half-written frame is never live.
   */
  #writeFrame(t: ThreadState, g: InjectionGadgets): bigint {
    if (t.frameSp !== 0n && t.frameValid) return t.frameSp;
    if (t.sigmask === undefined) {
      // A user shadow stack (CET) would fault on our `ret`: refuse rather than risk the thread.
      const features = readStatusOrUndefined(`/proc/${this.pid}/task/${t.tid}/status`)?.raw['x86_Thread_features'];
      if (features !== undefined && /\bshstk\b/.test(features)) {
        throw fail(PROCESS_INJECTION_FAILED, `thread ${t.tid} of process ${this.pid} runs with a shadow stack (CET); injected system calls are not supported there`);
      }
      const m = ptraceGetSigmask(t.tid);
      if (m < 0n) throw this.#ptraceError('PTRACE_GETSIGMASK', t.tid, Number(-m));
      t.sigmask = m;
    }
    if (t.fpstate === undefined) {
      const x = ptraceGetXstate(t.tid);
      if (typeof x === 'number') throw this.#ptraceError('PTRACE_GETREGSET NT_X86_XSTATE', t.tid, -x);
      try {
        t.fpstate = sigframeXstate(x);
      } catch (e) {
        throw fail(PROCESS_INJECTION_FAILED, `cannot inject a system call into process ${this.pid}: ${(e as Error).message}`, e);
      }
    }
    const resume = this.#resumeWords(t);
    const rsp = resume[REG_RSP]!;
    const at = frameLayout(rsp, t.fpstate.length);
    const stack = this.maps().find((m) => m.start <= at.sp && rsp - RED_ZONE <= m.end);
    if (stack === undefined || !stack.protection.write || !stack.protection.read) {
      t.noFrameRoom = true;
      throw fail(
        PROCESS_INJECTION_FAILED,
        `thread ${t.tid} of process ${this.pid} has no room for a ${Number(at.end - at.sp)}-byte restore frame below its stack pointer ` +
          `0x${rsp.toString(16)} (its stack mapping is too small or rsp is not in writable memory); pick another thread`,
      );
    }
    this.#memory.write(at.sp, buildSigframe(resume, t.sigmask, t.fpstate, g.sigreturn, at));
    t.frameSp = at.sp;
    t.frameValid = true;
    return at.sp;
  }

  /**
   * The registers `t` resumes with when it is detached from a syscall stop of ours (or returns
   * through the frame): its registers at the freeze with the kernel's syscall restart applied by
   * hand (arch/x86/kernel/signal.c arch_do_signal_or_restart: -ERESTARTSYS/-ERESTARTNOINTR/
   * -ERESTARTNOHAND re-execute the call, -ERESTART_RESTARTBLOCK runs restart_syscall) and
   * orig_rax = -1. Through the frame, restart_syscall is not usable (rt_sigreturn resets the
   * restart block), so there the original call is re-executed with its unchanged arguments.
   * The epoll EINTR rewind (restartInterruptedEpoll) is applied as thaw would.
   */
  #resumeWords(t: ThreadState, forFrame = true): BigUint64Array {
    const w = t.regs.words.slice();
    if (t.inSyscall) {
      const rax = w[REG_RAX]!;
      const orig = w[REG_ORIG_RAX]!;
      if (rax === RESTART_SYS || rax === RESTART_NOINTR || rax === RESTART_NOHAND) {
        w[REG_RIP] = w[REG_RIP]! - 2n;
        w[REG_RAX] = orig;
      } else if (rax === RESTART_BLOCK) {
        w[REG_RIP] = w[REG_RIP]! - 2n;
        w[REG_RAX] = forFrame && orig !== BigInt(SYS_restart_syscall) ? orig : BigInt(SYS_restart_syscall);
      } else if (this.#epollRewindable(t)) {
        w[REG_RIP] = w[REG_RIP]! - 2n;
        w[REG_RAX] = orig;
      }
    }
    w[REG_ORIG_RAX] = ORIG_RAX_NONE;
    return w;
  }

  /** Takes an armed thread back to its resume state: mask first (while `ret` → rt_sigreturn still restores everything), then registers. */
  #disarm(t: ThreadState): void {
    if (t.maskBlocked && t.sigmask !== undefined) {
      const r = ptraceSetSigmask(t.tid, t.sigmask);
      if (r < 0) throw this.#ptraceError('PTRACE_SETSIGMASK', t.tid, -r);
      t.maskBlocked = false;
    }
    injectFault()?.('mask-restored');
    const r = ptraceBuffer(PTRACE_SETREGS, t.tid, 0, this.#resumeWords(t, false));
    if (r < 0) throw this.#ptraceError('PTRACE_SETREGS', t.tid, -r);
    t.kernel = 'resume';
  }

  /**
   * The thread for an injection when the caller names none, best first: one stopped in user space
   * (no call to restart); one inside a call the kernel restarts from scratch; one inside a call that
   * returned (epoll's EINTR...); one inside a timed sleep (a patcher killed mid-injection makes it
   * re-execute the sleep with its full duration, or see EINTR if it was already restarted); one in
   * ppoll/pselect6/epoll_pwait/rt_sigsuspend (temporary signal mask: a patcher killed mid-injection
   * leaves that mask in place); a thread of a stopped (group-stop) process last. Threads holding an
   * intercepted signal are never used. The choice is kept for the whole freeze.
   */
  #pickInjectionThread(): ThreadState {
    if (this.#injector !== undefined && this.#injector.attached && this.#injector.stopped) return this.#injector;
    let best: ThreadState | undefined;
    let bestRank = Infinity;
    for (const t of this.threads as ThreadState[]) {
      if ((t.heldSignals.length > 0 && t.kernel !== 'armed') || t.noFrameRoom || (t.inRestartedSleep && t.kernel === 'same')) continue;
      let rank: number;
      if (t.stop === 'interrupt' || t.stop === 'injected') {
        if (!t.inSyscall) rank = 0;
        else if (t.temporaryMask) rank = 4;
        else if (t.regs.words[REG_RAX] === RESTART_BLOCK) rank = 3;
        else if (t.restartPending) rank = 1;
        else rank = 2;
      } else if (t.stop === 'group-stop') rank = 5;
      else continue;
      if (t.kernel === 'armed') rank = -1;
      if (rank < bestRank) {
        best = t;
        bestRank = rank;
      }
    }
    if (best === undefined) throw fail(PROCESS_INJECTION_FAILED, `no thread of process ${this.pid} is in a stop suitable to inject a system call`);
    this.#injector = best;
    return best;
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
      if (t.kernel === 'armed') {
        try {
          this.#disarm(t);
        } catch {
          // Dead or dying: nothing to restore. Alive, it returns through its frame.
        }
      } else if (t.kernel === 'same') {
        if (t.kernelRegsDiffer || t.regsDirty) ptraceBuffer(PTRACE_SETREGS, t.tid, 0, t.regs.words);
        if (this.#epollRewindable(t)) this.#rewindEpoll(t);
      }
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
    const rip = t.regs.words[REG_RIP]!;
    const w = this.#scratch.words;
    w.set(t.regs.words);
    w[REG_RIP] = rip - 2n;
    w[REG_RAX] = w[REG_ORIG_RAX]!;
    ptraceBuffer(PTRACE_SETREGS, t.tid, 0, w);
  }

  /** Whether thaw would rewind `t`'s interrupted epoll wait (see #rewindEpoll). */
  #epollRewindable(t: ThreadState): boolean {
    if (!this.#options.restartInterruptedEpoll || t.heldSignals.length > 0 || !t.epollInterrupted) return false;
    const st = readStatusOrUndefined(`/proc/${this.pid}/task/${t.tid}/status`);
    if (st === undefined) return false;
    if (((st.sigPnd | st.shdPnd) & ~(t.maskBlocked && t.sigmask !== undefined ? t.sigmask : st.sigBlk)) !== 0n) return false;
    let insn: Uint8Array;
    try {
      insn = this.#memory.read(t.regs.words[REG_RIP]! - 2n, 2);
    } catch {
      return false;
    }
    return insn[0] === 0x0f && insn[1] === 0x05;
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
      tids = this.#options.threads === undefined ? listTaskIds(this.pid) : undefined;
      this.phases.attach += Number(b - a) / 1000;
      this.phases.wait += Number(c - b) / 1000;
      this.phases.rescan += Number(process.hrtime.bigint() - c) / 1000;
      this.phases.rounds++;
      if (this.#options.threads !== undefined) {
        // Partial stop: no rescan (the others run and may create threads at any time).
        tids = [...this.#options.threads];
        break;
      }
      if (tids === undefined) break;
      if (!tids.some((tid) => !this.#threads.has(tid) && !this.#skipped.has(tid))) break;
    }
    const live = this.threads as ThreadState[];
    if (live.length === 0) {
      if (this.#options.threads !== undefined && this.#alive()) {
        throw fail(PROCESS_EXITED, `thread(s) ${this.#options.threads.join(', ')} of process ${this.pid} exited before they could be stopped`);
      }
      throw fail(PROCESS_EXITED, `process ${this.pid} exited while it was being frozen`);
    }
    if (this.#execSeen) {
      throw fail(PROCESS_EXECED, `process ${this.pid} called execve while being frozen; its code changed, analyse it again and retry`);
    }
    // Threads the kernel auto-attached that are not in our thread group (partial stop: every
    // thread we were not asked to stop, i.e. clone children).
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
      if (st.tracerPid !== 0) throw alreadyTraced(this.pid, st.tracerPid, tid);
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

function alreadyTraced(pid: number, tracer: number, tid = pid): ProcessError {
  let comm = '';
  try {
    comm = readFileSync(`/proc/${tracer}/comm`, 'utf8').trim();
  } catch {
    /* the tracer exited meanwhile */
  }
  const who = tracer === process.pid ? 'this process (it is already frozen here)' : `process ${tracer}${comm ? ` (${comm})` : ''}`;
  const what = tid === pid ? `process ${pid}` : `thread ${tid} of process ${pid}`;
  return fail(
    PROCESS_ALREADY_TRACED,
    `${what} is already traced by ${who}: detach the debugger/tracer (or wait for the other patcher) and retry; no thread was left stopped`,
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
 * tracer), PROCESS_PERMISSION_DENIED, PROCESS_EXITED (died during the attach; with
 * `options.threads`: also when every named thread exited), PROCESS_FREEZE_TIMEOUT, PROCESS_EXECED.
 * With `options.threads`, only those threads are stopped (see FreezeOptions.threads).
 */
export function freezeProcess(pid: number, options: FreezeOptions = {}): FrozenProcess {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new RangeError(`bad pid: ${pid}`);
  if (pid === process.pid) {
    throw fail(PROCESS_IS_SELF, 'refusing to freeze this process itself (the thread that would thaw it would be stopped)');
  }
  const opts: ResolvedFreezeOptions = {
    timeoutMs: options.timeoutMs ?? 2000,
    syscallTimeoutMs: options.syscallTimeoutMs ?? options.timeoutMs ?? 2000,
    restartInterruptedEpoll: options.restartInterruptedEpoll ?? true,
    boostPriority: options.boostPriority ?? 'fifo',
    threads: options.threads === undefined ? undefined : [...new Set(options.threads)],
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
  if (opts.threads !== undefined) {
    // Never seize a tid outside this thread group; one that exited since it was listed is skipped.
    if (opts.threads.length === 0) throw new RangeError('FreezeOptions.threads is empty');
    for (const tid of opts.threads) if (!Number.isSafeInteger(tid) || tid <= 0) throw new RangeError(`bad thread id: ${tid}`);
    const listed = new Set(tids);
    opts.threads = opts.threads.filter((tid) => listed.has(tid));
    if (opts.threads.length === 0) {
      throw fail(PROCESS_EXITED, `thread(s) ${[...new Set(options.threads)].join(', ')} are not (or no longer) threads of process ${pid}`);
    }
  }
  const fp = new FrozenProcess(pid, startTime, st.ppid === process.pid, opts);
  try {
    fp.attachAll(opts.threads === undefined ? tids : [...opts.threads]);
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
