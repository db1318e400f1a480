/**
 * Allocating memory in a frozen target close to a given address, so that `jmp rel32` / `call rel32`
 * / RIP-relative operands (signed 32-bit displacements) reach between it and the patched module.
 *
 * The free gaps come from /proc/PID/maps (through the inspector's parser); the memory is mapped
 * with an injected mmap(MAP_FIXED_NOREPLACE) so an existing mapping can never be replaced, and
 * read-write only: the caller copies code in and then mprotects it to r-x (never W+X at once).
 */
import { ProcessError } from '../../errors.js';
import type { Mapping } from '../inspect/procfs.js';
import {
  EEXIST,
  MAP_ANONYMOUS,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE_MAX,
} from '../ptrace/constants.js';
import { PROCESS_INJECTION_FAILED, PROCESS_NO_NEAR_GAP, RemoteSyscallError } from './errors.js';
import type { FrozenProcess } from './freeze.js';
import { remoteMmap, remoteMunmap } from './remote.js';

const PAGE = BigInt(PAGE_SIZE);
/** Lowest address user mappings may use on a default kernel (vm.mmap_min_addr = 65536). */
const MMAP_MIN_ADDR = 0x10000n;
/** The kernel keeps 256 pages free below a growing stack (stack_guard_gap); stay out of it. */
const STACK_GUARD_GAP = 256n * PAGE;
/** Default reach: a signed 32-bit displacement, minus a margin for the instruction lengths. */
export const REL32_REACH = 0x7fff_0000n;

const alignUp = (v: bigint): bigint => (v + PAGE - 1n) & ~(PAGE - 1n);
const alignDown = (v: bigint): bigint => v & ~(PAGE - 1n);

/** A region mapped in the target by allocateNear / allocateWithin. */
export interface RemoteAllocation {
  /** First byte (page aligned). */
  address: bigint;
  /** Size in bytes (rounded up to whole pages). */
  size: number;
  /** Protection it was mapped with (PROT_READ|PROT_WRITE). */
  prot: number;
}

/** Free address ranges [start, end) of a process, from its mappings (sorted by address). */
export function freeGaps(maps: readonly Mapping[]): Array<{ start: bigint; end: bigint }> {
  const sorted = [...maps].filter((m) => m.end <= TASK_SIZE_MAX).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const gaps: Array<{ start: bigint; end: bigint }> = [];
  let prevEnd = MMAP_MIN_ADDR;
  for (const m of sorted) {
    // One free page on each side so the kernel never merges the region with a neighbour.
    let end = m.start - PAGE;
    if (m.path === '[stack]') end = m.start - STACK_GUARD_GAP;
    const start = prevEnd === MMAP_MIN_ADDR ? prevEnd : prevEnd + PAGE;
    if (end > start) gaps.push({ start, end });
    if (m.end > prevEnd) prevEnd = m.end;
  }
  const start = prevEnd + PAGE;
  if (TASK_SIZE_MAX > start) gaps.push({ start, end: TASK_SIZE_MAX });
  return gaps;
}

/** Candidate addresses for `size` bytes inside [low, high), one per gap, closest to `near` first. */
export function placementCandidates(maps: readonly Mapping[], low: bigint, high: bigint, size: bigint, near: bigint): bigint[] {
  const out: Array<{ addr: bigint; dist: bigint }> = [];
  for (const g of freeGaps(maps)) {
    const lo = alignUp(g.start > low ? g.start : low);
    const hi = alignDown(g.end < high ? g.end : high);
    if (hi - lo < size) continue;
    let addr: bigint;
    if (near <= lo) addr = lo;
    else if (near >= hi - size) addr = hi - size;
    else addr = alignDown(near);
    const dist = addr > near ? addr + size - near : near - addr;
    out.push({ addr, dist });
  }
  return out.sort((a, b) => (a.dist < b.dist ? -1 : a.dist > b.dist ? 1 : 0)).map((c) => c.addr);
}

/**
 * Maps `size` bytes (rounded up to pages) read-write in the frozen target, entirely inside
 * [low, high), as close to `near` as the free gaps allow. Throws PROCESS_NO_NEAR_GAP when no gap
 * fits, RemoteSyscallError when the kernel refuses the mapping.
 */
export function allocateWithin(
  frozen: FrozenProcess,
  low: bigint,
  high: bigint,
  size: number,
  options: { near?: bigint; tid?: number } = {},
): RemoteAllocation {
  if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`bad allocation size: ${size}`);
  const len = alignUp(BigInt(size));
  const near = options.near ?? (low + high) / 2n;
  const prot = PROT_READ | PROT_WRITE;
  const candidates = placementCandidates(frozen.maps(), low < MMAP_MIN_ADDR ? MMAP_MIN_ADDR : low, high, len, near);
  for (const addr of candidates) {
    let got: bigint;
    try {
      got = remoteMmap(frozen, addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0n, { tid: options.tid });
    } catch (e) {
      if (e instanceof RemoteSyscallError && e.errno === EEXIST) continue; // raced with a mapping we did not see
      throw e;
    }
    if (got !== addr) {
      // A kernel older than 4.17 ignores MAP_FIXED_NOREPLACE and treats addr as a hint.
      remoteMunmap(frozen, got, len, { tid: options.tid });
      throw new ProcessError(
        PROCESS_INJECTION_FAILED,
        `the kernel placed the mapping at 0x${got.toString(16)} instead of 0x${addr.toString(16)} ` +
          '(MAP_FIXED_NOREPLACE needs Linux 4.17 or later); nothing was left mapped',
      );
    }
    return { address: addr, size: Number(len), prot };
  }
  throw new ProcessError(
    PROCESS_NO_NEAR_GAP,
    `no free gap of ${len} bytes in process ${frozen.pid} between 0x${low.toString(16)} and 0x${high.toString(16)}`,
  );
}

/**
 * Maps `size` bytes read-write in the frozen target so that every byte of it is within `reach`
 * (default ±2 GiB minus 64 KiB) of `nearAddress`: rel32 jumps and RIP-relative operands work in
 * both directions. The caller writes code into it and then mprotects it to PROT_READ|PROT_EXEC.
 */
export function allocateNear(
  frozen: FrozenProcess,
  nearAddress: bigint,
  size: number,
  options: { reach?: bigint; tid?: number } = {},
): RemoteAllocation {
  const reach = options.reach ?? REL32_REACH;
  const low = nearAddress > reach ? nearAddress - reach : 0n;
  const high = nearAddress + reach < TASK_SIZE_MAX ? nearAddress + reach : TASK_SIZE_MAX;
  return allocateWithin(frozen, low, high, size, { near: nearAddress, tid: options.tid });
}
