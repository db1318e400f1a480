/** A forked child shares its parent's record mapping: hotpatch must not change it from the child. */
import { describe, expect, it } from 'vitest';
import { applyPatch, listPatches, removePatch } from '../../src/patch/index.js';
import { readMemory } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { handPlan, PADDED_FIX } from './helpers.js';

killTargetsAfterAll();

describe('fork', () => {
  it('refuses to change a record inherited through fork and keeps the parent intact', async () => {
    const exe = await compile({ file: 'engine/forker.c', flags: ['-O2'], name: 'engine-forker' });
    const t = await startTarget(exe);
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    const a = await applyPatch(t.pid, plan, { patchId: 'fix' });
    t.child.stdin!.write('f\n');
    await t.waitFor(/child=\d+/);
    const child = Number(/child=(\d+)/.exec(t.output())![1]);
    try {
      const site = a.functions[0]!.address;
      expect(readMemory(child, site, 7)).toEqual(readMemory(t.pid, site, 7));
      expect(listPatches(child).patches.map((p) => p.id)).toEqual(['fix']);
      await expect(removePatch(child, 'fix')).rejects.toMatchObject({ code: 'RECORD_INHERITED' });
      await expect(applyPatch(child, plan, { patchId: 'other' })).rejects.toMatchObject({ code: 'RECORD_INHERITED' });
      await removePatch(t.pid, 'fix');
      expect(listPatches(t.pid).patches.filter((p) => p.state === 'applied')).toEqual([]);
      t.child.stdin!.write('v\n');
      await t.waitFor('padded=11');
    } finally {
      process.kill(child, 'SIGKILL');
    }
  });
});
