/**
 * 1,000 apply/remove cycles of a padded and a plain function while 8 threads call both in a tight
 * loop and check every value they get (the target aborts on a value no version returns). Uses the
 * library directly so the cycles are fast.
 */
import { describe, expect, it } from 'vitest';
import { applyPatch, listPatches, removePatch } from '../../src/patch/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { handPlan, PADDED_FIX, query, RETURN_42 } from './helpers.js';

killTargetsAfterAll();

const CYCLES = Number(process.env.HOTPATCH_STRESS_CYCLES ?? 1000);

describe('stress', () => {
  it(`${CYCLES} apply/remove cycles under 8 calling threads`, async () => {
    const exe = await compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });
    const t = await startTarget(exe, ['8']);
    const plan = handPlan(exe, [
      { name: 'padded_value', kind: 'padded', code: PADDED_FIX },
      { name: 'plain_value', kind: 'plain', code: RETURN_42 },
    ]);
    const pauses: number[] = [];
    let busyRetries = 0;
    const started = Date.now();
    let last = await query(t);
    for (let i = 0; i < CYCLES; i++) {
      const a = await applyPatch(t.pid, plan, { patchId: 'stress', timeoutMs: 10_000 });
      expect(a.status).toBe('patched');
      const r = await removePatch(t.pid, 'stress', { timeoutMs: 10_000 });
      pauses.push(a.pauseMicros, r.pauseMicros);
      busyRetries += a.attempts - 1 + r.attempts - 1;
      if (i % 100 === 99) {
        expect(t.child.exitCode, t.output()).toBeNull();
        const v = await query(t);
        expect(v.calls).toBeGreaterThan(last.calls);
        expect([v.padded, v.plain]).toEqual([11, 35]);
        last = v;
      }
    }
    expect(t.child.exitCode, t.output()).toBeNull();
    expect(t.output()).not.toMatch(/BAD/);
    expect(listPatches(t.pid).patches.filter((p) => p.state !== 'retired')).toEqual([]);
    pauses.sort((x, y) => x - y);
    console.log(
      `stress: ${CYCLES} cycles in ${Date.now() - started} ms; pause median ${pauses[pauses.length >> 1]!.toFixed(0)} µs, ` +
        `p99 ${pauses[Math.floor(pauses.length * 0.99)]!.toFixed(0)} µs; busy retries ${busyRetries}`,
    );
  }, 600_000);
});
