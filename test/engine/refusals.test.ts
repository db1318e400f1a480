/**
 * Every refusal of the engine, triggered against a real process, must leave the target
 * byte-identical: same mappings (no arena, no record left behind) and same executable bytes.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { applyPatch, listPatches, removePatch } from '../../src/patch/index.js';
import { RefusedError } from '../../src/errors.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { handPlan, PADDED_FIX, RETURN_42, RETURN_43, snapshot } from './helpers.js';

killTargetsAfterAll();

let exe: string;
let t: Target;

beforeAll(async () => {
  exe = await compile({ file: 'engine/stuck.c', flags: ['-O2'], name: 'engine-stuck' });
  t = await startTarget(exe);
});

async function expectRefusedUnchanged(run: () => Promise<unknown>, code: string, message?: RegExp): Promise<RefusedError> {
  const before = snapshot(t.pid);
  let err: unknown;
  try {
    await run();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RefusedError);
  expect((err as RefusedError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
  const after = snapshot(t.pid);
  expect(after.maps).toEqual(before.maps);
  expect(after.text).toBe(before.text);
  expect(t.child.exitCode).toBeNull();
  return err as RefusedError;
}

describe('refusals leave the target byte-identical', () => {
  it('build-id mismatch', async () => {
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }], '00'.repeat(20));
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p' }), 'BUILD_ID_MISMATCH', /build-id 0000/);
  });

  it('site bytes mismatch shows function, address, expected and actual', async () => {
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX, expected: Uint8Array.of(0x90, 0x90, 0x90, 0x90, 0xcc, 0x90, 0x90) }]);
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p' }), 'SITE_MISMATCH', /padded_value at 0x[0-9a-f]+: expected 90 90 90 90 cc 90 90, found 90 90 90 90 90 90 90/);
  });

  it('a branch into bytes 1-4 of a plain entry', async () => {
    const plan = handPlan(exe, [{ name: 'branchy', kind: 'plain', code: RETURN_42 }]);
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p' }), 'BRANCH_INTO_SITE', /branchy: the .* targets 0x[0-9a-f]+, byte 2 of the 5 bytes/);
  });

  it('a thread whose instruction pointer is inside the 5 bytes', async () => {
    const plan = handPlan(exe, [{ name: 'blocked_at_2', kind: 'plain', code: RETURN_42 }]);
    const e = await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p', timeoutMs: 300 }), 'TARGET_NEVER_LEAVES', /is executing inside the 5 bytes at the entry of blocked_at_2 \(rip 0x[0-9a-f]+\)/);
    expect(e.message).toMatch(/thread \d+ \(engine-stuck\)/);
  });

  it('a return address into the 5 bytes on a stack', async () => {
    const plan = handPlan(exe, [{ name: 'ret_inside', kind: 'plain', code: RETURN_42 }]);
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p', timeoutMs: 300 }), 'TARGET_NEVER_LEAVES', /has a return address into the 5 bytes at the entry of ret_inside/);
  });

  it('a thread in an infinite loop through the entry: busy until the timeout, reported as never leaving', async () => {
    const plan = handPlan(exe, [{ name: 'loop_calls', kind: 'plain', code: RETURN_42 }]);
    const started = Date.now();
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p', timeoutMs: 500 }), 'TARGET_NEVER_LEAVES', /never leaves loop_calls \(an infinite loop/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
  });

  it('all or nothing: one busy function keeps the other function of the plan unpatched', async () => {
    const plan = handPlan(exe, [
      { name: 'padded_value', kind: 'padded', code: PADDED_FIX },
      { name: 'blocked_at_2', kind: 'plain', code: RETURN_42 },
    ]);
    // Long enough for the 3 attempts "never leaves" needs, also on a loaded machine.
    await expectRefusedUnchanged(() => applyPatch(t.pid, plan, { patchId: 'p', timeoutMs: 3000 }), 'TARGET_NEVER_LEAVES');
  });

  it('removal order, then the stack comes off in order', async () => {
    await applyPatch(t.pid, handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: RETURN_42 }]), { patchId: 'A' });
    await applyPatch(t.pid, handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: RETURN_43 }]), { patchId: 'B' });
    await expectRefusedUnchanged(() => removePatch(t.pid, 'A'), 'REMOVAL_ORDER', /patch B was applied on top of A at padded_value .*: remove B first/);
    await removePatch(t.pid, 'B');
    await removePatch(t.pid, 'A');
    expect(listPatches(t.pid).patches.filter((p) => p.state === 'applied')).toEqual([]);
  });
});
