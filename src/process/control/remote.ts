/**
 * mmap / mprotect / munmap run inside a frozen target (injected system calls), with the kernel's
 * -errno results turned into RemoteSyscallError.
 */
import { SYS_mmap, SYS_mprotect, SYS_munmap, MAP_ANONYMOUS, PROT_EXEC, PROT_READ, PROT_WRITE } from '../ptrace/constants.js';
import { RemoteSyscallError } from './errors.js';
import type { FrozenProcess } from './freeze.js';

/** Results in [-4095, -1] are -errno (the kernel's IS_ERR_VALUE convention). */
function errnoOf(result: bigint): number | undefined {
  return result < 0n && result >= -4095n ? Number(-result) : undefined;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** "PROT_READ|PROT_WRITE" rendering for messages. */
export function protString(prot: number): string {
  if (prot === 0) return 'PROT_NONE';
  const parts: string[] = [];
  if (prot & PROT_READ) parts.push('PROT_READ');
  if (prot & PROT_WRITE) parts.push('PROT_WRITE');
  if (prot & PROT_EXEC) parts.push('PROT_EXEC');
  return parts.join('|');
}

/** Options of an injected call. */
export interface RemoteCallOptions {
  /** Thread to run the call on (default: the first thread stopped by our interrupt). */
  tid?: number;
}

/**
 * mmap(addr, length, prot, flags, fd, offset) in the target; returns the mapped address.
 * `addr` is a hint unless `flags` has MAP_FIXED / MAP_FIXED_NOREPLACE.
 */
export function remoteMmap(
  frozen: FrozenProcess,
  addr: bigint,
  length: number | bigint,
  prot: number,
  flags: number,
  fd = -1,
  offset: bigint = 0n,
  options: RemoteCallOptions = {},
): bigint {
  const len = BigInt(length);
  const r = frozen.injectSyscall(SYS_mmap, [addr, len, prot, flags, fd, offset], options);
  const errno = errnoOf(r);
  if (errno !== undefined) {
    const what = `${hex(addr)}, ${len}, ${protString(prot)}, 0x${flags.toString(16)}${flags & MAP_ANONYMOUS ? ' (anonymous)' : ''}`;
    throw new RemoteSyscallError(frozen.pid, 'mmap', errno, what);
  }
  return BigInt.asUintN(64, r);
}

/** mprotect(addr, length, prot) in the target. */
export function remoteMprotect(frozen: FrozenProcess, addr: bigint, length: number | bigint, prot: number, options: RemoteCallOptions = {}): void {
  const r = frozen.injectSyscall(SYS_mprotect, [addr, BigInt(length), prot], options);
  const errno = errnoOf(r);
  if (errno !== undefined) throw new RemoteSyscallError(frozen.pid, 'mprotect', errno, `${hex(addr)}, ${length}, ${protString(prot)}`);
}

/** munmap(addr, length) in the target. */
export function remoteMunmap(frozen: FrozenProcess, addr: bigint, length: number | bigint, options: RemoteCallOptions = {}): void {
  const r = frozen.injectSyscall(SYS_munmap, [addr, BigInt(length)], options);
  const errno = errnoOf(r);
  if (errno !== undefined) throw new RemoteSyscallError(frozen.pid, 'munmap', errno, `${hex(addr)}, ${length}`);
}
