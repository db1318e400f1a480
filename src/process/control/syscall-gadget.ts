/**
 * Finding an existing `syscall` instruction (0f 05) in a process, to run injected system calls on
 * it. Nothing is ever written to run a system call: the bytes only need to exist in executable
 * memory (any 0f 05 pair decodes as `syscall` when execution starts there, whatever the
 * surrounding instruction stream). Search order: the vDSO (small, always mapped, its fallback paths
 * contain `syscall`), then libc's code, then any other executable file mapping.
 * Results are cached per process (pid + start time) and re-verified (2-byte read) on every use.
 */
import type { Mapping } from '../inspect/procfs.js';
import { ProcessError } from '../../errors.js';
import { PROCESS_NOT_FOUND } from '../inspect/errors.js';
import { PROCESS_INJECTION_FAILED } from './errors.js';
import { ProcessMemory } from './memory.js';
import { readMappings, readStartTime } from './procfs.js';

/** What the search needs from a process (a FrozenProcess, or an unfrozen one). */
export interface GadgetSource {
  readonly pid: number;
  readonly startTime: bigint;
  maps(): readonly Mapping[];
  readMemoryInto(address: bigint, buf: Uint8Array, offset?: number, length?: number): number;
}

const cache = new Map<string, bigint>();
/** Largest amount of one mapping we look through. */
const MAX_SCAN = 64 << 20;
const CHUNK = 1 << 20;

function rank(m: Mapping): number {
  if (m.path === '[vdso]') return 0;
  if (/\/libc[.-][^/]*$/.test(m.path) || /\/libc\.so/.test(m.path)) return 1;
  if (m.isFile) return 2;
  return 3;
}

function search(src: GadgetSource): bigint | undefined {
  const candidates = src
    .maps()
    .filter((m) => m.protection.execute && m.protection.read && !m.protection.write && m.path !== '[vsyscall]')
    .sort((a, b) => rank(a) - rank(b));
  const buf = new Uint8Array(CHUNK + 1);
  for (const m of candidates) {
    const len = Number(m.end - m.start < BigInt(MAX_SCAN) ? m.end - m.start : BigInt(MAX_SCAN));
    for (let off = 0; off < len; off += CHUNK) {
      // Read one byte more so a pair spanning two chunks is found.
      const want = Math.min(CHUNK + 1, len - off);
      const n = src.readMemoryInto(m.start + BigInt(off), buf, 0, want);
      for (let i = 0; i + 1 < n; i++) {
        if (buf[i] === 0x0f && buf[i + 1] === 0x05) return m.start + BigInt(off + i);
      }
      if (n < want) break;
    }
  }
  return undefined;
}

/**
 * Address of a `syscall` instruction in the process (cached). Throws PROCESS_INJECTION_FAILED
 * when the process has none in readable executable memory.
 */
export function findSyscallGadget(src: GadgetSource): bigint {
  const key = `${src.pid}:${src.startTime}`;
  const cached = cache.get(key);
  if (cached !== undefined) {
    const b = new Uint8Array(2);
    if (src.readMemoryInto(cached, b) === 2 && b[0] === 0x0f && b[1] === 0x05) return cached;
    cache.delete(key);
  }
  const found = search(src);
  if (found === undefined) {
    throw new ProcessError(
      PROCESS_INJECTION_FAILED,
      `process ${src.pid} has no readable executable 'syscall' instruction (no vDSO, no libc?): cannot inject system calls`,
    );
  }
  if (cache.size > 1024) cache.clear();
  cache.set(key, found);
  return found;
}

/**
 * The two code sequences a self-restoring injected system call runs on (see FrozenProcess.injectSyscall):
 * - `syscallRet`: `syscall; ret` (0f 05 c3) — every glibc/musl wrapper of a simple call (getpid...);
 * - `sigreturn`: `mov rax, 15; syscall` (48 c7 c0 0f 00 00 00 0f 05, glibc's __restore_rt) or
 *   `mov eax, 15; syscall` (b8 0f 00 00 00 0f 05, musl's __restore_rt): rt_sigreturn (syscall_64.tbl).
 * Only bytes that already exist in readable, executable, non-writable memory are used; nothing is
 * written to the target's code.
 */
export interface InjectionGadgets {
  readonly syscallRet: bigint;
  readonly sigreturn: bigint;
}

const SYSCALL_RET = Uint8Array.of(0x0f, 0x05, 0xc3);
const SIGRETURN_PATTERNS = [Uint8Array.of(0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05), Uint8Array.of(0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05)];
const gadgetCache = new Map<string, InjectionGadgets>();

function matchAt(buf: Uint8Array, i: number, n: number, pat: Uint8Array): boolean {
  if (i + pat.length > n) return false;
  for (let k = 0; k < pat.length; k++) if (buf[i + k] !== pat[k]) return false;
  return true;
}

function holds(src: GadgetSource, address: bigint, pat: Uint8Array): boolean {
  const b = new Uint8Array(pat.length);
  return src.readMemoryInto(address, b) === pat.length && matchAt(b, 0, pat.length, pat);
}

function searchGadgets(src: GadgetSource): { syscallRet?: bigint; sigreturn?: bigint } {
  const candidates = src
    .maps()
    .filter((m) => m.protection.execute && m.protection.read && !m.protection.write && m.path !== '[vsyscall]')
    .sort((a, b) => rank(a) - rank(b));
  const overlap = 16;
  const buf = new Uint8Array(CHUNK + overlap);
  let syscallRet: bigint | undefined;
  let sigreturn: bigint | undefined;
  for (const m of candidates) {
    const len = Number(m.end - m.start < BigInt(MAX_SCAN) ? m.end - m.start : BigInt(MAX_SCAN));
    for (let off = 0; off < len; off += CHUNK) {
      const want = Math.min(CHUNK + overlap, len - off);
      const n = src.readMemoryInto(m.start + BigInt(off), buf, 0, want);
      const limit = Math.min(n, CHUNK);
      for (let i = 0; i < limit; i++) {
        const b = buf[i];
        if (syscallRet === undefined && b === 0x0f && matchAt(buf, i, n, SYSCALL_RET)) syscallRet = m.start + BigInt(off + i);
        if (sigreturn === undefined && (b === 0x48 || b === 0xb8)) {
          for (const p of SIGRETURN_PATTERNS) if (matchAt(buf, i, n, p)) sigreturn = m.start + BigInt(off + i);
        }
      }
      if (syscallRet !== undefined && sigreturn !== undefined) return { syscallRet, sigreturn };
      if (n < want) break;
    }
  }
  return { syscallRet, sigreturn };
}

/**
 * The `syscall; ret` and rt_sigreturn sequences of the process (cached per pid + start time, the
 * bytes re-verified on every use). Throws PROCESS_INJECTION_FAILED when either is missing: there
 * is no fallback to an injection that a dying patcher could leave half-done.
 */
export function findInjectionGadgets(src: GadgetSource): InjectionGadgets {
  const key = `${src.pid}:${src.startTime}`;
  const cached = gadgetCache.get(key);
  if (cached !== undefined) {
    if (holds(src, cached.syscallRet, SYSCALL_RET) && SIGRETURN_PATTERNS.some((p) => holds(src, cached.sigreturn, p))) return cached;
    gadgetCache.delete(key);
  }
  const found = searchGadgets(src);
  if (found.syscallRet === undefined || found.sigreturn === undefined) {
    const missing = [found.syscallRet === undefined ? "'syscall; ret' (0f 05 c3)" : '', found.sigreturn === undefined ? "an rt_sigreturn sequence ('mov rax, 15; syscall')" : '']
      .filter((x) => x !== '')
      .join(' and ');
    throw new ProcessError(
      PROCESS_INJECTION_FAILED,
      `process ${src.pid} has no ${missing} in readable executable memory (no libc?): refusing to inject system calls, ` +
        'because without them a patcher killed mid-call could leave a thread in an injected state',
    );
  }
  const g = { syscallRet: found.syscallRet, sigreturn: found.sigreturn };
  if (gadgetCache.size > 1024) gadgetCache.clear();
  gadgetCache.set(key, g);
  return g;
}

/**
 * Finds (and caches) the `syscall` instruction and the injection gadgets of a process that is
 * not frozen, so that the search is done before the freeze and costs nothing inside the pause.
 */
export function prepareSyscallGadget(pid: number): bigint {
  const startTime = readStartTime(pid);
  if (startTime === undefined) throw new ProcessError(PROCESS_NOT_FOUND, `no process with pid ${pid}`);
  const mem = new ProcessMemory(pid, { writable: false });
  try {
    let maps: Mapping[] | undefined;
    const src: GadgetSource = {
      pid,
      startTime,
      maps: () => (maps ??= readMappings(pid)),
      readMemoryInto: (a, b, o, l) => mem.readInto(a, b, o, l),
    };
    findInjectionGadgets(src);
    return findSyscallGadget(src);
  } finally {
    mem.close();
  }
}
