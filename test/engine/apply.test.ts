import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { applyPatch, listPatches, recoverProcess, removePatch } from '../../src/patch/index.js';
import { readMemory } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { CALL_HELPER, handPlan, untilInside, LOAD_DATA, MUL_GLOBAL, PADDED_FIX, query, RETURN_42, SLEEP_2S_42, snapshot, symbolVaddr } from './helpers.js';

killTargetsAfterAll();


const build = () => compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });

describe('apply and remove on a live multi-threaded process', () => {
  it.each(['live', 'freeze'] as const)('switches a padded function and switches it back while threads call it (%s)', async (protocol) => {
    const exe = await build();
    const t = await startTarget(exe, ['8']);
    const before = await query(t);
    expect(before.padded).toBe(11);
    const text0 = snapshot(t.pid).text;
    const maps0 = readFileSync(`/proc/${t.pid}/maps`, 'utf8');
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    const r = await applyPatch(t.pid, plan, { patchId: 'fix-padded', freeze: protocol === 'freeze' });
    expect(r.status).toBe('patched');
    expect(r.protocol).toBe(protocol);
    expect(r.threads).toBe(9);
    // Live: no thread was stopped for the switch (only the setup hijacked one thread).
    if (protocol === 'freeze') expect(r.pauseMicros).toBeGreaterThan(0);
    else expect(r.pauseMicros).toBe(0);
    const after = await query(t);
    expect(after.padded).toBe(12);
    expect(after.calls).toBeGreaterThan(before.calls);
    const listed = listPatches(t.pid);
    expect(listed.patches.map((p) => [p.id, p.state])).toEqual([['fix-padded', 'applied']]);
    const rr = await removePatch(t.pid, 'fix-padded', { freeze: protocol === 'freeze' });
    expect(rr.status).toBe('removed');
    expect(rr.protocol).toBe(protocol);
    // A thread may have been inside the 4 bytes of new code (a loaded machine): then a later
    // operation frees it.
    for (let i = 0; i < 100 && listPatches(t.pid).record !== null; i++) await recoverProcess(t.pid);
    const back = await query(t);
    expect(back.padded).toBe(11);
    expect(back.calls).toBeGreaterThan(after.calls);
    // As it was: every byte of the text (paddings included), and no arena or record left mapped.
    expect(snapshot(t.pid).text).toBe(text0);
    expect(readFileSync(`/proc/${t.pid}/maps`, 'utf8')).toBe(maps0);
  });

  it('switches a plain entry with new code that reads a global and calls an unchanged function', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['8']);
    expect((await query(t)).plain).toBe(35);
    const plan = handPlan(exe, [
      { name: 'plain_value', kind: 'plain', code: MUL_GLOBAL, relocations: [{ offset: 2, type: 'pc32', target: { kind: 'module', vaddr: symbolVaddr(exe, 'multiplier') }, addend: -4n }] },
      { name: 'other_value', kind: 'padded', code: CALL_HELPER, relocations: [{ offset: 5, type: 'pc32', target: { kind: 'symbol', name: 'helper' }, addend: -4n }] },
    ]);
    const r = await applyPatch(t.pid, plan, { patchId: 'two' });
    expect(r.functions.map((f) => f.kind)).toEqual(['plain', 'padded']);
    const v = await query(t);
    expect(v.plain).toBe(50); // multiplier (5) * 10
    expect(v.other).toBe(10 * 100 + 5 + 1000);
    await removePatch(t.pid, 'two');
    const w = await query(t);
    expect([w.plain, w.other]).toEqual([35, 9]);
  });

  it('applies a second patch on top of the first and enforces removal order', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['4']);
    const a = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    const b = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: RETURN_42 }]);
    await applyPatch(t.pid, a, { patchId: 'A' });
    const rb = await applyPatch(t.pid, b, { patchId: 'B' });
    expect(rb.functions[0]!.stacked).toBe(true);
    expect((await query(t)).padded).toBe(42);
    await expect(removePatch(t.pid, 'A')).rejects.toMatchObject({ code: 'REMOVAL_ORDER', message: expect.stringContaining('remove B first') });
    expect((await query(t)).padded).toBe(42);
    await removePatch(t.pid, 'B');
    expect((await query(t)).padded).toBe(12);
    await removePatch(t.pid, 'A');
    expect((await query(t)).padded).toBe(11);
  });

  it('places patch data in its own read-only arena and relocates code to it', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['2']);
    const plan = handPlan(exe, [{ name: 'other_value', kind: 'padded', code: LOAD_DATA, relocations: [{ offset: 2, type: 'pc32', target: { kind: 'local', part: 'data', index: 0, offset: 0 }, addend: -4n }] }]);
    plan.data.push({ name: 'answer', bytes: Uint8Array.of(43, 0, 0, 0), align: 4, relocations: [] });
    await applyPatch(t.pid, plan, { patchId: 'data' });
    expect((await query(t)).other).toBe(43);
    const rec = listPatches(t.pid);
    const data = rec.arenas.find((a) => a.kind === 'data')!;
    expect(data.prot).toBe('r--');
    const maps = snapshot(t.pid).maps;
    expect(maps.some((m) => m.startsWith(`${data.start.toString(16)}-`) && m.includes(' r--p '))).toBe(true);
    const code = rec.arenas.find((a) => a.kind === 'code')!;
    expect(maps.some((m) => m.startsWith(`${code.start.toString(16)}-`) && m.includes(' r-xp '))).toBe(true);
    expect(maps.some((m) => m.includes('rwx'))).toBe(false);
    expect(maps.filter((m) => m.includes('/memfd:hotpatch-record')).map((m) => m.split(' ')[1])).toEqual(['r--s']);
    await removePatch(t.pid, 'data');
    expect((await query(t)).other).toBe(9);
  });

  it('keeps removed code that threads still run (retired) and frees it once they have left', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['8']);
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: SLEEP_2S_42 }]);
    const a = await applyPatch(t.pid, plan, { patchId: 'slow' });
    await untilInside(t.pid, { start: a.functions[0]!.newCode, end: a.functions[0]!.newCode + BigInt(SLEEP_2S_42.length) });
    const r = await removePatch(t.pid, 'slow');
    expect(r.codeFreed).toBe(false);
    const listed = listPatches(t.pid).patches;
    expect(listed.map((p) => [p.id, p.state])).toEqual([['slow', 'retired']]);
    const newCode = a.functions[0]!.newCode;
    expect(readMemory(t.pid, newCode, 4)).toEqual(Uint8Array.from(SLEEP_2S_42.slice(0, 4)));
    // Once the threads have left (their sleep ends, no entry leads back), a later operation frees it.
    let freed = 0;
    for (let i = 0; i < 200 && freed === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      freed = (await recoverProcess(t.pid)).freed;
    }
    expect(freed).toBe(1);
    // It was the last patch: its arena and the record are unmapped (#12.5).
    expect(listPatches(t.pid).record).toBeNull();
    expect(() => readMemory(t.pid, newCode, 4)).toThrow(/not mapped/);
    expect((await query(t)).padded).toBe(11);
  });

  it('a dry run checks everything and changes nothing', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['2']);
    const before = snapshot(t.pid);
    const plan = handPlan(exe, [{ name: 'other_value', kind: 'padded', code: CALL_HELPER, relocations: [{ offset: 5, type: 'pc32', target: { kind: 'symbol', name: 'helper' }, addend: -4n }] }]);
    const r = await applyPatch(t.pid, plan, { patchId: 'dry', dryRun: true });
    expect(r.status).toBe('dry-run');
    expect(snapshot(t.pid)).toEqual(before);
    const missing = handPlan(exe, [{ name: 'other_value', kind: 'padded', code: CALL_HELPER, relocations: [{ offset: 5, type: 'pc32', target: { kind: 'symbol', name: 'no_such_function' }, addend: -4n }] }]);
    await expect(applyPatch(t.pid, missing, { patchId: 'dry', dryRun: true })).rejects.toMatchObject({ code: 'LINK_SYMBOL_NOT_FOUND' });
    expect(snapshot(t.pid)).toEqual(before);
  });
});
