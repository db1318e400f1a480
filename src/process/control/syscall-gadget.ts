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
 * Finds (and caches) the `syscall` instruction of a process that is not frozen, so that the
 * search is done before the freeze and costs nothing inside the pause.
 */
export function prepareSyscallGadget(pid: number): bigint {
  const startTime = readStartTime(pid);
  if (startTime === undefined) throw new ProcessError(PROCESS_NOT_FOUND, `no process with pid ${pid}`);
  const mem = new ProcessMemory(pid, { writable: false });
  try {
    let maps: Mapping[] | undefined;
    return findSyscallGadget({
      pid,
      startTime,
      maps: () => (maps ??= readMappings(pid)),
      readMemoryInto: (a, b, o, l) => mem.readInto(a, b, o, l),
    });
  } finally {
    mem.close();
  }
}
