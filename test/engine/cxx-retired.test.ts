/**
 * C++ exceptions out of retired code (issue #12 item 2): a thread asleep inside a patch's new code
 * when the patch is removed wakes after the remove and throws from the removed (retired) code; the
 * unpatched caller must catch it. The patch's unwind information therefore stays registered until
 * the retired code is freed, by a later operation once no thread is inside it.
 *
 * Control (run with f978249 reverted, i.e. main 3997de2's rule: remove unregistered at once):
 * `expect(unwind).toBeDefined()` after remove fails; without it, the woken thread's exception finds
 * no FDE for its frame, std::terminate aborts the process and `waitFor(CAUGHT)` fails with "exited
 * (SIGABRT)" in both protocols. Likewise the last test with recover.ts unregistering the patches it
 * finishes at once (as before this branch): the record's `unwind` is gone, then SIGABRT.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildPatch } from '../../src/patch/builder/index.js';
import { applyPatch, readRecordFromMappings, recoverProcess, removePatch, type RecordPatch } from '../../src/patch/engine/index.js';
import { createPackage, decodePackage, encodePackage } from '../../src/patch/package/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { readMappings } from '../../src/process/control/procfs.js';
import { ask, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { buildPair, RECOMMENDED } from '../builder/pairs.js';

killTargetsAfterAll();

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const run = promisify(execFile);
const TIMEOUT = 20_000;
const CAUGHT = 'slow caught woke in the new code and threw\n';

let pair: { old: string; new: string };
let plan: PatchPlan;
let id: string;

beforeAll(async () => {
  pair = await buildPair('cxx_retired', { cxx: true, flags: [...RECOMMENDED, '-pthread'] });
  const built = buildPatch(new Uint8Array(readFileSync(pair.old)), new Uint8Array(readFileSync(pair.new)), { oldName: pair.old });
  const pkg = decodePackage(encodePackage(createPackage(built.plan)));
  plan = pkg.plan;
  id = pkg.id;
}, 120_000);

function patchRecord(t: Target, patchId: string): RecordPatch | undefined {
  return readRecordFromMappings(t.pid, readMappings(t.pid))?.patches.find((p) => p.id === patchId);
}

function mapped(t: Target, start: bigint): boolean {
  return readMappings(t.pid).some((m) => m.start <= start && start < m.end);
}

function alive(t: Target): boolean {
  return t.child.exitCode === null && t.child.signalCode === null;
}

/** Starts `answer(-1)` on a new thread of the target and waits until it sleeps inside the new risky. */
async function sleepInside(t: Target): Promise<void> {
  expect(await ask(t, 'slow', /started\n/)).toBe('started\n');
  for (const deadline = Date.now() + TIMEOUT; ; ) {
    if ((await ask(t, 'state', /state \d+\n/)) === 'state 1\n') return;
    if (Date.now() > deadline) throw new Error('the slow call never reached the new code');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The old code throws and the caller catches (twice: also a slow call, which the old risky does not delay). */
async function oldCodeCatches(t: Target): Promise<void> {
  expect(await ask(t, '3', /3: [^\n]*\n/)).toBe('3: caught odd\n');
  expect(await ask(t, '4', /4: [^\n]*\n/)).toBe('4: ok 4\n');
  expect(await ask(t, 'slow', /slow [^\n]*\n/)).toBe('slow caught odd\n');
}

describe('C++ exceptions out of retired code', () => {
  it('the plan patches risky only and carries its unwind information', () => {
    expect(plan.functions.map((f) => f.name)).toEqual(['_Z5riskyl']);
    expect(plan.unwind).toBeDefined();
  });

  it.each([
    { protocol: 'live' as const, freeze: false, later: 'apply and remove' },
    { protocol: 'freeze' as const, freeze: true, later: 'recover' },
  ])('$protocol remove while a thread sleeps in the new code: it throws after the remove and is caught; $later frees the code and unregisters', async ({ protocol, freeze, later }) => {
    const t = await startTarget(pair.old);
    try {
      await oldCodeCatches(t);
      const applied = await applyPatch(t.pid, plan, { patchId: id, timeoutMs: TIMEOUT, freeze });
      expect(applied.status).toBe('patched');
      expect(applied.protocol).toBe(protocol);
      expect(await ask(t, '3', /3: [^\n]*\n/)).toBe('3: caught odd (fixed)\n');
      await sleepInside(t);

      const removed = await removePatch(t.pid, id, { timeoutMs: TIMEOUT, freeze });
      expect(removed.status).toBe('removed');
      expect(removed.protocol).toBe(protocol);
      expect(removed.codeFreed).toBe(false);
      const retired = patchRecord(t, id)!;
      expect(retired.state).toBe('removed');
      expect(retired.retired).toBe(true);
      // Still registered: the sleeping thread will throw from this code.
      const unwind = retired.unwind!;
      expect(unwind).toBeDefined();
      expect(mapped(t, unwind.object.start)).toBe(true);
      // New calls run the old code again while the thread still sleeps in the new one.
      expect(await ask(t, '3', /3: [^\n]*\n/)).toBe('3: caught odd\n');
      expect(await ask(t, 'state', /state \d+\n/)).toBe('state 1\n');

      // Woken, it throws from the retired code; the unpatched caller catches; no termination.
      expect(await ask(t, 'release', /released\n/)).toBe('released\n');
      await t.waitFor(CAUGHT, TIMEOUT);
      expect(await ask(t, 'state', /state \d+\n/)).toBe('state 0\n');
      expect(alive(t)).toBe(true);

      // No thread is inside any more: the next operation frees the code and unregisters.
      if (later === 'recover') {
        const r = await recoverProcess(t.pid, { timeoutMs: TIMEOUT });
        expect(r.freed).toBe(1);
      } else {
        const again = await applyPatch(t.pid, plan, { patchId: `${id}-again`, timeoutMs: TIMEOUT, freeze });
        expect(again.status).toBe('patched');
        expect(patchRecord(t, id)).toBeUndefined();
        expect(await ask(t, '3', /3: [^\n]*\n/)).toBe('3: caught odd (fixed)\n');
        const second = await removePatch(t.pid, `${id}-again`, { timeoutMs: TIMEOUT, freeze });
        expect(second.codeFreed).toBe(true);
      }
      expect(patchRecord(t, id)).toBeUndefined();
      expect(readRecordFromMappings(t.pid, readMappings(t.pid))?.patches.every((p) => p.unwind === undefined) ?? true).toBe(true);
      expect(mapped(t, unwind.object.start)).toBe(false);
      await oldCodeCatches(t);
      expect(alive(t)).toBe(true);
    } finally {
      await t.kill();
    }
  }, 120_000);

  it('a patcher killed after the live remove restored the entries: recover finishes it and keeps the unwind information while the thread sleeps inside', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hotpatch-cxx-retired-'));
    const env = { ...process.env, HOTPATCH_LOCK_DIR: dir };
    const pkgPath = join(dir, 'fix.hpk');
    writeFileSync(pkgPath, encodePackage(createPackage(plan)));
    const t = await startTarget(pair.old);
    try {
      await applyPatch(t.pid, plan, { patchId: id, timeoutMs: TIMEOUT });
      await sleepInside(t);
      const killed = await run('node', [CLI, 'remove', id, '--pid', String(t.pid), '--timeout', '20'], { env: { ...env, HOTPATCH_FAULT: 'remove:thawed' } }).then(
        () => 'exited',
        (e: { signal?: string }) => e.signal ?? 'failed',
      );
      expect(killed).toBe('SIGKILL');
      expect(patchRecord(t, id)!.state).toBe('removing');
      const recovered = await recoverProcess(t.pid, { timeoutMs: TIMEOUT });
      expect(recovered.actions.map((a) => `${a.patchId} ${a.action}`)).toEqual([`${id} finished`]);
      expect(recovered.freed).toBe(0);
      const retired = patchRecord(t, id)!;
      expect(retired.state).toBe('removed');
      const unwind = retired.unwind!;
      expect(unwind).toBeDefined();
      expect(await ask(t, 'release', /released\n/)).toBe('released\n');
      await t.waitFor(CAUGHT, TIMEOUT);
      expect(alive(t)).toBe(true);
      expect((await recoverProcess(t.pid, { timeoutMs: TIMEOUT })).freed).toBe(1);
      expect(mapped(t, unwind.object.start)).toBe(false);
      await oldCodeCatches(t);
    } finally {
      await t.kill();
    }
  }, 120_000);
});
