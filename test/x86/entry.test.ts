import { beforeAll, describe, expect, it } from 'vitest';
import { classifyEntry, decodeFunction, encodeJmpShort, type EntryClass } from '../../src/x86/index.js';
import { compile } from '../helpers/native.js';
import { Image, functionSymbols, type FunctionBytes } from './oracle.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const hex = (u: Uint8Array | undefined) => Buffer.from(u ?? []).toString('hex');

const VARIANTS = {
  plain: ['-O2', '-fcf-protection=none'],
  align1: ['-O2', '-fcf-protection=none', '-falign-functions=1'],
  pfe75: ['-O2', '-fcf-protection=none', '-fpatchable-function-entry=7,5'],
  pfe1614: ['-O2', '-fcf-protection=none', '-fpatchable-function-entry=16,14'],
  cf: ['-O2', '-fcf-protection=full'],
  cfpfe: ['-O2', '-fcf-protection=full', '-fpatchable-function-entry=7,5'],
} as const;
type Variant = keyof typeof VARIANTS;

const built: Partial<Record<Variant, Map<string, FunctionBytes>>> = {};

beforeAll(async () => {
  for (const [v, flags] of Object.entries(VARIANTS) as Array<[Variant, readonly string[]]>) {
    const prog = await compile({ file: 'x86/entries.c', flags: [...flags] });
    const img = new Image(prog);
    const m = new Map<string, FunctionBytes>();
    for (const s of functionSymbols(prog)) if (s.name.startsWith('f_') || s.name === 'main') m.set(s.name, img.bytesOf(s));
    built[v] = m;
  }
});

function classify(v: Variant, name: string): { f: FunctionBytes; c: EntryClass } {
  const f = built[v]!.get(name);
  if (!f) throw new Error(`${name} missing in ${v}`);
  return { f, c: classifyEntry({ address: f.address, code: f.code, before: f.before }) };
}

/** The padded site must really be jmp-short-reachable NOP/INT3 padding right before the entry. */
function checkPaddedInvariants(f: FunctionBytes, c: EntryClass) {
  expect(c.kind).toBe('padded');
  const site = c.siteAddress!;
  const sw = c.switchAddress!;
  expect(Number(f.address - site)).toBe(c.paddingLength);
  expect(c.paddingLength).toBeGreaterThanOrEqual(5);
  const pad = decodeFunction(f.before.subarray(f.before.length - c.paddingLength), site);
  expect(pad.every((i) => i.isNop || i.isInt3)).toBe(true);
  expect(() => encodeJmpShort(sw, site)).not.toThrow();
  expect(c.expected!.length).toBe(Number(sw - site) + 2);
  expect(c.checkedBranches).toBe(true);
  expect(c.decodeComplete).toBe(true);
  expect(c.branchesIntoSite).toEqual([]);
}

describe('classifyEntry on gcc 12 output', () => {
  for (const v of ['pfe75', 'pfe1614'] as const) {
    it(`-fpatchable-function-entry (${v}): 5 NOPs of the padding + the 2 NOPs at the entry`, () => {
      for (const name of ['f_work', 'f_empty', 'f_loop', 'main']) {
        const { f, c } = classify(v, name);
        expect(c.form, name).toBe('patchable-function-entry');
        expect(c.siteAddress).toBe(f.address - 5n);
        expect(c.switchAddress).toBe(f.address);
        expect(hex(c.expected)).toBe('90'.repeat(7));
        expect(c.paddingAvailable).toBeGreaterThanOrEqual(v === 'pfe75' ? 5 : 14);
        expect(c.overwritten.map((i) => i.text)).toEqual(['nop', 'nop']);
        checkPaddedInvariants(f, c);
      }
    });
  }
  it('-fpatchable-function-entry=7,5 with -fcf-protection: endbr64 first, the switch at entry + 4', () => {
    for (const name of ['f_work', 'f_empty', 'f_loop']) {
      const { f, c } = classify('cfpfe', name);
      expect(c.form, name).toBe('patchable-function-entry');
      expect(c.endbr64).toBe(true);
      expect(c.siteAddress).toBe(f.address - 5n);
      expect(c.switchAddress).toBe(f.address + 4n);
      expect(hex(c.expected)).toBe('9090909090' + 'f30f1efa' + '9090');
      checkPaddedInvariants(f, c);
    }
  });
  for (const v of ['plain', 'pfe75', 'cf', 'cfpfe', 'align1'] as const) {
    it(`ms_hook_prologue (${v}): int3 padding and lea rsp,[rsp+0] at the entry`, () => {
      const { f, c } = classify(v, 'f_hook');
      expect(c.form).toBe('ms-hook-prologue');
      expect(c.paddingInt3Only).toBe(true);
      expect(c.paddingAvailable).toBe(16); // gcc emits 32 int3; the window is 16 bytes
      expect(c.switchAddress).toBe(f.address);
      expect(hex(f.code.subarray(0, 8))).toBe('488da42400000000');
      expect(hex(c.expected)).toBe('cccccccccc488d');
      // gcc 12 puts endbr64 AFTER the lea, so the entry itself has none
      expect(c.endbr64).toBe(false);
      if (v === 'cf' || v === 'cfpfe') expect(hex(f.code.subarray(8, 12))).toBe('f30f1efa');
      checkPaddedInvariants(f, c);
    });
  }
  it('a function that is only `ret` is too small, with or without endbr64', () => {
    for (const v of ['plain', 'align1', 'cf'] as const) {
      const { c } = classify(v, 'f_empty');
      expect(c.kind, v).toBe('too-small');
      expect(c.siteAddress).toBeUndefined();
      expect(c.reason).toMatch(/only 1 byte/);
    }
  });
  it('no padding (-falign-functions=1): plain 5-byte site at the entry', () => {
    const { f, c } = classify('align1', 'f_loop');
    expect(c.kind).toBe('plain');
    expect(c.siteAddress).toBe(f.address);
    expect(c.switchAddress).toBe(f.address);
    expect(hex(c.expected)).toBe(hex(f.code.subarray(0, 5)));
    expect(c.overwritten.reduce((n, i) => n + i.length, 0)).toBeGreaterThanOrEqual(5);
    expect(c.branchesIntoSite).toEqual([]);
    expect(c.decodeComplete).toBe(true);
  });
  it('plain -O2 and -fcf-protection builds: padded after alignment NOPs, or plain; never wrong', () => {
    for (const v of ['plain', 'cf'] as const) {
      for (const name of ['f_work', 'f_loop']) {
        const { f, c } = classify(v, name);
        const body = f.address + (v === 'cf' ? 4n : 0n);
        expect(c.endbr64).toBe(v === 'cf');
        expect(c.switchAddress).toBe(body);
        if (c.kind === 'padded') {
          expect(c.form).toBe('padding');
          expect(c.overwritten[0]!.length).toBeGreaterThanOrEqual(2);
          checkPaddedInvariants(f, c);
        } else {
          expect(c.kind).toBe('plain');
          expect(c.siteAddress).toBe(body);
        }
      }
    }
  });
});

describe('classifyEntry on hand-made bytes', () => {
  const at = 0x40_1000n;
  it('6-byte NOP padding: the site starts on its boundary', () => {
    const c = classifyEntry({ address: at, code: b('8b 05 00 00 00 00 c3'), before: b('c3 66 0f 1f 44 00 00') });
    expect(c).toMatchObject({ kind: 'padded', form: 'padding', siteAddress: at - 6n, paddingLength: 6, paddingAvailable: 6 });
  });
  it('two 4-byte NOPs: the latest boundary with >= 5 bytes is 8 bytes back', () => {
    const c = classifyEntry({ address: at, code: b('8b 05 00 00 00 00 c3'), before: b('c3 0f 1f 40 00 0f 1f 40 00') });
    expect(c).toMatchObject({ kind: 'padded', siteAddress: at - 8n, paddingLength: 8 });
  });
  it('4 bytes of padding are not enough: plain', () => {
    const c = classifyEntry({ address: at, code: b('8b 05 00 00 00 00 c3'), before: b('c3 cc cc cc cc') });
    expect(c).toMatchObject({ kind: 'plain', siteAddress: at, reason: 'only 4 byte(s) of padding' });
  });
  it('a 1-byte first instruction cannot be the switch: plain', () => {
    const c = classifyEntry({ address: at, code: b('55 48 89 e5 5d c3'), before: b('cc cc cc cc cc cc') });
    expect(c).toMatchObject({ kind: 'plain', siteAddress: at });
    expect(c.overwritten.map((i) => i.text)).toEqual(['push rbp', 'mov rbp, rsp', 'pop rbp']);
  });
  it('paddingFloor keeps the previous function out of the padding', () => {
    const code = b('8b 05 00 00 00 00 c3');
    const before = b('cc cc cc cc cc cc');
    expect(classifyEntry({ address: at, code, before }).kind).toBe('padded');
    expect(classifyEntry({ address: at, code, before, paddingFloor: at - 4n }).kind).toBe('plain');
  });
  it('a known external branch into the padding site refuses it', () => {
    const code = b('8b 05 00 00 00 00 c3');
    const before = b('cc cc cc cc cc cc');
    const c = classifyEntry({ address: at, code, before, externalBranchTargets: new Set([at - 3n]) });
    expect(c.kind).toBe('plain');
    // a branch to the site's first byte is fine: it then runs the jmp rel32 to the new code
    expect(classifyEntry({ address: at, code, before, externalBranchTargets: new Set([at - 5n]) }).kind).toBe('padded');
  });
  it('the loop back into bytes 1-4 of a plain entry is reported', () => {
    // xor eax,eax; L: inc eax; cmp eax,10; jne L; ret
    const c = classifyEntry({ address: at, code: b('31 c0 ff c0 83 f8 0a 75 f9 c3') });
    expect(c.kind).toBe('plain');
    expect(c.branchesIntoSite).toEqual([at + 7n]);
    const quick = classifyEntry({ address: at, code: b('31 c0 ff c0 83 f8 0a 75 f9 c3'), checkBranches: false });
    expect(quick).toMatchObject({ kind: 'plain', checkedBranches: false, branchesIntoSite: [] });
  });
  it('endbr64 + ret, 4-byte functions, empty functions: too small', () => {
    expect(classifyEntry({ address: at, code: b('f3 0f 1e fa c3') }).kind).toBe('too-small');
    expect(classifyEntry({ address: at, code: b('31 c0 5d c3') }).kind).toBe('too-small');
    expect(classifyEntry({ address: at, code: new Uint8Array(0) }).kind).toBe('too-small');
  });
  it('truncated and garbage first instructions are undecodable', () => {
    // mov eax, [rip+x] cut after 4 of its 6 bytes (symbol size too small)
    expect(classifyEntry({ address: at, code: b('90 8b 05 00 00') }).kind).toBe('undecodable');
    expect(classifyEntry({ address: at, code: b('06 07 27 2f 37 3f') }).kind).toBe('undecodable');
  });
  it('garbage after the site makes decodeComplete false', () => {
    const c = classifyEntry({ address: at, code: b('8b 05 00 00 00 00 06 c3') });
    expect(c).toMatchObject({ kind: 'plain', decodeComplete: false, checkedBranches: true });
  });
  it('NOP-looking bytes that are the tail of a real instruction: only paddingFloor can tell', () => {
    // The previous function ends with movabs rax, 0x9090909090909090 and falls into the entry.
    // Eight 90 bytes decode as NOPs from any start inside them; 16 bytes of context cannot tell,
    // the end of the previous symbol can.
    const code = b('8b 05 00 00 00 00 c3');
    const before = b('48 b8 90 90 90 90 90 90 90 90');
    expect(classifyEntry({ address: at, code, before }).kind).toBe('padded');
    expect(classifyEntry({ address: at, code, before, paddingFloor: at }).kind).toBe('plain');
  });
});

describe('classifyEntry with the project ELF reader (src/elf)', () => {
  it('every function of the pfe=7,5 fixture, read through parseElf, matches the nm/readelf oracle', async () => {
    const { parseElf } = await import('../../src/elf/index.js');
    const { readFileSync } = await import('node:fs');
    const prog = await compile({ file: 'x86/entries.c', flags: [...VARIANTS.pfe75] });
    const elf = parseElf(new Uint8Array(readFileSync(prog)));
    const funcs = elf.functionSymbols().filter((s) => s.name.startsWith('f_'));
    expect(funcs.map((s) => s.name).sort()).toEqual(['f_empty', 'f_hook', 'f_loop', 'f_work']);
    for (const s of funcs) {
      const code = elf.readVaddr(s.value, Number(s.size));
      const before = elf.readVaddr(s.value - 16n, 16);
      const c = classifyEntry({ address: s.value, code, before });
      const oracle = classify('pfe75', s.name).c;
      expect(c.form, s.name).toBe(oracle.form);
      expect(c.siteAddress).toBe(oracle.siteAddress);
      expect(hex(c.expected)).toBe(hex(oracle.expected));
    }
  });
});

describe('classifyEntry on random bytes', () => {
  it('never throws; padded/plain results always point at bytes that exist', () => {
    let seed = 0xc0ffee;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    const pick = [0x90, 0xcc, 0x66, 0x0f, 0x1f, 0x00, 0xc3, 0xe9, 0xf3];
    for (let n = 0; n < 2000; n++) {
      const before = Uint8Array.from({ length: rnd() % 17 }, () => (rnd() & 1 ? pick[rnd() % pick.length]! : rnd()));
      const code = Uint8Array.from({ length: rnd() % 24 }, () => (rnd() & 1 ? pick[rnd() % pick.length]! : rnd()));
      const at = 0x10_0000n;
      const c = classifyEntry({ address: at, code, before });
      if (c.kind === 'padded') {
        expect(c.siteAddress! >= at - BigInt(before.length)).toBe(true);
        expect(c.switchAddress! + 2n <= at + BigInt(code.length)).toBe(true);
        expect(c.expected!.length).toBe(Number(c.switchAddress! + 2n - c.siteAddress!));
      } else if (c.kind === 'plain') {
        expect(code.length).toBeGreaterThanOrEqual(5);
        expect(c.expected!.length).toBe(5);
      } else {
        expect(c.siteAddress).toBeUndefined();
      }
    }
  });
});
