/**
 * Part of structure 7 (the IDT analogue): who receives the process' traps. A tracer (ptrace) gets
 * every signal and debug trap of the threads it traces before the process does, can change every
 * register, and can hook code with hardware breakpoints (DR0–DR7) without changing a single code
 * byte — so a thread traced by anyone other than hotpatch is itself a finding, naming the tracer.
 * A thread already traced cannot be attached again, so its debug registers cannot be read: the
 * tracer is the finding. Where hotpatch can freeze the process (structure 7 does, to read signal
 * handlers), the debug registers of every thread are read with PTRACE_PEEKUSER and every armed
 * breakpoint is reported with its address described by symbol. Read-only (/proc) apart from that.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { ptracePeekUser, type FrozenProcess } from '../../process/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';

/** offsetof(struct user, u_debugreg) on x86-64 (<sys/user.h>: regs 216, u_fpvalid..., = 848). */
export const USER_DEBUGREG_OFFSET = 848;

/** Threads of `pid` and their TracerPid (0: not traced), from /proc/PID/task/TID/status. */
export function threadTracers(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tids) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const m = /^TracerPid:\s*(\d+)$/m.exec(text);
    out.set(Number(t), m ? Number(m[1]) : 0);
  }
  return out;
}

/** "pid 123 (gdb, /usr/bin/gdb -p 42)" for the finding's detail. */
export function describeTracer(tracer: number): string {
  let comm = '?';
  let cmd = '';
  try {
    comm = readFileSync(`/proc/${tracer}/comm`, 'utf8').trim();
  } catch {
    // exited
  }
  try {
    cmd = readFileSync(`/proc/${tracer}/cmdline`, 'latin1').split('\0').filter((x) => x !== '').join(' ');
  } catch {
    try {
      cmd = readlinkSync(`/proc/${tracer}/exe`);
    } catch {
      cmd = '';
    }
  }
  if (cmd.length > 160) cmd = `${cmd.slice(0, 157)}...`;
  return `pid ${tracer} (${comm}${cmd !== '' ? `: ${cmd}` : ''})`;
}

/** A hotpatch process (apply, guard, verify of another instance): it traces only for a moment. */
function isHotpatch(tracer: number): boolean {
  try {
    const cmd = readFileSync(`/proc/${tracer}/cmdline`, 'latin1');
    return /hotpatch|dist\/src\/cli\/main\.js/.test(cmd);
  } catch {
    return false;
  }
}

const pauseCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Foreign tracers of the process' threads. Our own pid is not foreign; another hotpatch process
 * freezes targets for well under a second, so its tracing is re-read up to 3 times 100 ms apart
 * and only reported when it persists.
 */
export function checkTracers(ctx: ProcessContext): { findings: Finding[]; traced: boolean } {
  let tracers = threadTracers(ctx.pid);
  const foreign = (m: Map<number, number>) => [...m.values()].filter((t) => t !== 0 && t !== process.pid);
  for (let i = 0; i < 3 && foreign(tracers).length > 0 && foreign(tracers).every(isHotpatch); i++) {
    Atomics.wait(pauseCell, 0, 0, 100);
    tracers = threadTracers(ctx.pid);
  }
  const byTracer = new Map<number, number[]>();
  for (const [tid, tracer] of tracers) {
    if (tracer === 0 || tracer === process.pid) continue;
    const l = byTracer.get(tracer) ?? [];
    l.push(tid);
    byTracer.set(tracer, l);
  }
  const findings: Finding[] = [];
  const all = tracers.size;
  for (const [tracer, tids] of byTracer) {
    tids.sort((a, b) => a - b);
    const which = tids.length === all ? `all ${all} thread(s)` : `thread(s) ${tids.join(', ')} of ${all}`;
    findings.push(makeFinding({
      pid: ctx.pid, code: 7, kind: 'foreign-tracer', severity: 'high',
      detail: `${which} traced by ${describeTracer(tracer)}: the tracer receives every signal and debug trap of these threads first and can change registers and hook code with hardware breakpoints (DR0-DR7) without changing a code byte; their debug registers and signal handlers cannot be read while it is attached`,
    }));
  }
  return { findings, traced: tracers.size > 0 && [...tracers.values()].some((t) => t !== 0) };
}

/** DR7 bit fields (Intel SDM vol. 3, 17.2.4): L/G enable pairs at 2i, R/W at 16+4i, LEN at 18+4i. */
const RW_NAMES = ['execute', 'write', 'I/O', 'read/write'];
const LEN_BYTES = [1, 2, 8, 4];

/**
 * Reads DR7 (and the armed DR0–DR3) of every thread of a frozen process and reports each armed
 * hardware breakpoint. Called while structure 7 holds the process frozen.
 */
export function checkDebugRegisters(ctx: ProcessContext, frozen: FrozenProcess): Finding[] {
  const out: Finding[] = [];
  for (const th of frozen.threads) {
    const dr7 = ptracePeekUser(th.tid, USER_DEBUGREG_OFFSET + 7 * 8);
    if (typeof dr7 === 'number' || (dr7 & 0xffn) === 0n) continue;
    for (let i = 0; i < 4; i++) {
      if (((dr7 >> BigInt(2 * i)) & 3n) === 0n) continue;
      const addr = ptracePeekUser(th.tid, USER_DEBUGREG_OFFSET + i * 8);
      if (typeof addr === 'number') continue;
      const rw = Number((dr7 >> BigInt(16 + 4 * i)) & 3n);
      const len = LEN_BYTES[Number((dr7 >> BigInt(18 + 4 * i)) & 3n)]!;
      const mod = ctx.moduleAt(addr);
      const where = ctx.describeAddress(addr);
      const symbol = mod !== undefined ? (ctx.image(mod)?.symbolize(addr - mod.loadBias) ?? null) : null;
      out.push(makeFinding({
        pid: ctx.pid, code: 7, kind: 'debug-register', severity: rw === 0 ? 'critical' : 'high',
        module: mod?.path ?? null, offset: mod !== undefined ? addr - mod.loadBias : null, address: addr, symbol,
        detail: `hardware breakpoint DR${i} (${RW_NAMES[rw]}${rw === 0 ? '' : `, ${len} byte(s)`}) armed in thread ${th.tid} at ${where} with no debugger attached: every hit raises SIGTRAP in the process, whose handler can redirect execution without changing a byte of code`,
        destination: where,
      }));
    }
  }
  return out;
}
