/** Pure views of a record: the live patches, the stack of patches at a site, and where the code disagrees with the record. */
import { bytesEqual } from './bytes.js';
import type { PatchRecord, RecordPatch, RecordSite } from './record.js';

/** Patches that are in effect (not removed), in application order. */
export function livePatches(record: PatchRecord): RecordPatch[] {
  return record.patches.filter((p) => p.state !== 'removed');
}

/** The live sites at `address`, bottom (first applied) to top. */
export function siteStack(record: PatchRecord, address: bigint): Array<{ patch: RecordPatch; site: RecordSite }> {
  const out: Array<{ patch: RecordPatch; site: RecordSite }> = [];
  for (const p of livePatches(record)) for (const s of p.sites) if (s.address === address) out.push({ patch: p, site: s });
  return out;
}

/** Sites whose code disagrees with the record (ProcessPatches.disagreements). An unreadable site counts as a disagreement. */
export function codeDisagreements(record: PatchRecord, read: (address: bigint, length: number) => Uint8Array): string[] {
  const out: string[] = [];
  const at = (address: bigint, length: number): Uint8Array | undefined => {
    try {
      return read(address, length);
    } catch {
      return undefined;
    }
  };
  for (const p of record.patches) {
    for (const site of p.sites) {
      const stack = siteStack(record, site.address);
      const actual = at(site.address, site.written.length);
      const where = `${site.function} at 0x${site.address.toString(16)}`;
      if (p.state === 'applied' && stack[stack.length - 1]?.patch === p) {
        if (actual === undefined || !bytesEqual(actual, site.written)) out.push(`patch ${p.id} is recorded as applied, but ${where} does not hold its jump`);
      } else if (p.state === 'removed' && stack.length === 0 && actual !== undefined && bytesEqual(actual, site.written)) {
        out.push(`patch ${p.id} is recorded as removed, but ${where} holds its jump again`);
      }
    }
  }
  return out;
}
