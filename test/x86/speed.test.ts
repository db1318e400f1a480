/**
 * Decoding speed and classification on the system's libc (the `scan` workload). Prints the numbers;
 * the bounds asserted are far below what a 2-core CI machine does, so they catch only regressions
 * by an order of magnitude (e.g. formatting text in the bulk path).
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { classifyEntry, classifyModuleEntries, decodeFunction, iterateInstructions, type EntryForm } from '../../src/x86/index.js';
import { Image, functionSymbols, objdumpBoundaries } from './oracle.js';

const LIBC = '/lib/x86_64-linux-gnu/libc.so.6';

describe.skipIf(!existsSync(LIBC))('libc', () => {
  const img = new Image(LIBC);
  const text = img.section('.text');
  const textBytes = img.file.subarray(text.offset, text.offset + text.size);

  it('decodes all of .text fast (no text)', () => {
    const t0 = performance.now();
    let n = 0;
    let invalid = 0;
    for (const i of iterateInstructions(textBytes, text.addr, { text: false })) {
      n++;
      if (i.invalid) invalid++;
    }
    const s = (performance.now() - t0) / 1000;
    console.log(`libc .text: ${text.size} bytes, ${n} instructions in ${s.toFixed(2)} s = ${Math.round(n / s)} insn/s (${invalid} invalid)`);
    expect(n).toBeGreaterThan(text.size / 8);
    expect(n / s).toBeGreaterThan(50_000);
  });

  it('formats Intel text for 50k instructions', () => {
    const t0 = performance.now();
    const insns = decodeFunction(textBytes.subarray(0, 200_000), text.addr, { maxInstructions: 50_000 });
    const s = (performance.now() - t0) / 1000;
    console.log(`with text: ${insns.length} instructions in ${s.toFixed(2)} s = ${Math.round(insns.length / s)} insn/s`);
    expect(insns.every((i) => i.invalid || i.text.length > 0)).toBe(true);
  });

  it('classifies every exported function entry (scan workload)', () => {
    const syms = functionSymbols(LIBC, true).filter(
      (s) => s.size > 0 && s.address >= text.addr && s.address + BigInt(s.size) <= text.addr + BigInt(text.size),
    );
    expect(syms.length).toBeGreaterThan(1000);
    const counts: Partial<Record<EntryForm, number>> = {};
    let complete = 0;
    let hazards = 0;
    const t0 = performance.now();
    let prevEnd = 0n;
    for (const sym of syms) {
      const f = img.bytesOf(sym);
      const c = classifyEntry({ address: f.address, code: f.code, before: f.before, paddingFloor: prevEnd > f.address ? undefined : prevEnd });
      prevEnd = sym.address + BigInt(sym.size);
      counts[c.form] = (counts[c.form] ?? 0) + 1;
      if (c.decodeComplete) complete++;
      if (c.branchesIntoSite.length > 0) hazards++;
    }
    const s = (performance.now() - t0) / 1000;
    console.log(
      `classified ${syms.length} functions in ${s.toFixed(2)} s = ${Math.round(syms.length / s)} functions/s; ` +
        `forms ${JSON.stringify(counts)}; fully decodable ${complete}; branch into plain site ${hazards}`,
    );
    expect(syms.length / s).toBeGreaterThan(300);
    expect(complete / syms.length).toBeGreaterThan(0.99);
  });

  it('classifies the module at once with cross references (classifyModuleEntries)', () => {
    const syms = functionSymbols(LIBC, true).filter((s) => s.size > 0);
    const t0 = performance.now();
    const res = classifyModuleEntries(syms, (a, n) => img.read(a, n));
    const s = (performance.now() - t0) / 1000;
    const counts: Record<string, number> = {};
    for (const c of res) counts[c.form] = (counts[c.form] ?? 0) + 1;
    console.log(`classifyModuleEntries: ${res.length} functions in ${s.toFixed(2)} s = ${Math.round(res.length / s)} functions/s; forms ${JSON.stringify(counts)}`);
    expect(res.length).toBeGreaterThan(1000);
    // consistency: every padded site lies inside readable bytes and holds only NOP/INT3 before the entry
    for (const c of res.filter((r) => r.kind === 'padded')) {
      const pad = decodeFunction(img.read(c.siteAddress!, c.paddingLength)!, c.siteAddress!);
      expect(pad.every((i) => i.isNop || i.isInt3), c.name).toBe(true);
    }
  });

  it('instruction boundaries of sampled functions match objdump', () => {
    const syms = functionSymbols(LIBC, true).filter((s) => s.size > 16 && s.size < 4000);
    const step = Math.max(1, Math.floor(syms.length / 15));
    for (let k = 0; k < syms.length; k += step) {
      const sym = syms[k]!;
      const f = img.bytesOf(sym);
      const ours = decodeFunction(f.code, f.address, { text: false }).map((i) => i.address);
      expect(ours, sym.name).toEqual(objdumpBoundaries(LIBC, sym.address, sym.address + BigInt(sym.size)));
    }
  });
});
