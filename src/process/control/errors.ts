/**
 * Stable error codes of process control (freeze, registers, writes, injected syscalls). Codes the
 * read-only inspector already defines (PROCESS_NOT_FOUND, PROCESS_ZOMBIE,
 * PROCESS_PERMISSION_DENIED, PROCESS_KERNEL_THREAD, PROCESS_MEMORY_UNREADABLE) are reused from it.
 */
import { ProcessError } from '../../errors.js';
import { ERRNO_NAMES } from '../ptrace/constants.js';

/** Another tracer (debugger, strace, a second hotpatch) is attached; message names its pid. */
export const PROCESS_ALREADY_TRACED = 'PROCESS_ALREADY_TRACED';
/** The process exited (or was killed) while we were attaching or while it was frozen. */
export const PROCESS_EXITED = 'PROCESS_EXITED';
/** Some thread did not reach a ptrace-stop in time (uninterruptible sleep, vfork parent...). */
export const PROCESS_FREEZE_TIMEOUT = 'PROCESS_FREEZE_TIMEOUT';
/** The FrozenProcess was already thawed (or the thread is not part of it). */
export const PROCESS_NOT_FROZEN = 'PROCESS_NOT_FROZEN';
/** Refused: freezing our own process would stop the thread that has to thaw it. */
export const PROCESS_IS_SELF = 'PROCESS_IS_SELF';
/** The pid names a thread, not a process (thread-group leader). */
export const PROCESS_IS_THREAD = 'PROCESS_IS_THREAD';
/** The process called execve while being frozen: its memory is no longer what was analysed. */
export const PROCESS_EXECED = 'PROCESS_EXECED';
/** pwrite to /proc/PID/mem failed (address not mapped). */
export const PROCESS_MEMORY_UNWRITABLE = 'PROCESS_MEMORY_UNWRITABLE';
/** writeMemoryChecked found other bytes than expected; nothing was written. */
export const PROCESS_MEMORY_MISMATCH = 'PROCESS_MEMORY_MISMATCH';
/** An injected system call returned an error (see RemoteSyscallError.errno). */
export const PROCESS_REMOTE_SYSCALL_FAILED = 'PROCESS_REMOTE_SYSCALL_FAILED';
/** A system call could not be injected (no `syscall` instruction found, unexpected stop...). */
export const PROCESS_INJECTION_FAILED = 'PROCESS_INJECTION_FAILED';
/** No free gap of the requested size within reach of the address. */
export const PROCESS_NO_NEAR_GAP = 'PROCESS_NO_NEAR_GAP';
/** A ptrace request failed with an errno we have no better explanation for. */
export const PROCESS_PTRACE_FAILED = 'PROCESS_PTRACE_FAILED';

/** Symbolic errno name, e.g. 12 → "ENOMEM". */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** An injected system call (mmap, mprotect, munmap...) returned -errno in the target. */
export class RemoteSyscallError extends ProcessError {
  readonly pid: number;
  /** Name of the call, e.g. "mmap". */
  readonly syscall: string;
  /** Positive errno value returned by the kernel. */
  readonly errno: number;
  /** Symbolic errno, e.g. "ENOMEM". */
  readonly errnoName: string;
  constructor(pid: number, syscall: string, errno: number, detail: string) {
    const name = errnoName(errno);
    super(
      PROCESS_REMOTE_SYSCALL_FAILED,
      `${syscall}(${detail}) in process ${pid} failed with ${name}` +
        (errno === 12 ? ': the process is out of memory or address space (check its limits)' : '') +
        (errno === 1 || errno === 13 ? ': refused by the kernel (seccomp filter, SELinux or memory policy?)' : ''),
    );
    this.pid = pid;
    this.syscall = syscall;
    this.errno = errno;
    this.errnoName = name;
  }
}

/** writeMemoryChecked refused to write because the target holds other bytes. */
export class MemoryMismatchError extends ProcessError {
  readonly pid: number;
  readonly address: bigint;
  readonly expected: Uint8Array;
  readonly actual: Uint8Array;
  constructor(pid: number, address: bigint, expected: Uint8Array, actual: Uint8Array) {
    const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
    super(
      PROCESS_MEMORY_MISMATCH,
      `process ${pid} holds ${hex(actual)} at 0x${address.toString(16)}, expected ${hex(expected)}: ` +
        'nothing was written (the process runs another build, or another tool changed this code)',
    );
    this.pid = pid;
    this.address = address;
    this.expected = expected;
    this.actual = actual;
  }
}
