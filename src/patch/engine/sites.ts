/**
 * What to write at each site, in which order, and which bytes no thread may be inside while it is
 * written. Pure: computed before freezing.
 *
 * A site is the byte range [address, address + length) an entry plan covers:
 * - padded: padding (5 bytes, receives `jmp rel32`) ... switch (2 bytes, receives `jmp short` back
 *   to the padding); the bytes between (e.g. endbr64) are never changed;
 * - plain: 5 bytes at the entry (receive `jmp rel32`).
 */
import { RefusedError } from '../../errors.js';
import { bytesEqual, hexBytes } from './bytes.js';
import { encodeJmpRel32, encodeJmpShort, JMP_REL32_SIZE, JMP_SHORT_SIZE } from '../../x86/index.js';
import type { EntryPlan } from '../plan.js';
import type { RecordSite } from './record.js';
import type { AddressRange } from '../../process/index.js';

/** One contiguous write; `offset` is relative to the site address. */
export interface SiteWrite {
  offset: number;
  bytes: Uint8Array;
}

/** The geometry of one site at run time. */
export interface SiteGeometry {
  kind: 'padded' | 'plain';
  /** Run-time address of the site (padding start, or entry / entry+4 for plain). */
  address: bigint;
  /** Run-time address of the 2-byte switch (padded), or `address` (plain). */
  switchAddress: bigint;
  /** Total bytes covered (expected.length). */
  length: number;
  /** Offset of the switch inside the site (padded), 0 for plain. */
  switchOffset: number;
}

/** Checks an entry plan's shape and returns its run-time geometry. */
export function siteGeometry(entry: EntryPlan, loadBias: bigint, fnName: string): SiteGeometry {
  const address = entry.siteVaddr + loadBias;
  const switchAddress = entry.switchVaddr + loadBias;
  const length = entry.expected.length;
  const bad = (why: string): RefusedError =>
    new RefusedError('PLAN_BAD_ENTRY', `the entry plan of ${fnName} is inconsistent (${why}): rebuild the package`);
  if (entry.kind === 'padded') {
    const switchOffset = Number(entry.switchVaddr - entry.siteVaddr);
    if (switchOffset < JMP_REL32_SIZE || switchOffset > 64) throw bad(`switch at +${switchOffset} from the padding`);
    if (length !== switchOffset + JMP_SHORT_SIZE) throw bad(`expected ${length} bytes, the site spans ${switchOffset + JMP_SHORT_SIZE}`);
    return { kind: 'padded', address, switchAddress, length, switchOffset };
  }
  if (entry.kind !== 'plain') throw bad(`unknown kind ${String(entry.kind)}`);
  if (entry.switchVaddr !== entry.siteVaddr) throw bad('plain entry with a separate switch address');
  if (length !== JMP_REL32_SIZE) throw bad(`a plain entry covers ${JMP_REL32_SIZE} bytes, the plan expects ${length}`);
  return { kind: 'plain', address, switchAddress: address, length, switchOffset: 0 };
}

/** The bytes this patch leaves at the site: `current` with the jump(s) to `newCode` written in. */
export function siteWrittenBytes(g: SiteGeometry, current: Uint8Array, newCode: bigint): Uint8Array {
  const out = new Uint8Array(current);
  out.set(encodeJmpRel32(g.address, newCode), 0);
  if (g.kind === 'padded') out.set(encodeJmpShort(g.switchAddress, g.address), g.switchOffset);
  return out;
}

/** Sub-ranges of a site that a patch may change, in the order they are written when applying. */
export function siteParts(g: SiteGeometry): Array<{ offset: number; length: number; name: 'padding' | 'switch' | 'jump' }> {
  if (g.kind === 'padded') {
    return [
      { offset: 0, length: JMP_REL32_SIZE, name: 'padding' },
      { offset: g.switchOffset, length: JMP_SHORT_SIZE, name: 'switch' },
    ];
  }
  return [{ offset: 0, length: JMP_REL32_SIZE, name: 'jump' }];
}

/**
 * Writes that turn `from` into `to`: one per part that differs. Apply order is padding → switch
 * (the function is only redirected by the last, 2-byte write); restore order is the reverse.
 */
export function siteWrites(g: SiteGeometry, from: Uint8Array, to: Uint8Array, order: 'apply' | 'restore'): SiteWrite[] {
  const parts = siteParts(g);
  if (order === 'restore') parts.reverse();
  const out: SiteWrite[] = [];
  for (const p of parts) {
    const a = from.subarray(p.offset, p.offset + p.length);
    const b = to.subarray(p.offset, p.offset + p.length);
    if (!bytesEqual(a, b)) out.push({ offset: p.offset, bytes: b.slice() });
  }
  return out;
}

/**
 * Ranges no thread may be inside (instruction pointer) or return into (stack) while the site is
 * written: the interior of each part written. The first byte of a part is an instruction boundary
 * both before and after the write, so a thread stopped exactly there executes one or the other.
 */
export function siteUnsafeRanges(g: SiteGeometry, writes: readonly SiteWrite[]): AddressRange[] {
  return writes
    .filter((w) => w.bytes.length > 1)
    .map((w) => ({ start: g.address + BigInt(w.offset) + 1n, end: g.address + BigInt(w.offset + w.bytes.length) }));
}

/**
 * Classifies `actual` against a site's `original` and `written` bytes part by part: 'original' or
 * 'written' when all parts agree, 'mixed' when parts differ (an interrupted apply), 'foreign'
 * when some part is neither (someone else changed it). `live`: the switch of a site switched
 * without a freeze may also hold a byte-wise mix of the two (interrupted between two 1-byte writes).
 */
export function classifySiteBytes(g: SiteGeometry, actual: Uint8Array, original: Uint8Array, written: Uint8Array, live = false): 'original' | 'written' | 'mixed' | 'foreign' {
  let sawOriginal = false;
  let sawWritten = false;
  // Bytes outside the parts must never change.
  const inPart = new Uint8Array(g.length);
  for (const p of siteParts(g)) {
    inPart.fill(1, p.offset, p.offset + p.length);
    const a = actual.subarray(p.offset, p.offset + p.length);
    const isO = bytesEqual(a, original.subarray(p.offset, p.offset + p.length));
    const isW = bytesEqual(a, written.subarray(p.offset, p.offset + p.length));
    if (!isO && !isW) {
      // A live switch interrupted between its 1-byte writes: each byte is one or the other.
      const byteMix = live && p.name === 'switch' && a.every((b, i) => b === original[p.offset + i] || b === written[p.offset + i]);
      if (!byteMix) return 'foreign';
      sawOriginal = sawWritten = true;
      continue;
    }
    if (isO && !isW) sawOriginal = true;
    if (isW && !isO) sawWritten = true;
  }
  for (let i = 0; i < g.length; i++) if (!inPart[i] && actual[i] !== original[i]) return 'foreign';
  if (sawOriginal && sawWritten) return 'mixed';
  return sawWritten ? 'written' : 'original';
}

/** Geometry of a recorded site (the record holds everything needed). */
export function recordedGeometry(site: RecordSite): SiteGeometry {
  return {
    kind: site.kind,
    address: site.address,
    switchAddress: site.switchAddress,
    length: site.original.length,
    switchOffset: Number(site.switchAddress - site.address),
  };
}

export { bytesEqual, hexBytes };
