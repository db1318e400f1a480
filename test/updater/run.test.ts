/** The updater's pure machinery: bounded concurrency, lock waiting, outcome of a run. */
import { describe, expect, it } from 'vitest';
import { HotpatchError, RefusedError } from '../../src/errors.js';
import type { ListedPatch, ProcessPatches } from '../../src/patch/engine/index.js';
import { mapBounded, outcomeOf, recoveryNeed, resultFromError, withLockWait, type ProcessResult, type UpdateStatus } from '../../src/patch/updater/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('mapBounded', () => {
  it('never has more than `limit` calls in flight and keeps the input order', async () => {
    for (const limit of [1, 2, 4, 7]) {
      let inFlight = 0;
      let peak = 0;
      const out = await mapBounded([...Array(20).keys()], limit, async (x) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await sleep(1 + ((x * 7) % 5));
        inFlight--;
        return x * 2;
      });
      expect(out).toEqual([...Array(20).keys()].map((x) => x * 2));
      expect(peak).toBe(Math.min(limit, 20));
    }
    expect(await mapBounded([], 4, async () => 1)).toEqual([]);
    await expect(mapBounded([1], 0, async () => 1)).rejects.toThrow(RangeError);
  });
});

describe('withLockWait', () => {
  const locked = () => new HotpatchError('PROCESS_LOCKED', 'another hotpatch process (pid 42) is working on process 7');

  it('retries while the lock is held, announces the wait once, then succeeds', async () => {
    let calls = 0;
    const waits: string[] = [];
    const r = await withLockWait(async () => {
      if (++calls < 4) throw locked();
      return 'ok';
    }, 5000, (m) => waits.push(m));
    expect(r).toBe('ok');
    expect(calls).toBe(4);
    expect(waits).toEqual([locked().message]);
  });

  it('gives up after lockWaitMs with a message that says how to wait longer; other errors pass at once', async () => {
    const t0 = Date.now();
    await expect(withLockWait(async () => { throw locked(); }, 300)).rejects.toThrow(/waited 0\.3 s; raise --lock-wait/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    let calls = 0;
    await expect(withLockWait(async () => { calls++; throw new RefusedError('TARGET_BUSY', 'busy'); }, 5000)).rejects.toThrow('busy');
    expect(calls).toBe(1);
    await expect(withLockWait(async () => { throw locked(); }, 0)).rejects.toThrow(/pid 42/);
  });
});

describe('outcomeOf', () => {
  const r = (status: UpdateStatus, code?: string): ProcessResult => ({ pid: 1, status, patchId: null, pauseMicros: 0, ...(code ? { code } : {}) });
  it.each([
    [[], 'ok'],
    [[r('patched'), r('already-patched'), r('skipped', 'OTHER_BUILD')], 'ok'],
    [[r('refused')], 'refused'],
    [[r('refused'), r('skipped', 'OTHER_BUILD')], 'refused'],
    [[r('refused'), r('failed')], 'error'],
    [[r('failed')], 'error'],
    [[r('patched'), r('refused')], 'partial'],
    [[r('already-patched'), r('failed')], 'partial'],
    [[r('skipped', 'DRY_RUN'), r('refused')], 'partial'],
    [[r('skipped', 'NOTHING_TO_RECOVER'), r('failed')], 'partial'],
    [[r('removed'), r('failed')], 'partial'],
  ] as Array<[ProcessResult[], string]>)('%j → %s', (results, expected) => {
    expect(outcomeOf(results)).toBe(expected);
  });

  it('classifies errors: refusal, failure, a process that exited', () => {
    expect(resultFromError(5, 'p', new RefusedError('X', 'no')).status).toBe('refused');
    expect(resultFromError(5, 'p', new HotpatchError('Y', 'bad')).status).toBe('failed');
    const gone = new HotpatchError('PROCESS_NOT_FOUND', 'process 5 exited');
    expect(resultFromError(5, 'p', gone, true)).toMatchObject({ status: 'skipped', code: 'PROCESS_NOT_FOUND' });
    expect(resultFromError(5, 'p', gone, false).status).toBe('failed');
    expect(resultFromError(5, 'p', new Error('boom'))).toMatchObject({ status: 'failed', code: 'INTERNAL', reason: 'internal error: boom' });
  });
});

describe('recoveryNeed', () => {
  const proc = (over: Partial<ProcessPatches>): ProcessPatches => ({ pid: 10, exe: '/x', patches: [], arenas: [], transaction: null, record: null, disagreements: [], ...over });
  const patch = (state: ListedPatch['state']): ListedPatch => ({ id: 'aaaaaaaaaaaaaaaa', module: '/lib', buildId: 'ab', functions: ['f'], signer: null, packageHash: '', state, appliedAt: 0, sites: [] });
  const tx = (ownerPid: number) => ({ op: 'apply' as const, patchId: 'aaaaaaaaaaaaaaaa', ownerPid, startedAt: 0 });

  it('repairs only what a dead patcher left; leaves consistent records and live operations alone', () => {
    expect(recoveryNeed(proc({ patches: [patch('applied'), patch('retired')] }))).toMatchObject({ need: false, code: 'NOTHING_TO_RECOVER' });
    expect(recoveryNeed(proc({ patches: [patch('pending')] }))).toEqual({ need: true });
    expect(recoveryNeed(proc({ patches: [patch('removing')], transaction: tx(0x3fffffff) }))).toEqual({ need: true }); // owner gone
    const live = recoveryNeed(proc({ patches: [patch('pending')], transaction: tx(process.ppid) }));
    expect(live).toMatchObject({ need: false, code: 'IN_PROGRESS', reason: expect.stringMatching(/hotpatch recover --pid 10/) });
    expect(recoveryNeed(proc({ patches: [patch('pending')], transaction: tx(process.pid) }))).toEqual({ need: true }); // not "another hotpatch process"
    expect(recoveryNeed(proc({ patches: [patch('applied')], disagreements: ['patch x is recorded as applied, but f at 0x1 does not hold its jump'] }))).toEqual({ need: true }); // code restored behind the engine's back
  });
});
