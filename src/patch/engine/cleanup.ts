/**
 * Freeing patch code that is no longer reachable (retired code) and unmapping what an operation
 * mapped when it fails, so a refused or failed apply leaves no new mapping behind.
 */
import { freeze } from './control.js';
import { memoryWriter } from './memory.js';
import type { AddressRange } from '../../process/index.js';
import type { RecordArena, RecordPatch } from './record.js';
import { privatizeSharers } from './private-record.js';
import { releaseIfEmpty, unmapRecord } from './release.js';
import type { Session } from './session.js';

const INT3 = 0xcc;

/** Code ranges of removed patches whose code could not be freed yet. */
export function retiredRanges(record: { patches: RecordPatch[] }): Array<{ patch: RecordPatch; range: AddressRange }> {
  return record.patches.filter((p) => p.state === 'removed').map((p) => ({ patch: p, range: p.code }));
}

/**
 * Drops from the record the retired patches no thread used during the last freeze, after filling
 * their code with int3 (a stale jump into freed code then traps instead of running garbage), and
 * releases the arenas and the record when no patch is left (./release.ts). Processes forked since
 * that still share the record get their own copy first (they may still run the dropped code); when
 * one cannot be done, nothing is dropped (a later operation frees it).
 */
export async function freeUnusedRetired(s: Session, retired: ReadonlyArray<{ patch: RecordPatch; range: AddressRange }>, inUse: readonly boolean[]): Promise<number> {
  const free = retired.filter((_, i) => inUse[i] === false).map((r) => r.patch);
  if (free.length === 0 || !s.store || !(await privatizeSharers(s))) return 0;
  const mem = memoryWriter(s.pid);
  try {
    for (const p of free) {
      mem.writeVerified(p.code.start, new Uint8Array(Number(p.code.end - p.code.start)).fill(INT3));
      if (p.data) mem.writeVerified(p.data.start, new Uint8Array(Number(p.data.end - p.data.start)));
      if (p.vars) mem.writeVerified(p.vars.start, new Uint8Array(Number(p.vars.end - p.vars.start)));
    }
  } finally {
    mem.close();
  }
  s.record = s.store.write({ ...s.record, patches: s.record.patches.filter((p) => !free.includes(p)) });
  releaseIfEmpty(s);
  return free.length;
}

/**
 * Unmaps arenas (and the record) that the failed operation itself created and nothing uses.
 * Best effort: needs one more short freeze.
 */
export async function unmapFresh(s: Session, fresh: { record: boolean; arenas: RecordArena[] }): Promise<void> {
  const arenas = fresh.arenas.filter((a) => !s.record.patches.some((p) => [p.code, p.data, p.vars].some((r) => r && r.start < a.end && a.start < r.end)));
  const dropRecord = fresh.record && s.record.patches.length === 0 && s.record.arenas.every((a) => arenas.includes(a));
  if (arenas.length === 0 && !dropRecord) return;
  // A process that died meanwhile has nothing left to unmap (and must not get injected calls).
  if (!s.proc.isAlive() || !(await privatizeSharers(s))) return;
  const frozen = freeze(s.pid);
  try {
    for (const a of arenas) frozen.unmap(a.start, Number(a.end - a.start));
    if (s.store && !dropRecord) s.record = s.store.write({ ...s.record, arenas: s.record.arenas.filter((a) => !arenas.includes(a)) });
    if (dropRecord) unmapRecord(s, frozen);
  } finally {
    frozen.thaw();
  }
}
