/**
 * recoverProcess: bring a process whose patcher died mid-operation back to a consistent state,
 * from the in-process record alone.
 *
 * Rule: an apply without its commit mark (patch state `pending`) is UNDONE; a remove in progress
 * (state `removing`) is FINISHED. Either way every site of that patch ends with its original bytes,
 * written in one freeze with the usual thread checks. Site bytes that are neither the original nor
 * what the patch wrote are left alone and reported (something else changed them).
 */
import { HotpatchError } from '../../errors.js';
import { freeUnusedRetired, retiredRanges } from './cleanup.js';
import { writeSitesAllOrNothing } from './apply.js';
import type { RecordPatch } from './record.js';
import { recordedGeometry } from './remove.js';
import { hex, nowMicros, openSession } from './session.js';
import { classifySiteBytes, hexBytes, siteUnsafeRanges, siteWrites } from './sites.js';
import { switchWithRetry, type GuardedRange } from './switch.js';

export interface RecoverOptions {
  timeoutMs?: number;
}

export interface RecoverAction {
  patchId: string;
  /** `undone`: an interrupted apply was rolled back; `finished`: an interrupted remove was completed. */
  action: 'undone' | 'finished';
  /** Sites whose bytes had to be restored (the others already held their original bytes). */
  sitesRestored: number;
}

export interface RecoverResult {
  pid: number;
  status: 'recovered' | 'clean';
  actions: RecoverAction[];
  pauseMicros: number;
  /** Retired patch code freed during recovery. */
  freed: number;
  totalMicros: number;
}

/** Recovers process `pid` (see the module comment for the rule). */
export async function recoverProcess(pid: number, options: RecoverOptions = {}): Promise<RecoverResult> {
  const t0 = nowMicros();
  const s = openSession(pid);
  try {
    const result: RecoverResult = { pid, status: 'clean', actions: [], pauseMicros: 0, freed: 0, totalMicros: 0 };
    if (!s.store) return { ...result, totalMicros: nowMicros() - t0 };
    const store = s.store;
    const unfinished = s.record.patches.filter((p) => p.state === 'pending' || p.state === 'removing').reverse();
    const plans = unfinished.flatMap((patch) =>
      patch.sites.map((site) => {
        const g = recordedGeometry(site);
        const actual = s.proc.readMemory(site.address, g.length);
        const cls = classifySiteBytes(g, actual, site.original, site.written);
        if (cls === 'foreign') {
          throw new HotpatchError(
            'RECOVER_CONFLICT',
            `${site.function} at ${hex(site.address)} holds ${hexBytes(actual)}, neither its original bytes (${hexBytes(site.original)}) nor those patch ${patch.id} wrote (${hexBytes(site.written)}); ` +
              'something else changed this code: recovery left the process untouched, investigate (hotpatch verify) or restart the process',
          );
        }
        return { patch, site, g, actual, writes: siteWrites(g, actual, site.original, 'restore') };
      }),
    );
    const retired = retiredRanges(s.record);
    const observed = [...unfinished.map((p) => p.code), ...retired.map((r) => r.range)];
    const toWrite = plans.filter((p) => p.writes.length > 0);
    let inUse: boolean[] = observed.map(() => true);
    if (observed.length > 0 || toWrite.length > 0) {
      const guarded: GuardedRange[] = toWrite.flatMap((p) => siteUnsafeRanges(p.g, p.writes).map((range) => ({ range, function: p.site.function, what: 'the patched entry bytes' })));
      const outcome = await switchWithRetry({
        pid, guarded, observed, timeoutMs: options.timeoutMs ?? 5000,
        write: (frozen) => writeSitesAllOrNothing(frozen, toWrite.map((p) => ({ address: p.site.address, writes: p.writes, before: p.actual })), 'remove'),
      });
      result.pauseMicros = outcome.pauseMicros;
      inUse = outcome.observedInUse;
    }
    const finished = new Map<RecordPatch, RecordPatch>();
    for (const patch of unfinished) {
      finished.set(patch, { ...patch, state: 'removed', retired: true, sites: patch.sites.map((x) => ({ ...x, state: 'removed' })) });
      result.actions.push({ patchId: patch.id, action: patch.state === 'pending' ? 'undone' : 'finished', sitesRestored: toWrite.filter((p) => p.patch === patch).length });
    }
    if (unfinished.length > 0 || s.record.transaction) {
      s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => finished.get(p) ?? p) });
      result.status = 'recovered';
    }
    const candidates = [...unfinished.map((p) => ({ patch: finished.get(p)!, range: p.code })), ...retired];
    result.freed = freeUnusedRetired(s, candidates, inUse);
    return { ...result, totalMicros: nowMicros() - t0 };
  } finally {
    s.close();
  }
}
