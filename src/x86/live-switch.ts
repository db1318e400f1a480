// TEMPORARY stub (replaced by the liveswitch branch): only the `90 90` <-> `EB dd` forms.
export type LiveSwitchPlan = { ok: true; writes: Array<{ offset: number; byte: number }>; states: Uint8Array[] } | { ok: false; reason: string };
const HARMLESS = new Set([0xf5, 0xf8, 0xf9, 0xfc]);
export function planLiveSwitch(input: { address: bigint; from: Uint8Array; to: Uint8Array; following: Uint8Array }): LiveSwitchPlan {
  const { from, to } = input;
  if (from.length !== 2 || to.length !== 2) return { ok: false, reason: 'not 2 bytes' };
  if (input.address % 64n === 63n) return { ok: false, reason: 'straddles a cache line' };
  const nop = (b: Uint8Array): boolean => b[0] === 0x90 && b[1] === 0x90;
  if (nop(from) && to[0] === 0xeb && HARMLESS.has(to[1]!)) return { ok: true, writes: [{ offset: 1, byte: to[1]! }, { offset: 0, byte: 0xeb }], states: [new Uint8Array([0x90, to[1]!])] };
  if (nop(to) && from[0] === 0xeb && HARMLESS.has(from[1]!)) return { ok: true, writes: [{ offset: 0, byte: 0x90 }, { offset: 1, byte: 0x90 }], states: [new Uint8Array([0x90, from[1]!])] };
  return { ok: false, reason: `no safe sequence from ${Buffer.from(from).toString('hex')} to ${Buffer.from(to).toString('hex')}` };
}
export function switchSkippable(from: Uint8Array): boolean {
  return from.length === 2 && from[0] === 0x90 && from[1] === 0x90;
}
