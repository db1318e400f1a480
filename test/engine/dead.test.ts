/**
 * The target dies mid-way (SIGKILL at a named step, HOTPATCH_FAULT_TARGET): the engine must fail
 * with a typed process error, promptly, and release its lock.
 */
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HotpatchError } from '../../src/errors.js';
import { applyPatch, removePatch } from '../../src/patch/index.js';
import { FAULT_TARGET_ENV, type FaultStep } from '../../src/patch/engine/fault.js';
import { compile } from '../helpers/native.js';
import { handPlan, PADDED_FIX, RETURN_42 } from './helpers.js';

/**
 * Starts the target as a grandchild (through sh), like a real patched process that is not the
 * patcher's child: a dying child of ours would be reaped by Node's own bookkeeping, not by ptrace.
 */
const shells: ChildProcess[] = [];
const pids: number[] = [];
async function startDetached(threads: number): Promise<{ pid: number }> {
  const sh = spawn('sh', ['-c', `"$0" ${threads} & echo pid=$!; wait`, exe], { stdio: ['ignore', 'pipe', 'inherit'] });
  shells.push(sh);
  let out = '';
  await new Promise<void>((res, rej) => {
    sh.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready') && /pid=\d+\n/.test(out)) res();
    });
    sh.once('exit', () => rej(new Error(`target did not start: ${out}`)));
  });
  const pid = Number(/pid=(\d+)/.exec(out)![1]);
  pids.push(pid);
  return { pid };
}

afterAll(() => {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already dead */
    }
  }
  for (const sh of shells) sh.kill('SIGKILL');
});

let exe: string;
const lockDir = mkdtempSync(join(tmpdir(), 'hotpatch-dead-'));

beforeAll(async () => {
  exe = await compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });
  process.env.HOTPATCH_LOCK_DIR = lockDir;
});

afterEach(() => {
  delete process.env[FAULT_TARGET_ENV];
});

const plan = () =>
  handPlan(exe, [
    { name: 'padded_value', kind: 'padded', code: PADDED_FIX },
    { name: 'plain_value', kind: 'plain', code: RETURN_42 },
  ]);

async function expectProcessGone(run: () => Promise<unknown>): Promise<void> {
  const started = Date.now();
  let err: unknown;
  try {
    await run();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(HotpatchError);
  expect((err as HotpatchError).code).toMatch(/^PROCESS_|^RECORD_|^WRITE_/);
  expect(Date.now() - started).toBeLessThan(30_000);
  expect(readdirSync(lockDir)).toEqual([]);
}

describe('the target dies mid-way', () => {
  const applySteps: FaultStep[] = ['apply:arena-mapped', 'apply:code-written', 'apply:record-pending', 'apply:frozen', 'apply:first-site-switched'];
  for (const step of applySteps) {
    it(`during apply, at ${step}`, async () => {
      const t = await startDetached(2);
      process.env[FAULT_TARGET_ENV] = step;
      await expectProcessGone(() => applyPatch(t.pid, plan(), { patchId: 'p', timeoutMs: 1000 }));
    });
  }
  const removeSteps: FaultStep[] = ['remove:record-removing', 'remove:frozen', 'remove:first-site-restored'];
  for (const step of removeSteps) {
    it(`during remove, at ${step}`, async () => {
      const t = await startDetached(2);
      await applyPatch(t.pid, plan(), { patchId: 'p' });
      process.env[FAULT_TARGET_ENV] = step;
      await expectProcessGone(() => removePatch(t.pid, 'p', { timeoutMs: 1000 }));
    });
  }
  it('a process that is gone before apply', async () => {
    const t = await startDetached(1);
    process.kill(t.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    await expectProcessGone(() => applyPatch(t.pid, plan(), { patchId: 'p' }));
  });
});
