/**
 * Kernel constants for process control on Linux x86-64, with their kernel names so they grep.
 * Sources: include/uapi/linux/ptrace.h, include/uapi/linux/wait.h, include/uapi/asm-generic/errno*.h,
 * arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/mman*.h, include/linux/errno.h.
 */

// ptrace requests (include/uapi/linux/ptrace.h, arch/x86/include/uapi/asm/ptrace-abi.h).
export const PTRACE_CONT = 7;
export const PTRACE_SINGLESTEP = 9;
export const PTRACE_GETREGS = 12;
export const PTRACE_SETREGS = 13;
export const PTRACE_DETACH = 17;
export const PTRACE_SYSCALL = 24;
export const PTRACE_SETOPTIONS = 0x4200;
export const PTRACE_GETEVENTMSG = 0x4201;
export const PTRACE_GETSIGINFO = 0x4202;
export const PTRACE_SEIZE = 0x4206;
export const PTRACE_INTERRUPT = 0x4207;
export const PTRACE_LISTEN = 0x4208;

// ptrace options.
export const PTRACE_O_TRACESYSGOOD = 0x01;
export const PTRACE_O_TRACEFORK = 0x02;
export const PTRACE_O_TRACEVFORK = 0x04;
export const PTRACE_O_TRACECLONE = 0x08;
export const PTRACE_O_TRACEEXEC = 0x10;
export const PTRACE_O_TRACEEXIT = 0x40;

// ptrace events (status >> 16 of a ptrace-stop).
export const PTRACE_EVENT_FORK = 1;
export const PTRACE_EVENT_VFORK = 2;
export const PTRACE_EVENT_CLONE = 3;
export const PTRACE_EVENT_EXEC = 4;
export const PTRACE_EVENT_EXIT = 6;
export const PTRACE_EVENT_STOP = 128;

// wait flags (include/uapi/linux/wait.h).
export const WNOHANG = 0x00000001;
export const WSTOPPED = 0x00000002;
export const WEXITED = 0x00000004;
export const WNOWAIT = 0x01000000;
export const __WALL = 0x40000000;
export const P_PID = 1;
// siginfo si_code values for SIGCHLD (include/uapi/asm-generic/siginfo.h).
export const CLD_EXITED = 1;
export const CLD_KILLED = 2;
export const CLD_DUMPED = 3;
export const CLD_TRAPPED = 4;
export const CLD_STOPPED = 5;

// Signals.
export const SIGTRAP = 5;
export const SIGKILL = 9;
export const SIGSTOP = 19;

// errno values (include/uapi/asm-generic/errno-base.h, errno.h).
export const EPERM = 1;
export const ENOENT = 2;
export const ESRCH = 3;
export const EINTR = 4;
export const EIO = 5;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const EINVAL = 22;
export const ECHILD = 10;
export const EAGAIN = 11;
export const ENOSYS = 38;

/** Kernel-internal restart codes a thread stopped inside a syscall may hold in rax (include/linux/errno.h). */
export const ERESTARTSYS = 512;
export const ERESTARTNOINTR = 513;
export const ERESTARTNOHAND = 514;
export const ERESTART_RESTARTBLOCK = 516;

/** Symbolic names for the errno values a remote mmap/mprotect/munmap may return. */
export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: 'EPERM',
  2: 'ENOENT',
  3: 'ESRCH',
  4: 'EINTR',
  5: 'EIO',
  9: 'EBADF',
  11: 'EAGAIN',
  12: 'ENOMEM',
  13: 'EACCES',
  14: 'EFAULT',
  16: 'EBUSY',
  17: 'EEXIST',
  19: 'ENODEV',
  22: 'EINVAL',
  23: 'ENFILE',
  24: 'EMFILE',
  38: 'ENOSYS',
  75: 'EOVERFLOW',
  512: 'ERESTARTSYS',
  513: 'ERESTARTNOINTR',
  514: 'ERESTARTNOHAND',
  516: 'ERESTART_RESTARTBLOCK',
};

// x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
export const SYS_read = 0;
export const SYS_write = 1;
export const SYS_mmap = 9;
export const SYS_mprotect = 10;
export const SYS_munmap = 11;
export const SYS_nanosleep = 35;
export const SYS_getpid = 39;
export const SYS_accept = 43;
export const SYS_clone = 56;
export const SYS_futex = 202;
export const SYS_restart_syscall = 219;
export const SYS_epoll_wait = 232;
export const SYS_clock_nanosleep = 230;
export const SYS_accept4 = 288;
export const SYS_epoll_pwait = 281;
export const SYS_epoll_pwait2 = 441;
export const SYS_gettid = 186;

// mmap/mprotect (include/uapi/asm-generic/mman-common.h, mman.h, linux/mman.h).
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
/** Since Linux 4.17; older kernels ignore it and treat the address as a hint (checked by the caller). */
export const MAP_FIXED_NOREPLACE = 0x100000;

/** Page size of x86-64 Linux user space. */
export const PAGE_SIZE = 4096;
/** One past the highest user-space address with 4-level page tables (TASK_SIZE_MAX = 2^47 - 4096). */
export const TASK_SIZE_MAX = 0x7fff_ffff_f000n;
