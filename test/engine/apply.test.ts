import { describe, expect, it } from 'vitest';
import { applyPatch, listPatches, removePatch } from '../../src/patch/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { CALL_HELPER, handPlan, MUL_GLOBAL, PADDED_FIX, query, RETURN_42, snapshot, symbolVaddr } from './helpers.js';

killTargetsAfterAll();

const build = () => compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });

describe('apply and remove on a live multi-threaded process', () => {
  it('switches a padded function and switches it back while threads call it', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['8']);
    const before = await query(t);
    expect(before.padded).toBe(11);
    const text0 = snapshot(t.pid).text;
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    const r = await applyPatch(t.pid, plan, { patchId: 'fix-padded' });
    expect(r.status).toBe('patched');
    expect(r.threads).toBe(9);
    expect(r.pauseMicros).toBeGreaterThan(0);
    const after = await query(t);
    expect(after.padded).toBe(12);
    expect(after.calls).toBeGreaterThan(before.calls);
    const listed = listPatches(t.pid);
    expect(listed.patches.map((p) => [p.id, p.state])).toEqual([['fix-padded', 'applied']]);
    const rr = await removePatch(t.pid, 'fix-padded');
    expect(rr.status).toBe('removed');
    const back = await query(t);
    expect(back.padded).toBe(11);
    expect(back.calls).toBeGreaterThan(after.calls);
    expect(snapshot(t.pid).text).toBe(text0);
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
});
