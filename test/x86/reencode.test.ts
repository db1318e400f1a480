import { describe, expect, it } from 'vitest';
import { X86Error } from '../../src/errors.js';
import { decodeFunction, findBranchTargets, findRipReferences, maskedBytes, reencodeAt } from '../../src/x86/index.js';
import { compile } from '../helpers/native.js';
import { Image, functionSymbols } from './oracle.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

describe('reencodeAt', () => {
  // 0: xor eax,eax  2: inc eax  4: cmp eax,10  7: jne 2  9: lea rdx,[rip+0x100]  16: call 0x1000-? 21: ret
  const code = b('31 c0 ff c0 83 f8 0a 75 f9 48 8d 15 00 01 00 00 e8 eb 0f 00 00 c3');
  const at = 0x40_1000n;
  const insns = decodeFunction(code, at);

  it('keeps absolute targets, moves internal branches with the block', () => {
    const to = 0x40_9000n;
    const r = reencodeAt(insns, to);
    expect(r.insns.map((i) => i.mnemonic)).toEqual(insns.map((i) => i.mnemonic));
    // internal loop: now targets the moved inc eax
    expect(findBranchTargets(r.insns)[0]!.target).toBe(to + 2n);
    // the call keeps its absolute destination
    expect(findBranchTargets(r.insns)[1]!.target).toBe(findBranchTargets(insns)[1]!.target);
    // the RIP-relative lea designates the same address
    expect(findRipReferences(r.insns)[0]!.target).toBe(findRipReferences(insns)[0]!.target);
    expect(r.bytes.length).toBe(code.length);
  });
  it('a short jcc whose external target is out of rel8 range becomes near', () => {
    const jcc = decodeFunction(b('74 10 c3'), 0x1000n); // je 0x1012
    const r = reencodeAt(jcc, 0x2000n);
    expect(r.insns[0]).toMatchObject({ mnemonic: 'je', branchTarget: 0x1012n, length: 6 });
  });
  it('refuses undecodable input and unreachable RIP-relative operands', () => {
    expect(() => reencodeAt(decodeFunction(b('06 c3'), 0n), 0x1000n)).toThrow(X86Error);
    // target above 4 GiB: neither rip+disp32 nor iced's eip-relative (67h) form reaches it from 0x1000
    const lea = decodeFunction(b('48 8d 15 00 01 00 00'), 0x7fff_0000_1000n);
    try {
      reencodeAt(lea, 0x1000n);
      expect.unreachable();
    } catch (e) {
      expect((e as X86Error).code).toBe('X86_ENCODE');
    }
  });
  it('every function of a compiled fixture survives a move by 1 MiB', async () => {
    const prog = await compile({ file: 'x86/entries.c', flags: ['-O2', '-fcf-protection=full'] });
    const img = new Image(prog);
    for (const sym of functionSymbols(prog).filter((s) => s.size > 0)) {
      const f = img.bytesOf(sym);
      const orig = decodeFunction(f.code, f.address);
      if (orig.some((i) => i.invalid)) continue;
      const moved = reencodeAt(orig, f.address + 0x10_0000n);
      const outside = (t: bigint) => t < f.address || t >= f.address + BigInt(sym.size);
      expect(findRipReferences(moved.insns).map((r) => r.target), sym.name).toEqual(findRipReferences(orig).map((r) => r.target));
      expect(
        findBranchTargets(moved.insns).map((r) => r.target).filter((t) => outside(t - 0x10_0000n) && outside(t)),
        sym.name,
      ).toEqual(findBranchTargets(orig).map((r) => r.target).filter(outside));
    }
  });
});

describe('maskedBytes', () => {
  it('two builds of the same call/lea at different addresses compare equal once masked', () => {
    const a = decodeFunction(b('48 8d 15 00 01 00 00 e8 10 00 00 00'), 0x1000n);
    const c = decodeFunction(b('48 8d 15 f0 02 00 00 e8 50 01 00 00'), 0x2000n);
    expect(a.map((i) => hex(maskedBytes(i)))).toEqual(c.map((i) => hex(maskedBytes(i))));
    expect(hex(maskedBytes(a[0]!))).toBe('488d1500000000');
    expect(hex(maskedBytes(a[1]!))).toBe('e800000000');
  });
  it('leaves non-RIP displacements and immediates unless asked', () => {
    const [i] = decodeFunction(b('c7 44 24 08 01 00 00 00'), 0n);
    expect(hex(maskedBytes(i!))).toBe('c744240801000000');
    expect(hex(maskedBytes(i!, { displacement: true, immediate: true }))).toBe('c744240000000000');
  });
});
