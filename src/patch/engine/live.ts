/**
 * The zero-stall protocol (issue #10, docs/how-it-works.md "Switching without a freeze"): which
 * sites qualify, and the writes that switch them while every thread runs.
 *
 * A site qualifies when its entry is hotpatch-ready (padded), nothing is patched there yet, its
 * 2-byte switch holds only no-op instructions (so the gate may skip them) and src/x86/live-switch.ts
 * finds 1-byte write orders, there and back, that leave valid code at every instruction boundary.
 * Everything else takes the freeze (./switch.ts).
 */
import { HotpatchError } from '../../errors.js';
import { encodeJmpShort, JMP_REL32_SIZE, JMP_SHORT_SIZE, planLiveSwitch, switchSkippable } from '../../x86/index.js';
import { bytesEqual, hexBytes } from './bytes.js';
import { faultPoint } from './fault.js';
import { memoryWriter, type MemoryWriter } from './memory.js';
import type { RecordSite } from './record.js';
import type { SiteGeometry } from './sites.js';

/** Bytes after the switch the decoder may need to see (longest x86 instruction). */
export const FOLLOWING_BYTES = 15;

/** What a site looks like before the switch. */
export interface LiveCandidate {
  name: string;
  g: SiteGeometry;
  /** Bytes at the whole site now. */
  current: Uint8Array;
  /** Bytes after the switch (FOLLOWING_BYTES). */
  following: Uint8Array;
  stacked: boolean;
}

function switchPart(g: SiteGeometry, bytes: Uint8Array): Uint8Array {
  return bytes.subarray(g.switchOffset, g.switchOffset + JMP_SHORT_SIZE);
}

/** Why these sites cannot all be switched without a freeze; undefined when they can. */
export function liveRefusal(sites: readonly LiveCandidate[]): string | undefined {
  for (const x of sites) {
    if (x.g.kind !== 'padded') return `${x.name} has no hotpatch-ready entry (a 5-byte jump needs the freeze)`;
    if (x.stacked) return `${x.name} is already patched (a patch on top of another is switched in a freeze)`;
    const from = switchPart(x.g, x.current);
    if (!switchSkippable(from)) return `the entry of ${x.name} (${hexBytes(from)}) is not a no-op a gate may skip`;
    const to = encodeJmpShort(x.g.switchAddress, x.g.address);
    for (const [a, b] of [[from, to], [to, from]] as const) {
      const plan = planLiveSwitch({ address: x.g.switchAddress, from: a, to: b, following: x.following });
      if (!plan.ok) return `${x.name}: ${plan.reason}`;
    }
  }
  return undefined;
}

/**
 * Turns the 2-byte switch at `address` from `from` into `to` while threads run: one verified 1-byte
 * write per byte, in the order src/x86/live-switch.ts proved safe. `from` may be an intermediate
 * state (an interrupted switch).
 */
export function switchLive(mem: MemoryWriter, address: bigint, from: Uint8Array, to: Uint8Array, following: Uint8Array): void {
  if (bytesEqual(from, to)) return;
  const plan = planLiveSwitch({ address, from, to, following });
  if (!plan.ok) {
    throw new HotpatchError('LIVE_SWITCH_UNSAFE', `the entry at 0x${address.toString(16)} cannot go from ${hexBytes(from)} to ${hexBytes(to)} without a freeze (${plan.reason}); run the command again with --freeze`);
  }
  for (const w of plan.writes) mem.writeVerified(address + BigInt(w.offset), Uint8Array.of(w.byte));
}

/** Sets a patch's flag byte: every gate of the patch changes at this one write. */
export function setFlag(mem: MemoryWriter, flag: bigint, value: 0 | 1): void {
  mem.writeVerified(flag, Uint8Array.of(value));
}

/** The switch bytes of a site, from a whole-site byte array. */
export function switchBytes(g: SiteGeometry, site: Uint8Array): Uint8Array {
  return switchPart(g, site).slice();
}

/**
 * The live switch of a patch's sites: paddings (nothing executes them yet), then every entry one byte at
 * a time (each gate still leads to the old body: the flag is clear), then the flag — the one write
 * at which the whole patch changes.
 */
export function switchAllLive(pid: number, sites: ReadonlyArray<{ g: SiteGeometry; record: RecordSite; following: Uint8Array }>, flag: bigint): void {
  const mem = memoryWriter(pid);
  try {
    faultPoint('apply:frozen', pid);
    for (const x of sites) mem.writeVerified(x.record.address, x.record.written.slice(0, JMP_REL32_SIZE));
    faultPoint('apply:padding-written', pid);
    sites.forEach((x, i) => {
      switchLive(mem, x.g.switchAddress, switchBytes(x.g, x.record.original), switchBytes(x.g, x.record.written), x.following);
      if (i === 0) faultPoint('apply:first-site-switched', pid);
    });
    faultPoint('apply:sites-written', pid);
    setFlag(mem, flag, 1);
    faultPoint('apply:thawed', pid);
  } finally {
    mem.close();
  }
}
