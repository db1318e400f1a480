import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseElf, type ElfFile } from '../../src/elf/index.js';
import {
  classifyEntry,
  decodeAt,
  encodeJmpShort,
  planLiveSwitch,
  switchSkippable,
  type Insn,
  type LiveSwitchPlan,
} from '../../src/x86/index.js';
import { compile } from '../helpers/native.js';
import { prng } from '../helpers/prng.js';

const b = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');
const AT = 0x40_1000n;
const BODY = b('8b 05 00 00 00 00 c3 cc cc cc cc cc cc cc cc cc');

// ---- An oracle written here, independent of src/x86/live-switch.ts (it uses only the decoder) ----

const HARMLESS = new Set([0x90, 0xf9, 0xf8, 0xf5, 0xfc]);

/** Instructions of one version starting inside the region, by offset. */
function linear(bytes: Uint8Array, following: Uint8Array): Map<number, Insn> {
  const buf = Buffer.concat([bytes, following]);
  const out = new Map<number, Insn>();
  for (let q = 0; q < bytes.length; ) {
    const i = decodeAt(buf.subarray(q), AT + BigInt(q), { text: true });
    out.set(q, i);
    q += i.length;
  }
  return out;
}

function covering(v: Map<number, Insn>, q: number): Insn | undefined {
  for (const [s, i] of v) if (s <= q && q < s + i.length) return i;
  return undefined;
}

/** A no-op by the oracle's own reading: the text says so. */
const oracleNop = (i: Insn | undefined) => i !== undefined && (i.mnemonic === 'nop' || /^lea (r\w+), ?\[\1\]$/.test(i.text));

/**
 * Decodes `state` from position p and follows fall-through to the region end; every instruction
 * must be from's or to's instruction at that position, or a harmless 1-byte one over a no-op of
 * from or to; a jmp must be to's or from's own and ends the walk; the walk must stop on a boundary
 * of from or to; it never runs a non-no-op of from and one of to. Returns the positions passed
 * through (threads may stop there), or throws with a readable message.
 */
function oracleWalk(state: Uint8Array, p: number, from: Uint8Array, to: Uint8Array, following: Uint8Array): number[] {
  const vf = linear(from, following);
  const vt = linear(to, following);
  const ends = new Set<number>();
  for (const v of [vf, vt]) for (const [s, i] of v) ends.add(s + i.length);
  const buf = Buffer.concat([state, following]);
  const passed: number[] = [];
  const ran = new Set<'from' | 'to'>();
  let q = p;
  const where = () => `state ${hex(state)} from +${p}, at +${q}`;
  while (q < state.length) {
    passed.push(q);
    const i = decodeAt(buf.subarray(q), AT + BigInt(q), { text: true });
    const f = vf.get(q);
    const t = vt.get(q);
    const isF = f !== undefined && hex(f.bytes) === hex(i.bytes);
    const isT = t !== undefined && hex(t.bytes) === hex(i.bytes);
    if (isF || isT) {
      if (!oracleNop(i)) {
        if (isF && !isT) ran.add('from');
        if (isT && !isF) ran.add('to');
      }
      if (i.mnemonic === 'jmp') return passed;
      if (i.flow !== 'next') throw new Error(`${where()}: ${i.text} leaves the region`);
      q += i.length;
      continue;
    }
    const harmless = i.length === 1 && HARMLESS.has(i.bytes[0]!);
    if (!harmless || !(oracleNop(covering(vf, q)) || oracleNop(covering(vt, q)))) {
      throw new Error(`${where()}: ${i.text} (${hex(i.bytes)}) is neither version's instruction`);
    }
    q += 1;
  }
  if (!ends.has(q)) throw new Error(`${where()}: the walk ends mid-instruction`);
  if (ran.size > 1) throw new Error(`${where()}: runs instructions of both versions`);
  return passed;
}

/** Checks every state of a plan from every boundary of from and to and every position passed. */
function oracleCheck(plan: LiveSwitchPlan, from: Uint8Array, to: Uint8Array, following: Uint8Array): void {
  if (!plan.ok) throw new Error(plan.reason);
  expect(plan.states.length).toBe(plan.writes.length + 1);
  expect(hex(plan.states[0]!)).toBe(hex(from));
  expect(hex(plan.states[plan.states.length - 1]!)).toBe(hex(to));
  // Each state is the previous one with exactly the write applied.
  plan.writes.forEach((w, k) => {
    const next = Uint8Array.from(plan.states[k]!);
    next[w.offset] = w.byte;
    expect(hex(plan.states[k + 1]!)).toBe(hex(next));
  });
  const positions = new Set<number>([...linear(from, following).keys(), ...linear(to, following).keys()]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const state of plan.states) {
      for (const p of [...positions]) {
        for (const q of oracleWalk(state, p, from, to, following)) {
          if (!positions.has(q)) {
            positions.add(q);
            grew = true;
          }
        }
      }
    }
  }
}

const plan = (from: string, to: string, following = BODY, address = AT) =>
  planLiveSwitch({ address, from: b(from), to: b(to), following });

function expectOrder(from: string, to: string, offsets: number[], following = BODY): void {
  const p = plan(from, to, following);
  if (!p.ok) throw new Error(p.reason);
  expect(p.writes.map((w) => w.offset)).toEqual(offsets);
  expect(p.writes.map((w) => w.byte)).toEqual(offsets.map((o) => b(to)[o]));
  oracleCheck(p, b(from), b(to), following);
}

describe('planLiveSwitch on the entry forms (hand-made bytes)', () => {
  it('-fpatchable-function-entry=7,5 and =16,14: 90 90 -> EB F9 writes byte 1 (stc) then byte 0; remove goes back byte 0 first', () => {
    expectOrder('90 90', 'eb f9', [1, 0]);
    expect(plan('90 90', 'eb f9').ok && plan('90 90', 'eb f9')).toMatchObject({ states: [b('9090'), b('90f9'), b('ebf9')] });
    expectOrder('eb f9', '90 90', [0, 1]);
    expect(plan('eb f9', '90 90')).toMatchObject({ ok: true, states: [b('ebf9'), b('90f9'), b('9090')] });
  });
  it('the oracle is not vacuous: it rejects the other order (EB 90 = jmp +0x90 on the way)', () => {
    const wrong: LiveSwitchPlan = { ok: true, writes: [{ offset: 0, byte: 0xeb }, { offset: 1, byte: 0xf9 }], states: [b('9090'), b('eb90'), b('ebf9')] };
    expect(() => oracleCheck(wrong, b('9090'), b('ebf9'), BODY)).toThrow(/neither version/);
    const std: LiveSwitchPlan = { ok: true, writes: [{ offset: 1, byte: 0xfd }, { offset: 0, byte: 0xeb }], states: [b('9090'), b('90fd'), b('ebfd')] };
    expect(() => oracleCheck(std, b('9090'), b('ebfd'), BODY)).toThrow(/neither version/);
  });
  it('endbr64 form: the switch after endbr64 is EB F5 (cmc passes through)', () => {
    expectOrder('90 90', 'eb f5', [1, 0]);
    expectOrder('eb f5', '90 90', [0, 1]);
  });
  it('every disp8 that is a harmless 1-byte instruction works; others are refused', () => {
    for (const d of [0xf9, 0xf8, 0xf5, 0xfc]) {
      const to = `eb ${d.toString(16)}`;
      expectOrder('90 90', to, [1, 0]);
      expectOrder(to, '90 90', [0, 1]);
    }
    // fd is std: DF=1 breaks the ABI (string instructions run backwards).
    for (const d of ['fd', 'f4', 'fa', 'cc', 'f7']) {
      expect(plan('90 90', `eb ${d}`).ok, d).toBe(false);
      expect(plan(`eb ${d}`, '90 90').ok, d).toBe(false);
    }
  });
  it('ms_hook_prologue: lea rsp,[rsp+0] is a no-op of 8 bytes that cannot be split: refused', () => {
    const following = b('a4 24 00 00 00 00 c3');
    const p = plan('48 8d', 'eb f9', following);
    expect(p.ok).toBe(false);
    if (!p.ok) expect(p.reason).toMatch(/no order of 1-byte writes is safe/);
    expect(plan('eb f9', '48 8d', following).ok).toBe(false);
    expect(switchSkippable(b('48 8d a4 24 00 00 00 00'))).toBe(true);
    expect(switchSkippable(b('48 8d'))).toBe(false);
  });
  it('alignment padding with a real first instruction: refused (push r15, push rbp; mov rbp,rsp)', () => {
    for (const [from, following] of [
      ['41 57', '41 56 c3'],
      ['55 48', '89 e5 c3'],
    ] as const) {
      for (const to of ['eb f9', 'eb f5', 'eb f0']) {
        expect(plan(from, to, b(following)).ok, `${from} -> ${to}`).toBe(false);
        expect(plan(to, from, b(following)).ok, `${to} -> ${from}`).toBe(false);
      }
      expect(switchSkippable(b(from))).toBe(false);
    }
  });
  it('66 90 (xchg ax,ax, a 2-byte NOP): neither byte order is safe (66 F9 / EB 90), but it is skippable', () => {
    expect(plan('66 90', 'eb f9').ok).toBe(false);
    expect(plan('eb f9', '66 90').ok).toBe(false);
    expect(switchSkippable(b('66 90'))).toBe(true);
    expect(switchSkippable(b('0f 1f 00'))).toBe(true);
  });
  it('a 2-byte first instruction that is not a no-op is refused: mov edi,edi; xor eax,eax', () => {
    for (const from of ['8b ff', '31 c0']) {
      expect(plan(from, 'eb f9').ok, from).toBe(false);
      expect(plan('eb f9', from).ok, from).toBe(false);
      expect(switchSkippable(b(from)), from).toBe(false);
    }
  });
  it('a thread that already ran one version never continues in the other: push rax; push rcx -> push rdx; push rbx is refused', () => {
    // Each state alone decodes to from's or to's instructions at every boundary, but a thread that
    // ran `push rax` (from) and stopped at +1 would then run `push rbx` (to) in either order.
    const p = plan('50 51', '52 53');
    expect(p.ok).toBe(false);
    // Only the first byte differing: one write, no intermediate state, nothing to mix.
    expect(plan('50 51', '52 51')).toMatchObject({ ok: true, writes: [{ offset: 0, byte: 0x52 }] });
  });
  it('switchSkippable: only no-ops ending exactly at the region end', () => {
    expect(switchSkippable(b('90 90'))).toBe(true);
    expect(switchSkippable(b('90'))).toBe(true);
    expect(switchSkippable(b('90 f9'))).toBe(false);
    expect(switchSkippable(b('eb f9'))).toBe(false);
    expect(switchSkippable(b('0f 1f'))).toBe(false); // truncated
    expect(switchSkippable(new Uint8Array(0))).toBe(false);
  });
});

describe('planLiveSwitch: refusals and odd input', () => {
  it('a region straddling a 64-byte cache line is refused; the same bytes inside one line are not', () => {
    const p = planLiveSwitch({ address: 0x40_103fn, from: b('9090'), to: b('ebf9'), following: BODY });
    expect(p.ok).toBe(false);
    if (!p.ok) expect(p.reason).toMatch(/cache line/);
    expect(planLiveSwitch({ address: 0x40_103en, from: b('9090'), to: b('ebf9'), following: BODY }).ok).toBe(true);
    expect(planLiveSwitch({ address: 0x40_1040n, from: b('9090'), to: b('ebf9'), following: BODY }).ok).toBe(true);
  });
  it('different lengths, empty, too long, truncated or undecodable input: ok:false with a reason', () => {
    const cases: Array<[string, string, Uint8Array]> = [
      ['9090', 'eb', BODY],
      ['', '', BODY],
      ['90'.repeat(9), 'eb'.repeat(9), BODY],
      ['9090', 'ebf9', b('')], // following empty: fine for these 1-byte/2-byte instructions
      ['48 8d', 'eb f9', b('a4')], // lea needs 6 more bytes
      ['06 90', 'eb f9', BODY], // 06 (push es) is invalid in 64-bit mode
      ['0f 0b', 'eb f9', BODY], // ud2
      ['c3 90', 'eb f9', BODY], // ret: a control transfer other than jmp
    ];
    for (const [from, to, following] of cases) {
      const p = planLiveSwitch({ address: AT, from: b(from), to: b(to), following });
      if (from === '9090' && to === 'ebf9') expect(p.ok).toBe(true);
      else {
        expect(p.ok, `${from} -> ${to}`).toBe(false);
        if (!p.ok) expect(p.reason.length).toBeGreaterThan(10);
      }
    }
  });
  it('from === to: nothing to write', () => {
    expect(plan('9090', '9090')).toEqual({ ok: true, writes: [], states: [b('9090')] });
  });
  it('wrong argument types throw TypeError', () => {
    const bad = { address: 1, from: b('90'), to: b('90'), following: BODY } as unknown as Parameters<typeof planLiveSwitch>[0];
    expect(() => planLiveSwitch(bad)).toThrow(TypeError);
    const bad2 = { address: AT, from: [0x90], to: b('90'), following: BODY } as unknown as Parameters<typeof planLiveSwitch>[0];
    expect(() => planLiveSwitch(bad2)).toThrow(TypeError);
  });
  it('random 1- to 3-byte regions: never throws, and every plan it returns passes the oracle', () => {
    const rnd = prng(10);
    const pick = [0x90, 0xeb, 0xf9, 0xf5, 0xf8, 0xfc, 0xfd, 0x66, 0x0f, 0x1f, 0x00, 0x48, 0x8d, 0x41, 0x57, 0xcc, 0xc3, 0x06];
    let okCount = 0;
    for (let k = 0; k < 1500; k++) {
      const n = 1 + Math.floor(rnd() * 3);
      const gen = () => Uint8Array.from({ length: n }, () => pick[Math.floor(rnd() * pick.length)]!);
      const from = gen();
      const to = rnd() < 0.5 ? gen() : Uint8Array.from(from, (x, i) => (rnd() < 0.5 ? x : [0x90, 0xeb, 0xf9][i % 3]!));
      const p = planLiveSwitch({ address: AT, from, to, following: BODY });
      if (p.ok) {
        okCount++;
        oracleCheck(p, from, to, BODY);
      }
    }
    expect(okCount).toBeGreaterThan(20);
  });
});

// ---- Real gcc output, read with src/elf, switched as the engine would ----

const VARIANTS = {
  pfe75: ['-O2', '-fcf-protection=none', '-fpatchable-function-entry=7,5'],
  cfpfe75: ['-O2', '-fcf-protection=full', '-fpatchable-function-entry=7,5'],
  pfe1614: ['-O2', '-fcf-protection=none', '-fpatchable-function-entry=16,14'],
  cfpfe1614: ['-O2', '-fcf-protection=full', '-fpatchable-function-entry=16,14'],
  plain: ['-O2', '-fcf-protection=none'],
  cf: ['-O2', '-fcf-protection=full'],
} as const;
type Variant = keyof typeof VARIANTS;
const elves: Partial<Record<Variant, ElfFile>> = {};

beforeAll(async () => {
  for (const [v, flags] of Object.entries(VARIANTS) as Array<[Variant, readonly string[]]>) {
    const path = await compile({ file: 'x86/entries.c', flags: [...flags] });
    elves[v] = parseElf(new Uint8Array(readFileSync(path)));
  }
});

interface RealSwitch {
  form: string;
  entry: bigint;
  switchAddress: bigint;
  siteAddress: bigint;
  from: Uint8Array;
  to: Uint8Array;
  following: Uint8Array;
}

/** The 2 switch bytes the engine changes (classifyEntry's geometry) and what it writes there. */
function realSwitch(v: Variant, name: string): RealSwitch {
  const elf = elves[v]!;
  const sym = elf.getSymbol(name);
  const code = elf.readVaddr(sym.value, Number(sym.size));
  const before = elf.readVaddr(sym.value - 16n, 16);
  const c = classifyEntry({ address: sym.value, code, before });
  expect(c.kind, `${v} ${name}: ${c.reason ?? ''}`).toBe('padded');
  const sw = Number(c.switchAddress! - sym.value);
  return {
    form: c.form,
    entry: sym.value,
    switchAddress: c.switchAddress!,
    siteAddress: c.siteAddress!,
    from: code.slice(sw, sw + 2),
    to: encodeJmpShort(c.switchAddress!, c.siteAddress!),
    following: code.slice(sw + 2, sw + 18),
  };
}

/** The link-time address has the run-time offset in its cache line (the load bias is page-aligned). */
const straddles = (r: RealSwitch) => r.switchAddress % 64n === 63n;

function planBoth(r: RealSwitch): [LiveSwitchPlan, LiveSwitchPlan] {
  return [
    planLiveSwitch({ address: r.switchAddress, from: r.from, to: r.to, following: r.following }),
    planLiveSwitch({ address: r.switchAddress, from: r.to, to: r.from, following: r.following }),
  ];
}

describe('planLiveSwitch on gcc 12 output (bytes read from the ELF with src/elf)', () => {
  for (const v of ['pfe75', 'pfe1614', 'cfpfe75', 'cfpfe1614'] as const) {
    it(`-fpatchable-function-entry (${v}): 90 90 switched by byte 1 then byte 0, removed by byte 0 then byte 1`, () => {
      const endbr = v.startsWith('cf');
      for (const name of ['f_work', 'f_empty', 'f_loop', 'main']) {
        if (endbr && name === 'main') continue; // main's endbr64 form is the same as f_work's
        const r = realSwitch(v, name);
        expect(r.form).toBe('patchable-function-entry');
        expect(r.switchAddress).toBe(r.entry + (endbr ? 4n : 0n));
        expect(r.siteAddress).toBe(r.entry - 5n);
        expect(hex(r.from)).toBe('9090');
        expect(hex(r.to)).toBe(endbr ? 'ebf5' : 'ebf9');
        const [apply, remove] = planBoth(r);
        if (straddles(r)) {
          expect(apply.ok).toBe(false);
          continue;
        }
        expect(apply).toMatchObject({ ok: true, writes: [{ offset: 1, byte: r.to[1] }, { offset: 0, byte: 0xeb }] });
        expect(remove).toMatchObject({ ok: true, writes: [{ offset: 0, byte: 0x90 }, { offset: 1, byte: 0x90 }] });
        oracleCheck(apply, r.from, r.to, r.following);
        oracleCheck(remove, r.to, r.from, r.following);
        expect(switchSkippable(r.from)).toBe(true);
      }
    });
  }
  for (const v of ['plain', 'cf', 'pfe75'] as const) {
    it(`ms_hook_prologue (${v}): refused both ways, the lea is skippable`, () => {
      const r = realSwitch(v, 'f_hook');
      expect(r.form).toBe('ms-hook-prologue');
      expect(hex(r.from)).toBe('488d');
      expect(hex(r.to)).toBe('ebf9');
      const [apply, remove] = planBoth(r);
      expect(apply.ok).toBe(false);
      expect(remove.ok).toBe(false);
      expect(switchSkippable(Uint8Array.from([...r.from, ...r.following.subarray(0, 6)]))).toBe(true);
    });
  }
  it('alignment padding before a real first instruction (plain -O2, -fcf-protection): refused both ways', () => {
    let seen = 0;
    for (const v of ['plain', 'cf'] as const) {
      for (const name of ['f_work', 'f_loop', 'main']) {
        const elf = elves[v]!;
        const sym = elf.getSymbol(name);
        const c = classifyEntry({
          address: sym.value,
          code: elf.readVaddr(sym.value, Number(sym.size)),
          before: elf.readVaddr(sym.value - 16n, 16),
        });
        if (c.kind !== 'padded') continue;
        const r = realSwitch(v, name);
        expect(r.form).toBe('padding');
        const [apply, remove] = planBoth(r);
        expect(apply.ok, `${v} ${name} ${hex(r.from)}`).toBe(false);
        expect(remove.ok).toBe(false);
        seen++;
      }
    }
    expect(seen).toBeGreaterThan(0);
  });
});
