/**
 * `struct user_regs_struct` of x86-64 (<sys/user.h>, arch/x86/include/asm/user_64.h): 27 unsigned
 * 64-bit words, filled by PTRACE_GETREGS and written back by PTRACE_SETREGS.
 */

/** Register names in the exact order of `struct user_regs_struct`. */
export const USER_REGS_NAMES = [
  'r15',
  'r14',
  'r13',
  'r12',
  'rbp',
  'rbx',
  'r11',
  'r10',
  'r9',
  'r8',
  'rax',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'orig_rax',
  'rip',
  'cs',
  'eflags',
  'rsp',
  'ss',
  'fs_base',
  'gs_base',
  'ds',
  'es',
  'fs',
  'gs',
] as const;

export type RegisterName = (typeof USER_REGS_NAMES)[number];

/** Number of 64-bit words in `struct user_regs_struct`. */
export const USER_REGS_WORDS = 27;
/** sizeof(struct user_regs_struct). */
export const USER_REGS_SIZE = USER_REGS_WORDS * 8;

const INDEX: Readonly<Record<RegisterName, number>> = Object.fromEntries(
  USER_REGS_NAMES.map((n, i) => [n, i]),
) as Record<RegisterName, number>;

// Word indexes used on hot paths.
export const REG_R9 = INDEX.r9;
export const REG_R8 = INDEX.r8;
export const REG_R10 = INDEX.r10;
export const REG_RAX = INDEX.rax;
export const REG_RDX = INDEX.rdx;
export const REG_RCX = INDEX.rcx;
export const REG_RSI = INDEX.rsi;
export const REG_RDI = INDEX.rdi;
export const REG_ORIG_RAX = INDEX.orig_rax;
export const REG_RIP = INDEX.rip;
export const REG_RSP = INDEX.rsp;

/**
 * A thread's general-purpose registers, backed by the 216-byte buffer the kernel reads and writes.
 * Values are unsigned 64-bit bigints (so `orig_rax` = -1 reads as 0xffff_ffff_ffff_ffff; use
 * `signed()` for the kernel's signed view).
 */
export class RegisterSet {
  /** The raw `struct user_regs_struct` words (what PTRACE_GETREGS/SETREGS transfer). */
  readonly words: BigUint64Array;

  constructor(words?: BigUint64Array) {
    if (words !== undefined && words.length !== USER_REGS_WORDS) {
      throw new RangeError(`user_regs_struct has ${USER_REGS_WORDS} words, got ${words.length}`);
    }
    this.words = words ?? new BigUint64Array(USER_REGS_WORDS);
  }

  /** Value of register `name` (unsigned). */
  get(name: RegisterName): bigint {
    return this.words[INDEX[name]]!;
  }

  /** Sets register `name`; negative values are stored as two's complement. */
  set(name: RegisterName, value: bigint): void {
    this.words[INDEX[name]] = BigInt.asUintN(64, value);
  }

  /** Signed view of a register (e.g. `signed('rax')` = -512 for -ERESTARTSYS). */
  signed(name: RegisterName): bigint {
    return BigInt.asIntN(64, this.words[INDEX[name]]!);
  }

  get rip(): bigint {
    return this.words[REG_RIP]!;
  }
  get rsp(): bigint {
    return this.words[REG_RSP]!;
  }
  get rax(): bigint {
    return this.words[REG_RAX]!;
  }
  get origRax(): bigint {
    return this.words[REG_ORIG_RAX]!;
  }

  /** An independent copy. */
  clone(): RegisterSet {
    return new RegisterSet(this.words.slice());
  }

  /** Copies every word from `other` into this set. */
  assign(other: RegisterSet): void {
    this.words.set(other.words);
  }

  /** Plain object of all registers (for logs and JSON output; hex strings). */
  toJSON(): Record<RegisterName, string> {
    const out = {} as Record<RegisterName, string>;
    USER_REGS_NAMES.forEach((n, i) => {
      out[n] = `0x${this.words[i]!.toString(16)}`;
    });
    return out;
  }
}
