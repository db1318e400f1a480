/**
 * Live-switch stress (issue #10): 8 threads call f1, f2, f3 of a patch (built by the builder from
 * test/fixtures/engine/live-stress.c and its -DLIVE_NEW fix) in a tight loop while this process
 * applies and removes the patch through the engine library. The target checks every call; the
 * rule for mixes is defined in the C file's header: every call returns exactly the old or the new
 * value, and each change of version a thread sees between two consecutive calls is matched to its
 * own operation of the right direction (so at most one mixed iteration per thread per flip, never
 * new f1 with old f2 during an apply). HOTPATCH_LIVE_STRESS_CYCLES sets the cycles (default 200; bench/live-stress runs 10,000).
 * Works with either protocol: the freeze engine must pass it as the zero-stall one does.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildLiveStress, runLiveStress, type LiveStressBuild, type LiveStressResult } from '../../bench/live-stress-run.js';
import { REPO_ROOT } from '../helpers/native.js';

const CYCLES = Number(process.env.HOTPATCH_LIVE_STRESS_CYCLES ?? 200);
/** A hang guard, not a speed check: on a very loaded machine a case stops early, after at least MIN_CYCLES. */
const CASE_MS = 2 * 60_000;
const MIN_CYCLES = Math.min(CYCLES, 50);
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-live-stress-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let built: LiveStressBuild | undefined;
function build(): LiveStressBuild {
  built ??= buildLiveStress(REPO_ROOT, dir);
  return built;
}

function expectClean(r: LiveStressResult): void {
  expect(r.crashed, r.output).toBeNull();
  const s = r.stats!;
  expect(r.cycles).toBeGreaterThanOrEqual(MIN_CYCLES);
  // The last operation ends at epoch 2 * operations.
  expect(s.epoch).toBe(2 * r.operations);
  expect(s.wrong).toBe(0);
  expect(s.sigwrong).toBe(0);
  expect(s.unmatched).toBe(0);
  expect(s.maxmixed).toBeLessThanOrEqual(r.operations);
  expect(s.maxtransitions).toBeLessThanOrEqual(r.operations);
  // Every thread ran, and saw both versions.
  expect(s.miniterations).toBeGreaterThan(0);
  expect(s.transitions).toBeGreaterThan(0);
  console.log(`live-stress: ${r.cycles} cycles in ${r.seconds.toFixed(1)} s, protocols ${JSON.stringify(r.protocols)}; ${JSON.stringify(s)}`);
}

describe('live stress', () => {
  it('builds a three-function patch', () => {
    expect(build().functions).toEqual(['f1', 'f2', 'f3']);
  });

  it(`${CYCLES} apply/remove cycles under 8 threads calling f1, f2, f3: no wrong result, no mix beyond one per flip`, async () => {
    expectClean(await runLiveStress(build(), { workers: 8, cycles: CYCLES, deadline: Date.now() + CASE_MS }));
  }, 900_000);

  it(`the same with SIGUSR1 arriving at a high rate, the handler calling f1, f2, f3`, async () => {
    const r = await runLiveStress(build(), { workers: 8, cycles: CYCLES, signals: true, deadline: Date.now() + CASE_MS });
    expectClean(r);
    expect(r.stats!.sigcalls).toBeGreaterThan(0);
  }, 900_000);

  it('the check catches functions that do not switch together (one patch per function, applied in turn)', async () => {
    const r = await runLiveStress(build(), { workers: 8, cycles: 30, splitPerFunction: true });
    expect(r.crashed, r.output).toBeNull();
    expect(r.stats!.wrong).toBe(0);
    expect(r.stats!.unmatched).toBeGreaterThan(0);
    console.log(`live-stress negative control: ${JSON.stringify(r.stats)}`);
  }, 900_000);
});
