/**
 * The symbol-file pieces on known inputs: the ELF writer read back by our own parser and by
 * readelf, `.eh_frame` images merged (pc-relative pointers re-encoded), and frame information
 * computed from hand-assembled code (followed frames, and the ones we refuse to guess).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseEhFrame, parseElf } from '../../src/elf/index.js';
import { functionCfi, gdbSymbolFile, mergeEhFrames, perfMapLines, type DebugInfo } from '../../src/patch/debug/index.js';

const dir = mkdtempSync(join(tmpdir(), 'hotpatch-debugfiles-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** push rbp; mov rbp,rsp; sub rsp,0x10; call +0; leave; ret — preceded by the 2-byte entry NOP. */
const FRAME_POINTER = [0x66, 0x90, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xe8, 0, 0, 0, 0, 0xc9, 0xc3];
/** push rbx; sub rsp,0x20; test edi,edi; je L; add rsp,0x20; pop rbx; ret; L: add rsp,0x20; pop rbx; ret */
const BRANCHY = [0x53, 0x48, 0x83, 0xec, 0x20, 0x85, 0xff, 0x74, 0x06, 0x48, 0x83, 0xc4, 0x20, 0x5b, 0xc3, 0x48, 0x83, 0xc4, 0x20, 0x5b, 0xc3];
/** test edi,edi; je L; push rax; L: ret — two paths meet with different stack depths. */
const CONFLICT = [0x85, 0xff, 0x74, 0x01, 0x50, 0xc3];
/** mov rsp, rdi; ret — the CFA register is overwritten with something we cannot follow. */
const RSP_CLOBBER = [0x48, 0x89, 0xfc, 0xc3];

function info(code: number[], ehFrame?: { address: bigint; bytes: Uint8Array }): DebugInfo {
  const start = 0x7f0000001000n;
  return {
    pid: 1,
    exe: '/x',
    patches: [{ id: 'abc', state: 'applied', code: { start, end: start + BigInt(code.length) }, bytes: Uint8Array.from(code), functions: [{ name: 'fn', address: start, size: BigInt(code.length) }], ...(ehFrame ? { ehFrame } : {}) }],
  };
}

describe('computed frame information', () => {
  it('follows a frame-pointer function after the entry NOP: CFA rsp+16 after push, rbp+16 after mov, rsp+8 after leave', () => {
    const p = functionCfi(Uint8Array.from(FRAME_POINTER), 0x1000n)!;
    // advance 3 (after nop+push): def_cfa rsp 16, rbp at cfa-16; advance 3: def_cfa rbp 16; advance 10 (after leave): def_cfa rsp 8, restore rbp
    expect([...p]).toEqual([4, 3, 0, 0, 0, 0x0c, 7, 16, 0x86, 2, 4, 3, 0, 0, 0, 0x0c, 6, 16, 4, 10, 0, 0, 0, 0x0c, 7, 8, 0xc6]);
  });

  it('follows both paths of a branch that meet no more (each ends in ret)', () => {
    expect(functionCfi(Uint8Array.from(BRANCHY), 0x1000n)).toBeDefined();
  });

  it('gives up rather than guess: paths meeting with different depths, rsp overwritten', () => {
    expect(functionCfi(Uint8Array.from(CONFLICT), 0x1000n)).toBeUndefined();
    expect(functionCfi(Uint8Array.from(RSP_CLOBBER), 0x1000n)).toBeUndefined();
  });
});

describe('the gdb symbol file', () => {
  it('parses back (our parser and readelf): section at the run-time address, FUNC symbol, .debug_frame with one FDE', () => {
    const i = info(FRAME_POINTER);
    const bytes = gdbSymbolFile(i);
    const elf = parseElf(bytes);
    const text = elf.findSection('.text.hotpatch.abc')!;
    expect(text.addr).toBe(0x7f0000001000n);
    expect([...elf.sectionData(text)]).toEqual(FRAME_POINTER);
    expect(elf.getSymbol('fn').value).toBe(0x7f0000001000n);
    const file = join(dir, 'a.elf');
    writeFileSync(file, bytes);
    const out = execFileSync('readelf', ['-W', '-a', '--debug-dump=frames', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).not.toMatch(/warning|error/i);
    expect(out).toMatch(/FDE cie=00000000 pc=00007f0000001000\.\.00007f0000001011/);
    expect(out).toMatch(/DW_CFA_def_cfa: r6 \(rbp\) ofs 16/);
  });

  it('perf map lines: START SIZE name [hotpatch ID], hex without 0x', () => {
    expect(perfMapLines(info(FRAME_POINTER))).toEqual(['7f0000001000 11 fn [hotpatch abc]']);
  });
});

describe('.eh_frame merge', () => {
  /** A CIE (zR, pcrel|sdata4) and one FDE for [pc, pc+0x20), at run-time address `at`. */
  function image(at: bigint, pc: bigint): Uint8Array {
    const cie = [0, 0, 0, 0, 1, 0x7a, 0x52, 0, 1, 0x78, 16, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0]; // id, ver, "zR", caf, daf, ra, auglen, enc, insns, pad
    const out = new Uint8Array(4 + cie.length + 4 + 4 + 4 + 4 + 1 + 3 + 4);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, cie.length, true);
    out.set(cie, 4);
    const f = 4 + cie.length;
    dv.setUint32(f, 4 + 4 + 4 + 1 + 3, true);
    dv.setUint32(f + 4, f + 4, true); // CIE pointer: back to offset 0
    dv.setInt32(f + 8, Number(pc - (at + BigInt(f + 8))), true);
    dv.setUint32(f + 12, 0x20, true);
    return out;
  }

  it('two images in other places become one section whose FDEs still name the same code', () => {
    const a = { address: 0x7f0000100000n, bytes: image(0x7f0000100000n, 0x7f0000001000n) };
    const b = { address: 0x7f0000300000n, bytes: image(0x7f0000300000n, 0x7f0000002000n) };
    const m = mergeEhFrames([a, b])!;
    expect(m.address).toBe(a.address);
    const { fdes } = parseEhFrame(m.bytes, m.address);
    expect(fdes.map((f) => f.pcBegin.value)).toEqual([0x7f0000001000n, 0x7f0000002000n]);
    expect(fdes.map((f) => f.pcRange)).toEqual([0x20n, 0x20n]);
  });

  it('a patch with .eh_frame gets no computed frames (its own are exact)', () => {
    const eh = { address: 0x7f0000100000n, bytes: image(0x7f0000100000n, 0x7f0000001000n) };
    const elf = parseElf(gdbSymbolFile(info(FRAME_POINTER, eh)));
    expect(elf.findSection('.eh_frame')?.addr).toBe(eh.address);
    expect(elf.findSection('.debug_frame')).toBeUndefined();
  });
});
