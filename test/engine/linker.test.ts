/** The patch linker: layout, every relocation type with its range checks, symbol resolution order. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { RefusedError } from '../../src/errors.js';
import { createSymbolLookup, layoutPatch, linkPatch, type LinkEnvironment } from '../../src/patch/linker/index.js';
import type { PatchPlan, Relocation } from '../../src/patch/plan.js';
import { compile } from '../helpers/native.js';

function plan(code: number[], relocations: Relocation[], data: Array<{ bytes: number[]; relocations?: Relocation[]; align?: number }> = []): PatchPlan {
  return {
    target: { buildId: '00', name: 't', size: 0 },
    functions: [{ name: 'f', vaddr: 0x1000n, size: 16, oldHash: '', entry: { kind: 'plain', siteVaddr: 0x1000n, switchVaddr: 0x1000n, expected: new Uint8Array(5) }, code: Uint8Array.from(code), align: 16, relocations }],
    data: data.map((d, i) => ({ name: `d${i}`, bytes: Uint8Array.from(d.bytes), align: d.align ?? 8, relocations: d.relocations ?? [] })),
  };
}

const env: LinkEnvironment = { loadBias: 0x5555_0000_0000n, lookupSymbol: (t) => (t.name === 'known' ? 0x7f00_0000_1000n : undefined) };
const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

describe('linker', () => {
  it('lays out functions and data with their alignment', () => {
    const p = plan([0xc3], []);
    p.functions.push({ ...p.functions[0]!, name: 'g', code: new Uint8Array(3), align: 64 });
    p.data.push({ name: 'a', bytes: new Uint8Array(3), align: 1, relocations: [] }, { name: 'b', bytes: new Uint8Array(8), align: 8, relocations: [] });
    const l = layoutPatch(p);
    expect(l.functionOffsets).toEqual([0, 64]);
    expect(l.codeSize).toBe(67);
    expect(l.codeAlign).toBe(64);
    expect(l.dataOffsets).toEqual([0, 8]);
    expect(l.dataSize).toBe(16);
    expect(() => layoutPatch({ ...p, functions: [{ ...p.functions[0]!, align: 3 }] })).toThrow(RefusedError);
    expect(() => layoutPatch({ ...p, functions: [{ ...p.functions[0]!, code: new Uint8Array(0) }] })).toThrow(RefusedError);
  });

  it('applies pc32, abs64, abs32 and abs32s to module, symbol and local targets', () => {
    const code = new Array(32).fill(0x90);
    const p = plan(code, [
      { offset: 0, type: 'pc32', target: { kind: 'module', vaddr: 0x2000n }, addend: -4n },
      { offset: 4, type: 'abs64', target: { kind: 'symbol', name: 'known' }, addend: 8n },
      { offset: 12, type: 'pc32', target: { kind: 'local', part: 'data', index: 0, offset: 4 }, addend: -4n },
      { offset: 16, type: 'abs32', target: { kind: 'module', vaddr: 0x10n }, addend: 0n },
    ], [{ bytes: [1, 2, 3, 4, 5, 6, 7, 8], relocations: [{ offset: 0, type: 'abs64', target: { kind: 'local', part: 'function', index: 0, offset: 1 }, addend: 0n }] }]);
    const codeBase = 0x5555_1000_0000n;
    const dataBase = 0x5555_2000_0000n;
    const lowEnv: LinkEnvironment = { ...env, loadBias: 0n };
    expect(() => linkPatch(p, layoutPatch(p), codeBase, dataBase, env)).toThrow(expect.objectContaining({ code: 'LINK_RELOCATION_OVERFLOW' })); // abs32 of a high address
    const lowCode = 0x1000_0000n;
    const lowData = 0x2000_0000n;
    const l = linkPatch(p, layoutPatch(p), lowCode, lowData, lowEnv);
    expect(BigInt(view(l.code).getInt32(0, true))).toBe(0x2000n - 4n - lowCode);
    expect(view(l.code).getBigUint64(4, true)).toBe(0x7f00_0000_1008n);
    expect(BigInt(view(l.code).getInt32(12, true))).toBe(lowData + 4n - 4n - (lowCode + 12n));
    expect(view(l.code).getUint32(16, true)).toBe(0x10);
    expect(view(l.data).getBigUint64(0, true)).toBe(lowCode + 1n);
    expect(l.resolved).toHaveLength(5);
    expect(l.code[20]).toBe(0x90);
  });

  it('variables get their own region: laid out apart from read-only data, linked at varsBase, relocated inside', () => {
    const code = new Array(16).fill(0x90);
    const p = plan(code, [
      { offset: 0, type: 'pc32', target: { kind: 'local', part: 'data', index: 1, offset: 0 }, addend: -4n },
      { offset: 4, type: 'pc32', target: { kind: 'local', part: 'data', index: 0, offset: 0 }, addend: -4n },
    ], [{ bytes: [9, 9, 9, 9] }, { bytes: new Array(16).fill(0), relocations: [{ offset: 8, type: 'abs64', target: { kind: 'local', part: 'data', index: 0, offset: 2 }, addend: 0n }] }]);
    p.data[1]!.writable = true;
    const l = layoutPatch(p);
    expect(l.dataOffsets).toEqual([0, 0]);
    expect([l.dataSize, l.varsSize, l.varsAlign]).toEqual([4, 16, 8]);
    const [codeBase, dataBase, varsBase] = [0x1000_0000n, 0x1001_0000n, 0x1002_0000n];
    const linked = linkPatch(p, l, codeBase, dataBase, env, varsBase);
    expect(linked.dataAddresses).toEqual([dataBase, varsBase]);
    expect(BigInt(view(linked.code).getInt32(0, true))).toBe(varsBase - (codeBase + 4n));
    expect(BigInt(view(linked.code).getInt32(4, true))).toBe(dataBase - (codeBase + 8n));
    expect(view(linked.vars).getBigUint64(8, true)).toBe(dataBase + 2n);
    expect([...linked.data]).toEqual([9, 9, 9, 9]);
    expect(() => linkPatch(p, l, codeBase, dataBase, env, varsBase + 4n)).toThrow(expect.objectContaining({ code: 'LINK_BAD_BASE' }));
  });

  it('refuses overflows, unknown symbols, bad locals, out-of-bounds and overlapping fields', () => {
    const cases: Array<[string, Relocation[], string]> = [
      ['pc32 too far', [{ offset: 0, type: 'pc32', target: { kind: 'symbol', name: 'known' }, addend: 0n }], 'LINK_RELOCATION_OVERFLOW'],
      ['abs32s negative too big', [{ offset: 0, type: 'abs32s', target: { kind: 'module', vaddr: 0n }, addend: -(1n << 40n) }], 'LINK_RELOCATION_OVERFLOW'],
      ['unknown symbol', [{ offset: 0, type: 'abs64', target: { kind: 'symbol', name: 'nope' }, addend: 0n }], 'LINK_SYMBOL_NOT_FOUND'],
      ['bad local index', [{ offset: 0, type: 'abs64', target: { kind: 'local', part: 'data', index: 3, offset: 0 }, addend: 0n }], 'LINK_BAD_LOCAL'],
      ['field past the end', [{ offset: 6, type: 'pc32', target: { kind: 'module', vaddr: 0n }, addend: 0n }], 'LINK_BAD_RELOCATION'],
      ['overlap', [{ offset: 0, type: 'abs64', target: { kind: 'module', vaddr: 0n }, addend: 0n }, { offset: 4, type: 'pc32', target: { kind: 'module', vaddr: 0n }, addend: 0n }], 'LINK_BAD_RELOCATION'],
    ];
    for (const [what, relocs, code] of cases) {
      const p = plan(new Array(8).fill(0x90), relocs);
      expect(() => linkPatch(p, layoutPatch(p), 0x1000_0000n, 0x2000_0000n, { ...env, loadBias: 0x1000_0000n }), what).toThrow(expect.objectContaining({ code }));
    }
  });

  it('resolves statics by STT_FILE, then globals of the module, then other modules', async () => {
    const exe = await compile({ source: 'static int __attribute__((noipa)) helper(void){return 2;}\nint get(void){return helper();}\nint main(void){return get();}', flags: ['-O1'], name: 'res' });
    const elf = parseElf(new Uint8Array(readFileSync(exe)));
    const libc = parseElf(new Uint8Array(readFileSync('/lib/x86_64-linux-gnu/libc.so.6')));
    const file = elf.symbols.find((s) => s.name === 'helper')!.file!;
    const lookup = createSymbolLookup(
      { name: 'res', path: exe, loadBias: 0x1000n, elf: () => elf },
      [{ name: 'libc.so.6', path: 'libc', loadBias: 0x7f00_0000_0000n, elf: () => libc }],
    );
    expect(lookup({ kind: 'symbol', name: 'helper', file })).toBe(elf.getSymbol('helper', { file }).value + 0x1000n);
    expect(lookup({ kind: 'symbol', name: 'helper', file: 'other.c' })).toBeUndefined();
    expect(lookup({ kind: 'symbol', name: 'get' })).toBe(elf.getSymbol('get').value + 0x1000n);
    const puts = libc.findSymbol('puts', { table: 'dynsym' })!;
    expect(lookup({ kind: 'symbol', name: 'puts' })).toBe(puts.value + 0x7f00_0000_0000n);
    expect(lookup({ kind: 'symbol', name: 'puts', version: 'GLIBC_2.2.5' })).toBe(puts.value + 0x7f00_0000_0000n);
    expect(lookup({ kind: 'symbol', name: 'puts', version: 'NO_SUCH' })).toBeUndefined();
    // IFUNCs resolve to their resolver: refused rather than silently wrong.
    expect(() => lookup({ kind: 'symbol', name: 'memcpy' })).toThrow(expect.objectContaining({ code: 'LINK_IFUNC_SYMBOL' }));
  });
});
