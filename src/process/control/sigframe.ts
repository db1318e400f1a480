/**
 * A fake x86-64 signal frame (`struct rt_sigframe`) that makes an injected system call
 * self-restoring: the thread runs `syscall; ret` with rsp at the frame, `ret` pops the frame's
 * `pretcode` (an existing rt_sigreturn sequence) and rt_sigreturn reloads the thread's own state
 * from the frame. If the patcher is killed at any instant of an injection, the kernel detaches the
 * thread and it finishes the call and returns exactly where it would have resumed.
 *
 * Layouts (Linux, arch/x86/include/asm/sigframe.h, include/uapi/asm-generic/ucontext.h,
 * arch/x86/include/uapi/asm/sigcontext.h, arch/x86/kernel/signal_64.c, fpu/signal.c):
 *   rt_sigframe  { char *pretcode; struct ucontext uc; struct siginfo info; }   = 8 + 304 + 128
 *   ucontext     { u64 uc_flags; ucontext *uc_link; stack_t uc_stack (24); sigcontext (256); sigset_t (8) }
 *   sigcontext   { r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags, u16 cs, gs, fs, ss,
 *                  err, trapno, oldmask, cr2, fpstate *, reserved1[8] }
 * rt_sigreturn reads the frame at rsp - 8 (after `ret` popped pretcode), sets the blocked mask
 * from uc_sigmask, the registers from uc_mcontext (orig_rax = -1, so no syscall restart; TF/RF
 * come from the saved eflags; cs/ss forced to user mode), XRSTORs the FPU state from `fpstate`
 * (a NULL fpstate would reset the FPU; a bad one SIGSEGVs the thread) and calls restore_altstack,
 * which ignores every error of do_sigaltstack but EFAULT: an invalid ss_flags (3) leaves the
 * thread's sigaltstack unchanged. Not restored: fs_base/gs_base (untouched by sigreturn), and
 * `current->restart_block` is reset, so an interrupted call that would go through
 * restart_syscall must be re-executed instead (see resume state in freeze.ts).
 */

/** sizeof(struct rt_sigframe) on x86-64. */
export const RT_SIGFRAME_SIZE = 440;
/** The signal frame sits below the red zone (System V ABI: 128 bytes below rsp belong to the function). */
export const RED_ZONE = 128n;
/** uc_flags the kernel itself uses (UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS). */
const UC_FLAGS = 0x7n;
/** struct _fpx_sw_bytes magic (arch/x86/include/uapi/asm/sigcontext.h). */
export const FP_XSTATE_MAGIC1 = 0x46505853;
export const FP_XSTATE_MAGIC2 = 0x46505845;
/** Offset of `sw_reserved` in the legacy FXSAVE area (struct fxregs_state). */
const SW_RESERVED = 464;
/** 512-byte legacy area + 64-byte XSAVE header. */
const MIN_XSTATE = 576;
/** XFEATURE_XTILE_CFG / XFEATURE_XTILE_DATA (AMX): their signal size depends on a per-process permission. */
const XFEATURE_MASK_XTILE = (1n << 17n) | (1n << 18n);
const SS_FLAGS_INVALID = 3;

// struct user_regs_struct word indexes (src/process/ptrace/regs.ts order) of the sigcontext fields
// r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags.
const SIGCONTEXT_FROM_USER_REGS = [9, 8, 7, 6, 3, 2, 1, 0, 14, 13, 4, 5, 12, 10, 11, 19, 16, 18];
const USER_CS = 17;
const USER_SS = 20;
const USER_RSP = 19;

/** Why a frame cannot be built (the caller turns it into a typed error). */
export class SigframeError extends Error {}

/**
 * Turns a PTRACE_GETREGSET NT_X86_XSTATE image into the `fpstate` a signal frame carries: the
 * regset puts the XCR0 mask in the first word of sw_reserved; a signal frame needs struct
 * _fpx_sw_bytes there (magic1, extended_size, xfeatures, xstate_size) and FP_XSTATE_MAGIC2 right
 * after xstate_size bytes, else the kernel restores only the legacy x87/SSE part. xstate_size
 * must not exceed the task's fpstate->user_size, which equals the regset size unless the CPU has
 * AMX (then it depends on a per-process permission we cannot read): refused there.
 */
export function sigframeXstate(regset: Uint8Array): Uint8Array {
  if (regset.length < MIN_XSTATE) throw new SigframeError(`XSAVE image of ${regset.length} bytes is too short`);
  const dv = new DataView(regset.buffer, regset.byteOffset, regset.byteLength);
  const xcr0 = dv.getBigUint64(SW_RESERVED, true);
  if ((xcr0 & XFEATURE_MASK_XTILE) !== 0n) {
    throw new SigframeError('the CPU has AMX tile state, whose signal-frame size depends on a per-process permission hotpatch cannot read');
  }
  const size = regset.length;
  const out = new Uint8Array(size + 4);
  out.set(regset);
  const o = new DataView(out.buffer);
  for (let i = SW_RESERVED; i < 512; i++) out[i] = 0;
  o.setUint32(SW_RESERVED, FP_XSTATE_MAGIC1, true);
  o.setUint32(SW_RESERVED + 4, size + 4, true); // extended_size: xstate + magic2
  o.setBigUint64(SW_RESERVED + 8, xcr0, true); // xfeatures
  o.setUint32(SW_RESERVED + 16, size, true); // xstate_size
  o.setUint32(size, FP_XSTATE_MAGIC2, true);
  return out;
}

/**
 * Where a frame for a thread with stack pointer `rsp` goes: [sp, end), fpstate 64-byte aligned,
 * sp at 8 mod 16 like the kernel's get_sigframe (so `pretcode` can serve as the return address of
 * an injected function call, whose entry the ABI wants at rsp + 8 aligned to 16).
 */
export function frameLayout(rsp: bigint, fpstateSize: number): { sp: bigint; fpstate: bigint; end: bigint } {
  const fpstate = (rsp - RED_ZONE - BigInt(fpstateSize)) & ~63n;
  const sp = fpstate - 456n; // 440 rounded up to 8 mod 16 below the aligned fpstate
  return { sp, fpstate, end: fpstate + BigInt(fpstateSize) };
}

/**
 * The bytes of a frame that resumes a thread in `resume` (user_regs_struct words) with blocked
 * mask `sigmask` and FPU state `fpstate` (from sigframeXstate). `at` = frameLayout(...).
 */
export function buildSigframe(
  resume: BigUint64Array,
  sigmask: bigint,
  fpstate: Uint8Array,
  sigreturn: bigint,
  at: { sp: bigint; fpstate: bigint; end: bigint },
): Uint8Array {
  const bytes = new Uint8Array(Number(at.end - at.sp));
  const dv = new DataView(bytes.buffer);
  dv.setBigUint64(0, sigreturn, true); // pretcode
  dv.setBigUint64(8, UC_FLAGS, true);
  dv.setBigUint64(16, 0n, true); // uc_link
  dv.setBigUint64(24, 0n, true); // uc_stack.ss_sp
  dv.setInt32(32, SS_FLAGS_INVALID, true); // uc_stack.ss_flags: rejected by do_sigaltstack, altstack kept
  dv.setBigUint64(40, 0n, true); // uc_stack.ss_size
  const mc = 48;
  SIGCONTEXT_FROM_USER_REGS.forEach((w, i) => dv.setBigUint64(mc + i * 8, resume[w]!, true));
  dv.setUint16(mc + 144, Number(resume[USER_CS]! & 0xffffn), true); // cs
  dv.setUint16(mc + 150, Number(resume[USER_SS]! & 0xffffn), true); // ss (gs/fs at 146/148 unused on 64-bit)
  dv.setBigUint64(mc + 184, at.fpstate, true); // fpstate
  dv.setBigUint64(mc + 256, BigInt.asUintN(64, sigmask), true); // uc_sigmask (right after the 256-byte sigcontext)
  // siginfo (312..440) stays zero: rt_sigreturn never reads it.
  bytes.set(fpstate, Number(at.fpstate - at.sp));
  if (at.end > resume[USER_RSP]! - RED_ZONE) throw new SigframeError('frame would overlap the red zone');
  return bytes;
}
