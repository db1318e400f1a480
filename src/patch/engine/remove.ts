/**
 * removePatch: restore the original bytes of every site of a patch in one freeze; free the
 * patch's code when no thread executes it or will return into it, else retire it (freed by a later
 * engine operation). Removal order is enforced: only the top patch of every site can be removed.
 */
import { HotpatchError, RefusedError } from '../../errors.js';
import { freeUnusedRetired, reclaimRetired, retiredRanges } from './cleanup.js';
import { FOLLOWING_BYTES, setFlag, switchBytes, switchLive } from './live.js';
import { memoryWriter } from './memory.js';
import { faultPoint } from './fault.js';
import { writeSitesAllOrNothing } from './apply.js';
import type { RecordPatch } from './record.js';
import { assertCodeAgrees, assertNoTransaction, hex, livePatches, nowMicros, openSession, siteStack } from './session.js';
import { bytesEqual, hexBytes, recordedGeometry, siteUnsafeRanges, siteWrites } from './sites.js';
export { recordedGeometry };
import { switchWithRetry, type GuardedRange } from './switch.js';

export interface RemoveOptions {
  /** How long to retry while threads are in the way (default 5000 ms). */
  timeoutMs?: number;
  /** Restore in a freeze of every thread even when the patch was switched live. */
  freeze?: boolean;
}

export interface RemoveResult {
  pid: number;
  patchId: string;
  status: 'removed';
  /** `live`: switched back while every thread ran (the patch was applied live); `freeze`: in a freeze. */
  protocol: 'live' | 'freeze';
  pauseMicros: number;
  /** Of the pause, the time spent by the engine's own check and writes (µs); the rest is attach/detach. */
  frozenWorkMicros: number;
  totalPauseMicros: number;
  attempts: number;
  threads: number;
  totalMicros: number;
  /** The patch's code was freed now (false: a thread still used it; it is retired and freed later). */
  codeFreed: boolean;
  /** Live protocol: time from the flag write to the last entry byte (µs), while threads ran. */
  switchMicros?: number;
}

/** Flag clear, then every entry back to its original bytes, one byte at a time. */
function switchBackLive(pid: number, patch: RecordPatch, flag: bigint): void {
  const mem = memoryWriter(pid);
  try {
    faultPoint('remove:frozen', pid);
    setFlag(mem, flag, 0);
    patch.sites.forEach((site, i) => {
      const g = recordedGeometry(site);
      switchLive(mem, site.switchAddress, switchBytes(g, site.written), switchBytes(g, site.original), mem.read(site.switchAddress + 2n, FOLLOWING_BYTES));
      if (i === 0) faultPoint('remove:first-site-restored', pid);
    });
    faultPoint('remove:sites-restored', pid);
    faultPoint('remove:thawed', pid);
  } finally {
    mem.close();
  }
}

/** Removes patch `patchId` from process `pid`. */
export async function removePatch(pid: number, patchId: string, options: RemoveOptions = {}): Promise<RemoveResult> {
  const t0 = nowMicros();
  const s = openSession(pid);
  try {
    faultPoint('remove:locked', pid);
    assertNoTransaction(s.record, pid);
    assertCodeAgrees(s);
    const patch = livePatches(s.record).find((p) => p.id === patchId);
    if (!patch || !s.store) {
      throw new HotpatchError('PATCH_NOT_APPLIED', `patch ${patchId} is not applied to process ${pid} (see \`hotpatch list --pid ${pid}\`)`);
    }
    const store = s.store;
    // Order: every site must be the top of its stack.
    for (const site of patch.sites) {
      const stack = siteStack(s.record, site.address);
      const top = stack[stack.length - 1]!;
      if (top.patch !== patch) {
        throw new RefusedError(
          'REMOVAL_ORDER',
          `patch ${top.patch.id} was applied on top of ${patchId} at ${site.function} (${hex(site.address)}): remove ${top.patch.id} first; nothing was changed`,
        );
      }
    }
    // The bytes must still be those this patch wrote.
    const plans = patch.sites.map((site) => {
      const g = recordedGeometry(site);
      const actual = s.proc.readMemory(site.address, g.length);
      if (!bytesEqual(actual, site.written)) {
        throw new RefusedError(
          'SITE_MISMATCH',
          `${site.function} at ${hex(site.address)}: expected the bytes patch ${patchId} wrote (${hexBytes(site.written)}), found ${hexBytes(actual)}; ` +
            'something else changed this code: nothing was changed (investigate with `hotpatch verify`)',
        );
      }
      return { site, g, writes: siteWrites(g, site.written, site.original, 'restore') };
    });

    const removing: RecordPatch = { ...patch, state: 'removing', sites: patch.sites.map((x) => ({ ...x, state: 'removing' })) };
    s.record = store.write({
      ...s.record,
      transaction: { op: 'remove', patchId, ownerPid: process.pid, startedAt: Date.now() },
      patches: s.record.patches.map((p) => (p === patch ? removing : p)),
    });
    faultPoint('remove:record-removing', pid);
    const timeoutMs = options.timeoutMs ?? 5000;
    const commit = async (): Promise<RecordPatch> => {
      const removed: RecordPatch = { ...removing, state: 'removed', retired: true, sites: removing.sites.map((x) => ({ ...x, state: 'removed' })) };
      s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => (p === removing ? removed : p)) });
      faultPoint('remove:committed', pid);
      return removed;
    };

    if (patch.flag !== undefined && !options.freeze) {
      // Live (./live.ts): the flag first — every function of the patch goes back at this one write —
      // then the entries byte by byte. An interruption leaves a `removing` record: recover finishes it.
      const w0 = nowMicros();
      switchBackLive(pid, removing, patch.flag);
      const work = nowMicros() - w0;
      s.proc.assertAlive();
      const removed = await commit();
      // Its code, gates and paddings are reset once no thread can be in them: threads off their CPU
      // are checked now without a stop; while one runs the patch stays retired (./cleanup.ts, lazy).
      await reclaimRetired(s, timeoutMs, 'lazy');
      return {
        pid, patchId, status: 'removed', protocol: 'live', pauseMicros: 0, frozenWorkMicros: 0, totalPauseMicros: 0, attempts: 1,
        threads: s.proc.enumerateThreads().length, totalMicros: nowMicros() - t0, codeFreed: !s.record.patches.includes(removed), switchMicros: work,
      };
    }

    const guarded: GuardedRange[] = plans.flatMap((p) =>
      siteUnsafeRanges(p.g, p.writes).map((range) => ({ range, function: p.site.function, what: p.g.kind === 'plain' ? 'the 5 bytes at the entry' : 'the patched entry bytes' })),
    );
    const retired = retiredRanges(s.record);
    // Observed: this patch's code (freed now if unused), then older retired code.
    const observed = [patch.code, ...retired.map((r) => r.range)];
    let outcome;
    try {
      outcome = await switchWithRetry({
        pid, guarded, observed, timeoutMs: options.timeoutMs ?? 5000,
        write: (frozen) => {
          faultPoint('remove:frozen', pid);
          writeSitesAllOrNothing(frozen, plans.map((p) => ({ address: p.site.address, writes: p.writes, before: p.site.written })), 'remove');
          // Applied live, removed in a freeze: its gates are unreachable now; clear the flag so the
          // record and memory agree (the guard expects 0 for a removed patch).
          if (patch.flag !== undefined) frozen.write(patch.flag, Uint8Array.of(0));
        },
      });
    } catch (e) {
      // Nothing was restored: the patch stays applied.
      s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => (p === removing ? patch : p)) });
      throw e;
    }
    faultPoint('remove:thawed', pid);
    s.proc.assertAlive();
    const codeInUse = outcome.observedInUse[0] === true;
    const removed = await commit();
    await freeUnusedRetired(s, [{ patch: removed, range: removed.code }, ...retired], [codeInUse, ...outcome.observedInUse.slice(1)], timeoutMs);
    return {
      pid, patchId, status: 'removed', protocol: 'freeze', pauseMicros: outcome.pauseMicros, frozenWorkMicros: outcome.workMicros, totalPauseMicros: outcome.totalPauseMicros,
      attempts: outcome.attempts, threads: outcome.threads, totalMicros: nowMicros() - t0, codeFreed: !codeInUse,
    };
  } finally {
    s.close();
  }
}
