/**
 * buildPatchAsync and scanFileAsync (the library's worker-thread forms): the same results and the
 * same typed errors as the synchronous calls, progress lines, a caller's event loop that keeps
 * running, and an AbortSignal that stops the work.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { BuildRefusedError, buildPatch, buildPatchAsync } from '../../src/patch/builder/index.js';
import { scanFile, scanFileAsync } from '../../src/scan/index.js';
import { buildPair, RECOMMENDED, type Pair } from './pairs.js';

let basic: Pair;
let refused: Pair;
beforeAll(async () => {
  basic = await buildPair('basic', { flags: RECOMMENDED });
  refused = await buildPair('fail_data_resized', { flags: RECOMMENDED });
}, 300_000);

describe('buildPatchAsync', () => {
  it('gives the plan and report buildPatch gives, with its progress lines, while the event loop runs', async () => {
    const oldBytes = readFileSync(basic.old);
    const newBytes = readFileSync(basic.new);
    const sync = buildPatch(oldBytes, newBytes, { oldName: 'prog' });
    const lines: string[] = [];
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const result = await buildPatchAsync(oldBytes, newBytes, { oldName: 'prog', progress: (m) => lines.push(m) });
    clearInterval(timer);
    expect(result.plan).toEqual(sync.plan);
    expect(result.report.functions).toEqual(sync.report.functions);
    expect(lines.length).toBeGreaterThan(0);
    expect(ticks).toBeGreaterThan(0);
  }, 120_000);

  it('rejects with the same BuildRefusedError (every refusal, its code)', async () => {
    const oldBytes = readFileSync(refused.old);
    const newBytes = readFileSync(refused.new);
    let expected: BuildRefusedError | undefined;
    try {
      buildPatch(oldBytes, newBytes);
    } catch (e) {
      expected = e as BuildRefusedError;
    }
    expect(expected).toBeInstanceOf(BuildRefusedError);
    const got = await buildPatchAsync(oldBytes, newBytes).then(() => undefined, (e: unknown) => e);
    expect(got).toBeInstanceOf(BuildRefusedError);
    expect((got as BuildRefusedError).code).toBe(expected!.code);
    expect((got as BuildRefusedError).refusals).toEqual(expected!.refusals);
  }, 120_000);

  it('a corrupt input rejects with the ELF error code, not a crash of the worker', async () => {
    const got = await buildPatchAsync(new Uint8Array([0x7f, 0x45, 0x4c]), readFileSync(basic.new)).then(() => undefined, (e: unknown) => e);
    expect(got).toMatchObject({ name: 'ElfError', code: expect.stringMatching(/^ELF_/) });
  }, 60_000);

  it('an abort stops the build and rejects with the signal reason; an aborted signal starts nothing', async () => {
    const ac = new AbortController();
    const pending = buildPatchAsync(readFileSync(basic.old), readFileSync(basic.new), { signal: ac.signal });
    ac.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    const reason = new Error('user gave up');
    await expect(buildPatchAsync(new Uint8Array(0), new Uint8Array(0), { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  }, 60_000);
});

describe('scanFileAsync', () => {
  it('gives the result scanFile gives, and the same error for a file that does not exist', async () => {
    expect(await scanFileAsync(basic.old)).toEqual(scanFile(basic.old));
    let expected: unknown;
    try {
      scanFile('/nonexistent/file');
    } catch (e) {
      expected = e;
    }
    const got = await scanFileAsync('/nonexistent/file').then(() => undefined, (e: unknown) => e);
    expect(got).toMatchObject({ name: (expected as Error).name, code: (expected as { code: string }).code });
  }, 60_000);
});
