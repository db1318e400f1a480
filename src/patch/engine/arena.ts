/**
 * Arena bookkeeping: arenas are anonymous mappings near a module (code r-x, data r--) recorded in the
 * in-process record; each patch occupies a range of one code arena (and of one data arena when it
 * carries data). Free space is what no recorded patch occupies, so the record alone describes the
 * arena (no second allocator state to get out of sync after a crash).
 *
 * Arena pages are never writable in the target: hotpatch writes them through /proc/PID/mem, which
 * breaks copy-on-write for the private page without changing the mapping's protection.
 */
import { alignUpAddress } from '../linker/index.js';
import type { AddressRange } from '../../process/index.js';
import type { PatchRecord, RecordArena } from './record.js';

export const PAGE_SIZE = 4096;
/** Smallest code arena: room for many small patches, so applies after the first need no mmap. */
export const MIN_CODE_ARENA = 64 * 1024;
export const MIN_DATA_ARENA = 16 * 1024;

/** Ranges of `kind` occupied by the patches of `record` (live, pending and retired alike). */
export function occupiedRanges(record: PatchRecord, kind: 'code' | 'data'): AddressRange[] {
  const out: AddressRange[] = [];
  for (const p of record.patches) {
    const r = kind === 'code' ? p.code : p.data;
    if (r && r.end > r.start) out.push(r);
  }
  return out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

/**
 * First-fit: the lowest aligned address in an arena of `kind` where `size` bytes are free and
 * `fits(start, end)` holds (reachability from the sites). Undefined when no arena has room.
 */
export function findArenaSpace(
  record: PatchRecord,
  kind: 'code' | 'data',
  size: number,
  align: number,
  fits: (start: bigint, end: bigint) => boolean,
): bigint | undefined {
  const used = occupiedRanges(record, kind);
  const n = BigInt(size);
  for (const a of record.arenas.filter((x) => x.kind === kind)) {
    let cursor = alignUpAddress(a.start, align);
    for (const u of used) {
      if (u.end <= cursor || u.start >= a.end) continue;
      if (u.start >= cursor + n) break;
      cursor = alignUpAddress(u.end > cursor ? u.end : cursor, align);
    }
    if (cursor + n <= a.end && fits(cursor, cursor + n)) return cursor;
  }
  return undefined;
}

/** Size of a new arena able to hold `size` bytes at `align`. */
export function arenaSizeFor(kind: 'code' | 'data', size: number, align: number): number {
  const min = kind === 'code' ? MIN_CODE_ARENA : MIN_DATA_ARENA;
  return Math.ceil(Math.max(min, size + align) / PAGE_SIZE) * PAGE_SIZE;
}

/** A new arena description. */
export function newArena(start: bigint, size: number, kind: 'code' | 'data', near: string): RecordArena {
  return { start, end: start + BigInt(size), kind, prot: kind === 'code' ? 'r-x' : 'r--', near };
}
