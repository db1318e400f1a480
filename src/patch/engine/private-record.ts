/**
 * Forked children as first-class targets: a process that maps a record written for another
 * process (inherited through fork, ./inherited.ts) gets a private copy of its own view the first
 * time hotpatch works on it, and a process about to drop entries from a record others still share
 * gives them their private copies first, so no child ever loses the description of its code.
 *
 * The copy is a new memfd, written completely through /proc/PID/fd before it is mapped with
 * MAP_FIXED over the inherited mapping: readers (list, the guard) see the inherited record or the
 * child's own, never none. The parent may write the shared record meanwhile (it holds its own
 * lock, not the child's): the copy is only installed when the shared record's generation did not
 * change while it was derived (a seqlock), else it is derived again.
 */
import { readFileSync } from 'node:fs';
import { HotpatchError } from '../../errors.js';
import { enumerateProcessIds } from '../../process/index.js';
import { PAGE_SIZE } from './arena.js';
import { freeze } from './control.js';
import { isInherited } from './inherited.js';
import { RECORD_FILE_SIZE, RECORD_MAPS_PATH, RECORD_MEMFD_NAME } from './record.js';
import { findRecordMapping, ownView, RecordStore, writeFreshRecord } from './record-store.js';
import { openSession, type Session } from './session.js';

/** The shared record changed while the child's copy was derived. */
class SharedRecordChanged extends Error {}

const ATTEMPTS = 5;

/** Gives session `s` (whose record is inherited) a private record holding its own view. */
export function privatizeRecord(s: Session): void {
  const store = s.store;
  if (!store) return;
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const shared = store.reload();
    if (!isInherited(shared, s.pid)) {
      s.record = shared;
      return;
    }
    const view = ownView(shared, s.pid, s.proc.enumerateMappings());
    const at = store.mapping.start;
    const frozen = freeze(s.pid);
    try {
      const scratch = frozen.mapNear(at, PAGE_SIZE, 'r--');
      try {
        frozen.replaceWithMemfd(RECORD_MEMFD_NAME, RECORD_FILE_SIZE, scratch, at, (path) => {
          writeFreshRecord(path, view);
          if (store.reload().generation !== shared.generation) throw new SharedRecordChanged();
        });
      } finally {
        frozen.unmap(scratch, PAGE_SIZE);
      }
    } catch (e) {
      if (e instanceof SharedRecordChanged) continue;
      throw e;
    } finally {
      frozen.thaw();
    }
    store.close();
    const mine = findRecordMapping(s.proc.enumerateMappings());
    if (!mine) throw new HotpatchError('RECORD_MISSING', `process ${s.pid}: its private hotpatch record vanished right after it was mapped; run \`hotpatch recover --pid ${s.pid}\``);
    s.store = RecordStore.open(s.pid, mine);
    s.record = s.store.record;
    return;
  }
  throw new HotpatchError('RECORD_BUSY', `process ${s.pid}: the hotpatch record it inherited from process ${store.record.pid} kept changing while it was copied; retry`);
}

/** Other processes whose maps show the record file with inode `inode` (the parent's, or children forked since). */
export function recordSharers(self: number, inode: number): number[] {
  const out: number[] = [];
  for (const pid of enumerateProcessIds()) {
    if (pid === self || pid === process.pid) continue;
    let maps: string;
    try {
      maps = readFileSync(`/proc/${pid}/maps`, 'latin1');
    } catch {
      continue; // exited, or not ours to read
    }
    if (!maps.includes(RECORD_MAPS_PATH)) continue;
    const shares = maps.split('\n').some((line) => line.includes(RECORD_MAPS_PATH) && Number(line.split(/\s+/)[4]) === inode);
    if (shares) out.push(pid);
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

/**
 * Gives every other process sharing the record of `s` its private copy (opening a session on it
 * does that), waiting up to `waitMs` for a process another hotpatch operation holds. Returns false
 * when one could not be done: the caller then keeps the entries it meant to drop.
 */
export async function privatizeSharers(s: Session, waitMs = 5000): Promise<boolean> {
  if (!s.store) return true;
  for (const pid of recordSharers(s.pid, s.store.inode())) {
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        openSession(pid).close();
        break;
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'PROCESS_NOT_FOUND') break; // exited: nothing to keep
        if (code !== 'PROCESS_LOCKED' || Date.now() >= deadline) return false;
        await sleep(20);
      }
    }
  }
  return true;
}
