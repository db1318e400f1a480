import { describe, expect, it } from 'vitest';
import { X86Error } from '../../src/errors.js';
import {
  branchesInto,
  decodeAt,
  decodeFunction,
  findBranchTargets,
  findRipReferences,
  formatInsn,
  iterateInstructions,
} from '../../src/x86/index.js';
import { compile } from '../helpers/native.js';
import { Image, functionSymbols, objdumpBoundaries } from './oracle.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

describe('decodeAt: fields, operands and flow', () => {
  it('mov dword ptr [rsp+8], 1: disp8 at 3, imm32 at 4', () => {
    const i = decodeAt(b('c7 44 24 08 01 00 00 00'), 0x1000n);
    expect(i.text).toBe('mov dword ptr [rsp+8], 1');
    expect(i.length).toBe(8);
    expect(i.fields).toEqual({ displacement: { offset: 3, size: 1 }, immediate: { offset: 4, size: 4 } });
    expect(i.memory).toEqual({ ripRelative: false, displacement: 8n, base: 'rsp', scale: 1 });
    expect(i.immediates).toEqual([1n]);
    expect(i.flow).toBe('next');
  });
  it('RIP-relative load: absolute target and disp32 field', () => {
    // mov rax, [rip+0x10] at 0x1000, length 7 -> 0x1017
    const i = decodeAt(b('48 8b 05 10 00 00 00'), 0x1000n);
    expect(i.memory?.ripRelative).toBe(true);
    expect(i.memory?.target).toBe(0x1017n);
    expect(i.memory?.displacement).toBe(0x10n);
    expect(i.fields.displacement).toEqual({ offset: 3, size: 4 });
    // negative displacement: lea rdi, [rip-0x20]
    const j = decodeAt(b('48 8d 3d e0 ff ff ff'), 0x2000n);
    expect(j.memory?.target).toBe(0x2007n - 0x20n);
    expect(j.memory?.displacement).toBe(-0x20n);
  });
  it('TLS access through fs keeps the segment', () => {
    const i = decodeAt(b('64 48 8b 04 25 28 00 00 00'), 0n);
    expect(i.memory).toMatchObject({ ripRelative: false, segment: 'fs', displacement: 0x28n });
    expect(i.memory?.base).toBeUndefined();
    expect(i.fields.displacement).toEqual({ offset: 5, size: 4 });
  });
  it('index and scale', () => {
    const i = decodeAt(b('8b 44 8f f0'), 0n); // mov eax, [rdi+rcx*4-0x10]
    expect(i.memory).toEqual({ ripRelative: false, displacement: -16n, base: 'rdi', index: 'rcx', scale: 4 });
  });
  it('branches and calls: targets, kinds and rel fields', () => {
    const call = decodeAt(b('e8 fb 0f 00 00'), 0x1000n);
    expect(call).toMatchObject({ flow: 'call', branchTarget: 0x2000n, fields: { branch: { offset: 1, size: 4 } } });
    const jcc = decodeAt(b('0f 84 00 01 00 00'), 0x1000n);
    expect(jcc).toMatchObject({ flow: 'conditional-branch', branchTarget: 0x1106n, mnemonic: 'je' });
    const jshort = decodeAt(b('75 fe'), 0x1000n);
    expect(jshort).toMatchObject({ flow: 'conditional-branch', branchTarget: 0x1000n, fields: { branch: { offset: 1, size: 1 } } });
    expect(decodeAt(b('ff e0'), 0n).flow).toBe('indirect-branch');
    expect(decodeAt(b('ff 15 00 00 00 00'), 0n)).toMatchObject({ flow: 'indirect-call', memory: { ripRelative: true, target: 6n } });
    expect(decodeAt(b('c3'), 0n).flow).toBe('return');
    expect(decodeAt(b('cc'), 0n)).toMatchObject({ flow: 'interrupt', isInt3: true });
    expect(decodeAt(b('0f 0b'), 0n)).toMatchObject({ flow: 'exception', mnemonic: 'ud2', invalid: false });
  });
  it('prefixed branches: bnd jmp, notrack jmp, syscall', () => {
    expect(decodeAt(b('f2 e9 00 00 00 00'), 0x1000n)).toMatchObject({ branchTarget: 0x1006n, fields: { branch: { offset: 2, size: 4 } } });
    expect(decodeAt(b('3e ff e0'), 0n)).toMatchObject({ flow: 'indirect-branch', mnemonic: 'jmp' });
    const sc = decodeAt(b('0f 05'), 0n);
    expect(sc).toMatchObject({ flow: 'call', mnemonic: 'syscall' });
    expect(sc.branchTarget).toBeUndefined();
  });
  it('NOP forms, int3, endbr64', () => {
    for (const n of ['90', '66 90', '0f 1f 00', '0f 1f 40 00', '0f 1f 44 00 00', '66 0f 1f 44 00 00', '0f 1f 80 00 00 00 00', '66 66 2e 0f 1f 84 00 00 00 00 00']) {
      const i = decodeAt(b(n), 0n);
      expect(i.isNop, n).toBe(true);
      expect(i.length).toBe(b(n).length);
    }
    expect(decodeAt(b('f3 0f 1e fa'), 0n)).toMatchObject({ isEndbr64: true, isNop: false, mnemonic: 'endbr64' });
    expect(decodeAt(b('48 8d a4 24 00 00 00 00'), 0n)).toMatchObject({ isNop: false, text: 'lea rsp, [rsp]', length: 8 });
  });
  it('movabs: 8-byte immediate field', () => {
    const i = decodeAt(b('48 b8 88 77 66 55 44 33 22 11'), 0n);
    expect(i.immediates).toEqual([0x1122334455667788n]);
    expect(i.fields.immediate).toEqual({ offset: 2, size: 8 });
  });
  it('text can be skipped and formatted later', () => {
    const i = decodeAt(b('48 8b 05 10 00 00 00'), 0x1000n, { text: false });
    expect(i.text).toBe('');
    expect(formatInsn(i)).toBe('mov rax, [0x1017]');
  });
  it('empty input is an X86Error', () => {
    expect(() => decodeAt(new Uint8Array(0), 0n)).toThrow(X86Error);
  });
});

describe('hostile input: truncated and garbage bytes are flagged, never silently decoded', () => {
  it('a truncated last instruction is invalid + truncated', () => {
    const insns = decodeFunction(b('55 48 89 e5 e8 00 00'), 0x1000n);
    expect(insns.map((i) => i.mnemonic)).toEqual(['push', 'mov', 'invalid']);
    expect(insns[2]).toMatchObject({ invalid: true, truncated: true, flow: 'exception', address: 0x1004n });
  });
  it('invalid opcodes in 64-bit mode are invalid, decoding continues after them', () => {
    // 06 (push es) and 27 (daa) do not exist in 64-bit mode
    const insns = decodeFunction(b('06 27 c3'), 0n);
    expect(insns.map((i) => i.invalid)).toEqual([true, true, false]);
    expect(insns[2]!.flow).toBe('return');
    expect(insns.reduce((n, i) => n + i.length, 0)).toBe(3);
  });
  it('random garbage: lengths always add up, no exception', () => {
    let seed = 12345;
    for (let n = 0; n < 200; n++) {
      const buf = new Uint8Array(64);
      for (let k = 0; k < buf.length; k++) buf[k] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
      const insns = decodeFunction(buf, 0x7000n);
      expect(insns.reduce((s, i) => s + i.length, 0)).toBe(64);
      for (const i of insns) expect(i.bytes.length).toBe(i.length);
    }
  });
  it('rejects a non-bigint address', () => {
    expect(() => decodeFunction(b('c3'), 1 as unknown as bigint)).toThrow(TypeError);
    expect(() => decodeFunction(b('c3'), -1n)).toThrow(RangeError);
  });
  it('breaking out of the iterator is fine (decoder freed in finally)', () => {
    for (let n = 0; n < 1000; n++) {
      for (const i of iterateInstructions(b('90 90 90 c3'), 0n)) if (i.isNop) break;
    }
  });
});

describe('branch and RIP helpers', () => {
  // 0: xor eax,eax   2: inc eax   4: cmp eax,10   7: jne 2   9: lea rdx,[rip+0x100]   16: call 0   21: ret
  const code = b('31 c0 ff c0 83 f8 0a 75 f9 48 8d 15 00 01 00 00 e8 eb ff ff ff c3');
  const insns = decodeFunction(code, 0x1000n);
  it('findBranchTargets', () => {
    expect(findBranchTargets(insns)).toEqual([
      { from: 0x1007n, target: 0x1002n, flow: 'conditional-branch', field: { offset: 1, size: 1 } },
      { from: 0x1010n, target: 0x1000n, flow: 'call', field: { offset: 1, size: 4 } },
    ]);
  });
  it('findRipReferences', () => {
    expect(findRipReferences(insns)).toEqual([{ from: 0x1009n, target: 0x1010n + 0x100n, mnemonic: 'lea', field: { offset: 3, size: 4 } }]);
  });
  it('branchesInto finds the loop back into bytes 1-4 of the entry', () => {
    expect(branchesInto(insns, 0x1001n, 0x1005n).map((x) => x.from)).toEqual([0x1007n]);
    expect(branchesInto(insns, 0x1003n, 0x1005n)).toEqual([]);
  });
});

describe('agreement with objdump on gcc output', () => {
  it('instruction boundaries of every function of a compiled fixture match objdump', async () => {
    const prog = await compile({ file: 'x86/entries.c', flags: ['-O2', '-fcf-protection=full'] });
    const img = new Image(prog);
    const text = img.section('.text');
    const syms = functionSymbols(prog).filter((s) => s.size > 0 && s.address >= text.addr && s.address < text.addr + BigInt(text.size));
    expect(syms.length).toBeGreaterThan(4);
    for (const sym of syms) {
      const f = img.bytesOf(sym);
      const ours = decodeFunction(f.code, f.address, { text: false });
      expect(ours.every((i) => !i.invalid), sym.name).toBe(true);
      expect(ours.map((i) => i.address), sym.name).toEqual(objdumpBoundaries(prog, sym.address, sym.address + BigInt(sym.size)));
    }
  });
});
