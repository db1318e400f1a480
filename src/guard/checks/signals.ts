/**
 * Structure 7: signal handlers (the IDT of a process). The kernel does not expose handler
 * addresses in /proc, so this is the one check that stops the target: it freezes the process with
 * ptrace, maps a scratch page, asks the kernel with injected rt_sigaction(sig, NULL, &old) for each
 * signal in SigCgt (signals with a handler), unmaps the page and thaws — typically well under a
 * millisecond per signal. Every handler, and the sa_restorer of SA_RESTORER handlers, must lie in
 * the code of a module the dynamic linker loaded (or the vDSO).
 */
import { HotpatchError } from '../../errors.js';
import {
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PROCESS_ALREADY_TRACED,
  PROT_READ,
  PROT_WRITE,
  freezeProcess,
  type FrozenProcess,
  remoteMmap,
  remoteMunmap,
} from '../../process/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';
import { linkMapEntryOf, readLinkMap } from './linkmap.js';
import { checkDebugRegisters, checkTracers } from './tracer.js';

/** rt_sigaction on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl). */
const SYS_rt_sigaction = 13;
/** sizeof(kernel_sigset_t) on x86-64. */
const SIGSET_SIZE = 8;
/** SA_RESTORER (arch/x86/include/uapi/asm/signal.h). */
const SA_RESTORER = 0x04000000n;
const SIG_NAMES = ['', 'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGILL', 'SIGTRAP', 'SIGABRT', 'SIGBUS', 'SIGFPE', 'SIGKILL', 'SIGUSR1', 'SIGSEGV', 'SIGUSR2', 'SIGPIPE', 'SIGALRM', 'SIGTERM', 'SIGSTKFLT', 'SIGCHLD', 'SIGCONT', 'SIGSTOP', 'SIGTSTP', 'SIGTTIN', 'SIGTTOU', 'SIGURG', 'SIGXCPU', 'SIGXFSZ', 'SIGVTALRM', 'SIGPROF', 'SIGWINCH', 'SIGIO', 'SIGPWR', 'SIGSYS'];

/** A signal's disposition as the kernel holds it (struct kernel_sigaction). */
export interface SignalAction {
  signal: number;
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}

export function signalName(sig: number): string {
  return SIG_NAMES[sig] ?? `SIGRT${sig - 32}`;
}

/**
 * Reads the handlers of the signals in `sigCgt` (bit n-1 = signal n) by injecting rt_sigaction
 * into the stopped target. Stops the target for the duration; `whileFrozen` runs on the frozen
 * process too (the debug-register read).
 */
export function readSignalActions(pid: number, sigCgt: bigint, whileFrozen?: (frozen: FrozenProcess) => void, timeoutMs = 2000): SignalAction[] {
  const signals: number[] = [];
  for (let s = 1; s <= 64; s++) if ((sigCgt >> BigInt(s - 1)) & 1n) signals.push(s);
  if (signals.length === 0) return [];
  const frozen = freezeProcess(pid, { timeoutMs });
  try {
    whileFrozen?.(frozen);
    const page = remoteMmap(frozen, 0n, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    try {
      const out: SignalAction[] = [];
      for (const sig of signals) {
        const r = frozen.injectSyscall(SYS_rt_sigaction, [sig, 0, page, SIGSET_SIZE]);
        if (r !== 0n) continue;
        const b = frozen.readMemory(page, 32);
        const dv = new DataView(b.buffer, b.byteOffset, 32);
        out.push({ signal: sig, handler: dv.getBigUint64(0, true), flags: dv.getBigUint64(8, true), restorer: dv.getBigUint64(16, true), mask: dv.getBigUint64(24, true) });
      }
      return out;
    } finally {
      remoteMunmap(frozen, page, 4096);
    }
  } finally {
    frozen.thaw();
  }
}

/** Whether `address` is code of a module the dynamic linker knows (or the vDSO). */
function inListedModuleCode(ctx: ProcessContext, address: bigint): boolean {
  const mod = ctx.moduleAt(address);
  if (mod === undefined || !ctx.isModuleCode(address)) return false;
  if (mod.kind === 'vdso' || mod.kind === 'loader') return true;
  const lm = readLinkMap(ctx);
  if (lm.rDebug === null) return mod.kind === 'executable';
  return linkMapEntryOf(ctx, mod, lm.entries) !== undefined;
}

/**
 * Checks structure 7 for one process: foreign tracers (no ptrace needed), then — when ptrace is
 * allowed, nobody traces the process and it catches signals — every handler and restorer, and the
 * debug registers of every thread (a hardware breakpoint without a tracer only works as a hook
 * when the process catches the SIGTRAP it raises, so a process without handlers needs no freeze).
 */
export function checkSignalHandlers(ctx: ProcessContext): Finding[] {
  const st = ctx.status;
  const tracing = checkTracers(ctx);
  const out: Finding[] = [...tracing.findings];
  if (st.sigCgt === 0n || !ctx.options.allowPtrace) return out;
  if (tracing.traced) {
    if (tracing.findings.length === 0) {
      out.push(makeFinding({ pid: ctx.pid, code: 7, kind: 'unverifiable', severity: 'info', detail: 'signal handlers not checked: the process is being traced by hotpatch itself' }));
    }
    return out;
  }
  let actions: SignalAction[];
  try {
    actions = readSignalActions(ctx.pid, st.sigCgt, (frozen) => out.push(...checkDebugRegisters(ctx, frozen)), ctx.options.freezeTimeoutMs);
  } catch (e) {
    if (e instanceof HotpatchError && e.code === PROCESS_ALREADY_TRACED) {
      // A tracer attached between the /proc read and the freeze.
      const again = checkTracers(ctx);
      if (again.findings.length > 0) return [...out, ...again.findings.filter((f) => !out.some((o) => o.detail === f.detail))];
      return [...out, makeFinding({ pid: ctx.pid, code: 7, kind: 'unverifiable', severity: 'info', detail: `signal handlers not checked: ${e.message}` })];
    }
    throw e;
  }
  for (const a of actions) {
    if (a.handler > 1n && !inListedModuleCode(ctx, a.handler)) {
      const f = makeFinding({
        pid: ctx.pid, code: 7, kind: 'handler-outside-module', severity: 'high', symbol: signalName(a.signal), address: a.handler,
        detail: `handler of ${signalName(a.signal)} (${a.signal}) is at ${ctx.describeAddress(a.handler)}, outside the code of every loaded module`,
      });
      f.destination = ctx.describeAddress(a.handler);
      out.push(f);
    }
    if ((a.flags & SA_RESTORER) !== 0n && a.restorer !== 0n && !inListedModuleCode(ctx, a.restorer)) {
      const f = makeFinding({
        pid: ctx.pid, code: 7, kind: 'handler-outside-module', severity: 'high', symbol: signalName(a.signal), address: a.restorer,
        detail: `sa_restorer of ${signalName(a.signal)} (${a.signal}) is at ${ctx.describeAddress(a.restorer)}, outside module code (sigreturn hijack)`,
      });
      f.destination = ctx.describeAddress(a.restorer);
      out.push(f);
    }
  }
  return out;
}
