import { describe, expect, it } from 'vitest';
import { describeHook, encodeAbsJmp, encodeJmpRel32, encodeJmpShort } from '../../src/x86/index.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const at = 0x7f12_3456_0000n;

describe('describeHook', () => {
  it('jmp rel32 and jmp short', () => {
    expect(describeHook(encodeJmpRel32(at, at + 0x1234n), at)).toMatchObject({ kind: 'jmp', destination: at + 0x1234n, length: 5 });
    expect(describeHook(encodeJmpShort(at, at - 20n), at)).toMatchObject({ kind: 'jmp', destination: at - 20n, length: 2 });
  });
  it('call rel32', () => {
    expect(describeHook(b('e8 00 10 00 00'), at)).toMatchObject({ kind: 'call', destination: at + 5n + 0x1000n });
  });
  it('jmp [rip+x] with the slot outside the bytes: only the slot address', () => {
    const h = describeHook(b('ff 25 fa 0f 00 00 cc cc'), at);
    expect(h).toMatchObject({ kind: 'jmp-indirect', pointerSlot: at + 6n + 0xffan, length: 6 });
    expect(h.destination).toBeUndefined();
  });
  it('jmp [rip+0]; dq target: destination read from the bytes', () => {
    expect(describeHook(encodeAbsJmp(0xdead_beefn), at)).toMatchObject({ kind: 'jmp-indirect', destination: 0xdead_beefn, length: 14 });
    // the same, cut before the end of the qword: slot only
    expect(describeHook(encodeAbsJmp(0xdead_beefn).subarray(0, 10), at).destination).toBeUndefined();
  });
  it('push imm32; ret (imm32 sign-extends in 64-bit mode)', () => {
    expect(describeHook(b('68 78 56 34 12 c3'), at)).toMatchObject({ kind: 'push-ret', destination: 0x12345678n, length: 6, texts: ['push 0x12345678', 'ret'] });
    expect(describeHook(b('68 00 00 00 80 c3'), at).destination).toBe(0xffff_ffff_8000_0000n);
  });
  it('movabs reg, imm64; jmp reg', () => {
    expect(describeHook(b('48 b8 88 77 66 55 44 33 22 11 ff e0'), at)).toMatchObject({
      kind: 'mov-jmp',
      destination: 0x1122334455667788n,
      length: 12,
    });
    expect(describeHook(b('49 bb 00 00 40 00 00 00 00 00 41 ff e3'), at)).toMatchObject({ kind: 'mov-jmp', destination: 0x400000n, length: 13 });
    // mov eax, imm32 zero-extends into rax
    expect(describeHook(b('b8 00 00 00 90 ff e0'), at)).toMatchObject({ kind: 'mov-jmp', destination: 0x9000_0000n });
  });
  it('mov into one register, jump through another: unknown', () => {
    expect(describeHook(b('48 b8 88 77 66 55 44 33 22 11 ff e1'), at).kind).toBe('unknown');
  });
  it('int3, ordinary code, garbage, empty', () => {
    expect(describeHook(b('cc 90'), at)).toMatchObject({ kind: 'int3', length: 1, texts: ['int3'] });
    expect(describeHook(b('55 48 89 e5'), at)).toMatchObject({ kind: 'unknown', texts: ['push rbp'] });
    expect(describeHook(b('06'), at)).toMatchObject({ kind: 'unknown', texts: ['(bad)'] });
    expect(describeHook(new Uint8Array(0), at)).toMatchObject({ kind: 'unknown', length: 0 });
  });
});
