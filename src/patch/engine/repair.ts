/**
 * repairPatch: write an applied patch's recorded jump(s) back where something else changed them
 * (the guard's `restore` of a sanctioned site). Goes through the engine so that the code and the
 * record never disagree: under the process lock, in one freeze with the usual thread checks, and
 * only at sites where this patch is the top layer.
 */
import { HotpatchError } from '../../errors.js';
import { writeSitesAllOrNothing } from './apply.js';
import { recordedGeometry } from './remove.js';
import { assertNoTransaction, nowMicros, openSession, siteStack } from './session.js';
import { bytesEqual, siteUnsafeRanges, siteWrites } from './sites.js';
import { switchWithRetry, type GuardedRange } from './switch.js';

export interface RepairOptions {
  /** How long to retry while threads are in the way (default 5000 ms). */
  timeoutMs?: number;
}

export interface RepairResult {
  pid: number;
  patchId: string;
  /** Sites whose bytes were rewritten (0: every site already held the patch's jump). */
  sitesRepaired: number;
  pauseMicros: number;
  totalMicros: number;
}

/** Rewrites the recorded jumps of applied patch `patchId` in process `pid` where they differ. */
export async function repairPatch(pid: number, patchId: string, options: RepairOptions = {}): Promise<RepairResult> {
  const t0 = nowMicros();
  const s = openSession(pid);
  try {
    assertNoTransaction(s.record, pid);
    const patch = s.record.patches.find((p) => p.id === patchId && p.state === 'applied');
    if (!patch) throw new HotpatchError('PATCH_NOT_APPLIED', `patch ${patchId} is not applied to process ${pid} (see \`hotpatch list --pid ${pid}\`)`);
    const plans = patch.sites
      .filter((site) => siteStack(s.record, site.address).at(-1)?.patch === patch)
      .map((site) => {
        const g = recordedGeometry(site);
        const actual = s.proc.readMemory(site.address, g.length);
        return { site, g, actual, writes: bytesEqual(actual, site.written) ? [] : siteWrites(g, actual, site.written, 'apply') };
      })
      .filter((p) => p.writes.length > 0);
    if (plans.length === 0) return { pid, patchId, sitesRepaired: 0, pauseMicros: 0, totalMicros: nowMicros() - t0 };
    const guarded: GuardedRange[] = plans.flatMap((p) => siteUnsafeRanges(p.g, p.writes).map((range) => ({ range, function: p.site.function, what: 'the patched entry bytes' })));
    const outcome = await switchWithRetry({
      pid, guarded, observed: [], timeoutMs: options.timeoutMs ?? 5000,
      write: (frozen) => writeSitesAllOrNothing(frozen, plans.map((p) => ({ address: p.site.address, writes: p.writes, before: p.actual })), 'apply'),
    });
    return { pid, patchId, sitesRepaired: plans.length, pauseMicros: outcome.pauseMicros, totalMicros: nowMicros() - t0 };
  } finally {
    s.close();
  }
}
