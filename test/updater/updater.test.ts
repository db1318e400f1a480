/**
 * The updater on real processes: one package for libfix.so applied with `--all` to three processes
 * of one program and a process of another program that loaded the same library from another
 * (deleted) path, skipping a process of a different build; removed byte for byte; `--cold`
 * installing the fixed file so a new process runs fixed code without a hot patch; the signature
 * policy; `recover` after the patcher was killed mid-apply.
 */
import { chmodSync, closeSync, existsSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { listPatches } from '../../src/patch/engine/index.js';
import { readPackageFile } from '../../src/patch/package/index.js';
import { openProcess } from '../../src/process/index.js';
import { killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { cli, copyLib, makeFixture, settledTextHash, spawnCli, textHash, value, type Fixture } from './helpers.js';

killTargetsAfterAll();

let f: Fixture;
let alphas: Target[] = [];
let beta: Target;
let other: Target;
const baseline = new Map<number, string>();

interface Result {
  pid: number;
  status: string;
  patchId: string;
  pauseMicros: number;
  reason?: string;
  code?: string;
  module?: string;
  dryRun?: boolean;
}

function byPid(results: Result[], pid: number): Result {
  const r = results.find((x) => x.pid === pid);
  if (!r) throw new Error(`no result for pid ${pid} in ${JSON.stringify(results)}`);
  return r;
}

/** Results for our own processes only (other tests' processes may run on the machine). */
function ours(results: Result[]): Result[] {
  const pids = new Set([...alphas, beta, other].map((t) => t.pid));
  return results.filter((r) => pids.has(r.pid));
}

const patched = (): Target[] => [...alphas, beta];

beforeAll(async () => {
  f = await makeFixture();
  chmodSync(f.lib, 0o751);
  const env = (dir: string) => ({ ...process.env, LD_LIBRARY_PATH: dir });
  alphas = await Promise.all([0, 1, 2].map(() => startTarget(f.alpha, ['2'], { env: env(f.app) })));
  // beta loads the same build from another path, deleted once it is loaded.
  const copy = copyLib(f, 'copy');
  beta = await startTarget(f.beta, ['2'], { env: env(copy) });
  rmSync(join(copy, 'libfix.so'));
  other = await startTarget(f.alpha, ['2'], { env: env(join(f.dir, 'other')) });
  for (const t of [...patched(), other]) baseline.set(t.pid, textHash(t.pid));
}, 120_000);

afterAll(() => {
  if (f) rmSync(f.dir, { recursive: true, force: true });
});

async function expectValues(expected: number): Promise<void> {
  for (const t of patched()) expect(await value(t)).toBe(expected);
  expect(await value(other)).toBe(11);
}

describe('hotpatch apply / remove --all', () => {
  it('refuses an unsigned package and an untrusted signer (exit 3, nothing changed)', async () => {
    const unsigned = await cli(['apply', f.unsignedPkg, '--all', '--json']);
    expect(unsigned.code).toBe(3);
    expect(JSON.parse(unsigned.stdout)).toMatchObject({ results: [], error: { code: 'PACKAGE_UNSIGNED', refused: true } });
    expect(unsigned.stderr).toMatch(/not signed.*--allow-unsigned/);
    const untrusted = await cli(['apply', f.signedPkg, '--all'], { HOTPATCH_TRUSTED_KEYS: join(f.dir, 'nobody.pub') });
    expect(untrusted.code).toBe(1); // a named key file that does not exist is an error, not "untrusted"
    const noTrust = await cli(['apply', f.signedPkg, '--pid', String(alphas[0]!.pid), '--json']);
    expect(noTrust.code).toBe(3);
    expect(JSON.parse(noTrust.stdout).error.code).toBe('PACKAGE_UNTRUSTED');
    for (const t of [...patched(), other]) {
      expect(textHash(t.pid)).toBe(baseline.get(t.pid));
      expect(listPatches(t.pid).record).toBeNull();
    }
    await expectValues(11);
  });

  it('--dry-run checks every process and changes nothing', async () => {
    const r = await cli(['apply', f.signedPkg, '--all', '--trust', f.pub, '--dry-run', '--json']);
    expect(r.code).toBe(0);
    const results = ours(JSON.parse(r.stdout).results as Result[]);
    for (const t of patched()) expect(byPid(results, t.pid)).toMatchObject({ status: 'skipped', dryRun: true, code: 'DRY_RUN' });
    expect(byPid(results, other.pid)).toMatchObject({ status: 'skipped', code: 'OTHER_BUILD' });
    for (const t of [...patched(), other]) expect(textHash(t.pid)).toBe(baseline.get(t.pid));
  });

  it('--all patches every process that maps the build (two programs, a deleted path), skips another build', async () => {
    const r = await cli(['apply', f.signedPkg, '--all', '--trust', f.pub, '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    const results = ours(doc.results as Result[]);
    expect(results).toHaveLength(5);
    for (const t of patched()) {
      const x = byPid(results, t.pid);
      expect(x).toMatchObject({ status: 'patched', patchId: f.patchId });
      // libfix.so is hotpatch-ready: switched live, no thread stopped.
      expect(x).toMatchObject({ protocol: 'live', pauseMicros: 0 });
    }
    expect(byPid(results, beta.pid).module).toBe(join(f.dir, 'copy', 'libfix.so'));
    expect(byPid(results, other.pid)).toMatchObject({ status: 'skipped', code: 'OTHER_BUILD', reason: expect.stringMatching(/another build of libfix\.so/) });
    expect(r.stderr).toMatch(/\[\d+\/\d+\] pid \d+/); // progress lines
    await expectValues(12);
    // The signer is recorded in each target's own record.
    for (const t of patched()) {
      const listed = listPatches(t.pid);
      expect(listed.patches[0]).toMatchObject({ id: f.patchId, state: 'applied', signer: `Release team (${f.keyId})` });
      // What the guard needs to re-verify the patch from the target alone: the signature and the signed content.
      const rec = listed.record!.patches[0]!;
      expect(rec.signing).toMatchObject({ algorithm: 'ed25519', keyId: f.keyId });
      expect(rec.content!.length).toBeGreaterThan(0);
    }
    expect(textHash(other.pid)).toBe(baseline.get(other.pid));

    const again = await cli(['apply', f.signedPkg, '--all', '--trust', f.pub, '--json']);
    expect(again.code).toBe(0);
    for (const t of patched()) expect(byPid(JSON.parse(again.stdout).results, t.pid).status).toBe('already-patched');

    const list = await cli(['list', '--json']);
    expect(list.code).toBe(0);
    const procs = (JSON.parse(list.stdout).processes as Array<{ pid: number; patches: Array<{ id: string; state: string }> }>).filter((p) => patched().some((t) => t.pid === p.pid));
    expect(procs.map((p) => p.pid).sort()).toEqual(patched().map((t) => t.pid).sort());
    for (const p of procs) expect(p.patches).toEqual([expect.objectContaining({ id: f.patchId, state: 'applied' })]);
  });

  it('remove --all restores every process byte for byte', async () => {
    const r = await cli(['remove', f.patchId, '--all', '--json']);
    expect(r.code).toBe(0);
    const results = ours(JSON.parse(r.stdout).results as Result[]);
    expect(results.map((x) => x.pid).sort()).toEqual(patched().map((t) => t.pid).sort());
    for (const x of results) expect(x.status).toBe('removed');
    for (const t of [...patched(), other]) expect(await settledTextHash(t.pid)).toBe(baseline.get(t.pid));
    await expectValues(11);
    const none = await cli(['remove', f.patchId, '--all', '--json']);
    expect(none.code).toBe(0);
    expect(ours(JSON.parse(none.stdout).results)).toEqual([]);
  });
});

describe('one process failing never leaves another half-done', () => {
  it('--all with one process whose site bytes differ: the others are patched, that one untouched, exit 4', async () => {
    const victim = alphas[2]!;
    const { pkg } = readPackageFile(f.signedPkg);
    const fn = pkg.plan.functions[0]!;
    const p = openProcess(victim.pid);
    const lib = p.enumerateModules().find((m) => m.buildId === f.oldBuildId)!;
    p.close();
    const site = lib.loadBias + fn.entry.siteVaddr;
    const fd = openSync(`/proc/${victim.pid}/mem`, 'r+');
    const orig = Buffer.alloc(1);
    try {
      readSync(fd, orig, 0, 1, Number(site));
      expect(orig[0]).toBe(0x90); // a NOP of the padding before lib_value
      writeSync(fd, Buffer.of(0x66), 0, 1, Number(site)); // still harmless: the padding is never executed
      const before = textHash(victim.pid);
      const r = await cli(['apply', f.signedPkg, '--all', '--trust', f.pub, '--json']);
      expect(r.code).toBe(4);
      const results = ours(JSON.parse(r.stdout).results);
      expect(byPid(results, victim.pid)).toMatchObject({ status: 'refused', code: 'SITE_MISMATCH' });
      for (const t of patched().filter((x) => x !== victim)) expect(byPid(results, t.pid).status).toBe('patched');
      expect(textHash(victim.pid)).toBe(before);
      expect(await value(victim)).toBe(11);
      expect(r.stderr).toMatch(/some processes were not changed/);
      const rm = await cli(['remove', f.patchId, '--all', '--json']);
      expect(rm.code).toBe(0);
      expect(ours(JSON.parse(rm.stdout).results)).toHaveLength(3);
    } finally {
      writeSync(fd, orig, 0, 1, Number(site));
      closeSync(fd);
    }
    for (const t of [...patched(), other]) expect(await settledTextHash(t.pid)).toBe(baseline.get(t.pid));
  });
});

describe('hotpatch apply --cold', () => {
  it('installs the fixed file atomically; a new process runs fixed code without a hot patch and is skipped', async () => {
    const before = statSync(f.lib);
    const r = await cli(['apply', f.signedPkg, '--all', '--cold', '--trust', f.pub, '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    for (const t of patched()) expect(byPid(doc.results, t.pid).status).toBe('patched');
    // Only the path that still holds the target build is replaced (beta's copy was deleted).
    expect(doc.cold).toEqual([expect.objectContaining({ path: f.lib, status: 'installed', backupPath: join(f.app, `.libfix.so.hotpatch-${f.patchId}.orig`) })]);
    expect(doc.notes.join('\n')).toMatch(/copy\/libfix\.so.*no longer exists/);
    expect(parseElf(new Uint8Array(readFileSync(f.lib))).buildId).toBe(f.fixedBuildId);
    const after = statSync(f.lib);
    expect(after.mode & 0o7777).toBe(0o751);
    expect([after.uid, after.gid]).toEqual([before.uid, before.gid]);
    expect(after.ino).not.toBe(before.ino);
    const backup = statSync(join(f.app, `.libfix.so.hotpatch-${f.patchId}.orig`));
    expect(backup.ino).toBe(before.ino); // the original itself, as the running processes map it
    // The original hotpatch kept is not "deleted code" (#13): verify is clean for a patched
    // process that maps it, while a library deleted by someone else still is a finding.
    const clean = await cli(['verify', '--pid', String(alphas[0]!.pid), '--trust', f.pub, '--no-ptrace', '--json']);
    expect(JSON.parse(clean.stdout).findings, clean.stdout).toEqual([]);
    expect(clean.code).toBe(0);
    const deleted = await cli(['verify', '--pid', String(beta.pid), '--trust', f.pub, '--no-ptrace', '--json']);
    expect(JSON.parse(deleted.stdout).findings.map((x: { kind: string }) => x.kind), deleted.stdout).toContain('deleted-code');

    const fresh = await startTarget(f.alpha, ['1'], { env: { ...process.env, LD_LIBRARY_PATH: f.app } });
    try {
      expect(await value(fresh)).toBe(12);
      expect(listPatches(fresh.pid).record).toBeNull();
      const again = await cli(['apply', f.signedPkg, '--all', '--trust', f.pub, '--json']);
      expect(again.code).toBe(0);
      expect(byPid(JSON.parse(again.stdout).results, fresh.pid)).toMatchObject({ status: 'skipped', code: 'RUNS_FIXED_BUILD', reason: expect.stringMatching(/runs the fixed build/) });
      const pid = await cli(['apply', f.signedPkg, '--pid', String(fresh.pid), '--trust', f.pub, '--json']);
      expect(pid.code).toBe(0);
      expect(JSON.parse(pid.stdout).results[0]).toMatchObject({ status: 'skipped', code: 'RUNS_FIXED_BUILD' });
      expect(listPatches(fresh.pid).record).toBeNull();
    } finally {
      await fresh.kill();
    }
    // A second --cold is a no-op on disk; --file of a file holding another build is refused.
    const twice = await cli(['apply', f.signedPkg, '--cold', '--file', f.lib, '--trust', f.pub, '--json']);
    expect(twice.code).toBe(0);
    expect(JSON.parse(twice.stdout).cold[0].status).toBe('already-installed');
    const wrong = await cli(['apply', f.signedPkg, '--cold', '--file', f.otherLib, '--trust', f.pub, '--json']);
    expect(wrong.code).toBe(3);
    expect(JSON.parse(wrong.stdout).error.code).toBe('COLD_WRONG_FILE');
  });

  it('remove --all --cold restores the processes and the original file', async () => {
    const r = await cli(['remove', f.patchId, '--all', '--cold', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    for (const t of patched()) expect(byPid(doc.results, t.pid).status).toBe('removed');
    expect(doc.cold).toEqual([expect.objectContaining({ path: f.lib, status: 'restored' })]);
    expect(parseElf(new Uint8Array(readFileSync(f.lib))).buildId).toBe(f.oldBuildId);
    expect(statSync(f.lib).mode & 0o7777).toBe(0o751);
    expect(existsSync(join(f.app, `.libfix.so.hotpatch-${f.patchId}.orig`))).toBe(false);
    expect(existsSync(join(f.app, `.libfix.so.hotpatch-${f.patchId}.json`))).toBe(false);
    for (const t of [...patched(), other]) expect(await settledTextHash(t.pid)).toBe(baseline.get(t.pid));
    const fresh = await startTarget(f.alpha, ['1'], { env: { ...process.env, LD_LIBRARY_PATH: f.app } });
    try {
      expect(await value(fresh)).toBe(11);
    } finally {
      await fresh.kill();
    }
  });
});

describe('hotpatch recover', () => {
  it('repairs a target after the patcher was killed mid-apply (site already switched)', async () => {
    const t = alphas[0]!;
    const killed = await cli(['apply', f.signedPkg, '--pid', String(t.pid), '--trust', f.pub], { HOTPATCH_FAULT: 'apply:sites-written' });
    expect(killed.signal).toBe('SIGKILL');
    expect(listPatches(t.pid).patches.find((p) => p.id === f.patchId)?.state).toBe('pending');
    // Another command refuses to work on the half-done record and says what to do.
    const blocked = await cli(['apply', f.signedPkg, '--pid', String(t.pid), '--trust', f.pub, '--json']);
    expect(blocked.code).toBe(1);
    expect(JSON.parse(blocked.stdout).results[0]).toMatchObject({ status: 'failed', code: 'RECORD_INCOMPLETE', reason: expect.stringMatching(/hotpatch recover --pid/) });
    const rec = await cli(['recover', '--all', '--json']);
    expect(rec.code).toBe(0);
    const results = ours(JSON.parse(rec.stdout).results);
    expect(byPid(results, t.pid)).toMatchObject({ status: 'removed', action: 'undone', patchId: f.patchId });
    for (const x of results.filter((y) => y.pid !== t.pid)) expect(x).toMatchObject({ status: 'skipped', code: 'NOTHING_TO_RECOVER' });
    expect(textHash(t.pid)).toBe(baseline.get(t.pid));
    expect(await value(t)).toBe(11);
    expect(listPatches(t.pid).transaction).toBeNull();
    // The dead patcher's lock did not stay behind: the next apply works.
    const ok = await cli(['apply', f.signedPkg, '--pid', String(t.pid), '--trust', f.pub, '--json']);
    expect(ok.code).toBe(0);
    expect(await value(t)).toBe(12);
    expect((await cli(['remove', f.patchId, '--pid', String(t.pid)])).code).toBe(0);
    expect(await settledTextHash(t.pid)).toBe(baseline.get(t.pid));
  });
});

describe('one hotpatch command per process at a time', () => {
  /** A process that takes the engine's lock on `pid` and holds it until killed. */
  async function holder(pid: number): Promise<Target> {
    const script = join(f.dir, 'hold-lock.mjs');
    writeFileSync(
      script,
      `import { lockProcess } from ${JSON.stringify(join(REPO_ROOT, 'dist/src/patch/engine/lock.js'))};\n` +
        `import { readProcStat } from ${JSON.stringify(join(REPO_ROOT, 'dist/src/process/index.js'))};\n` +
        `const pid = Number(process.argv[2]);\nlockProcess(pid, readProcStat(pid).startTime);\nconsole.log('locked');\nsetInterval(() => {}, 1000);\n`,
    );
    return startTarget(process.execPath, [script, String(pid)], { readyText: 'locked' });
  }

  it('a second command fails clearly after --lock-wait while the lock is held, and proceeds once a SIGKILLed holder is gone', async () => {
    const t = alphas[1]!;
    const h = await holder(t.pid);
    const blocked = await cli(['apply', f.signedPkg, '--pid', String(t.pid), '--trust', f.pub, '--lock-wait', '0.3', '--json']);
    expect(blocked.code).toBe(1);
    expect(JSON.parse(blocked.stdout).results[0]).toMatchObject({
      status: 'failed', code: 'PROCESS_LOCKED', reason: expect.stringMatching(new RegExp(`another hotpatch process \\(pid ${h.pid}\\).*--lock-wait`)),
    });
    expect(await value(t)).toBe(11);
    // A waiting command goes ahead as soon as the holder is killed (its lock file stays behind, stale).
    const waiting = spawnCli(['apply', f.signedPkg, '--pid', String(t.pid), '--trust', f.pub, '--lock-wait', '60', '--json']);
    await waiting.stderrMatches(/waiting: another hotpatch process/);
    expect(await value(t)).toBe(11);
    await h.kill();
    const done = await waiting.done;
    expect(done.code).toBe(0);
    expect(JSON.parse(done.stdout).results[0].status).toBe('patched');
    expect(await value(t)).toBe(12);
  });

  it('two commands started together on one process do not interleave', async () => {
    const t = alphas[1]!;
    const [a, b] = await Promise.all([
      cli(['remove', f.patchId, '--pid', String(t.pid), '--lock-wait', '60', '--json']),
      cli(['remove', f.patchId, '--pid', String(t.pid), '--lock-wait', '60', '--json']),
    ]);
    const statuses = [JSON.parse(a.stdout).results[0], JSON.parse(b.stdout).results[0]].map((r: Result) => `${r.status}:${r.code ?? ''}`).sort();
    expect(statuses).toEqual(['failed:PATCH_NOT_APPLIED', 'removed:']);
    expect(await settledTextHash(t.pid)).toBe(baseline.get(t.pid));
    expect(await value(t)).toBe(11);
  });
});

describe('CLI conventions', () => {
  it('usage errors exit 2; --help shows examples; another build named with --pid is refused', async () => {
    expect((await cli(['apply', f.signedPkg, '--trust', f.pub])).code).toBe(2);
    expect((await cli(['apply', f.signedPkg, '--pid', '1', '--all', '--trust', f.pub])).code).toBe(2);
    expect((await cli(['apply', f.signedPkg, '--pid', 'x'])).code).toBe(2);
    expect((await cli(['apply', f.signedPkg, '--all', '--file', f.lib, '--trust', f.pub])).code).toBe(2);
    expect((await cli(['remove', 'nothex', '--all'])).code).toBe(2);
    expect((await cli(['recover'])).code).toBe(2);
    for (const c of ['apply', 'remove', 'recover', 'list']) {
      const h = await cli([c, '--help']);
      expect(h.code).toBe(0);
      expect(h.stdout).toMatch(/Examples:\n {2}hotpatch /);
    }
    // A process of another build named with --pid is refused (exit 3), not skipped.
    const none = await cli(['apply', f.signedPkg, '--pid', String(other.pid), '--trust', f.pub, '--json']);
    expect(none.code).toBe(3);
    expect(JSON.parse(none.stdout).results[0]).toMatchObject({ status: 'refused', code: 'BUILD_ID_MISMATCH' });
  });

  it('cold only (--cold --file, no process): dry run, install, roll back by file', async () => {
    const d = copyLib(f, 'cold-only');
    const p = join(d, 'libfix.so');
    const dry = await cli(['apply', f.signedPkg, '--cold', '--file', p, '--trust', f.pub, '--dry-run', '--json']);
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({ results: [], cold: [{ path: p, status: 'would-install' }] });
    expect(parseElf(new Uint8Array(readFileSync(p))).buildId).toBe(f.oldBuildId);
    const inst = await cli(['apply', f.signedPkg, '--cold', '--file', p, '--trust', f.pub]);
    expect(inst.code).toBe(0);
    expect(inst.stdout).toMatch(/installed.*hotpatch remove [0-9a-f]{16} --cold --file/);
    expect(parseElf(new Uint8Array(readFileSync(p))).buildId).toBe(f.fixedBuildId);
    const noFile = await cli(['remove', f.patchId, '--cold', '--json']);
    expect(noFile.code).toBe(1);
    expect(JSON.parse(noFile.stdout).error.code).toBe('COLD_NOT_FOUND');
    const back = await cli(['remove', f.patchId, '--cold', '--file', p, '--json']);
    expect(back.code).toBe(0);
    expect(JSON.parse(back.stdout).cold).toEqual([expect.objectContaining({ path: p, status: 'restored' })]);
    expect(parseElf(new Uint8Array(readFileSync(p))).buildId).toBe(f.oldBuildId);
  });
});
