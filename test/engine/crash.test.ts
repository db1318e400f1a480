/**
 * Crash safety: the patcher (the real CLI) is killed with SIGKILL at every named step of apply and
 * remove (HOTPATCH_FAULT=<step>); afterwards the target must be alive, `hotpatch recover` must
 * leave it fully patched or fully unpatched (rule: an apply without its commit mark is undone, a
 * remove in progress is finished), and its behaviour must match its bytes.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { applyPatch, listPatches, removePatch } from '../../src/patch/index.js';
import { APPLY_FAULT_STEPS, REMOVE_FAULT_STEPS } from '../../src/patch/engine/fault.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { readMemory } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { handPlan, PADDED_FIX, query, RETURN_42 } from './helpers.js';

killTargetsAfterAll();

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const run = promisify(execFile);

interface CliResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], fault?: string): Promise<CliResult> {
  const env = { ...process.env, HOTPATCH_LOCK_DIR: lockDir };
  if (fault) env.HOTPATCH_FAULT = fault;
  else delete env.HOTPATCH_FAULT;
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { env });
    return { code: 0, signal: null, stdout, stderr };
  } catch (e) {
    const x = e as { code?: number; signal?: string; stdout: string; stderr: string };
    return { code: typeof x.code === 'number' ? x.code : null, signal: x.signal ?? null, stdout: x.stdout, stderr: x.stderr };
  }
}

let exe: string;
let t: Target;
let plan: PatchPlan;
let pkgPath: string;
let patchId: string;
let lockDir: string;
/** Runtime site addresses and their original / patched bytes. */
let sites: Array<{ address: bigint; length: number; original: string }>;

function siteState(): 'original' | 'patched' | 'mixed' {
  const states = sites.map((s) => (Buffer.from(readMemory(t.pid, s.address, s.length)).toString('hex') === s.original ? 'original' : 'patched'));
  return states.every((x) => x === 'original') ? 'original' : states.every((x) => x === 'patched') ? 'patched' : 'mixed';
}

beforeAll(async () => {
  exe = await compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });
  t = await startTarget(exe, ['4']);
  plan = handPlan(exe, [
    { name: 'padded_value', kind: 'padded', code: PADDED_FIX },
    { name: 'plain_value', kind: 'plain', code: RETURN_42 },
  ]);
  const pkg = createPackage(plan, { description: 'crash test' });
  patchId = pkg.id;
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-crash-'));
  lockDir = join(dir, 'locks');
  pkgPath = join(dir, 'fix.hpk');
  writeFileSync(pkgPath, encodePackage(pkg));
  const base = (await import('../../src/process/index.js')).openProcess(t.pid);
  const mod = base.getMainModule();
  base.close();
  sites = plan.functions.map((f) => ({
    address: f.entry.siteVaddr + mod.loadBias,
    length: f.entry.expected.length,
    original: Buffer.from(f.entry.expected).toString('hex'),
  }));
});

async function expectBehaviour(state: 'original' | 'patched'): Promise<void> {
  const v = await query(t);
  expect([v.padded, v.plain]).toEqual(state === 'patched' ? [12, 42] : [11, 35]);
}

describe('the patcher killed at every step', () => {
  it('the CLI applies, lists and removes normally (exit codes and JSON)', async () => {
    const a = await cli(['apply', pkgPath, '--pid', String(t.pid), '--allow-unsigned', '--json']);
    expect(a.code).toBe(0);
    const doc = JSON.parse(a.stdout) as { results: Array<{ pid: number; status: string; patchId: string; pauseMicros: number }> };
    expect(doc.results[0]).toMatchObject({ pid: t.pid, status: 'patched', patchId });
    // The plan has a plain entry: the whole patch takes the freeze.
    expect(doc.results[0]).toMatchObject({ protocol: 'freeze' });
    expect(doc.results[0]!.pauseMicros).toBeGreaterThan(0);
    expect(siteState()).toBe('patched');
    const again = JSON.parse((await cli(['apply', pkgPath, '--pid', String(t.pid), '--allow-unsigned', '--json'])).stdout);
    expect(again.results[0].status).toBe('already-patched');
    const l = JSON.parse((await cli(['list', '--pid', String(t.pid), '--json'])).stdout);
    expect(l.processes[0].patches[0]).toMatchObject({ id: patchId, state: 'applied', functions: ['padded_value', 'plain_value'], signer: null });
    const r = await cli(['remove', patchId, '--pid', String(t.pid), '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).results[0]).toMatchObject({ status: 'removed', patchId });
    expect(siteState()).toBe('original');
    const refused = await cli(['remove', patchId, '--pid', String(t.pid), '--json']);
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout).results[0]).toMatchObject({ status: 'failed', code: 'PATCH_NOT_APPLIED' });
    const unsigned = await cli(['apply', pkgPath, '--pid', String(t.pid)]);
    expect(unsigned.code).toBe(3); // refused: nothing changed
    expect(unsigned.stderr).toMatch(/not signed/);
  }, 300_000);

  for (const step of APPLY_FAULT_STEPS) {
    it(`apply killed at ${step}`, async () => {
      const r = await cli(['apply', pkgPath, '--pid', String(t.pid), '--allow-unsigned'], step);
      expect(r.signal).toBe('SIGKILL');
      expect(t.child.exitCode).toBeNull();
      const rec = await cli(['recover', '--pid', String(t.pid), '--json']);
      expect(rec.code).toBe(0);
      const expected = step === 'apply:committed' ? 'patched' : 'original';
      expect(siteState()).toBe(expected);
      await expectBehaviour(expected);
      const listed = listPatches(t.pid);
      expect(listed.transaction).toBeNull();
      expect(listed.patches.filter((p) => p.state !== 'retired').map((p) => p.state)).toEqual(expected === 'patched' ? ['applied'] : []);
      if (expected === 'patched') await removePatch(t.pid, patchId);
      expect(siteState()).toBe('original');
    }, 300_000);
  }

  for (const step of REMOVE_FAULT_STEPS) {
    it(`remove killed at ${step}`, async () => {
      await applyPatch(t.pid, plan, { patchId });
      const r = await cli(['remove', patchId, '--pid', String(t.pid)], step);
      expect(r.signal).toBe('SIGKILL');
      expect(t.child.exitCode).toBeNull();
      const rec = await cli(['recover', '--pid', String(t.pid), '--json']);
      expect(rec.code).toBe(0);
      const expected = step === 'remove:locked' ? 'patched' : 'original';
      expect(siteState()).toBe(expected);
      await expectBehaviour(expected);
      expect(listPatches(t.pid).transaction).toBeNull();
      if (expected === 'patched') await removePatch(t.pid, patchId);
      expect(siteState()).toBe('original');
    }, 300_000);
  }

  it('recover on a consistent process changes nothing', async () => {
    const r = await cli(['recover', '--pid', String(t.pid), '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).results[0].status).toBe('skipped');
  });
});
