/**
 * Encoders for the few jumps the engine writes. They are fixed forms (Intel SDM Vol. 2A, JMP):
 *   E9 cd          jmp rel32            (5 bytes, rel to the next instruction)
 *   EB cb          jmp rel8             (2 bytes)
 *   FF 25 00000000 jmp [rip+0]; dq abs  (6 + 8 = 14 bytes)
 * so they are written by hand; the tests check them against the iced decoder.
 */
import { X86Error } from '../errors.js';

const U64_MAX = 0xffff_ffff_ffff_ffffn;
const INT32_MIN = -0x8000_0000n;
const INT32_MAX = 0x7fff_ffffn;

/** Length of `jmp rel32`. */
export const JMP_REL32_SIZE = 5;
/** Length of `jmp rel8`. */
export const JMP_SHORT_SIZE = 2;
/** Length of `jmp [rip+0]` followed by its 8-byte target. */
export const ABS_JMP_SIZE = 14;

function checkAddress(label: string, a: bigint): void {
  if (typeof a !== 'bigint' || a < 0n || a > U64_MAX) throw new RangeError(`${label}: expected a 64-bit unsigned bigint`);
}

/** Signed displacement of `to` relative to the end of an instruction of `length` bytes at `from`. */
function relative(from: bigint, to: bigint, length: number): bigint {
  checkAddress('from', from);
  checkAddress('to', to);
  // Addresses wrap modulo 2^64 like the CPU's RIP arithmetic.
  return BigInt.asIntN(64, to - (from + BigInt(length)));
}

/** True when `jmp rel32` placed at `from` can reach `to`. */
export function canJmpRel32(from: bigint, to: bigint): boolean {
  const rel = relative(from, to, JMP_REL32_SIZE);
  return rel >= INT32_MIN && rel <= INT32_MAX;
}

/**
 * `jmp rel32` at `from` to `to` (5 bytes). Throws X86Error `X86_OUT_OF_RANGE` when the distance
 * does not fit in ±2 GiB: place the code nearer (an arena within ±2 GiB) or use {@link encodeAbsJmp}.
 */
export function encodeJmpRel32(from: bigint, to: bigint): Uint8Array {
  const rel = relative(from, to, JMP_REL32_SIZE);
  if (rel < INT32_MIN || rel > INT32_MAX) {
    throw new X86Error(
      'X86_OUT_OF_RANGE',
      `jmp rel32 from 0x${from.toString(16)} cannot reach 0x${to.toString(16)} (distance ${rel}); place the new code within ±2 GiB or use an absolute jump`,
    );
  }
  const out = new Uint8Array(JMP_REL32_SIZE);
  out[0] = 0xe9;
  new DataView(out.buffer).setInt32(1, Number(rel), true);
  return out;
}

/**
 * `jmp rel8` at `from` to `to` (2 bytes). Throws X86Error `X86_OUT_OF_RANGE` when the target is
 * further than -128..+127 bytes from the end of the jump.
 */
export function encodeJmpShort(from: bigint, to: bigint): Uint8Array {
  const rel = relative(from, to, JMP_SHORT_SIZE);
  if (rel < -128n || rel > 127n) {
    throw new X86Error(
      'X86_OUT_OF_RANGE',
      `jmp short from 0x${from.toString(16)} cannot reach 0x${to.toString(16)} (distance ${rel}, limit -128..127)`,
    );
  }
  return Uint8Array.of(0xeb, Number(rel) & 0xff);
}

/** `jmp qword ptr [rip+0]` followed by the 8-byte absolute target: 14 bytes, reaches anywhere. */
export function encodeAbsJmp(to: bigint): Uint8Array {
  checkAddress('to', to);
  const out = new Uint8Array(ABS_JMP_SIZE);
  out.set([0xff, 0x25, 0, 0, 0, 0]);
  new DataView(out.buffer).setBigUint64(6, to, true);
  return out;
}
