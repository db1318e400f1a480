/**
 * Process control through ptrace: freeze every thread (or hijack one, or check threads one at a
 * time: hijack.ts), registers, memory writes through
 * /proc/PID/mem, injected system calls (mmap/mprotect/munmap), near allocation, stack scan.
 * All calls are synchronous and must stay on the thread that froze the process.
 */
export {
  freezeProcess,
  FrozenProcess,
  pendingDetaches,
  type FreezeOptions,
  type FrozenThread,
  type StopKind,
} from './freeze.js';
export {
  hijackThread,
  rollingThreadsUsing,
  type HijackOptions,
  type RollingCheckOptions,
  type RollingCheckResult,
} from './hijack.js';
export { ProcessMemory, openProcessMemory } from './memory.js';
export {
  PROCESS_ALREADY_TRACED,
  PROCESS_EXECED,
  PROCESS_EXITED,
  PROCESS_FREEZE_TIMEOUT,
  PROCESS_INJECTION_FAILED,
  PROCESS_IS_SELF,
  PROCESS_IS_THREAD,
  PROCESS_MEMORY_MISMATCH,
  PROCESS_MEMORY_UNWRITABLE,
  PROCESS_NOT_FROZEN,
  PROCESS_NO_NEAR_GAP,
  PROCESS_PTRACE_FAILED,
  PROCESS_REMOTE_SYSCALL_FAILED,
  MemoryMismatchError,
  RemoteSyscallError,
  errnoName,
} from './errors.js';
export { remoteMmap, remoteMprotect, remoteMunmap, protString, type RemoteCallOptions } from './remote.js';
export { allocateNear, allocateWithin, freeGaps, placementCandidates, REL32_REACH, type RemoteAllocation } from './alloc.js';
export { findThreadsUsing, type AddressRange, type RangeUse, type StackScanOptions, type StoppedThreads } from './stack-scan.js';
export { findSyscallGadget, prepareSyscallGadget } from './syscall-gadget.js';
export { RegisterSet, USER_REGS_NAMES, type RegisterName } from '../ptrace/regs.js';
export { flock, LOCK_EX, LOCK_NB, ptracePeekUser } from '../ptrace/ffi.js';
export {
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  PROT_EXEC,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  SYS_mmap,
  SYS_mprotect,
  SYS_munmap,
  SYS_getpid,
  SYS_gettid,
} from '../ptrace/constants.js';
