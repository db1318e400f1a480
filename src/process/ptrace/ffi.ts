/**
 * The only module that imports koffi: thin synchronous bindings to libc's `ptrace`, `waitpid`,
 * `waitid`, `tgkill`,
 * `setpriority`/`sched_setscheduler` (for the calling thread only), and `flock` (process locks,
 * which Node's fs lacks).
 *
 * Every ptrace request must come from the thread that attached (the kernel records the tracer
 * task, not the process), so these functions are only ever called synchronously from the Node
 * main thread — never through koffi's `.async` (worker threads) and never from a worker.
 *
 * Hot paths avoid allocation: results are returned as numbers (negative = -errno) and the wait
 * status / siginfo are written into module-level typed arrays that callers read right away.
 */
import { createRequire } from 'node:module';

// `require`, not `import`: an ESM import of CommonJS scans its source for export names first.
const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');

const libc = koffi.load('libc.so.6');

// glibc declares `long ptrace(enum __ptrace_request, ...)`. Its x86-64 implementation reads the
// three variadic words from the register save area and never touches vector registers, so a fixed
// four-argument prototype is ABI-compatible (and avoids koffi's slower variadic path). Two
// prototypes of the same symbol: one passing integers, one passing a buffer pointer as `data`.
const ptraceInt = libc.func('ptrace', 'long', ['long', 'int', 'uintptr_t', 'uintptr_t']) as (
  req: number,
  pid: number,
  addr: number | bigint,
  data: number | bigint,
) => number;
const ptracePtr = libc.func('ptrace', 'long', ['long', 'int', 'uintptr_t', 'void *']) as (
  req: number,
  pid: number,
  addr: number | bigint,
  data: ArrayBufferView,
) => number;
const waitpidFn = libc.func('waitpid', 'int', ['int', 'int32_t *', 'int']) as (
  pid: number,
  status: Int32Array,
  options: number,
) => number;
const waitidFn = libc.func('waitid', 'int', ['int', 'int', 'void *', 'int']) as (
  idtype: number,
  id: number,
  info: ArrayBufferView,
  options: number,
) => number;
// The raw system call (not glibc's wrapper) for PTRACE_PEEKUSER: the kernel stores the word at
// `data`, so a word that happens to be -1 is not mistaken for an error.
const syscallPeek = libc.func('syscall', 'long', ['long', 'long', 'long', 'uintptr_t', 'void *']) as (
  nr: number,
  req: number,
  pid: number,
  addr: number,
  data: BigUint64Array,
) => number;
const flockFn = libc.func('flock', 'int', ['int', 'int']) as (fd: number, op: number) => number;
const tgkillFn = libc.func('tgkill', 'int', ['int', 'int', 'int']) as (tgid: number, tid: number, sig: number) => number;
const gettidFn = libc.func('gettid', 'int', []) as () => number;
const schedSetschedulerFn = libc.func('sched_setscheduler', 'int', ['int', 'int', 'int32_t *']) as (
  pid: number,
  policy: number,
  param: Int32Array,
) => number;
const schedGetschedulerFn = libc.func('sched_getscheduler', 'int', ['int']) as (pid: number) => number;
// sched_getattr/sched_setattr through the raw system call (Debian 12's glibc has no wrapper).
const schedAttrCall = libc.func('syscall', 'long', ['long', 'long', 'void *', 'long', 'long']) as (
  nr: number,
  tid: number,
  attr: ArrayBufferView,
  sizeOrFlags: number,
  flags: number,
) => number;
const getpriorityFn = libc.func('getpriority', 'int', ['int', 'int']) as (which: number, who: number) => number;
const setpriorityFn = libc.func('setpriority', 'int', ['int', 'int', 'int']) as (which: number, who: number, prio: number) => number;

/** Status word written by the last `waitTid` that returned a pid. */
export const waitStatus = new Int32Array(1);
/**
 * `siginfo_t` (128 bytes) written by the last `waitidPeek`: [0] si_signo, [2] si_code,
 * [4] si_pid, [6] si_status (offsets of the SIGCHLD member of the union, in 32-bit words).
 */
export const siginfo = new Int32Array(32);
const eventMsg = new BigUint64Array(1);

/** `errno` of the last failed libc call. */
function lastErrno(): number {
  return koffi.errno();
}

/**
 * ptrace with integer arguments. Returns the (non-negative) result, or -errno on failure.
 * Not for PTRACE_PEEK* requests (whose results may legitimately be negative).
 */
export function ptrace(req: number, tid: number, addr: number | bigint, data: number | bigint): number {
  const r = ptraceInt(req, tid, addr, data);
  return r === -1 ? -lastErrno() : r;
}

const peekWord = new BigUint64Array(1);
/** SYS_ptrace on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_ptrace = 101;
/** PTRACE_PEEKUSR (include/uapi/linux/ptrace.h). */
const PTRACE_PEEKUSER = 3;

/**
 * PTRACE_PEEKUSER: the word at `offset` in the tracee thread's `struct user` (read-only; e.g. the
 * debug registers at offsetof(struct user, u_debugreg)). The thread must be ptrace-stopped by us.
 * Returns the word, or a negative number (-errno) on failure.
 */
export function ptracePeekUser(tid: number, offset: number): bigint | number {
  const r = syscallPeek(SYS_ptrace, PTRACE_PEEKUSER, tid, offset, peekWord);
  return r === -1 ? -lastErrno() : peekWord[0]!;
}

/** ptrace whose `data` is a pointer to `buf` (GETREGS, SETREGS, GETEVENTMSG...). Returns 0 or -errno. */
export function ptraceBuffer(req: number, tid: number, addr: number | bigint, buf: ArrayBufferView): number {
  const r = ptracePtr(req, tid, addr, buf);
  return r === -1 ? -lastErrno() : r;
}

/** PTRACE_GETEVENTMSG: the new thread id after PTRACE_EVENT_CLONE (or -errno). */
export function ptraceGetEventMsg(tid: number): number {
  const r = ptracePtr(0x4201 /* PTRACE_GETEVENTMSG */, tid, 0, eventMsg);
  return r === -1 ? -lastErrno() : Number(eventMsg[0]!);
}

/**
 * waitpid(tid, &status, flags). Returns the pid that changed state (status in `waitStatus[0]`),
 * 0 when WNOHANG found nothing, or -errno.
 */
export function waitTid(tid: number, flags: number): number {
  const r = waitpidFn(tid, waitStatus, flags);
  return r === -1 ? -lastErrno() : r;
}

/**
 * waitid(P_PID, tid, &siginfo, flags) — used with WNOWAIT to look at a state change without
 * consuming it. Returns 0 (siginfo filled; si_pid 0 if nothing to report) or -errno.
 */
export function waitidPeek(tid: number, flags: number): number {
  siginfo.fill(0);
  const r = waitidFn(1 /* P_PID */, tid, siginfo, flags);
  return r === -1 ? -lastErrno() : r;
}

/** tgkill(tgid, tid, sig): re-queues a signal we had to take from a thread. Returns 0 or -errno. */
export function tgkill(tgid: number, tid: number, sig: number): number {
  const r = tgkillFn(tgid, tid, sig);
  return r === -1 ? -lastErrno() : r;
}

/** flock(2) operations. */
export const LOCK_EX = 2;
export const LOCK_NB = 4;

/**
 * flock(fd, op) on a file descriptor from node:fs. Returns 0 or -errno (-EWOULDBLOCK when another
 * open file description holds the lock). The kernel releases the lock when the last descriptor of
 * that open file is closed — also when the holder dies.
 */
export function flock(fd: number, op: number): number {
  const r = flockFn(fd, op);
  return r === -1 ? -lastErrno() : r;
}

const PRIO_PROCESS = 0;
export const SCHED_OTHER = 0;
const SCHED_FIFO = 1;
const SCHED_BATCH = 3;
export const SCHED_IDLE = 5;
const SYS_SCHED_SETATTR = 314;
const SYS_SCHED_GETATTR = 315;
/** struct sched_attr up to sched_period (SCHED_ATTR_SIZE_VER0). */
const SCHED_ATTR_SIZE = 48;
let selfTid = 0;
const schedParam = new Int32Array(1);
const schedAttrBytes = new Uint8Array(SCHED_ATTR_SIZE);
const schedAttrBuf = new DataView(schedAttrBytes.buffer);

/** A thread's scheduling as sched_getattr(2) reports it (the fields hotpatch changes). */
export interface SchedulingAttributes {
  policy: number;
  nice: number;
  /** SCHED_FIFO/RR priority. */
  priority: number;
  /** For SCHED_OTHER on kernel >= 6.12: the requested time slice (0 = the default); ns. */
  runtimeNs: bigint;
}

/** sched_getattr(2) of thread `tid` (0 = the calling thread); undefined if the kernel refuses. */
export function getSchedulingAttributes(tid: number): SchedulingAttributes | undefined {
  if (schedAttrCall(SYS_SCHED_GETATTR, tid, schedAttrBytes, SCHED_ATTR_SIZE, 0) !== 0) return undefined;
  return {
    policy: schedAttrBuf.getUint32(4, true),
    nice: schedAttrBuf.getInt32(16, true),
    priority: schedAttrBuf.getUint32(20, true),
    runtimeNs: schedAttrBuf.getBigUint64(24, true),
  };
}

/** sched_setattr(2) of thread `tid`; false if the kernel refuses (the thread keeps its scheduling). */
export function setSchedulingAttributes(tid: number, attr: SchedulingAttributes): boolean {
  schedAttrBytes.fill(0);
  schedAttrBuf.setUint32(0, SCHED_ATTR_SIZE, true);
  schedAttrBuf.setUint32(4, attr.policy, true);
  schedAttrBuf.setInt32(16, attr.nice, true);
  schedAttrBuf.setUint32(20, attr.priority, true);
  schedAttrBuf.setBigUint64(24, attr.runtimeNs, true);
  return schedAttrCall(SYS_SCHED_SETATTR, tid, schedAttrBytes, 0, 0) === 0;
}

/** How the calling thread was scheduled before boostThread(), to undo it. */
export interface SchedulingState {
  saved: SchedulingAttributes | undefined;
  nice: number;
  boosted: 'fifo' | 'nice' | 'none';
}

/**
 * Raises the calling thread (only this thread) for a short critical window: SCHED_FIFO priority 1
 * when `mode` is 'fifo' and permitted, else nice -20, else nothing. Returns what to restore.
 * Why: while the target is frozen the tracer must not queue behind every runnable thread of the
 * machine (including the target's own threads as they resume) between two ptrace requests; on a
 * loaded 2-core machine that alone multiplies the pause by 10-100. The kernel's RT throttling
 * still leaves other tasks 5% of the CPU even if the window overran. A CLI that runs as SCHED_IDLE
 * or with a short time slice (src/cli/priority.ts) is raised too, and gets exactly that back.
 */
export function boostThread(mode: 'fifo' | 'nice'): SchedulingState {
  if (selfTid === 0) selfTid = gettidFn();
  const saved = getSchedulingAttributes(selfTid);
  const policy = saved?.policy ?? schedGetschedulerFn(selfTid);
  koffi.errno(0);
  let nice = getpriorityFn(PRIO_PROCESS, selfTid);
  if (nice === -1 && lastErrno() !== 0) nice = 0;
  const state: SchedulingState = { saved, nice, boosted: 'none' };
  if (policy !== SCHED_OTHER && policy !== SCHED_BATCH && policy !== SCHED_IDLE) return state; // real-time already
  if (mode === 'fifo') {
    schedParam[0] = 1;
    if (schedSetschedulerFn(selfTid, SCHED_FIFO, schedParam) === 0) {
      state.boosted = 'fifo';
      return state;
    }
  }
  if (policy !== SCHED_IDLE && setpriorityFn(PRIO_PROCESS, selfTid, -20) === 0) state.boosted = 'nice';
  return state;
}

/** Undoes boostThread(). */
export function restoreThread(state: SchedulingState): void {
  if (state.boosted === 'none') return;
  if (state.saved !== undefined && setSchedulingAttributes(selfTid, state.saved)) return;
  if (state.boosted === 'fifo') {
    schedParam[0] = 0;
    schedSetschedulerFn(selfTid, SCHED_OTHER, schedParam);
  } else setpriorityFn(PRIO_PROCESS, selfTid, state.nice);
}

/** NT_X86_XSTATE (include/uapi/linux/elf.h): the thread's XSAVE image, standard (non-compacted) format. */
const NT_X86_XSTATE = 0x202;
const PTRACE_GETREGSET = 0x4204;
/** Largest XSAVE image we accept (AMX tiles make it ~11 KiB; signal frames never exceed this). */
const XSTATE_MAX = 16384;
let xstateBuf: unknown;
let xstateAddr = 0n;
const iov = new BigUint64Array(2);

/**
 * PTRACE_GETREGSET NT_X86_XSTATE: a copy of the thread's full XSAVE image (x87, SSE, AVX, AVX-512,
 * PKRU... in the standard layout of the XSAVE instruction; bytes 464..511, `sw_reserved`, hold
 * the XCR0 feature mask in their first word, arch/x86/kernel/fpu/regset.c), or -errno. The kernel
 * writes through an iovec, so the buffer is native memory owned by this module.
 */
export function ptraceGetXstate(tid: number): Uint8Array | number {
  if (xstateBuf === undefined) {
    xstateBuf = koffi.alloc('uint8_t', XSTATE_MAX);
    xstateAddr = BigInt(koffi.address(xstateBuf));
  }
  iov[0] = xstateAddr;
  iov[1] = BigInt(XSTATE_MAX);
  const r = ptracePtr(PTRACE_GETREGSET, tid, NT_X86_XSTATE, iov);
  if (r === -1) return -lastErrno();
  const len = Number(iov[1]!);
  return new Uint8Array(koffi.view(xstateBuf, len)).slice(0, len);
}

const sigmaskCell = new BigUint64Array(1);

/** PTRACE_GETSIGMASK: the thread's blocked-signal mask (bit n-1 = signal n), or a negative -errno. */
export function ptraceGetSigmask(tid: number): bigint {
  const r = ptracePtr(0x420a /* PTRACE_GETSIGMASK */, tid, 8, sigmaskCell);
  return r === -1 ? BigInt(-lastErrno()) : sigmaskCell[0]!;
}

/** PTRACE_SETSIGMASK (the kernel never blocks SIGKILL/SIGSTOP). Returns 0 or -errno. */
export function ptraceSetSigmask(tid: number, mask: bigint): number {
  sigmaskCell[0] = BigInt.asUintN(64, mask);
  const r = ptracePtr(0x420b /* PTRACE_SETSIGMASK */, tid, 8, sigmaskCell);
  return r === -1 ? -lastErrno() : r;
}
