/**
 * Plan-level tests of the builder on real gcc/g++ builds: every case produces a plan holding exactly
 * the expected functions, with references bound the documented way (running copy by old vaddr,
 * PLT stubs, GOT slots, local parts, carried data).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseElf, type ElfFile } from '../../src/elf/index.js';
import { buildPatch, type BuildResult } from '../../src/patch/builder/index.js';
import { validatePlan } from '../../src/patch/package/index.js';
import type { PatchPlan, RelocationTarget } from '../../src/patch/plan.js';
import { buildPair, DEB_HARDENING, RECOMMENDED, type PairOptions } from './pairs.js';

async function plan(scenario: string, options: PairOptions = {}): Promise<{ r: BuildResult; old: ElfFile; neu: ElfFile }> {
  const p = await buildPair(scenario, options);
  const ob = new Uint8Array(readFileSync(p.old));
  const nb = new Uint8Array(readFileSync(p.new));
  const r = buildPatch(ob, nb, { oldName: p.old, newName: p.new });
  validatePlan(r.plan);
  return { r, old: parseElf(ob), neu: parseElf(nb) };
}

const names = (p: PatchPlan) => p.functions.map((f) => (f.file ? `${f.name}@${f.file}` : f.name)).sort();

function moduleTargets(p: PatchPlan): bigint[] {
  return p.functions.flatMap((f) => f.relocations.map((r) => r.target)).flatMap((t: RelocationTarget) => (t.kind === 'module' ? [t.vaddr] : []));
}

function sectionOf(elf: ElfFile, vaddr: bigint): string | undefined {
  return elf.sections.find((s) => s.addr <= vaddr && vaddr < s.addr + s.size && s.addr !== 0n)?.name;
}

function symbolAt(elf: ElfFile, vaddr: bigint): string | undefined {
  return elf.symbols.find((s) => s.value === vaddr && s.name !== '' && s.type !== 4)?.name;
}

describe('builder: plans for every case', () => {
  it('one changed function in a PIE build: binds calls and globals to the running copy by old vaddr', async () => {
    const { r, old } = await plan('basic');
    expect(names(r.plan)).toEqual(['compute']);
    const f = r.plan.functions[0]!;
    expect(f.vaddr).toBe(old.getSymbol('compute').value);
    expect(f.entry.kind).toBe('padded');
    expect(f.entry.siteVaddr).toBe(f.vaddr - 5n);
    expect(f.entry.switchVaddr).toBe(f.vaddr);
    expect(Buffer.from(f.entry.expected).toString('hex')).toBe('90909090909090');
    const targets = moduleTargets(r.plan).map((v) => symbolAt(old, v)).sort();
    expect(targets).toEqual(['calls', 'counter', 'scale']);
    expect(r.plan.data).toEqual([]);
    expect(r.plan.target.buildId).toBe(old.buildId);
  });

  it('static functions with the same name in two files: only the one of b.c', async () => {
    const { r, old } = await plan('static_same_name');
    expect(names(r.plan)).toEqual(['helper@b.c']);
    const helperB = old.findSymbol('helper', { file: 'b.c' })!;
    expect(r.plan.functions[0]!.vaddr).toBe(helperB.value);
    expect(old.findSymbol('helper', { file: 'a.c' })!.value).not.toBe(helperB.value);
  });

  it('a changed function inlined into its callers: the callers are the changed functions', async () => {
    const { r } = await plan('inlined');
    expect(names(r.plan)).toEqual(['quote_a', 'quote_b']);
  });

  it('thread-local variables: fs-relative offsets are kept (TLS layout unchanged)', async () => {
    const { r } = await plan('tls');
    expect(names(r.plan)).toEqual(['record']);
    const code = r.plan.functions[0]!.code;
    // mov/add with an fs segment override (0x64) stays in the new code as is.
    expect(code.includes(0x64)).toBe(true);
  });

  it('PLT calls into libc (IFUNC strlen/memcpy) bind to the old build PLT stubs', async () => {
    const { r, old } = await plan('plt_libc');
    expect(names(r.plan)).toEqual(['shout']);
    const secs = new Set(moduleTargets(r.plan).map((v) => sectionOf(old, v)));
    expect([...secs].some((s) => s === '.plt' || s === '.plt.sec')).toBe(true);
    // Every PLT-bound call targets a stub of strlen or memcpy in the OLD build.
    const pltTargets = moduleTargets(r.plan).filter((v) => /^\.plt/.test(sectionOf(old, v) ?? ''));
    expect(pltTargets.length).toBeGreaterThanOrEqual(3);
    const stubs = pltStubNames(old);
    expect(new Set(pltTargets.map((v) => stubs.get(v)))).toEqual(new Set(['strlen', 'memcpy']));
  });

  it('new string literals are carried as data; the unchanged caller is not in the plan', async () => {
    const { r } = await plan('strings');
    expect(names(r.plan)).toEqual(['label']);
    const texts = r.plan.data.map((d) => Buffer.from(d.bytes).toString('latin1'));
    expect(texts).toContain('below zero (fixed)\0');
    expect(texts).toContain('huge (new literal)\0');
    for (const rel of r.plan.functions[0]!.relocations) if (rel.target.kind === 'local') expect(rel.target.part).toBe('data');
  });

  it('switch jump tables are carried and relocated to the new code', async () => {
    const { r } = await plan('switch');
    expect(names(r.plan)).toEqual(['dispatch']);
    const table = r.plan.data.find((d) => d.name.startsWith('jump table'))!;
    expect(table).toBeDefined();
    expect(table.bytes.length).toBe(10 * 4);
    expect(table.relocations).toHaveLength(10);
    for (const [i, rel] of table.relocations.entries()) {
      expect(rel.type).toBe('pc32');
      expect(rel.offset).toBe(i * 4);
      expect(rel.addend).toBe(BigInt(i * 4));
      expect(rel.target).toMatchObject({ kind: 'local', part: 'function', index: 0 });
    }
  });

  it("gcc's .cold part of a changed function travels inside the function's new code", async () => {
    const { r } = await plan('switch', { flags: ['-O2'] });
    expect(names(r.plan)).toEqual(['dispatch']);
    expect(r.report.changed[0]!.appended).toEqual(['dispatch.cold (prog.c)']);
    expect(r.plan.functions[0]!.code.length).toBeGreaterThan(r.report.changed[0]!.newSize);
  });

  it('calls between changed functions stay inside the patch; a new helper is carried; rel8 tail calls get islands', async () => {
    const { r } = await plan('mutual');
    expect(names(r.plan)).toEqual(['even_steps', 'odd_steps']);
    const locals = r.plan.functions.flatMap((f) => f.relocations).filter((x) => x.target.kind === 'local');
    expect(locals.length).toBeGreaterThanOrEqual(4);
    expect(r.report.changed.flatMap((c) => c.appended)).toEqual(['bonus (prog.c)']);
  });

  it('a shared library with TLS (general-dynamic and initial-exec) binds to its own GOT slots', async () => {
    const { r, old } = await plan('shared_lib', { shared: true });
    expect(names(r.plan)).toEqual(['lib_greet']);
    const secs = moduleTargets(r.plan).map((v) => sectionOf(old, v));
    expect(secs).toContain('.got');
    expect(secs.some((s) => s === '.plt' || s === '.plt.sec')).toBe(true);
    expect(r.plan.target.name).toBe('libfix.so');
  });

  it('a C++ program: the mangled member function and its .cold part', async () => {
    const { r } = await plan('cxx', { cxx: true });
    expect(names(r.plan)).toEqual(['_ZNK7Greeter5greetERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERK5Shape']);
    expect(r.report.changed[0]!.appended.every((a) => a.includes('.cold'))).toBe(true);
    // Its unwind information travels with it: one FDE for the function, one for its .cold part.
    const eh = r.plan.data[r.plan.unwind!.ehFrame]!;
    expect(eh.relocations.filter((x) => x.target.kind === 'local' && x.target.part === 'function')).toHaveLength(2);
    expect(r.report.warnings.join('\n')).not.toMatch(/C\+\+ build/);
  });

  it('changed named constant tables are carried; a pointer table is relocated to carried strings', async () => {
    const { r } = await plan('const_tables');
    expect(names(r.plan)).toEqual(['name_of', 'nth_prime']);
    const primes = r.plan.data.find((d) => d.name === 'primes (prog.c)')!;
    expect(Array.from(new Int32Array(primes.bytes.slice().buffer))).toEqual([2, 3, 5, 7, 11, 13, 17, 23]);
    const table = r.plan.data.find((d) => d.name === 'names (prog.c)')!;
    expect(table.relocations.map((x) => [x.offset, x.type, x.target.kind])).toEqual([
      [0, 'abs64', 'local'],
      [8, 'abs64', 'local'],
      [16, 'abs64', 'local'],
      [24, 'abs64', 'local'],
    ]);
    const last = table.relocations[3]!.target;
    expect(last.kind === 'local' && Buffer.from(r.plan.data[last.index]!.bytes).toString('latin1')).toBe('THREE (fixed)\0');
  });

  it('writable data holding pointers is not a data change when only addresses shift (PIE, non-PIE, with and without relocations)', async () => {
    for (const flags of [RECOMMENDED, ['-O2'], ['-O2', '-no-pie', '-fno-pie'], ['-O2', '-no-pie', '-fno-pie', '-Wl,--emit-relocs'], ['-O0']]) {
      const { r } = await plan('data_pointers', { flags });
      expect(names(r.plan), flags.join(' ')).toEqual(['describe']);
    }
  });

  it('an unchanged pair is not a patch (BUILD_NO_CHANGES)', async () => {
    const p = await buildPair('basic');
    const b = new Uint8Array(readFileSync(p.old));
    expect(() => buildPatch(b, b)).toThrow(expect.objectContaining({ code: 'BUILD_NO_CHANGES' }));
  });
});

/** PLT stub vaddr → imported name, from .rela.plt and the stubs' jmp [rip+slot] (independent of the builder). */
function pltStubNames(elf: ElfFile): Map<bigint, string> {
  const slots = new Map<bigint, string>();
  for (const r of [...elf.dynamicRelocations.plt, ...elf.dynamicRelocations.rela]) if (r.symbol) slots.set(r.offset, r.symbol.name);
  const out = new Map<bigint, string>();
  for (const name of ['.plt', '.plt.sec', '.plt.got']) {
    const s = elf.findSection(name);
    if (!s) continue;
    const data = elf.sectionData(s);
    for (let off = 0; off + 16 <= data.length; off += 16) {
      // ff 25 disp32 (jmp [rip+disp]) possibly after f3 0f 1e fa (endbr64) and f2 (bnd).
      for (let i = off; i < off + 10; i++) {
        if (data[i] === 0xff && data[i + 1] === 0x25) {
          const disp = new DataView(data.buffer, data.byteOffset + i + 2, 4).getInt32(0, true);
          const slot = s.addr + BigInt(i + 6 + disp);
          const n = slots.get(slot);
          if (n) out.set(s.addr + BigInt(off), n);
          break;
        }
      }
    }
  }
  return out;
}

/** The build-flag matrix: one changed function, every line of flags. */
const MATRIX: { label: string; flags: string[]; entry: 'padded' | 'plain' | 'any' }[] = [
  { label: 'recommended (PIE, -O2, pfe 7,5, emit-relocs)', flags: RECOMMENDED, entry: 'padded' },
  { label: 'non-PIE with emit-relocs', flags: ['-O2', '-no-pie', '-fno-pie', '-fpatchable-function-entry=7,5', '-Wl,--emit-relocs'], entry: 'padded' },
  { label: 'non-PIE without relocations', flags: ['-O2', '-no-pie', '-fno-pie'], entry: 'any' },
  { label: '-O0 (plain entry)', flags: ['-O0'], entry: 'plain' },
  { label: '-O0 non-PIE', flags: ['-O0', '-no-pie', '-fno-pie'], entry: 'plain' },
  { label: '-O2 plain link', flags: ['-O2'], entry: 'any' },
  { label: '-O2 -ffunction-sections -fcf-protection', flags: ['-O2', '-ffunction-sections', '-fcf-protection'], entry: 'any' },
  { label: '-O3 -fcf-protection pfe', flags: ['-O3', '-fcf-protection', '-fpatchable-function-entry=7,5'], entry: 'padded' },
  { label: '-Os', flags: ['-Os'], entry: 'any' },
];

describe('builder: the build-flag matrix', () => {
  for (const m of MATRIX) {
    it(`${m.label}: basic, strings and switch each give exactly their changed function`, async () => {
      for (const [scenario, expected] of [
        ['basic', ['compute']],
        ['strings', ['label']],
        ['switch', ['dispatch']],
      ] as const) {
        const { r } = await plan(scenario, { flags: m.flags });
        expect(names(r.plan), `${scenario} ${m.label}`).toEqual(expected);
        if (m.entry !== 'any') expect(r.plan.functions[0]!.entry.kind).toBe(m.entry);
      }
    });
  }
});

const DISTRIBUTION: { label: string; flags: string[] }[] = [
  { label: 'dpkg-buildflags -O2', flags: ['-O2', ...DEB_HARDENING] },
  { label: 'dpkg-buildflags -O3', flags: ['-O3', ...DEB_HARDENING] },
  { label: 'dpkg-buildflags -O2 with LTO', flags: ['-O2', '-flto=auto', '-ffat-lto-objects', ...DEB_HARDENING] },
  { label: 'hotpatch-ready -O3', flags: ['-O3', '-fcf-protection', ...RECOMMENDED.slice(1)] },
];

describe('builder: distribution flags (issue #15): unchanged code never enters the package', () => {
  for (const d of DISTRIBUTION) {
    it(`${d.label}: a hoisted switch table in an unchanged function and -O3 switch tables give exactly the changed function`, async () => {
      for (const [scenario, expected] of [
        ['hoisted_table', ['fix']],
        ['switch_o3', ['run']],
        ['switch', ['dispatch']],
        ['basic', ['compute']],
        ['data_in_code_unchanged', ['fix']],
      ] as const) {
        const { r } = await plan(scenario, { flags: d.flags });
        expect(names(r.plan), `${scenario} ${d.label}`).toEqual(expected);
      }
    });
  }

  it('a shared library with -flto -O2: the fix of a hidden helper that LTO inlined across files gives exactly its callers', async () => {
    for (const flags of [['-O2', '-flto=auto', ...DEB_HARDENING], ['-O2', '-flto=auto', '-fcf-protection', ...RECOMMENDED.slice(1)]]) {
      const { r, old } = await plan('lto_lib', { shared: true, flags });
      expect(old.findSymbol('valid_len'), 'LTO inlined the helper').toBeUndefined();
      expect(names(r.plan), flags.join(' ')).toEqual(['lto_copy', 'lto_fill']);
    }
  });

  it('the changed function of switch_o3 carries its new jump table, relocated to the new code', async () => {
    const { r } = await plan('switch_o3', { flags: ['-O3', ...DEB_HARDENING] });
    expect(r.plan.data.map((x) => x.name)).toEqual(['jump table of run']);
    const t = r.plan.data[0]!;
    expect(t.relocations.length).toBe(t.bytes.length / 4);
    expect(t.relocations.every((x) => x.target.kind === 'local' && x.target.part === 'function')).toBe(true);
  });
});
