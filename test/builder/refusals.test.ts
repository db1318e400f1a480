/**
 * Every refusal of the builder, each on a real fixture pair, plus inputs that cannot be diffed at
 * all (not ELF, truncated, stripped, different programs).
 */
import { execFile } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ElfError, HotpatchError, RefusedError } from '../../src/errors.js';
import { buildPatch, BuildRefusedError, RefusalCode } from '../../src/patch/builder/index.js';
import { buildPair, DEB_HARDENING, RECOMMENDED, type PairOptions } from './pairs.js';

const run = promisify(execFile);

async function refusal(scenario: string, options: PairOptions = {}): Promise<BuildRefusedError> {
  const p = await buildPair(scenario, options);
  try {
    buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)), { oldName: 'old', newName: 'new' });
  } catch (e) {
    expect(e).toBeInstanceOf(BuildRefusedError);
    expect(e).toBeInstanceOf(RefusedError);
    return e as BuildRefusedError;
  }
  throw new Error(`${scenario}: the builder did not refuse`);
}

const SHARED: PairOptions = { shared: true };

describe('builder refusals (each names the symbol and the reason)', () => {
  const cases: { scenario: string; options?: PairOptions; code: string; symbol: string; message: RegExp }[] = [
    { scenario: 'fail_export_added', options: SHARED, code: RefusalCode.EXPORT_ADDED, symbol: 'lib_extra', message: /exports lib_extra/ },
    { scenario: 'fail_export_removed', options: SHARED, code: RefusalCode.EXPORT_REMOVED, symbol: 'lib_legacy', message: /no longer exports lib_legacy/ },
    { scenario: 'fail_export_changed', options: SHARED, code: RefusalCode.EXPORT_CHANGED, symbol: 'lib_table', message: /lib_table OBJECT size 16 .* -> lib_table OBJECT size 32/ },
    { scenario: 'fail_import_added', code: RefusalCode.IMPORT_ADDED, symbol: 'qsort@@GLIBC_2.2.5', message: /imports qsort/ },
    { scenario: 'fail_needed_added', options: { flags: ['-O2'], newFlags: ['-lm'] }, code: RefusalCode.NEEDED_ADDED, symbol: 'libm.so.6', message: /needs libm\.so\.6 \(DT_NEEDED\)/ },
    { scenario: 'fail_data_resized', code: RefusalCode.DATA_RESIZED, symbol: 'history', message: /history in \.bss changes size 16 -> 64/ },
    { scenario: 'fail_data_reinit', code: RefusalCode.DATA_REINITIALISED, symbol: 'limit (prog.c)', message: /limit \(prog\.c\) in \.data gets a new initial value/ },
    { scenario: 'fail_tls_changed', code: RefusalCode.DATA_ADDED, symbol: 'tls_b', message: /thread-local data object tls_b in \.tdata/ },
    {
      scenario: 'fail_struct_layout',
      options: { flags: ['-O2', '-g', '-fpatchable-function-entry=7,5'] },
      code: RefusalCode.STRUCT_LAYOUT_CHANGED,
      symbol: 'struct account',
      message: /struct account, used by the changed function \w+.*size 16 -> 24; member balance moves from offset 8 to 16; member reserved added at offset 8/,
    },
    {
      scenario: 'fail_struct_layout_cxx',
      options: { cxx: true, flags: ['-O2', '-g', '-fpatchable-function-entry=7,5'] },
      code: RefusalCode.STRUCT_LAYOUT_CHANGED,
      symbol: 'struct Account',
      message: /struct Account, used by the changed function _ZN6Ledger4postEP7Accounti.*size 16 -> 24; member balance moves from offset 8 to 16/,
    },
    { scenario: 'fail_data_in_code', code: RefusalCode.UNDECODABLE, symbol: 'work', message: /do not decode as x86-64 instructions/ },
    { scenario: 'fail_mid_insn_jump', code: RefusalCode.MID_INSTRUCTION_JUMP, symbol: 'work', message: /jumps into the middle of an instruction/ },
    { scenario: 'fail_computed_goto', code: RefusalCode.UNBOUNDED_INDIRECT_JUMP, symbol: 'work', message: /targets\.\d \(prog\.c\) holds the address .* inside the function/ },
    // The same with the distribution's flags: non-PIE, and LTO (no --emit-relocs, no hotpatch flags).
    { scenario: 'fail_computed_goto', options: { flags: ['-O2', '-no-pie', '-fno-pie', ...DEB_HARDENING] }, code: RefusalCode.UNBOUNDED_INDIRECT_JUMP, symbol: 'work', message: /targets\.\d \(prog\.c\) holds the address .* inside the function/ },
    { scenario: 'fail_computed_goto', options: { flags: ['-O2', '-flto=auto', ...DEB_HARDENING] }, code: RefusalCode.UNBOUNDED_INDIRECT_JUMP, symbol: 'work', message: /data object targets\.\d holds the address .* inside the function/ },
    { scenario: 'fail_rel8_exit', options: { flags: ['-O2', '-fno-toplevel-reorder'] }, code: RefusalCode.REL8_EXIT, symbol: 'work', message: /short branch at \+0x2 leaves the function .*near_exit.* no branch island is within its 127-byte reach/ },
    { scenario: 'fail_new_tls_slot', options: SHARED, code: RefusalCode.UNRESOLVED_REFERENCE, symbol: 'lib_visit', message: /GOT slot tpoff:@0: the running build has no such slot/ },
    { scenario: 'fail_too_small', options: { flags: ['-O2', '-falign-functions=1'] }, code: RefusalCode.TOO_SMALL, symbol: 'flag', message: /flag is too small to redirect: only 3 byte/ },
  ];
  for (const c of cases) {
    it(`${c.scenario}${c.options?.flags ? ` [${c.options.flags.join(' ')}]` : ''}: ${c.code}`, async () => {
      const e = await refusal(c.scenario, c.options);
      const r = e.refusals.find((x) => x.code === c.code);
      expect(r, `${c.scenario} refusals: ${JSON.stringify(e.refusals)}`).toBeDefined();
      expect(r!.symbol).toBe(c.symbol);
      expect(r!.message).toMatch(c.message);
      expect(e.message).toContain(r!.message);
    });
  }

  it('the struct check is skipped (with a warning) without DWARF, and the build then succeeds', async () => {
    const p = await buildPair('fail_struct_layout', { flags: ['-O2', '-fpatchable-function-entry=7,5'] });
    const r = buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)));
    expect(r.report.warnings.join('\n')).toMatch(/no DWARF/);
  });

  it('the same too-small function is accepted with padding (-fpatchable-function-entry)', async () => {
    const p = await buildPair('fail_too_small', { flags: RECOMMENDED });
    const r = buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)));
    expect(r.plan.functions.map((f) => [f.name, f.entry.kind])).toEqual([['flag', 'padded']]);
  });
});

describe('inputs that cannot be diffed', () => {
  it('different programs: BUILD_DIFFERENT_PROGRAMS', async () => {
    const p = await buildPair('fail_different_programs', { flags: ['-O2'], newFlags: ['-nostdlib'] });
    expect(() => buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)))).toThrow(
      expect.objectContaining({ code: 'BUILD_DIFFERENT_PROGRAMS', message: expect.stringMatching(/no function in common/) }),
    );
  });

  it('two unrelated programs that share only the name main: one BUILD_DIFFERENT_PROGRAMS error, not a refusal per export', async () => {
    const a = await buildPair('basic');
    const b = await buildPair('switch');
    expect(() => buildPatch(new Uint8Array(readFileSync(a.old)), new Uint8Array(readFileSync(b.new)))).toThrow(
      expect.objectContaining({ code: 'BUILD_DIFFERENT_PROGRAMS', message: expect.stringMatching(/different programs/) }),
    );
  });

  it('not ELF / truncated ELF: ElfError, never a crash', async () => {
    const p = await buildPair('basic');
    const good = new Uint8Array(readFileSync(p.old));
    const text = new TextEncoder().encode('#!/bin/sh\necho not an ELF file\n');
    expect(() => buildPatch(text, good)).toThrow(ElfError);
    expect(() => buildPatch(good, text)).toThrow(ElfError);
    for (const n of [0, 10, 64, 200, 1000, good.length >> 1]) {
      let thrown: unknown;
      try {
        buildPatch(good.subarray(0, n), good);
      } catch (e) {
        thrown = e;
      }
      expect(thrown, `truncated to ${n}`).toBeInstanceOf(HotpatchError);
    }
  });

  it('hostile input: 300 mutated new builds (headers, tables, code) give a plan or a typed error, never a crash', async () => {
    const p = await buildPair('switch');
    const ob = new Uint8Array(readFileSync(p.old));
    const nb = new Uint8Array(readFileSync(p.new));
    let seed = 0x5eed;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
    let typed = 0;
    for (let i = 0; i < 300; i++) {
      const m = nb.slice();
      for (let j = 1 + (rnd() % 8); j > 0; j--) {
        const where = rnd() % 3;
        // ELF header, the tail (symbol/string tables, section headers), anywhere.
        const pos = where === 0 ? rnd() % 64 : where === 1 ? m.length - 1 - (rnd() % (m.length >> 2)) : rnd() % m.length;
        m[pos] = rnd() & 0xff;
      }
      try {
        buildPatch(ob, m);
      } catch (e) {
        if (!(e instanceof HotpatchError)) throw new Error(`mutation ${i}: ${(e as Error).stack}`);
        typed++;
      }
    }
    expect(typed).toBeGreaterThan(0);
  });

  it('stripped build: BUILD_NO_SYMTAB tells the user where symbols come from (debug file, unstripped copy); with them the stripped file builds', async () => {
    const p = await buildPair('basic');
    const stripped = join(tmpdir(), `hotpatch-builder-stripped-${process.pid}`);
    copyFileSync(p.old, stripped);
    await run('strip', [stripped]);
    expect(() => buildPatch(new Uint8Array(readFileSync(stripped)), new Uint8Array(readFileSync(p.new)))).toThrow(
      expect.objectContaining({ code: 'BUILD_NO_SYMTAB', message: expect.stringMatching(/no symbol table.*unstripped copy or separate debug file.*--old-debug.*\/usr\/lib\/debug\/\.build-id\/[0-9a-f]{2}\//) }),
    );
    const r = buildPatch(new Uint8Array(readFileSync(stripped)), new Uint8Array(readFileSync(p.new)), { oldDebug: { bytes: new Uint8Array(readFileSync(p.old)), name: p.old } });
    expect(r.plan.functions.map((f) => f.name)).toEqual(['compute']);
  });

  it('an executable against a shared library: BUILD_MISMATCH', async () => {
    const exe = await buildPair('basic');
    const lib = await buildPair('shared_lib', SHARED);
    expect(() => buildPatch(new Uint8Array(readFileSync(exe.old)), new Uint8Array(readFileSync(lib.new)))).toThrow(
      expect.objectContaining({ code: 'BUILD_MISMATCH' }),
    );
  });
});
