/**
 * Re-applying a patch that was removed live and is still retired (a thread may still have been in
 * its code, so it was kept: ./cleanup.ts): its code, gates and unwind registration are intact and
 * its paddings may still lead to its gates, so the same patch is switched back on by the entry
 * bytes and the flag alone — no thread stops, no padding has to be reset first.
 *
 * Revived only when memory proves it: the plan linked at the patch's own addresses gives exactly
 * the code and data in memory, the gate block holds its gates with the flag clear, and each entry
 * holds its original switch bytes with the padding either original or this patch's jump. A patch
 * with variables is applied afresh instead (a revived one would keep their values).
 */
import type { PatchPlan } from '../plan.js';
import { layoutPatch, linkPatch, type SymbolLookup } from '../linker/index.js';
import type { Module } from '../../process/index.js';
import { JMP_REL32_SIZE } from '../../x86/index.js';
import { bytesEqual } from './bytes.js';
import { undoLiveApply } from './cleanup.js';
import { faultPoint } from './fault.js';
import { encodeGateBlock } from './gate.js';
import { FOLLOWING_BYTES, liveRefusal, switchAllLive, switchBytes } from './live.js';
import type { RecordPatch } from './record.js';
import { nowMicros, siteStack, type Session } from './session.js';
import { recordedGeometry } from './sites.js';

/** What the caller knows about the patch being applied. */
export interface ReviveRequest {
  patchId: string;
  packageHash: string;
  signer: string | null;
  signing?: RecordPatch['signing'];
  content?: Uint8Array;
  module: Module;
  lookup: SymbolLookup;
  timeoutMs: number;
}

/** The retired patch `req` can revive in `s`, or undefined (then it is applied afresh). Reads only. */
export function findRevivable(s: Session, plan: PatchPlan, req: ReviveRequest): RecordPatch | undefined {
  const p = s.record.patches.find((x) => x.id === req.patchId && x.state === 'removed' && x.flag !== undefined);
  if (!p || p.vars !== undefined || p.sites.length !== plan.functions.length) return undefined;
  if (p.module.buildId !== (req.module.buildId ?? '') || p.module.loadBias !== req.module.loadBias) return undefined;
  if (plan.unwind !== undefined && p.unwind === undefined) return undefined;
  const sitesOk = p.sites.every((site, i) => {
    const fn = plan.functions[i]!;
    if (site.address !== fn.entry.siteVaddr + req.module.loadBias || siteStack(s.record, site.address).length > 0) return false;
    const g = recordedGeometry(site);
    if (g.kind !== 'padded') return false;
    const now = s.proc.readMemory(site.address, g.length);
    const padding = now.subarray(0, JMP_REL32_SIZE);
    return bytesEqual(switchBytes(g, now), switchBytes(g, site.original)) &&
      (bytesEqual(padding, site.written.subarray(0, JMP_REL32_SIZE)) || bytesEqual(padding, site.original.subarray(0, JMP_REL32_SIZE)));
  });
  if (!sitesOk) return undefined;
  const layout = layoutPatch(plan);
  let linked;
  try {
    linked = linkPatch(plan, layout, p.code.start, p.data?.start ?? 0n, { loadBias: req.module.loadBias, lookupSymbol: req.lookup }, 0n);
  } catch {
    return undefined;
  }
  if (linked.vars.length > 0 || !bytesEqual(s.proc.readMemory(p.code.start, linked.code.length), linked.code)) return undefined;
  if (linked.data.length > 0 && (!p.data || !bytesEqual(s.proc.readMemory(p.data.start, linked.data.length), linked.data))) return undefined;
  if (!p.sites.every((site, i) => site.newCode.start === linked.functionAddresses[i])) return undefined;
  const gates = encodeGateBlock(p.flag!, p.sites.map((x) => ({ newCode: x.newCode.start, oldBody: x.switchAddress + 2n })), 0);
  if (!bytesEqual(s.proc.readMemory(p.flag!, gates.length), gates)) return undefined;
  const candidates = p.sites.map((site) => ({
    name: site.function, g: recordedGeometry(site), current: site.original, stacked: false, following: s.proc.readMemory(site.switchAddress + 2n, FOLLOWING_BYTES),
  }));
  return liveRefusal(candidates) === undefined ? p : undefined;
}

/**
 * Switches the retired patch `req.patchId` on again if memory proves it intact (see the module
 * comment). Returns the time the switch took (µs), or undefined when it must be applied afresh.
 * Recorded like an apply (pending, then applied): a patcher killed in between is undone by recover.
 */
export async function reviveRetired(s: Session, plan: PatchPlan, req: ReviveRequest): Promise<{ switchMicros: number; patch: RecordPatch } | undefined> {
  const old = s.store ? findRevivable(s, plan, req) : undefined;
  if (!old || !s.store) return undefined;
  const store = s.store;
  const { retired: _retired, ...rest } = old;
  const pending: RecordPatch = {
    ...rest, packageHash: req.packageHash, signer: req.signer, state: 'pending', appliedAt: Date.now(), sites: old.sites.map((x) => ({ ...x, state: 'pending' })),
  };
  if (req.signing !== undefined) pending.signing = req.signing;
  else delete pending.signing;
  if (req.content !== undefined) pending.content = req.content;
  else delete pending.content;
  s.record = store.write({
    ...s.record,
    transaction: { op: 'apply', patchId: req.patchId, ownerPid: process.pid, startedAt: Date.now() },
    patches: s.record.patches.map((p) => (p === old ? pending : p)),
  });
  faultPoint('apply:record-pending', s.pid);
  const w0 = nowMicros();
  try {
    switchAllLive(s.pid, pending.sites.map((site) => {
      const g = recordedGeometry(site);
      return { g, record: site, following: s.proc.readMemory(site.switchAddress + 2n, FOLLOWING_BYTES) };
    }), pending.flag!);
    s.proc.assertAlive();
  } catch (e) {
    try {
      await undoLiveApply(s, pending, req.timeoutMs);
    } catch {
      /* the original error is what the user needs; recover handles the rest */
    }
    throw e;
  }
  const switchMicros = nowMicros() - w0;
  const applied: RecordPatch = { ...pending, state: 'applied', sites: pending.sites.map((x) => ({ ...x, state: 'applied' })) };
  s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => (p === pending ? applied : p)) });
  faultPoint('apply:committed', s.pid);
  return { switchMicros, patch: applied };
}
