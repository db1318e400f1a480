/**
 * What an inherited record means for a forked child. The record is a MAP_SHARED memfd: a child
 * forked from a patched process maps the same file as its parent, and sees every later change the
 * parent makes to it. The child's code and arenas, on the other hand, are private copy-on-write
 * mappings frozen at fork time. So for a process that is not the one the record names, the code
 * is the truth and the record only the catalogue: this module derives the child's own record from
 * the shared one and the child's memory (read-only; ./private-record.ts then gives the child a
 * private copy before anything changes it).
 *
 * The parent never drops an entry (or an arena) from a record other processes share before giving
 * them a private copy (./private-record.ts privatizeSharers), so every patch a child has is still
 * in the shared record, whatever its state there.
 */
import { bytesEqual } from './bytes.js';
import type { AddressRange, Mapping } from '../../process/index.js';
import type { PatchRecord, RecordArena, RecordPatch } from './record.js';

/** Whether `r` lies inside one of `arenas`. */
function inArenas(r: AddressRange | null, arenas: readonly RecordArena[]): boolean {
  return r === null || r.end <= r.start || arenas.some((a) => a.start <= r.start && r.end <= a.end);
}

/**
 * Whether [a.start, a.end) is mapped in the child as the arena was made: anonymous, private, with
 * the arena's protection (adjacent mappings with equal attributes may be merged by the kernel).
 */
function arenaMapped(a: RecordArena, mappings: readonly Mapping[]): boolean {
  let cursor = a.start;
  for (const m of [...mappings].sort((x, y) => (x.start < y.start ? -1 : 1))) {
    if (m.end <= cursor || m.start > cursor) continue;
    if (m.isFile || m.protection.shared || m.perms.slice(0, 3) !== a.prot) return false;
    cursor = m.end;
    if (cursor >= a.end) return true;
  }
  return false;
}

/**
 * The record of process `pid` derived from `shared` (a record written for another process) and
 * the child's own mappings and memory: arenas it does not map are dropped; a patch whose jump is in
 * the child's code at every site is applied; one whose jump is nowhere is dropped when the shared
 * record has it live (the parent applied it after the fork) and kept retired when the shared
 * record has it removed (its code may still be in use in the child). A patch in effect at some of
 * its sites only cannot come from a fork (sites switch in one freeze, or behind one flag): it is
 * kept as applied, so that `list`, `verify` and the guard report the missing jumps.
 */
export function inheritedView(shared: PatchRecord, pid: number, mappings: readonly Mapping[], read: (address: bigint, length: number) => Uint8Array | undefined): PatchRecord {
  const arenas = shared.arenas.filter((a) => arenaMapped(a, mappings));
  // Peel patches top-down: `expect` holds, per site, the bytes the next lower layer must have written.
  const expect = new Map<bigint, Uint8Array | undefined>();
  const current = (address: bigint, length: number): Uint8Array | undefined => {
    if (!expect.has(address)) expect.set(address, read(address, length));
    return expect.get(address);
  };
  const kept: RecordPatch[] = [];
  for (const p of [...shared.patches].reverse()) {
    if (!inArenas(p.code, arenas) || !inArenas(p.data, arenas)) continue;
    const inEffect = p.sites.map((s) => {
      const now = current(s.address, s.written.length);
      return now !== undefined && bytesEqual(now, s.written);
    });
    // A patch switched live is in effect only while its flag is set (a fork between the entry
    // writes and the flag write gives a child whose entries lead to gates that run the old code).
    const flagSet = p.flag === undefined || read(p.flag, 1)?.[0] === 1;
    const some = flagSet && inEffect.some(Boolean);
    if (some) {
      p.sites.forEach((s, i) => inEffect[i] && expect.set(s.address, s.original));
      kept.push({ ...p, state: 'applied', sites: p.sites.map((s) => ({ ...s, state: 'applied' })) });
    } else if (p.state === 'removed' || p.state === 'removing') {
      kept.push({ ...p, state: 'removed', retired: true, sites: p.sites.map((s) => ({ ...s, state: 'removed' })) });
    }
  }
  return { ...shared, pid, transaction: null, arenas, patches: kept.reverse() };
}

/** Whether `record` was written for another process than `pid` (inherited through fork). */
export function isInherited(record: PatchRecord, pid: number): boolean {
  return record.generation > 0n && record.pid !== pid;
}
