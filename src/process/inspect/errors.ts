import { ProcessError } from '../../errors.js';

/** Stable error codes of the read-only inspector (the CLI and scripts match on them). */
export const PROCESS_NOT_FOUND = 'PROCESS_NOT_FOUND';
export const PROCESS_ZOMBIE = 'PROCESS_ZOMBIE';
export const PROCESS_PERMISSION_DENIED = 'PROCESS_PERMISSION_DENIED';
export const PROCESS_KERNEL_THREAD = 'PROCESS_KERNEL_THREAD';
export const PROCESS_MEMORY_UNREADABLE = 'PROCESS_MEMORY_UNREADABLE';
export const PROCESS_BAD_PROCFS = 'PROCESS_BAD_PROCFS';
export const PROCESS_IO_ERROR = 'PROCESS_IO_ERROR';
export const PROCESS_MODULE_NOT_FOUND = 'PROCESS_MODULE_NOT_FOUND';

/**
 * A memory range of a live process could not be read (unmapped, guard page, PROT_NONE device
 * mapping...). `address` is the first byte that could not be read.
 */
export class MemoryReadError extends ProcessError {
  readonly pid: number;
  readonly address: bigint;
  constructor(pid: number, address: bigint, length: number, options?: { cause?: unknown }) {
    super(
      PROCESS_MEMORY_UNREADABLE,
      `cannot read ${length} byte(s) of process ${pid} at 0x${address.toString(16)}: the address is not mapped or not readable`,
      options,
    );
    this.pid = pid;
    this.address = address;
  }
}

/** Maps a Node fs error (errno code) met while reading /proc/PID/... to a typed ProcessError. */
export function processErrorFromErrno(e: unknown, pid: number, what: string): ProcessError {
  if (e instanceof ProcessError) return e;
  const code = (e as { code?: string } | null)?.code;
  if (code === 'ENOENT' || code === 'ESRCH') {
    return new ProcessError(PROCESS_NOT_FOUND, `process ${pid} does not exist (or exited while ${what})`, { cause: e });
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return new ProcessError(
      PROCESS_PERMISSION_DENIED,
      `permission denied while ${what} of process ${pid}: run as root, or as the same user with /proc/sys/kernel/yama/ptrace_scope set to 0`,
      { cause: e },
    );
  }
  return new ProcessError(PROCESS_IO_ERROR, `cannot read ${what} of process ${pid}: ${(e as Error)?.message ?? String(e)}`, {
    cause: e,
  });
}
