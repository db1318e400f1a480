/**
 * DWARF struct layouts and per-function struct usage, against gcc -g builds (DWARF 5 default and
 * -gdwarf-4, linked and object files, compressed), and hostile DWARF.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it, beforeAll } from 'vitest';
import { ElfError } from '../../src/errors.js';
import { parseElf, readDwarf, type DwarfInfo, type ElfFile } from '../../src/elf/index.js';
import { compile } from '../helpers/native.js';

const SRC = 'elf/dwarf_types.c';

async function dwarfOf(flags: string[], name: string, file = SRC, extra: { cxx?: boolean; extraFiles?: string[] } = {}): Promise<{ elf: ElfFile; dw: DwarfInfo }> {
  const path = await compile({ file, flags, name, ...extra });
  const elf = parseElf(readFileSync(path), { name: path });
  const dw = readDwarf(elf);
  expect(dw).not.toBeNull();
  return { elf, dw: dw! };
}

function layout(dw: DwarfInfo, key: string) {
  const l = dw.findStructs(key);
  expect(l, key).toHaveLength(1);
  return l[0]!;
}

function usage(dw: DwarfInfo, name: string, file?: string): string[] {
  const f = dw.findFunction(name, file);
  expect(f, name).toBeDefined();
  return f!.structs;
}

describe('DWARF layouts and usage (C)', () => {
  let v5: DwarfInfo;
  let v4: DwarfInfo;
  beforeAll(async () => {
    v5 = (await dwarfOf(['-g', '-O2'], 'dw5')).dw;
    v4 = (await dwarfOf(['-gdwarf-4', '-O2'], 'dw4')).dw;
  });

  it('reports the unit versions gcc emitted', () => {
    expect(v5.units.map((u) => u.version)).toContain(5);
    expect(v4.units.every((u) => u.version === 4)).toBe(true);
    expect(v5.units.some((u) => u.name.endsWith('dwarf_types.c'))).toBe(true);
    expect(v5.units.find((u) => u.name.endsWith('dwarf_types.c'))!.producer).toMatch(/GNU C/);
  });

  it('gives struct layouts with member offsets and types (x86-64 ABI facts)', () => {
    for (const dw of [v5, v4]) {
      expect(layout(dw, 'struct inner')).toMatchObject({
        kind: 'struct',
        byteSize: 4,
        members: [
          { name: 'a', offset: 0, type: 'short int' },
          { name: 'b', offset: 2, type: 'char' },
        ],
      });
      // Anonymous struct named by a typedef, with its anonymous union flattened.
      expect(layout(dw, 'typedef anon_t')).toMatchObject({
        name: 'anon_t',
        anonymous: true,
        byteSize: 12,
        members: [
          { name: 'x', offset: 0, type: 'int' },
          { name: 'u1', offset: 4, type: 'int' },
          { name: 'u2', offset: 4, type: 'float' },
          { name: 'in', offset: 8, type: 'struct inner' },
        ],
      });
      const outer = layout(dw, 'struct outer');
      expect(outer.byteSize).toBe(56);
      expect(outer.members.map((m) => [m.name, m.offset, m.type])).toEqual([
        ['n', 0, 'int'],
        ['p', 8, 'struct inner *'],
        ['arr', 16, 'anon_t[3]'],
        ['flag', null, 'unsigned int'],
        ['wide', null, 'unsigned int'],
      ]);
      // Bit-fields: 16 + 3*12 = 52 bytes → bit 416; `wide` follows `flag`'s 3 bits.
      expect(outer.members.slice(3).map((m) => [m.bitOffset, m.bitSize])).toEqual([
        [416, 3],
        [419, 20],
      ]);
      expect(layout(dw, 'union number')).toMatchObject({ kind: 'union', byteSize: 8 });
      expect(layout(dw, 'struct unused_by_functions').members[0]).toMatchObject({ name: 'c', type: 'char[5]' });
    }
  });

  it('lists the structs each function uses through params, locals, return type and wrappers', () => {
    for (const dw of [v5, v4]) {
      expect(usage(dw, 'use_outer')).toEqual(['struct outer']);
      // const struct outer * parameter, anon_t local.
      expect(usage(dw, 'helper', 'dwarf_types.c')).toEqual(['struct outer', 'typedef anon_t']);
      expect(dw.findFunction('helper')!.external).toBe(false);
      // typedef const struct X * → struct X
      expect(usage(dw, 'use_opt')).toEqual(['struct only_via_ptr_typedef']);
      // return type
      expect(usage(dw, 'make_number')).toEqual(['union number']);
      // volatile 2-D array local
      expect(usage(dw, 'locals_only')).toEqual(['struct inner']);
      expect(usage(dw, 'plain')).toEqual([]);
      expect(dw.functions.some((f) => f.structs.includes('struct unused_by_functions'))).toBe(false);
      // Declarations of called library functions are not functions of this unit.
      expect(dw.findFunction('printf')).toBeUndefined();
    }
  });

  it('DWARF 4 and 5 builds describe the same layouts and usage', () => {
    const norm = (dw: DwarfInfo) => ({
      structs: dw.structs.map((s) => [s.key, s.byteSize, s.members]).sort(),
      fns: dw.functions.map((f) => [f.file, f.name, f.structs]).sort(),
    });
    expect(norm(v4)).toEqual(norm(v5));
  });

  it('gives member struct edges and their transitive closure', () => {
    for (const dw of [v5, v4]) {
      expect(layout(dw, 'struct outer').memberStructs).toEqual(['struct inner', 'typedef anon_t']);
      expect(layout(dw, 'typedef anon_t').memberStructs).toEqual(['struct inner']);
      expect(layout(dw, 'struct inner').memberStructs).toEqual([]);
      expect(dw.reachableStructs(usage(dw, 'use_outer'))).toEqual(['struct inner', 'struct outer', 'typedef anon_t']);
      expect(dw.reachableStructs(['union number'])).toEqual(['union number']);
    }
  });

  it('reads object files (relocated debug sections) and zlib-compressed sections alike', async () => {
    const norm = (dw: DwarfInfo) => dw.structs.map((s) => [s.key, s.byteSize, s.members]).sort();
    for (const flags of [['-g', '-O2', '-c'], ['-gdwarf-4', '-O2', '-c'], ['-g', '-O2', '-gz=zlib']]) {
      const { elf, dw } = await dwarfOf(flags, flags.join('_').replace(/[^a-z0-9_]/gi, ''));
      if (flags.includes('-gz=zlib')) expect(elf.getSection('.debug_info').flags & 0x800).toBe(0x800);
      expect(norm(dw)).toEqual(norm(v5));
      expect(usage(dw, 'helper')).toEqual(['struct outer', 'typedef anon_t']);
    }
  });

  it('resolves types in type units (-fdebug-types-section, DWARF 5 DW_UT_type and DWARF 4 .debug_types)', async () => {
    const norm = (dw: DwarfInfo) => ({
      structs: dw.structs.map((s) => [s.key, s.byteSize, s.members, s.memberStructs]).sort(),
      fns: dw.functions.map((f) => [f.file, f.name, f.structs]).sort(),
    });
    for (const flags of [['-g', '-O2', '-fdebug-types-section'], ['-gdwarf-4', '-O2', '-fdebug-types-section']]) {
      const { elf, dw } = await dwarfOf(flags, flags.join('_').replace(/[^a-z0-9_]/gi, ''));
      if (flags[0] === '-gdwarf-4') expect(elf.findSection('.debug_types')).toBeDefined();
      expect(norm(dw)).toEqual(norm(v5));
      expect(dw.units).toHaveLength(1); // type units are not compile units
    }
  });

  it('keys LTO functions by their source unit, not the <artificial> LTO unit', async () => {
    const { dw } = await dwarfOf(['-g', '-O2', '-flto'], 'dw5-lto');
    const fns = (d: DwarfInfo) => d.functions.map((f) => [f.file, f.name, f.structs]).sort();
    expect(fns(dw)).toEqual(fns(v5));
  });

  it('detects a changed layout between two builds', async () => {
    const grown = (await dwarfOf(['-g', '-O2', '-DGROW'], 'dw5-grow')).dw;
    expect(layout(grown, 'struct inner').byteSize).toBe(24);
    expect(layout(grown, 'struct inner').members.map((m) => m.offset)).toEqual([0, 8, 16]);
    // anon_t embeds struct inner by value, and struct outer embeds anon_t[3].
    expect(layout(grown, 'typedef anon_t').byteSize).not.toBe(layout(v5, 'typedef anon_t').byteSize);
    expect(layout(grown, 'struct outer').byteSize).not.toBe(56);
    // struct only_via_ptr_typedef did not change.
    expect(layout(grown, 'struct only_via_ptr_typedef')).toEqual(layout(v5, 'struct only_via_ptr_typedef'));
  });

  it('keys static functions by unit file (two static helper() in two files)', async () => {
    const { dw, elf } = await dwarfOf(['-g', '-O1'], 'two-helpers', 'elf/prog.c', { extraFiles: ['elf/file_a.c', 'elf/file_b.c'] });
    const helpers = dw.functions.filter((f) => f.name === 'helper');
    expect(helpers.map((f) => f.file).sort()).toEqual(['file_a.c', 'file_b.c']);
    expect(helpers.every((f) => !f.external)).toBe(true);
    // The unit file matches the STT_FILE of the ELF local symbol.
    for (const h of helpers) expect(elf.findSymbol('helper', { file: h.file })).toBeDefined();
    expect(dw.findFunction('helper', 'file_b.c')!.unit).toMatch(/file_b\.c$/);
  });

  it('returns null without debug info', async () => {
    const path = await compile({ file: SRC, flags: ['-O2', '-g0'], name: 'nodebug' });
    expect(readDwarf(parseElf(readFileSync(path)))).toBeNull();
  });
});

describe('DWARF (C++)', () => {
  it('qualifies names with namespaces and follows DW_AT_specification for methods', async () => {
    const { dw } = await dwarfOf(['-g', '-O1'], 'dwcxx', 'elf/dwarf_cxx.cc', { cxx: true });
    const box = layout(dw, 'class shapes::Box');
    expect(box.byteSize).toBe(24);
    expect(box.members.map((m) => [m.name, m.offset])).toEqual([
      ['_vptr.Box', 0],
      ['lo', 8],
      ['hi', 16],
    ]);
    expect(layout(dw, 'struct shapes::Point').byteSize).toBe(8);
    // `this` (const Box *) and `const Point &origin`.
    expect(usage(dw, 'shapes::Box::area')).toEqual(['class shapes::Box', 'struct shapes::Point']);
    // The same with type units: names keep their namespace through DW_AT_specification.
    const tu = (await dwarfOf(['-g', '-O1', '-fdebug-types-section'], 'dwcxx-tu', 'elf/dwarf_cxx.cc', { cxx: true })).dw;
    expect(layout(tu, 'class shapes::Box').members).toEqual(box.members);
    expect(usage(tu, 'shapes::Box::area')).toEqual(['class shapes::Box', 'struct shapes::Point']);
  });
});

describe('hostile DWARF', () => {
  let base: Uint8Array;
  let elf: ElfFile;
  /** Fuzz bases: DWARF 5, DWARF 4 with .debug_types, C++ DWARF 5 with type units. */
  const bases: Array<{ bytes: Uint8Array; elf: ElfFile }> = [];
  beforeAll(async () => {
    const path = await compile({ file: SRC, flags: ['-g', '-O2'], name: 'dw5' });
    base = new Uint8Array(readFileSync(path));
    elf = parseElf(base);
    bases.push({ bytes: base, elf });
    for (const p of [
      await compile({ file: SRC, flags: ['-gdwarf-4', '-O2', '-fdebug-types-section'], name: 'dw4-tu' }),
      await compile({ file: 'elf/dwarf_cxx.cc', flags: ['-g', '-O1', '-fdebug-types-section'], name: 'dwcxx-tu', cxx: true }),
    ]) {
      const bytes = new Uint8Array(readFileSync(p));
      bases.push({ bytes, elf: parseElf(bytes) });
    }
  });

  const withPatch = (f: (u8: Uint8Array, dv: DataView) => void) => {
    const u8 = new Uint8Array(base);
    f(u8, new DataView(u8.buffer));
    return parseElf(u8);
  };
  const expectCode = (fn: () => unknown, code: string) => {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(ElfError);
      expect((e as ElfError).code).toBe(code);
      return;
    }
    expect.fail(`expected ${code}`);
  };

  it('rejects broken headers, forms and references with DWARF_* codes', () => {
    const info = elf.getSection('.debug_info');
    const abbrev = elf.getSection('.debug_abbrev');
    const io = Number(info.offset);
    // unit length past the section
    expectCode(() => readDwarf(withPatch((_, dv) => dv.setUint32(io, 0x7fff_fff0, true))), 'DWARF_TRUNCATED');
    // unsupported version
    expectCode(() => readDwarf(withPatch((_, dv) => dv.setUint16(io + 4, 9, true))), 'DWARF_UNSUPPORTED');
    // abbreviation offset outside .debug_abbrev (v5 header: length, version, unit_type, addr_size, abbrev_offset)
    expectCode(() => readDwarf(withPatch((_, dv) => dv.setUint32(io + 8, 0x7fffffff, true))), 'DWARF_OUT_OF_RANGE');
    // first DIE uses an abbreviation code that does not exist
    expectCode(() => readDwarf(withPatch((u8) => (u8[io + 12] = 0x7f))), 'DWARF_BAD_STRUCTURE');
    // an unknown form in the first abbreviation: its size is unknown
    const ab = Number(abbrev.offset);
    expectCode(
      () =>
        readDwarf(
          withPatch((u8) => {
            // code (1 byte), tag (1), children (1), then the first (attr, form) pair: set form to 0x7e.
            u8[ab + 4] = 0x7e;
          }),
        ),
      'DWARF_UNSUPPORTED',
    );
    // .debug_str offsets outside the section (shrink .debug_str to 1 byte in its header)
    const str = elf.getSection('.debug_str');
    expectCode(() => readDwarf(withPatch((_, dv) => dv.setBigUint64(Number(elf.header.shoff) + str.index * 64 + 32, 1n, true))), 'DWARF_OUT_OF_RANGE');
  });

  it('fuzz: mutated debug sections give a result or ElfError, never anything else', () => {
    let seed = Number(process.env.DWARF_FUZZ_SEED ?? 0x0d0a_4f);
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const debugNames = ['.debug_info', '.debug_abbrev', '.debug_str', '.debug_line_str', '.debug_types'];
    const targetsOf = bases.map((b) => debugNames.map((n) => b.elf.findSection(n)).filter((x) => x !== undefined));
    let cases = 0;
    let ok = 0;
    const codes = new Map<string, number>();
    const t0 = performance.now();
    while (cases < Number(process.env.DWARF_FUZZ_CASES ?? 10000) && performance.now() - t0 < Number(process.env.DWARF_FUZZ_MS ?? 15_000)) {
      const bi = Math.floor(rnd() * bases.length);
      const u8 = new Uint8Array(bases[bi]!.bytes);
      const targets = targetsOf[bi]!;
      const n = 1 + Math.floor(rnd() * 6);
      for (let i = 0; i < n; i++) {
        const s = targets[Math.floor(rnd() * targets.length)]!;
        const at = Number(s.offset) + Math.floor(rnd() * Number(s.size));
        u8[at] = rnd() < 0.5 ? u8[at]! ^ (1 << Math.floor(rnd() * 8)) : Math.floor(rnd() * 256);
      }
      try {
        readDwarf(parseElf(u8));
        ok++;
      } catch (e) {
        if (!(e instanceof ElfError)) throw new Error(`DWARF fuzz case ${cases}: ${String(e)}`, { cause: e });
        codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
      }
      cases++;
    }
    console.log(`DWARF fuzz: ${cases} cases in ${(performance.now() - t0).toFixed(0)} ms, ${ok} read, errors ${JSON.stringify(Object.fromEntries(codes))}`);
    expect(cases).toBeGreaterThan(500);
    expect([...codes.keys()].every((c) => c.startsWith('DWARF_'))).toBe(true);
  });
});

/**
 * Hand-made DWARF 4 units written over the fixture's debug sections (so the ELF stays valid):
 * cycles and exponential anonymous-struct DAGs that a compiler never emits.
 */
describe('synthetic hostile DWARF', () => {
  type Attr = ['name', string] | ['size', number] | ['type', string] | ['loc', number] | ['ext'];
  interface D {
    label?: string;
    tag: 'cu' | 'struct' | 'member' | 'anon' | 'ptr' | 'typedef' | 'fn' | 'param';
    attrs: Attr[];
    children?: D[];
  }
  // abbrev codes: one per tag, with a fixed attribute list each (DW_FORM_string, data1, ref4, flag_present)
  const ABBREV: Record<D['tag'], { code: number; tag: number; children: boolean; attrs: Array<[number, number, Attr[0]]> }> = {
    cu: { code: 1, tag: 0x11, children: true, attrs: [[0x03, 0x08, 'name']] },
    struct: { code: 2, tag: 0x13, children: true, attrs: [[0x03, 0x08, 'name'], [0x0b, 0x0b, 'size']] },
    member: { code: 3, tag: 0x0d, children: false, attrs: [[0x03, 0x08, 'name'], [0x49, 0x13, 'type'], [0x38, 0x0b, 'loc']] },
    anon: { code: 4, tag: 0x13, children: true, attrs: [[0x0b, 0x0b, 'size']] },
    ptr: { code: 5, tag: 0x0f, children: false, attrs: [[0x49, 0x13, 'type']] },
    typedef: { code: 6, tag: 0x16, children: false, attrs: [[0x03, 0x08, 'name'], [0x49, 0x13, 'type']] },
    fn: { code: 7, tag: 0x2e, children: true, attrs: [[0x03, 0x08, 'name'], [0x3f, 0x19, 'ext']] },
    param: { code: 8, tag: 0x05, children: false, attrs: [[0x03, 0x08, 'name'], [0x49, 0x13, 'type']] },
  };
  function abbrevBytes(): number[] {
    const out: number[] = [];
    for (const a of Object.values(ABBREV)) {
      out.push(a.code, a.tag, a.children ? 1 : 0);
      for (const [at, form] of a.attrs) out.push(at, form);
      out.push(0, 0);
    }
    out.push(0);
    return out;
  }
  function infoBytes(root: D): number[] {
    const body: number[] = [];
    const labels = new Map<string, number>();
    const fixups: Array<[number, string]> = [];
    const HEADER = 11; // unit_length(4) version(2) abbrev_offset(4) address_size(1)
    const emit = (d: D) => {
      if (d.label) labels.set(d.label, HEADER + body.length);
      const ab = ABBREV[d.tag];
      body.push(ab.code);
      for (const [, , kind] of ab.attrs) {
        const a = d.attrs.find((x) => x[0] === kind);
        if (kind === 'name') body.push(...new TextEncoder().encode((a?.[1] as string) ?? 'x'), 0);
        else if (kind === 'size' || kind === 'loc') body.push(((a?.[1] as number) ?? 0) & 0xff);
        else if (kind === 'type') {
          fixups.push([body.length, a![1] as string]);
          body.push(0, 0, 0, 0);
        }
      }
      if (ab.children) {
        for (const c of d.children ?? []) emit(c);
        body.push(0);
      }
    };
    emit(root);
    for (const [at, label] of fixups) {
      const v = labels.get(label)!;
      body[at] = v & 0xff;
      body[at + 1] = (v >> 8) & 0xff;
      body[at + 2] = (v >> 16) & 0xff;
      body[at + 3] = v >>> 24;
    }
    const len = body.length + 7;
    return [len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >>> 24, 4, 0, 0, 0, 0, 0, 8, ...body];
  }
  let base: Uint8Array;
  beforeAll(async () => {
    base = new Uint8Array(readFileSync(await compile({ file: SRC, flags: ['-g', '-O2'], name: 'dw5' })));
  });
  function withDwarf(root: D): ElfFile {
    const u8 = new Uint8Array(base);
    const elf = parseElf(u8);
    const dv = new DataView(u8.buffer);
    for (const [name, bytes] of [['.debug_info', infoBytes(root)], ['.debug_abbrev', abbrevBytes()]] as const) {
      const s = elf.getSection(name);
      expect(bytes.length).toBeLessThanOrEqual(Number(s.size));
      u8.set(bytes, Number(s.offset));
      dv.setBigUint64(Number(elf.header.shoff) + s.index * 64 + 32, BigInt(bytes.length), true);
    }
    return parseElf(u8);
  }

  it('a typedef loop and a self-referencing pointer terminate', () => {
    const dw = readDwarf(
      withDwarf({
        tag: 'cu',
        attrs: [['name', 'loop.c']],
        children: [
          { label: 'A', tag: 'typedef', attrs: [['name', 'A'], ['type', 'B']] },
          { label: 'B', tag: 'typedef', attrs: [['name', 'B'], ['type', 'A']] },
          { label: 'P', tag: 'ptr', attrs: [['type', 'P']] },
          { label: 'S', tag: 'struct', attrs: [['name', 's'], ['size', 8]], children: [{ tag: 'member', attrs: [['name', 'self'], ['type', 'SP'], ['loc', 0]] }] },
          { label: 'SP', tag: 'ptr', attrs: [['type', 'S']] },
          { label: 'ANON', tag: 'anon', attrs: [['size', 4]], children: [{ tag: 'member', attrs: [['name', 'me'], ['type', 'ANON'], ['loc', 0]] }] },
          { label: 'TA', tag: 'typedef', attrs: [['name', 'anon_loop_t'], ['type', 'ANON']] },
          { tag: 'fn', attrs: [['name', 'f'], ['ext']], children: [
            { tag: 'param', attrs: [['name', 'a'], ['type', 'A']] },
            { tag: 'param', attrs: [['name', 'p'], ['type', 'P']] },
            { tag: 'param', attrs: [['name', 's'], ['type', 'SP']] },
            { tag: 'param', attrs: [['name', 'q'], ['type', 'TA']] },
          ] },
        ],
      }),
    )!;
    expect(dw.findFunction('f')!.structs).toEqual(['struct s', 'typedef anon_loop_t']);
    expect(dw.findStructs('struct s')[0]!.members[0]).toMatchObject({ name: 'self', type: 'struct s *' });
    expect(dw.reachableStructs(['struct s'])).toEqual(['struct s']);
  });

  it('an exponential DAG of anonymous structs is refused, not expanded', () => {
    // X0 has two members of anonymous type X1, X1 two of X2, ... 40 levels: 2^40 flattened members.
    const levels: D[] = [];
    for (let i = 0; i < 40; i++) {
      levels.push({
        label: `X${i}`,
        tag: i === 0 ? 'struct' : 'anon',
        attrs: i === 0 ? [['name', 'root'], ['size', 8]] : [['size', 8]],
        children: i === 39 ? [] : [
          { tag: 'member', attrs: [['name', 'l'], ['type', `X${i + 1}`], ['loc', 0]] },
          { tag: 'member', attrs: [['name', 'r'], ['type', `X${i + 1}`], ['loc', 0]] },
        ],
      });
    }
    const elf = withDwarf({ tag: 'cu', attrs: [['name', 'dag.c']], children: levels });
    const cpu = process.cpuUsage();
    try {
      readDwarf(elf);
      expect.fail('expected DWARF_BAD_STRUCTURE');
    } catch (e) {
      expect(e).toBeInstanceOf(ElfError);
      expect((e as ElfError).code).toBe('DWARF_BAD_STRUCTURE');
    }
    const d = process.cpuUsage(cpu);
    expect((d.user + d.system) / 1000).toBeLessThan(5000);
  });
});
