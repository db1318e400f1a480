import { describe, expect, it } from 'vitest';
import { X86Error } from '../../src/errors.js';
import {
  ABS_JMP_SIZE,
  canJmpRel32,
  decodeAt,
  describeHook,
  encodeAbsJmp,
  encodeJmpRel32,
  encodeJmpShort,
} from '../../src/x86/index.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** Deterministic xorshift so failures reproduce. */
function rng(seed: bigint) {
  let s = seed;
  return () => {
    s ^= (s << 13n) & 0xffff_ffff_ffff_ffffn;
    s ^= s >> 7n;
    s ^= (s << 17n) & 0xffff_ffff_ffff_ffffn;
    return s;
  };
}

describe('jump encoders: known answers (hand-checked against the Intel SDM)', () => {
  it('jmp rel32 forward and backward', () => {
    // 0x2000 - (0x1000 + 5) = 0xffb
    expect(hex(encodeJmpRel32(0x1000n, 0x2000n))).toBe('e9fb0f0000');
    // 0x1000 - 0x2005 = -0x1005 = 0xffffeffb
    expect(hex(encodeJmpRel32(0x2000n, 0x1000n))).toBe('e9fbefffff');
    // jump to itself: rel = -5
    expect(hex(encodeJmpRel32(0x400000n, 0x400000n))).toBe('e9fbffffff');
  });
  it('jmp rel32 range limits', () => {
    const from = 0x7f00_0000_0000n;
    expect(hex(encodeJmpRel32(from, from + 5n + 0x7fff_ffffn))).toBe('e9ffffff7f');
    expect(hex(encodeJmpRel32(from, from + 5n - 0x8000_0000n))).toBe('e900000080');
    expect(canJmpRel32(from, from + 5n + 0x8000_0000n)).toBe(false);
    expect(() => encodeJmpRel32(from, from + 5n + 0x8000_0000n)).toThrow(X86Error);
    try {
      encodeJmpRel32(from, from - 0x8000_0001n + 5n - 1n);
      expect.unreachable();
    } catch (e) {
      expect((e as X86Error).code).toBe('X86_OUT_OF_RANGE');
    }
  });
  it('jmp short: the padded-entry switch back into 5 bytes of padding', () => {
    // switch at entry 0x1005, padding site at 0x1000: rel = 0x1000 - 0x1007 = -7
    expect(hex(encodeJmpShort(0x1005n, 0x1000n))).toBe('ebf9');
    // with endbr64 the switch is at entry + 4: rel = -11
    expect(hex(encodeJmpShort(0x1009n, 0x1000n))).toBe('ebf5');
    expect(hex(encodeJmpShort(0x1000n, 0x1002n + 127n))).toBe('eb7f');
    expect(hex(encodeJmpShort(0x1000n, 0x1002n - 128n))).toBe('eb80');
    expect(() => encodeJmpShort(0x1000n, 0x1002n + 128n)).toThrow(X86Error);
    expect(() => encodeJmpShort(0x1000n, 0x1002n - 129n)).toThrow(/limit -128..127/);
  });
  it('absolute jmp [rip+0]; dq target', () => {
    expect(hex(encodeAbsJmp(0x1122_3344_5566_7788n))).toBe('ff25000000008877665544332211');
    expect(encodeAbsJmp(0n).length).toBe(ABS_JMP_SIZE);
  });
  it('rejects addresses that are not 64-bit unsigned', () => {
    expect(() => encodeJmpRel32(-1n, 0n)).toThrow(RangeError);
    expect(() => encodeAbsJmp(1n << 64n)).toThrow(RangeError);
  });
});

describe('jump encoders: round trips through the iced decoder', () => {
  it('jmp rel32 decodes to the requested target (1000 random pairs)', () => {
    const next = rng(0x1234_5678_9abc_def1n);
    for (let n = 0; n < 1000; n++) {
      const from = next() & 0x7fff_ffff_ffffn;
      const to = from + ((next() & 0xffff_ffffn) - 0x7fff_fffbn);
      const bytes = encodeJmpRel32(from, to);
      const insn = decodeAt(bytes, from);
      expect(insn.length).toBe(5);
      expect(insn.mnemonic).toBe('jmp');
      expect(insn.branchTarget).toBe(to);
      expect(insn.fields.branch).toEqual({ offset: 1, size: 4 });
    }
  });
  it('jmp short decodes to the requested target for every distance', () => {
    for (let d = -128; d <= 127; d++) {
      const from = 0x55_5555_0000n;
      const to = from + 2n + BigInt(d);
      const insn = decodeAt(encodeJmpShort(from, to), from);
      expect(insn.length).toBe(2);
      expect(insn.branchTarget).toBe(to);
    }
  });
  it('absolute jump is described as jmp-indirect with its destination', () => {
    const next = rng(99n);
    for (let n = 0; n < 200; n++) {
      const to = next();
      const at = next() & 0x7fff_ffff_0000n;
      const h = describeHook(encodeAbsJmp(to), at);
      expect(h.kind).toBe('jmp-indirect');
      expect(h.pointerSlot).toBe(at + 6n);
      expect(h.destination).toBe(to);
      expect(h.length).toBe(14);
    }
  });
});
