/**
 * Which frozen threads are using given code ranges: instruction pointer inside a range, or a
 * return address into a range anywhere on the thread's stack.
 *
 * The stack scan is conservative and sound on x86-64: `call` always pushes the return address at
 * the stack pointer, so every live return address is an 8-byte word between `rsp` and the end of
 * the stack's mapping. Every word there whose value falls in a range counts (false positives are
 * possible, misses are not). One bulk pread per thread; values are compared as doubles built
 * from two 32-bit halves (exact below 2^53, and user addresses are below 2^47), which keeps
 * bigint allocation out of the inner loop.
 *
 * Not covered: stacks of threads that are not running on them (user-space coroutines, a stack
 * switched away with sigaltstack — the interrupted frames then sit on the normal stack, whose rsp
 * is only in the signal frame).
 */
import type { Mapping } from '../inspect/procfs.js';
import type { FrozenProcess } from './freeze.js';

/** What the scan reads: a FrozenProcess, or a view of one with another source of mappings (hijack.ts). */
export interface StoppedThreads {
  threads: readonly ThreadAtRest[];
  maps: FrozenProcess['maps'];
  readMemoryInto: FrozenProcess['readMemoryInto'];
}

/** What the scan needs of a thread that is not running: a FrozenThread, or one seen by passive-check.ts. */
export interface ThreadAtRest {
  readonly tid: number;
  readonly regs: { readonly rip: bigint; readonly rsp: bigint };
  readonly restartPending: boolean;
}

/** A half-open address range [start, end). */
export interface AddressRange {
  start: bigint;
  end: bigint;
}

/** One way a thread uses one of the ranges. */
export interface RangeUse {
  tid: number;
  /** Index into the `ranges` argument; -1 for `unscannable`. */
  rangeIndex: number;
  /**
   * - `rip`: the thread's instruction pointer is in the range;
   * - `restart-rip`: the thread will resume by re-executing the `syscall` instruction at rip - 2,
   *   which is in the range;
   * - `stack`: a word on its stack (a possible return address) points into the range;
   * - `unscannable`: its rsp is in no mapping, nothing can be said (treat as unsafe).
   */
  kind: 'rip' | 'restart-rip' | 'stack' | 'unscannable';
  /** `rip`: the instruction pointer; `stack`: address of the stack slot; `unscannable`: rsp. */
  where: bigint;
  /** The value found: rip, or the word on the stack. */
  value: bigint;
}

/** Options of findThreadsUsing. */
export interface StackScanOptions {
  /** Upper bound on bytes read per thread (default 64 MiB; the main stack may be huge). */
  maxStackBytes?: number;
  /** Statistics out-parameter (for benchmarks and logs). */
  stats?: { threads: number; bytesScanned: number };
}

const TWO32 = 4294967296;
/** High half of the first address above user space (2^47). */
const USER_HI_LIMIT = 0x8000;

let scratch = new ArrayBuffer(64 * 1024);

function findMapping(sorted: readonly Mapping[], addr: bigint): Mapping | undefined {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const m = sorted[mid]!;
    if (addr < m.start) hi = mid - 1;
    else if (addr >= m.end) lo = mid + 1;
    else return m;
  }
  return undefined;
}

/**
 * For each frozen thread: is its rip in one of `ranges`, and which words of its stack point into
 * them. Returns every use found (empty: no thread uses any range).
 */
export function findThreadsUsing(frozen: StoppedThreads, ranges: readonly AddressRange[], options: StackScanOptions = {}): RangeUse[] {
  const uses: RangeUse[] = [];
  if (ranges.length === 0) return uses;
  const n = ranges.length;
  const rs = new Float64Array(n);
  const re = new Float64Array(n);
  let gmin = Infinity;
  let gmax = -Infinity;
  for (let i = 0; i < n; i++) {
    const r = ranges[i]!;
    if (r.end < r.start || r.start < 0n) throw new RangeError(`bad range ${i}: [0x${r.start.toString(16)}, 0x${r.end.toString(16)})`);
    rs[i] = Number(r.start);
    re[i] = Number(r.end);
    if (rs[i]! < gmin) gmin = rs[i]!;
    if (re[i]! > gmax) gmax = re[i]!;
  }
  const inRange = (v: bigint): number => {
    for (let i = 0; i < n; i++) if (v >= ranges[i]!.start && v < ranges[i]!.end) return i;
    return -1;
  };
  const maxBytes = options.maxStackBytes ?? 64 << 20;
  const maps = [...frozen.maps()].sort((a, b) => (a.start < b.start ? -1 : 1));
  let scanned = 0;
  const threads = frozen.threads;
  for (const t of threads) {
    const rip = t.regs.rip;
    const ri = inRange(rip);
    if (ri >= 0) uses.push({ tid: t.tid, rangeIndex: ri, kind: 'rip', where: rip, value: rip });
    if (t.restartPending) {
      const ri2 = inRange(rip - 2n);
      if (ri2 >= 0 && ri2 !== ri) uses.push({ tid: t.tid, rangeIndex: ri2, kind: 'restart-rip', where: rip - 2n, value: rip - 2n });
    }
    const rsp = t.regs.rsp;
    const m = findMapping(maps, rsp);
    if (m === undefined) {
      uses.push({ tid: t.tid, rangeIndex: -1, kind: 'unscannable', where: rsp, value: rsp });
      continue;
    }
    const total = m.end - rsp;
    const len = total > BigInt(maxBytes) ? maxBytes : Number(total);
    if (scratch.byteLength < len) scratch = new ArrayBuffer(Math.max(len, scratch.byteLength * 2));
    const bytes = new Uint8Array(scratch, 0, len);
    const got = frozen.readMemoryInto(rsp, bytes, 0, len);
    scanned += got;
    const words = got >>> 3;
    if ((rsp & 7n) === 0n) {
      const u32 = new Uint32Array(scratch, 0, words * 2);
      for (let w = 0; w < words; w++) {
        const hi = u32[2 * w + 1]!;
        if (hi >= USER_HI_LIMIT) continue;
        const v = hi * TWO32 + u32[2 * w]!;
        if (v < gmin || v >= gmax) continue;
        for (let i = 0; i < n; i++) {
          if (v >= rs[i]! && v < re[i]!) {
            const value = (BigInt(hi) << 32n) | BigInt(u32[2 * w]!);
            uses.push({ tid: t.tid, rangeIndex: i, kind: 'stack', where: rsp + BigInt(w * 8), value });
          }
        }
      }
    } else {
      // Misaligned stack pointer (rare, hand-written code): pushes keep its alignment.
      const dv = new DataView(scratch, 0, got);
      for (let w = 0; w < words; w++) {
        const lo = dv.getUint32(w * 8, true);
        const hi = dv.getUint32(w * 8 + 4, true);
        if (hi >= USER_HI_LIMIT) continue;
        const v = hi * TWO32 + lo;
        if (v < gmin || v >= gmax) continue;
        for (let i = 0; i < n; i++) {
          if (v >= rs[i]! && v < re[i]!) {
            uses.push({ tid: t.tid, rangeIndex: i, kind: 'stack', where: rsp + BigInt(w * 8), value: (BigInt(hi) << 32n) | BigInt(lo) });
          }
        }
      }
    }
  }
  if (options.stats) {
    options.stats.threads = threads.length;
    options.stats.bytesScanned = scanned;
  }
  return uses;
}
