/**
 * recoverProcess: bring a process whose patcher died mid-operation back to a consistent state,
 * from the in-process record alone.
 *
 * Rule: an apply without its commit mark (patch state `pending`) is UNDONE; a remove in progress
 * (state `removing`) is FINISHED. Either way every site of that patch ends with its original bytes,
 * written in one freeze with the usual thread checks. Site bytes that are neither the original nor
 * what the patch wrote are left alone and reported (something else changed them).
 *
 * Recover also reconciles code that disagrees with the record although no operation was
 * interrupted: an applied patch whose code holds its original bytes at some site (a tool wrote the
 * file's bytes back behind the engine's back) is RECONCILED — undone at its other sites and marked
 * removed, so `list`, `apply` and `remove` tell the truth again; a removed patch whose jump is back
 * in the code (its arena may be freed) gets its original bytes back.
 */
import { HotpatchError } from '../../errors.js';
import { freeUnusedRetired, retiredRanges } from './cleanup.js';
import { writeSitesAllOrNothing } from './apply.js';
import type { RecordPatch, RecordSite } from './record.js';
import { recordedGeometry } from './remove.js';
import { hex, nowMicros, openSession, siteStack, type Session } from './session.js';
import { bytesEqual, classifySiteBytes, hexBytes, siteUnsafeRanges, siteWrites, type SiteGeometry, type SiteWrite } from './sites.js';
import { switchBytes } from './live.js';
import { switchWithRetry, type GuardedRange } from './switch.js';

export interface RecoverOptions {
  timeoutMs?: number;
}

export interface RecoverAction {
  patchId: string;
  /**
   * `undone`: an interrupted apply was rolled back; `finished`: an interrupted remove was
   * completed; `reconciled`: the code disagreed with the record (see the module comment).
   */
  action: 'undone' | 'finished' | 'reconciled';
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
    const unfinished = s.record.patches.filter((p) => p.state === 'pending' || p.state === 'removing');
    const reverted = revertedPatches(s, new Set(unfinished));
    // Top-most first: undoing a patch restores the bytes the patch below it wrote.
    const undo = s.record.patches.filter((p) => unfinished.includes(p) || reverted.has(p)).reverse();
    const now = new Map<bigint, Uint8Array>();
    const plans = undo.flatMap((patch) =>
      patch.sites.map((site) => {
        const g = recordedGeometry(site);
        const actual = now.get(site.address) ?? s.proc.readMemory(site.address, g.length);
        const cls = classifySiteBytes(g, actual, site.original, site.written, site.gate !== undefined);
        if (cls === 'foreign') {
          throw new HotpatchError(
            'RECOVER_CONFLICT',
            `${site.function} at ${hex(site.address)} holds ${hexBytes(actual)}, neither its original bytes (${hexBytes(site.original)}) nor those patch ${patch.id} wrote (${hexBytes(site.written)}); ` +
              'something else changed this code: recovery left the process untouched, investigate (hotpatch verify) or restart the process',
          );
        }
        now.set(site.address, site.original);
        return { patch, site, g, actual, writes: siteWrites(g, actual, site.original, 'restore') };
      }),
    );
    plans.push(...staleJumps(s));
    const retired = retiredRanges(s.record);
    const observed = [...undo.map((p) => p.code), ...retired.map((r) => r.range)];
    const toWrite = plans.filter((p) => p.writes.length > 0);
    let inUse: boolean[] = observed.map(() => true);
    if (observed.length > 0 || toWrite.length > 0) {
      const guarded: GuardedRange[] = toWrite.flatMap((p) => siteUnsafeRanges(p.g, p.writes).map((range) => ({ range, function: p.site.function, what: 'the patched entry bytes' })));
      const outcome = await switchWithRetry({
        pid, guarded, observed, timeoutMs: options.timeoutMs ?? 5000,
        write: (frozen) => {
          writeSitesAllOrNothing(frozen, toWrite.map((p) => ({ address: p.site.address, writes: p.writes, before: p.actual })), 'remove');
          // Live patches undone: flags clear, as for a removed patch (their gates are unreachable now).
          for (const p of undo) if (p.flag !== undefined) frozen.write(p.flag, Uint8Array.of(0));
        },
      });
      result.pauseMicros = outcome.pauseMicros;
      inUse = outcome.observedInUse;
    }
    const finished = new Map<RecordPatch, RecordPatch>();
    for (const patch of undo) {
      finished.set(patch, { ...patch, state: 'removed', retired: true, sites: patch.sites.map((x) => ({ ...x, state: 'removed' })) });
      const action = patch.state === 'pending' ? 'undone' : patch.state === 'removing' ? 'finished' : 'reconciled';
      result.actions.push({ patchId: patch.id, action, sitesRestored: toWrite.filter((p) => p.patch === patch).length });
    }
    for (const p of toWrite) {
      if (p.patch.state === 'removed') result.actions.push({ patchId: p.patch.id, action: 'reconciled', sitesRestored: 1 });
    }
    if (undo.length > 0 || toWrite.length > 0 || s.record.transaction) {
      s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => finished.get(p) ?? p) });
      result.status = 'recovered';
    }
    const candidates = [...undo.map((p) => ({ patch: finished.get(p)!, range: p.code })), ...retired];
    // Their unwind information goes with their code (./cleanup.ts): a thread still inside may throw.
    result.freed = await freeUnusedRetired(s, candidates, inUse, options.timeoutMs ?? 5000);
    return { ...result, totalMicros: nowMicros() - t0 };
  } finally {
    s.close();
  }
}

/**
 * Applied patches whose code holds their original bytes at a site where they are the top layer
 * (ignoring `taken` patches, which are undone anyway): something restored the code without the
 * engine. Throws RECOVER_CONFLICT when such a patch lies under an intact one (removal order).
 */
function revertedPatches(s: Session, taken: ReadonlySet<RecordPatch>): Set<RecordPatch> {
  const out = new Set<RecordPatch>();
  const applied = s.record.patches.filter((p) => p.state === 'applied');
  const isTaken = (p: RecordPatch): boolean => taken.has(p) || out.has(p);
  for (const patch of [...applied].reverse()) {
    for (const site of patch.sites) {
      const stack = siteStack(s.record, site.address).filter((x) => !isTaken(x.patch));
      if (stack[stack.length - 1]?.patch !== patch) continue; // the layer above owns these bytes
      const g = recordedGeometry(site);
      const cls = classifySiteBytes(g, s.proc.readMemory(site.address, g.length), site.original, site.written, site.gate !== undefined);
      if (cls === 'original' || cls === 'mixed') {
        out.add(patch);
        break;
      }
    }
  }
  for (const patch of out) {
    for (const site of patch.sites) {
      const above = siteStack(s.record, site.address).filter((x) => !isTaken(x.patch)).find((x) => s.record.patches.indexOf(x.patch) > s.record.patches.indexOf(patch));
      if (above !== undefined) {
        throw new HotpatchError(
          'RECOVER_CONFLICT',
          `patch ${patch.id} no longer holds its code in process ${s.pid}, but patch ${above.patch.id} was applied on top of it at ${site.function} (${hex(site.address)}): ` +
            `remove ${above.patch.id} first (hotpatch remove ${above.patch.id} --pid ${s.pid}), then run recover again`,
        );
      }
    }
  }
  return out;
}

/** Sites of removed patches whose jump is back in the code (no live patch owns the address): their original bytes are restored. */
function staleJumps(s: Session): Array<{ patch: RecordPatch; site: RecordSite; g: SiteGeometry; actual: Uint8Array; writes: SiteWrite[] }> {
  const out = [];
  for (const patch of s.record.patches) {
    if (patch.state !== 'removed') continue;
    for (const site of patch.sites) {
      if (siteStack(s.record, site.address).length > 0) continue;
      const g = recordedGeometry(site);
      const actual = s.proc.readMemory(site.address, g.length);
      // Removed live, entry back, padding still leading to its gate: the normal retired state
      // (the padding is reset with the code, when no thread is in it), not a disagreement.
      if (site.gate !== undefined && bytesEqual(switchBytes(g, actual), switchBytes(g, site.original))) continue;
      const cls = classifySiteBytes(g, actual, site.original, site.written, site.gate !== undefined);
      if (cls === 'written' || cls === 'mixed') out.push({ patch, site, g, actual, writes: siteWrites(g, actual, site.original, 'restore') });
    }
  }
  return out;
}
