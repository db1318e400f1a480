/**
 * Gates of the zero-stall protocol (issue #10, docs/how-it-works.md): a patch switched without a
 * freeze sends every patched entry through a small gate in its code arena instead of straight to
 * the new code. All gates of a patch test one flag byte:
 *
 *   gate:  cmp byte [rip + flag], 0     80 3D rel32 00
 *          jne new_code                 0F 85 rel32
 *          jmp old_body                 E9 rel32        (the function after its 2-byte no-op entry)
 *
 * So the entries can be switched one by one while the flag is 0 (every gate still leads to the old
 * body), and the whole patch changes at one instant with one 1-byte write of the flag; remove
 * clears it first. Flags are dead at a function entry (the SysV ABI preserves none across a call),
 * so the compare is invisible to the function.
 *
 * The gate block follows the patch's linked code inside the patch's code range:
 *   +0   flag byte, then int3 up to +16
 *   +16  gate 0, gate 1, ... each GATE_SLOT bytes (18 of code, int3 after)
 */
import type { AddressRange } from '../../process/index.js';

export const GATE_CODE_SIZE = 18;
export const GATE_SLOT = 32;
const HEADER = 16;
const INT3 = 0xcc;

/** Bytes the gate block of a patch with `sites` live sites occupies. */
export function gateBlockSize(sites: number): number {
  return HEADER + sites * GATE_SLOT;
}

/** Offset of the gate block in the patch's code range: after the linked code, 16-aligned. */
export function gateBlockOffset(codeSize: number): number {
  return (codeSize + 15) & ~15;
}

/** Address of the flag byte and of gate `i` in a block at `block`. */
export function flagAddress(block: bigint): bigint {
  return block;
}
export function gateAddress(block: bigint, i: number): bigint {
  return block + BigInt(HEADER + i * GATE_SLOT);
}

function rel32(from: bigint, to: bigint): number {
  const d = to - from;
  if (d < -0x8000_0000n || d > 0x7fff_ffffn) throw new RangeError(`gate target 0x${to.toString(16)} is out of rel32 reach of 0x${from.toString(16)}`);
  return Number(d);
}

/** The gate at `at` for a site whose new code is `newCode` and whose old body starts at `oldBody`. */
export function encodeGate(at: bigint, flag: bigint, newCode: bigint, oldBody: bigint): Uint8Array {
  const out = new Uint8Array(GATE_CODE_SIZE);
  const dv = new DataView(out.buffer);
  out.set([0x80, 0x3d], 0);
  dv.setInt32(2, rel32(at + 7n, flag), true);
  out[6] = 0x00;
  out.set([0x0f, 0x85], 7);
  dv.setInt32(9, rel32(at + 13n, newCode), true);
  out[13] = 0xe9;
  dv.setInt32(14, rel32(at + 18n, oldBody), true);
  return out;
}

/** One live site as its gate needs it. */
export interface GateTarget {
  newCode: bigint;
  /** First byte after the 2-byte switch: the old function without its no-op entry. */
  oldBody: bigint;
}

/** The whole gate block at `block` with the flag set to `flag` (0 or 1). */
export function encodeGateBlock(block: bigint, targets: readonly GateTarget[], flag: 0 | 1): Uint8Array {
  const out = new Uint8Array(gateBlockSize(targets.length)).fill(INT3);
  out[0] = flag;
  targets.forEach((t, i) => out.set(encodeGate(gateAddress(block, i), flagAddress(block), t.newCode, t.oldBody), HEADER + i * GATE_SLOT));
  return out;
}

/** The range of the block (inside the patch's code range). */
export function gateBlockRange(block: bigint, sites: number): AddressRange {
  return { start: block, end: block + BigInt(gateBlockSize(sites)) };
}
