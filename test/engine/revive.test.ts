/**
 * A live remove in a process whose threads run (spin on their CPUs) stops none of them: what they
 * might still use stays retired. Applying the same patch again switches the retired one back on
 * (revive) without a stop either; a different patch, or a retired patch whose memory changed, goes
 * the usual way. No thread stop is seen as an unchanged count of voluntary context switches of
 * the spinning workers (a ptrace stop is one; their loop makes no system call).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { applyPatch, listPatches, recoverProcess, removePatch } from '../../src/patch/index.js';
import { openProcessMemory } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { handPlan, PADDED_FIX, query, RETURN_42, SLEEP_2S_42, snapshot, untilInside } from './helpers.js';

killTargetsAfterAll();

const build = () => compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });

/** Voluntary context switches of every thread but the main one (the workers), by tid. */
function workerSwitches(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    if (tid === pid) continue;
    out.set(tid, Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))![1]));
  }
  return out;
}

/** Frees what the removes left retired (recover checks in a freeze) until the record is gone. */
async function reclaimAll(pid: number): Promise<void> {
  for (let i = 0; i < 200 && listPatches(pid).record !== null; i++) {
    await recoverProcess(pid);
    if (listPatches(pid).record !== null) await new Promise((r) => setTimeout(r, 50)); // a thread may sleep inside
  }
  expect(listPatches(pid).record).toBeNull();
}

describe('live remove with running threads, and revive', () => {
  it('remove stops no running thread (the patch stays retired); the same patch applied again is revived without a stop', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['4']);
    const text0 = snapshot(t.pid).text;
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    const first = await applyPatch(t.pid, plan, { patchId: 'fix' });
    expect(first.protocol).toBe('live');
    expect((await query(t)).padded).toBe(12);
    const before = workerSwitches(t.pid);
    expect(before.size).toBe(4);
    for (let cycle = 0; cycle < 5; cycle++) {
      const r = await removePatch(t.pid, 'fix');
      expect([r.protocol, r.codeFreed]).toEqual(['live', false]); // spinning workers: not checked, kept
      expect(listPatches(t.pid).patches.map((p) => [p.id, p.state])).toEqual([['fix', 'retired']]);
      expect((await query(t)).padded).toBe(11);
      if (cycle === 0) {
        // A dry run says what the apply will do, and changes nothing.
        const text = snapshot(t.pid).text;
        const d = await applyPatch(t.pid, plan, { patchId: 'fix', dryRun: true });
        expect([d.status, d.protocol, d.revived]).toEqual(['dry-run', 'live', true]);
        expect(snapshot(t.pid).text).toBe(text);
        expect(listPatches(t.pid).patches.map((p) => [p.id, p.state])).toEqual([['fix', 'retired']]);
      }
      const a = await applyPatch(t.pid, plan, { patchId: 'fix' });
      expect([a.status, a.protocol, a.revived, a.pauseMicros, a.setupPauseMicros]).toEqual(['patched', 'live', true, 0, 0]);
      expect(a.functions[0]!.newCode).toBe(first.functions[0]!.newCode); // the same code, switched on again
      expect(listPatches(t.pid).patches.map((p) => [p.id, p.state])).toEqual([['fix', 'applied']]);
      expect((await query(t)).padded).toBe(12);
    }
    expect(workerSwitches(t.pid)).toEqual(before); // no worker was stopped in 5 removes and 5 revives
    await removePatch(t.pid, 'fix');
    await reclaimAll(t.pid);
    expect(snapshot(t.pid).text).toBe(text0);
    expect((await query(t)).padded).toBe(11);
  });

  it('a different patch at the same function resets the retired padding first (running threads checked) and applies', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['4']);
    await applyPatch(t.pid, handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]), { patchId: 'A' });
    expect((await removePatch(t.pid, 'A')).codeFreed).toBe(false);
    const planB = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: RETURN_42 }]);
    // The dry run takes the retired padding as reset (the apply resets it first).
    const d = await applyPatch(t.pid, planB, { patchId: 'B', dryRun: true });
    expect([d.status, d.protocol, d.revived]).toEqual(['dry-run', 'live', undefined]);
    expect(listPatches(t.pid).patches.map((p) => [p.id, p.state])).toEqual([['A', 'retired']]);
    const b = await applyPatch(t.pid, planB, { patchId: 'B' });
    expect([b.status, b.protocol, b.revived]).toEqual(['patched', 'live', undefined]);
    expect((await query(t)).padded).toBe(42);
    expect(listPatches(t.pid).patches.map((p) => p.id)).toEqual(['B']); // A was freed on the way
    await removePatch(t.pid, 'B');
    await reclaimAll(t.pid);
    expect((await query(t)).padded).toBe(11);
  });

  it('a different patch waits (within --timeout) for the threads still inside the retired code to leave', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['4']);
    const a = await applyPatch(t.pid, handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: SLEEP_2S_42 }]), { patchId: 'slow' });
    await untilInside(t.pid, { start: a.functions[0]!.newCode, end: a.functions[0]!.newCode + BigInt(SLEEP_2S_42.length) });
    expect((await removePatch(t.pid, 'slow')).codeFreed).toBe(false);
    // Threads sleep up to 2 s inside the retired code: the apply checks again until they are out.
    const b = await applyPatch(t.pid, handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: RETURN_42 }]), { patchId: 'B', timeoutMs: 20_000 });
    expect([b.status, b.protocol]).toEqual(['patched', 'live']);
    expect((await query(t)).padded).toBe(42);
    await removePatch(t.pid, 'B');
    await reclaimAll(t.pid);
    expect((await query(t)).padded).toBe(11);
  });

  it('a retired patch whose memory changed is not revived: the apply links and writes it afresh', async () => {
    const exe = await build();
    const t = await startTarget(exe, ['4']);
    const plan = handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);
    await applyPatch(t.pid, plan, { patchId: 'fix' });
    await removePatch(t.pid, 'fix');
    const retired = listPatches(t.pid).record!.patches.find((p) => p.id === 'fix')!;
    // A filler byte of its gate block (never executed) no longer holds int3.
    const mem = openProcessMemory(t.pid, { writable: true });
    try {
      mem.write(retired.flag! + 16n + 20n, Uint8Array.of(0x90));
    } finally {
      mem.close();
    }
    const a = await applyPatch(t.pid, plan, { patchId: 'fix' });
    expect([a.status, a.protocol, a.revived]).toEqual(['patched', 'live', undefined]);
    expect((await query(t)).padded).toBe(12);
    await removePatch(t.pid, 'fix');
    await reclaimAll(t.pid);
    expect((await query(t)).padded).toBe(11);
  });
});
