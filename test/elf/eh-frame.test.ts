/**
 * The .eh_frame / LSDA reader on a real g++ build (records, pointers, catch types checked against
 * readelf and the symbol table), then every truncation and thousands of byte mutations: each either
 * parses or throws ElfError, never anything else.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { ElfError } from '../../src/errors.js';
import { parseEhFrame, parseLsda, parseElf, type ElfFile } from '../../src/elf/index.js';
import { compile } from '../helpers/native.js';
import { prng } from '../helpers/prng.js';

const run = promisify(execFile);

const SOURCE = `
#include <stdexcept>
#include <cstdio>
struct Mine { int v; };
__attribute__((noinline)) int thrower(int x) { if (x > 3) throw Mine{x}; if (x < 0) throw std::runtime_error("neg"); return x; }
__attribute__((noinline)) int catcher(int x) {
  try { return thrower(x); } catch (Mine &m) { return m.v; } catch (std::exception &) { return -1; } catch (...) { return -2; }
}
int main(int argc, char **) { std::printf("%d\\n", catcher(argc)); }
`;

let exe: string;
let elf: ElfFile;
let eh: Uint8Array;
let ehAddr: bigint;

beforeAll(async () => {
  exe = await compile({ source: SOURCE, cxx: true, flags: ['-O2'], name: 'eh' });
  elf = parseElf(new Uint8Array(readFileSync(exe)));
  const s = elf.findSection('.eh_frame')!;
  eh = elf.sectionData(s).slice();
  ehAddr = s.addr;
}, 60_000);

function catcherFde() {
  const sym = elf.findSymbol('_Z7catcheri', { table: 'symtab' })!;
  const { fdes } = parseEhFrame(eh, ehAddr);
  return { sym, fde: fdes.find((f) => f.pcBegin.value === sym.value)! };
}

describe('.eh_frame reader', () => {
  it('finds every FDE readelf lists, with its pc range, CIE augmentation, personality and LSDA', async () => {
    const { fdes } = parseEhFrame(eh, ehAddr);
    const { stdout } = await run('readelf', ['--debug-dump=frames', exe]);
    const ranges = [...stdout.matchAll(/FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)/g)].map((m) => `${BigInt(`0x${m[1]}`)}-${BigInt(`0x${m[2]}`)}`);
    expect(fdes.map((f) => `${f.pcBegin.value}-${f.pcBegin.value + f.pcRange}`)).toEqual(ranges);
    const { sym, fde } = catcherFde();
    expect(fde).toBeDefined();
    expect(fde.pcRange).toBeLessThanOrEqual(sym.size + 64n);
    expect(fde.cie.augmentation).toBe('zPLR');
    // gcc's indirect pc-relative personality: it designates the DW.ref.__gxx_personality_v0 slot.
    expect(fde.cie.personality!.encoding).toBe(0x9b);
    expect(elf.findSymbolByAddress(fde.cie.personality!.value)?.symbol.name).toBe('DW.ref.__gxx_personality_v0');
    expect(fde.lsda).toBeDefined();
  });

  it('reads the LSDA of a function with three catch clauses: two typed ones and catch (...)', () => {
    const { fde } = catcherFde();
    const ex = elf.findSection('.gcc_except_table')!;
    const info = parseLsda(elf.sectionData(ex), ex.addr, Number(fde.lsda!.value - ex.addr));
    expect(info.lpStart).toBeUndefined();
    const names = info.types.map((t) => (t.value === 0n ? 'catch(...)' : elf.findSymbolByAddress(t.value)?.symbol.name));
    expect(names.sort()).toEqual(['DW.ref._ZTI4Mine', 'DW.ref._ZTISt9exception', 'catch(...)'].sort());
    expect(info.offset + info.size).toBeLessThanOrEqual(elf.sectionData(ex).length);
  });

  it('every truncation and 3000 mutations either parse or throw ElfError', () => {
    const check = (bytes: Uint8Array): void => {
      try {
        const { fdes } = parseEhFrame(bytes, ehAddr);
        for (const f of fdes) expect(f.offset + f.size).toBeLessThanOrEqual(bytes.length);
      } catch (e) {
        if (!(e instanceof ElfError)) throw e;
      }
    };
    for (let n = 0; n < eh.length; n++) check(eh.subarray(0, n));
    const ex = elf.findSection('.gcc_except_table')!;
    const lsda = elf.sectionData(ex).slice();
    const rnd = prng(12);
    for (let i = 0; i < 3000; i++) {
      const m = (i % 2 === 0 ? eh : lsda).slice();
      for (let k = 0; k < 1 + (i % 4); k++) m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
      if (i % 2 === 0) check(m);
      else {
        try {
          parseLsda(m, ex.addr, Math.floor(rnd() * m.length));
        } catch (e) {
          if (!(e instanceof ElfError)) throw e;
        }
      }
    }
  });
});
