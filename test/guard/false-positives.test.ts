/**
 * Zero false positives: ordinary programs started by the test (see ordinary.ts) verify clean in
 * every structure, with the default policy. Info findings count too.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VerifierCaches, verifyProcesses } from '../../src/guard/index.js';
import { killTargetsAfterAll } from '../helpers/native.js';
import { summary } from './helpers.js';
import { childrenOf, startOrdinaryPrograms, type OrdinaryPrograms } from './ordinary.js';

killTargetsAfterAll();

let programs: OrdinaryPrograms;

beforeAll(async () => {
  programs = await startOrdinaryPrograms();
});

afterAll(async () => {
  await programs.stop();
});

describe('verify: zero false positives on ordinary programs', () => {
  it('finds nothing in bash, python3, node, sqlite3 and a multi-threaded C program', { timeout: 300_000 }, async () => {
    const pids = programs.targets.map((t) => t.pid);
    const results = await verifyProcesses(pids, { caches: new VerifierCaches() });
    for (const r of results) expect(r.checked, `${r.pid}: ${r.error}`).toBe(true);
    const findings = results.flatMap((r) => r.findings);
    expect(findings, summary(findings)).toEqual([]);
    // Every structure was really looked at: code bytes were compared.
    for (const r of results) expect(r.bytes).toBeGreaterThan(100_000);
  });

  it('finds nothing in a PostgreSQL server and its workers', { timeout: 300_000 }, async (ctx) => {
    const pg = programs.pg;
    if (pg === undefined) {
      process.stderr.write(`skipping PostgreSQL: ${programs.pgSkipReason}\n`);
      ctx.skip();
      return;
    }
    const pids = [pg.proc.pid!, ...childrenOf(pg.proc.pid!)];
    expect(pids.length).toBeGreaterThanOrEqual(4);
    const results = await verifyProcesses(pids, { caches: new VerifierCaches() });
    const findings = results.flatMap((r) => r.findings);
    expect(results.filter((r) => r.checked).length).toBeGreaterThanOrEqual(4);
    expect(findings, summary(findings)).toEqual([]);
  });
});
