/**
 * C++ exceptions through patched code (issue #12 item 2), on a real g++ service whose three worker
 * threads throw and catch all the time: the patched `parse` throws, the patched `validate` catches,
 * amends and rethrows, the unpatched `answer` catches. With the patch's unwind information
 * registered nothing terminates and the answers equal the fixed build's; after remove the old
 * handlers catch again; without the unwind information (the control) the process terminates.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildPatch } from '../../src/patch/builder/index.js';
import { applyPatch, readRecordFromMappings, recoverProcess, removePatch } from '../../src/patch/engine/index.js';
import { verifyProcess } from '../../src/guard/index.js';
import { createPackage, decodePackage, encodePackage } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { applyPackageFile } from '../../src/patch/updater/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { readMappings } from '../../src/process/control/procfs.js';
import { ask, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { buildPair, RECOMMENDED } from '../builder/pairs.js';

killTargetsAfterAll();

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const run = promisify(execFile);

/** The real CLI (from dist), optionally killed at a named step (HOTPATCH_FAULT). */
async function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; signal: string | null; out: string }> {
  try {
    const r = await run('node', [CLI, ...args], { env: { ...process.env, ...env } });
    return { code: 0, signal: null, out: r.stdout + r.stderr };
  } catch (e) {
    const x = e as { code?: number; signal?: string; stdout: string; stderr: string };
    return { code: typeof x.code === 'number' ? x.code : null, signal: x.signal ?? null, out: x.stdout + x.stderr };
  }
}

/** Runs recover (which frees retired code no thread uses) until the record is gone (bounded). */
async function untilReleased(pid: number): Promise<void> {
  for (let i = 0; i < 100 && readRecordFromMappings(pid, readMappings(pid)) !== null; i++) {
    await new Promise((r) => setTimeout(r, 50));
    await recoverProcess(pid, { timeoutMs: 20_000 });
  }
}

const INPUTS = Array.from({ length: 40 }, (_, i) => String(i + 1));

async function answers(t: Target): Promise<string[]> {
  const out: string[] = [];
  for (const n of INPUTS) out.push(await ask(t, n, new RegExp(`^${n}: [^\\n]*\\n`, 'm')));
  return out;
}

async function workerCalls(t: Target): Promise<number> {
  const line = await ask(t, 'stats', /stats (\d+) (\d+)\n/);
  return Number(/stats (\d+)/.exec(line)![1]);
}

let pair: { old: string; new: string };
let plan: PatchPlan;
let id: string;
let warnings: string[];
let fixed: string[];

beforeAll(async () => {
  pair = await buildPair('cxx_exceptions', { cxx: true, flags: [...RECOMMENDED, '-pthread'] });
  const built = buildPatch(new Uint8Array(readFileSync(pair.old)), new Uint8Array(readFileSync(pair.new)), { oldName: pair.old });
  warnings = built.report.warnings;
  const pkg = decodePackage(encodePackage(createPackage(built.plan)));
  plan = pkg.plan;
  id = pkg.id;
  const reference = await startTarget(pair.new);
  try {
    fixed = await answers(reference);
  } finally {
    await reference.kill();
  }
}, 120_000);

describe('C++ exceptions through patched code', () => {
  it('the package carries the unwind information of both patched functions; no C++ warning', () => {
    expect(plan.functions.map((f) => f.name).sort()).toEqual(['_Z5parsel', '_Z8validatel']);
    expect(plan.unwind).toBeDefined();
    expect(plan.data[plan.unwind!.ehFrame]!.relocations.filter((r) => r.target.kind === 'local' && r.target.part === 'function').length).toBeGreaterThanOrEqual(2);
    expect(warnings.join('\n')).not.toMatch(/C\+\+/);
    expect(fixed).toContain('5: bad 2005\n');
    expect(fixed).toContain('7: runtime seven (fixed)\n');
  });

  it('under load from three throwing threads: no termination, the fixed build\'s answers (rethrow through two patched frames); remove brings the old handlers back', async () => {
    const t = await startTarget(pair.old);
    try {
      const before = await answers(t);
      expect(before).toContain('5: bad 1005\n');
      const applied = await applyPatch(t.pid, plan, { patchId: id, timeoutMs: 20_000 });
      expect(applied.status).toBe('patched');
      const record = readRecordFromMappings(t.pid, readMappings(t.pid))!;
      const unwind = record.patches[0]!.unwind!;
      expect(unwind).toBeDefined();
      const calls0 = await workerCalls(t);
      expect(await answers(t)).toEqual(fixed);
      // The workers keep throwing through the new code for a while: still alive, still counting.
      await new Promise((r) => setTimeout(r, 500));
      expect(await workerCalls(t)).toBeGreaterThan(calls0);
      expect(t.child.exitCode).toBeNull();

      const removed = await removePatch(t.pid, id, { timeoutMs: 20_000 });
      expect(removed.status).toBe('removed');
      // A worker still inside the removed code keeps it (and its registration) until it leaves.
      await untilReleased(t.pid);
      // The last patch gone, the record itself is unmapped; a record that is left holds no registration.
      expect(readRecordFromMappings(t.pid, readMappings(t.pid))?.patches.every((p) => p.unwind === undefined) ?? true).toBe(true);
      expect(readMappings(t.pid).some((m) => m.start === unwind.object.start)).toBe(false);
      expect(await answers(t)).toEqual(before);
      const calls1 = await workerCalls(t);
      await new Promise((r) => setTimeout(r, 300));
      expect(await workerCalls(t)).toBeGreaterThan(calls1);
      expect(t.child.exitCode).toBeNull();
    } finally {
      await t.kill();
    }
  }, 120_000);

  it('applied live with a worker thread held by another tracer: the registration ran in one hijacked thread, no whole-process freeze', async () => {
    const t = await startTarget(pair.old);
    let strace: ChildProcess | undefined;
    try {
      const tracerOf = (tid: number) => Number(/TracerPid:\s*(\d+)/.exec(readFileSync(`/proc/${t.pid}/task/${tid}/status`, 'utf8'))![1]);
      const worker = readdirSync(`/proc/${t.pid}/task`).map(Number).find((tid) => tid !== t.pid)!;
      // strace seizes this one thread: a freeze of every thread would fail on it (already traced).
      strace = spawn('strace', ['-q', '-o', '/dev/null', '-p', String(worker)], { stdio: 'ignore' });
      for (let i = 0; i < 500 && tracerOf(worker) === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(tracerOf(worker)).toBe(strace.pid);
      const applied = await applyPatch(t.pid, plan, { patchId: id, timeoutMs: 20_000 });
      expect(applied.status).toBe('patched');
      expect(applied.protocol).toBe('live');
      expect(readRecordFromMappings(t.pid, readMappings(t.pid))!.patches[0]!.unwind).toBeDefined();
      expect(await answers(t)).toEqual(fixed);
      strace.kill('SIGKILL');
      for (let i = 0; i < 500 && tracerOf(worker) !== 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect((await removePatch(t.pid, id, { timeoutMs: 20_000 })).status).toBe('removed');
      expect(await ask(t, '5', /5: [^\n]*\n/)).toBe('5: bad 1005\n');
      expect(t.child.exitCode).toBeNull();
    } finally {
      strace?.kill('SIGKILL');
      await t.kill();
    }
  }, 120_000);

  it('a signed package applied by the updater verifies clean (the unwind data and its object page are sanctioned)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hotpatch-cxx-'));
    const key = writeKeyFiles(join(dir, 'ops.key'), { comment: 'ops' });
    const pkgPath = join(dir, 'fix.hpk');
    writeFileSync(pkgPath, encodePackage(signPackage(createPackage(plan), readFileSync(join(dir, 'ops.key'), 'utf8'))));
    const t = await startTarget(pair.old);
    try {
      const report = await applyPackageFile(pkgPath, { pids: [t.pid], trustFiles: [key.publicKeyFile], timeoutMs: 20_000 });
      expect(JSON.stringify(report)).toMatch(/patched/);
      expect(await ask(t, '7', /7: [^\n]*\n/)).toBe('7: runtime seven (fixed)\n');
      const r = await verifyProcess(t.pid, { allowPtrace: false, structures: [5, 10], trustFiles: [key.publicKeyFile] });
      expect(r.checked).toBe(true);
      expect(r.findings.map((f) => `${f.code} ${f.kind} ${f.detail}`)).toEqual([]);
    } finally {
      await t.kill();
    }
  }, 120_000);

  it('a patcher killed after registering (mid-switch): recover unregisters, the old handlers catch, nothing terminates', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hotpatch-cxx-'));
    const pkgPath = join(dir, 'fix.hpk');
    writeFileSync(pkgPath, encodePackage(createPackage(plan)));
    const env = { HOTPATCH_LOCK_DIR: dir };
    const t = await startTarget(pair.old);
    try {
      const before = await answers(t);
      const killed = await cli(['apply', pkgPath, '--pid', String(t.pid), '--allow-unsigned', '--timeout', '20'], { ...env, HOTPATCH_FAULT: 'apply:frozen' });
      expect(killed.signal, killed.out).toBe('SIGKILL');
      const pending = readRecordFromMappings(t.pid, readMappings(t.pid))!.patches[0]!;
      expect(pending.state).toBe('pending');
      const page = pending.unwind!.object.start;
      const recovered = await cli(['recover', '--pid', String(t.pid), '--timeout', '20'], env);
      expect(recovered.code, recovered.out).toBe(0);
      await untilReleased(t.pid);
      // The last patch gone, the record itself is unmapped; a record that is left holds no registration.
      expect(readRecordFromMappings(t.pid, readMappings(t.pid))?.patches.every((p) => p.unwind === undefined) ?? true).toBe(true);
      expect(readMappings(t.pid).some((m) => m.start === page)).toBe(false);
      expect(await answers(t)).toEqual(before);
      const calls = await workerCalls(t);
      await new Promise((r) => setTimeout(r, 300));
      expect(await workerCalls(t)).toBeGreaterThan(calls);
    } finally {
      await t.kill();
    }
  }, 120_000);

  it('non-PIE and -O0 builds (absolute and pc-relative unwind pointers) unwind through the patch too', async () => {
    for (const flags of [['-O2', '-no-pie', '-fno-pie', '-fpatchable-function-entry=7,5'], ['-O0']]) {
      const p = await buildPair('cxx_exceptions', { cxx: true, flags: [...flags, '-pthread'] });
      const b = buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)), { oldName: p.old });
      expect(b.plan.unwind, flags.join(' ')).toBeDefined();
      const t = await startTarget(p.old);
      try {
        await applyPatch(t.pid, b.plan, { patchId: `np-${flags.length}`, timeoutMs: 20_000 });
        expect(await answers(t), flags.join(' ')).toEqual(fixed);
        await removePatch(t.pid, `np-${flags.length}`, { timeoutMs: 20_000 });
        expect(await ask(t, '5', /5: [^\n]*\n/)).toBe('5: bad 1005\n');
      } finally {
        await t.kill();
      }
    }
  }, 180_000);

  it('control: the same patch without its unwind information terminates the process', async () => {
    const { unwind: _dropped, ...bare } = plan;
    const t = await startTarget(pair.old);
    try {
      const exited = new Promise<string>((res) => t.child.once('exit', (code, signal) => res(String(signal ?? code))));
      t.child.stdin!.on('error', () => {});
      // The workers' next exception through the new code terminates the process (std::terminate).
      await applyPatch(t.pid, bare, { patchId: `${id}-bare`, timeoutMs: 20_000 }).catch(() => undefined);
      if (t.child.exitCode === null && t.child.signalCode === null) t.child.stdin!.write('7\n');
      expect(await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('alive'), 10_000))])).toBe('SIGABRT');
    } finally {
      await t.kill();
    }
  }, 60_000);
});
