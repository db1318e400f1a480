/**
 * Leaving the process as it was (issue #12.5): once the record holds no patch any more, the arenas
 * and the record itself are unmapped. Called after the retired code no thread used during the last
 * freeze was dropped (./cleanup.ts): an empty record then means no thread executed, or had a return
 * address into, any patch code during that freeze, and no jump leads there since. A patch still
 * retired (a thread was in it) keeps everything mapped; the apply, remove or recover that frees it
 * later releases.
 */
import { hijack, type Frozen } from './control.js';
import { emptyRecord, RECORD_FILE_SIZE } from './record.js';
import type { Session } from './session.js';

/** Unmaps the record mapping of `s` in the frozen target and forgets the store. */
export function unmapRecord(s: Session, frozen: Frozen): void {
  if (!s.store) return;
  const start = s.store.mapping.start;
  s.store.close();
  s.store = undefined;
  frozen.unmap(start, RECORD_FILE_SIZE);
  s.record = emptyRecord(s.pid);
}

/** Unmaps every arena and the record of `s` when the record holds no patch. Returns whether it did. */
export function releaseIfEmpty(s: Session): boolean {
  if (!s.store || s.record.patches.length > 0 || s.record.transaction !== null || !s.proc.isAlive()) return false;
  const arenas = s.record.arenas;
  // No thread uses them (see above): one hijacked thread unmaps them while the others run.
  const frozen = hijack(s.pid);
  try {
    // The record first: a patcher killed in between leaves unused arenas, never a record naming unmapped ones.
    unmapRecord(s, frozen);
    for (const a of arenas) frozen.unmap(a.start, Number(a.end - a.start));
  } finally {
    frozen.thaw();
  }
  return true;
}
