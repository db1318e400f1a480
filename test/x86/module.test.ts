import { describe, expect, it } from 'vitest';
import { classifyEntry, classifyModuleEntries } from '../../src/x86/index.js';
import { compile } from '../helpers/native.js';
import { Image, functionSymbols } from './oracle.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

/** A fake module: bytes at `base`, read like memory. */
function reader(base: bigint, bytes: Uint8Array) {
  return (a: bigint, n: number) => {
    if (a < base || a + BigInt(n) > base + BigInt(bytes.length)) return undefined;
    return bytes.subarray(Number(a - base), Number(a - base) + n);
  };
}

describe('classifyModuleEntries', () => {
  const base = 0x1000n;
  // f1 @0x1000: jmp 0x100b (into the padding of f2!); 5 x int3 padding @0x1006; f2 @0x100b: mov eax,[rip]; ret
  //  f1: e9 06 00 00 00 (jmp 0x100b -> target is f2's entry, harmless) then c3
  const mod = b('e9 06 00 00 00 c3 cc cc cc cc cc 8b 05 00 00 00 00 c3');
  const funcs = [
    { name: 'f1', address: base, size: 6 },
    { name: 'f2', address: base + 11n, size: 7 },
  ];
  it('padding that nothing branches into is used', () => {
    const [, f2] = classifyModuleEntries(funcs, reader(base, mod));
    expect(f2).toMatchObject({ name: 'f2', kind: 'padded', siteAddress: base + 6n });
  });
  it('padding that another function branches into is refused', () => {
    const m2 = mod.slice();
    m2[1] = 0x02; // f1: jmp 0x1007, one byte inside the padding site
    const [f1, f2] = classifyModuleEntries(funcs, reader(base, m2));
    expect(f1!.kind).toBe('plain');
    expect(f2).toMatchObject({ name: 'f2', kind: 'plain' });
    // without cross references it would have been used
    expect(classifyModuleEntries(funcs, reader(base, m2), { crossReferences: false })[1]!.kind).toBe('padded');
  });
  it('an entry inside another symbol (nested asm labels) gets no padding', () => {
    const res = classifyModuleEntries([{ name: 'outer', address: base, size: 18 }, ...funcs.slice(1)], reader(base, mod));
    expect(res[1]).toMatchObject({ name: 'f2', kind: 'plain' });
  });
  it('aliases are classified once; unreadable bytes before the entry are tolerated', () => {
    const res = classifyModuleEntries([...funcs, { name: 'f1_alias', address: base, size: 6 }], reader(base, mod));
    expect(res.map((r) => r.name)).toEqual(['f1', 'f2']);
    expect(res[0]!.paddingAvailable).toBe(0);
  });
  it('agrees with classifyEntry on the pfe fixture', async () => {
    const prog = await compile({ file: 'x86/entries.c', flags: ['-O2', '-fcf-protection=none', '-fpatchable-function-entry=7,5'] });
    const img = new Image(prog);
    const syms = functionSymbols(prog).filter((s) => s.size > 0);
    const res = classifyModuleEntries(syms, (a, n) => img.read(a, n));
    for (const name of ['f_work', 'f_empty', 'f_loop', 'f_hook']) {
      const r = res.find((x) => x.name === name)!;
      const f = img.bytesOf(syms.find((s) => s.name === name)!);
      const single = classifyEntry({ address: f.address, code: f.code, before: f.before });
      expect(r.form, name).toBe(single.form);
      expect(r.siteAddress).toBe(single.siteAddress);
    }
  });
});
