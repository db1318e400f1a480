/**
 * Arena bookkeeping: arenas are anonymous mappings near a module (code r-x, data r--, variables
 * rw-) recorded in the in-process record; each patch occupies a range of one code arena (and of one
 * data arena when it carries data, of one variables arena when it adds variables). Free space is
 * what no recorded patch occupies, so the record alone describes the arena (no second allocator
 * state to get out of sync after a crash).
 *
 * Code and data pages are never writable in the target: hotpatch writes them through /proc/PID/mem,
 * which breaks copy-on-write for the private page without changing the mapping's protection.
 * Variables are the one writable kind (the new code changes them), and never executable.
 */
import { alignUpAddress } from '../linker/index.js';
import type { AddressRange } from '../../process/index.js';
import type { ArenaKind, ArenaProtection, PatchRecord, RecordArena, RecordPatch } from './record.js';

export const PAGE_SIZE = 4096;
/** Smallest code arena: room for many small patches, so applies after the first need no mmap. */
export const MIN_CODE_ARENA = 64 * 1024;
export const MIN_DATA_ARENA = 16 * 1024;

const PROTECTION: Record<ArenaKind, ArenaProtection> = { code: 'r-x', data: 'r--', vars: 'rw-' };

/** The range of arena `kind` a patch occupies, if any. */
function patchRange(p: RecordPatch, kind: ArenaKind): AddressRange | undefined {
  return (kind === 'code' ? p.code : kind === 'data' ? p.data : p.vars) ?? undefined;
}

/** Ranges of `kind` occupied by the patches of `record` (live, pending and retired alike). */
export function occupiedRanges(record: PatchRecord, kind: ArenaKind): AddressRange[] {
  const out: AddressRange[] = [];
  for (const p of record.patches) {
    const r = patchRange(p, kind);
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
  kind: ArenaKind,
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
export function arenaSizeFor(kind: ArenaKind, size: number, align: number): number {
  const min = kind === 'code' ? MIN_CODE_ARENA : MIN_DATA_ARENA;
  return Math.ceil(Math.max(min, size + align) / PAGE_SIZE) * PAGE_SIZE;
}

/** A new arena description. */
export function newArena(start: bigint, size: number, kind: ArenaKind, near: string): RecordArena {
  return { start, end: start + BigInt(size), kind, prot: PROTECTION[kind], near };
}
