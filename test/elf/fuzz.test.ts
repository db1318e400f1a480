/**
 * Fuzz: thousands of mutated and truncated real binaries (fixed-seed PRNG, so failures replay).
 * Each case must either parse — and then every lazy table must be readable or throw ElfError — or
 * throw ElfError. Any other exception, or a case that takes too long, fails the test.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, beforeAll } from 'vitest';
import { ElfError } from '../../src/errors.js';
import { parseElf, type ElfFile } from '../../src/elf/index.js';
import { compile } from '../helpers/native.js';
import { prng } from '../helpers/prng.js';


interface Target {
  offset: number;
  width: 1 | 2 | 4 | 8;
}

/** Offsets of the fields worth hitting: header, phdrs, shdrs, dynamic, version and symbol tables, notes. */
function interestingFields(elf: ElfFile): Target[] {
  const t: Target[] = [];
  const add = (offset: number, width: 1 | 2 | 4 | 8) => {
    if (offset >= 0 && offset + width <= elf.bytes.length) t.push({ offset, width });
  };
  for (const [o, w] of [[4, 1], [5, 1], [16, 2], [24, 8], [32, 8], [40, 8], [54, 2], [56, 2], [58, 2], [60, 2], [62, 2]] as const) add(o, w);
  const ph = Number(elf.header.phoff);
  for (let i = 0; i < elf.header.phnum; i++) for (const [o, w] of [[0, 4], [4, 4], [8, 8], [16, 8], [32, 8], [40, 8], [48, 8]] as const) add(ph + i * 56 + o, w);
  const sh = Number(elf.header.shoff);
  for (let i = 0; i < elf.sections.length; i++)
    for (const [o, w] of [[0, 4], [4, 4], [8, 8], [16, 8], [24, 8], [32, 8], [40, 4], [44, 4], [56, 8]] as const) add(sh + i * 64 + o, w);
  for (const s of elf.sections) {
    const off = Number(s.offset);
    const size = Math.min(Number(s.size), 4096);
    if (s.type === 8 || off + size > elf.bytes.length) continue;
    const name = s.name;
    if (name === '.dynamic') for (let o = 0; o < size; o += 8) add(off + o, 8);
    else if (name.startsWith('.gnu.version')) for (let o = 0; o < size; o += 2) add(off + o, o % 4 === 0 ? 4 : 2);
    else if (name === '.dynsym' || name === '.symtab') for (let o = 0; o < size; o += 24) { add(off + o, 4); add(off + o + 4, 1); add(off + o + 6, 2); add(off + o + 8, 8); add(off + o + 16, 8); }
    else if (name.startsWith('.rela')) for (let o = 0; o < size; o += 8) add(off + o, 8);
    else if (name.startsWith('.note') || name === '.gnu.hash' || name === '.hash') for (let o = 0; o < size; o += 4) add(off + o, 4);
  }
  return t;
}

const SPECIAL: bigint[] = [0n, 1n, 2n, 7n, 8n, 0xffn, 0xffffn, 0x7fffffffn, 0xffffffffn, 0x8000000000000000n, 0xffffffffffffffffn, 0x10000n, 0x1000n];

function mutate(base: Uint8Array, fields: Target[], rnd: () => number): Uint8Array {
  const kind = rnd();
  if (kind < 0.15) {
    // truncation
    return base.slice(0, Math.floor(rnd() * base.length));
  }
  const u8 = new Uint8Array(base);
  const dv = new DataView(u8.buffer);
  if (kind < 0.4) {
    const n = 1 + Math.floor(rnd() * 16);
    for (let i = 0; i < n; i++) u8[Math.floor(rnd() * u8.length)] ^= 1 << Math.floor(rnd() * 8);
    return u8;
  }
  const n = 1 + Math.floor(rnd() * 3);
  for (let i = 0; i < n; i++) {
    const f = fields[Math.floor(rnd() * fields.length)]!;
    const r = rnd();
    let v: bigint;
    if (r < 0.5) v = SPECIAL[Math.floor(rnd() * SPECIAL.length)]!;
    else if (r < 0.7) v = BigInt(base.length + Math.floor(rnd() * 64) - 32);
    else if (r < 0.85) v = BigInt(Math.floor(rnd() * base.length));
    else v = (BigInt(Math.floor(rnd() * 2 ** 32)) << 32n) | BigInt(Math.floor(rnd() * 2 ** 32));
    const mask = (1n << BigInt(f.width * 8)) - 1n;
    v &= mask;
    if (f.width === 1) dv.setUint8(f.offset, Number(v));
    else if (f.width === 2) dv.setUint16(f.offset, Number(v), true);
    else if (f.width === 4) dv.setUint32(f.offset, Number(v), true);
    else dv.setBigUint64(f.offset, v, true);
  }
  return u8;
}

/** Touches every lazy table and helper; only ElfError may escape from each. */
function exercise(elf: ElfFile, codes: Map<string, number>): void {
  const steps: Array<() => unknown> = [
    () => elf.symbols.length,
    () => elf.dynamicSymbols.length,
    () => elf.dynamic?.needed.length,
    () => elf.relocationSections.length,
    () => elf.dynamicRelocations.relr.length,
    () => elf.notes.length,
    () => elf.buildId,
    () => elf.isPie,
    () => elf.isSharedLibrary,
    () => elf.interpreter,
    () => elf.functionSymbols().length,
    () => elf.findSymbolByAddress(elf.header.entry),
    () => elf.findSymbol('main'),
    () => elf.vaddrToOffset(elf.header.entry),
    () => elf.readVaddr(elf.header.entry, 16),
    () => elf.sections.map((s) => elf.sectionData(s).length),
    () => elf.programHeaders.map((p) => elf.segmentData(p).length),
  ];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      if (!(e instanceof ElfError)) throw e;
      codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
    }
  }
}

describe('ELF fuzz', () => {
  const bases: Array<{ name: string; bytes: Uint8Array; weight: number }> = [];
  beforeAll(async () => {
    const files = ['elf/prog.c', 'elf/file_a.c', 'elf/file_b.c'];
    const pie = await compile({ file: files[0], extraFiles: files.slice(1), flags: ['-O2'], name: 'pie' });
    const nopie = await compile({ file: files[0], extraFiles: files.slice(1), flags: ['-O2', '-no-pie', '-fno-pie', '-Wl,--emit-relocs'], name: 'nopie-emit' });
    const lib = await compile({
      file: 'elf/libver.c',
      shared: true,
      flags: ['-O2', `-Wl,--version-script=${join(__dirname, '../fixtures/elf/libver.map')}`, '-Wl,-soname,libver.so.1'],
      name: 'libver.so',
    });
    for (const [name, path, weight] of [[ 'pie', pie, 4 ], ['nopie-emit', nopie, 3], ['libver', lib, 4], ['bash', '/usr/bin/bash', 1], ['libc', '/usr/lib/x86_64-linux-gnu/libc.so.6', 1]] as const) {
      bases.push({ name, bytes: new Uint8Array(readFileSync(path)), weight });
    }
    // The PIE with its section headers removed: exercises DT_GNU_HASH / DT_VERSYM paths.
    const stripped = new Uint8Array(bases[0]!.bytes);
    const dv = new DataView(stripped.buffer);
    dv.setBigUint64(40, 0n, true);
    dv.setUint16(60, 0, true);
    dv.setUint16(62, 0, true);
    bases.push({ name: 'pie-no-shdrs', bytes: stripped, weight: 2 });
  });

  it('mutated and truncated binaries parse or throw ElfError only', () => {
    // ELF_FUZZ_SEED / ELF_FUZZ_CASES / ELF_FUZZ_MS let a long soak reuse this test.
    const rnd = prng(Number(process.env.ELF_FUZZ_SEED ?? 0x5eed_e1f));
    const fields = bases.map((b) => interestingFields(parseElf(b.bytes)));
    const pool: number[] = [];
    bases.forEach((b, i) => {
      for (let k = 0; k < b.weight; k++) pool.push(i);
    });
    const budgetMs = Number(process.env.ELF_FUZZ_MS ?? 20_000);
    const maxCases = Number(process.env.ELF_FUZZ_CASES ?? 8000);
    const t0 = performance.now();
    let cases = 0;
    let parsed = 0;
    let slowest = 0;
    const errorCodes = new Map<string, number>();
    const lazyCodes = new Map<string, number>();
    while (cases < maxCases && performance.now() - t0 < budgetMs) {
      const bi = pool[Math.floor(rnd() * pool.length)]!;
      const base = bases[bi]!;
      // Field mutations need fields; the stripped file still has header/phdr fields from its parse.
      const input = mutate(base.bytes, fields[bi]!.length ? fields[bi]! : fields[0]!, rnd);
      const cpu = process.cpuUsage();
      try {
        const elf = parseElf(input);
        parsed++;
        exercise(elf, lazyCodes);
      } catch (e) {
        if (!(e instanceof ElfError)) {
          throw new Error(`case ${cases} (base ${base.name}) threw ${String(e)}`, { cause: e });
        }
        errorCodes.set(e.code, (errorCodes.get(e.code) ?? 0) + 1);
      }
      // CPU time per case (wall time is noisy on a loaded 2-core runner): a hang would show here.
      const d = process.cpuUsage(cpu);
      slowest = Math.max(slowest, (d.user + d.system) / 1000);
      cases++;
    }
    const ms = performance.now() - t0;
    console.log(
      `ELF fuzz: ${cases} cases in ${ms.toFixed(0)} ms, ${parsed} parsed, slowest case ${slowest.toFixed(1)} ms CPU, ` +
        `parse errors by code: ${JSON.stringify(Object.fromEntries(errorCodes))}, ` +
        `lazy-table errors by code: ${JSON.stringify(Object.fromEntries(lazyCodes))}`,
    );
    expect(cases).toBeGreaterThan(1000);
    // The mutations must reach the lazy tables, not only the eager headers.
    expect([...lazyCodes.values()].reduce((a, b) => a + b, 0)).toBeGreaterThan(100);
    expect(slowest).toBeLessThan(2000);
  });
});
