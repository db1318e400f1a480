/**
 * Forked children are first-class targets (issue #12.1): a child shares its parent's record
 * mapping (MAP_SHARED memfd) but has private code and arenas; apply, remove, list, recover and
 * verify work on each process of a tree independently, `--all` handles a tree where patches were
 * applied before and after forks, and the last remove leaves no arena or record behind (#12.5).
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { VerifierCaches } from '../../src/guard/index.js';
import { applyPatch, listPatches, recoverProcess, removePatch } from '../../src/patch/engine/index.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { applyPackageFile, removeFromProcesses } from '../../src/patch/updater/index.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { findingsOf, pokeMemory, summary } from '../guard/helpers.js';
import { handPlan, PADDED_FIX, RETURN_42 } from './helpers.js';

killTargetsAfterAll();

let exe: string;
const children: number[] = [];
const targets: Target[] = [];

beforeAll(async () => {
  exe = await compile({ file: 'engine/forker.c', flags: ['-O2'], name: 'engine-forker' });
});

afterEach(async () => {
  for (const t of targets.splice(0)) await t.kill();
  for (const c of children.splice(0)) {
    try {
      process.kill(c, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/** A fresh tree root (other tests' trees are gone: `--all` must find this tree only). */
async function started(): Promise<Target> {
  const t = await startTarget(exe);
  targets.push(t);
  return t;
}

async function fork(t: Target): Promise<number> {
  const before = t.output().length;
  t.child.stdin!.write('f\n');
  await t.waitFor({ test: (s: string) => /child=\d+/.test(s.slice(before)) } as unknown as RegExp);
  const pid = Number(/child=(\d+)/.exec(t.output().slice(before))![1]);
  children.push(pid);
  return pid;
}

/** padded_value(10) and other_value(10) as process `pid` of the tree computes them now. */
async function values(t: Target, pid: number): Promise<string> {
  const before = t.output().length;
  if (pid === t.pid) t.child.stdin!.write('v\n');
  else process.kill(pid, 'SIGUSR1');
  const re = new RegExp(`pid=${pid} (padded=-?\\d+ other=-?\\d+)\\n`);
  await t.waitFor({ test: (s: string) => re.test(s.slice(before)) } as unknown as RegExp);
  return re.exec(t.output().slice(before))![1]!;
}

const applied = (pid: number): string[] => listPatches(pid).patches.filter((p) => p.state === 'applied').map((p) => p.id);
const retired = (pid: number): string[] => listPatches(pid).patches.filter((p) => p.state === 'retired').map((p) => p.id);

/** Anonymous executable or record mappings of `pid` (what hotpatch maps), as /proc/PID/maps lines. */
function hotpatchMappings(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('hotpatch-record') || /^\S+ r-xp 00000000 00:00 0\s*$/.test(l));
}

const otherPlan = (): PatchPlan => handPlan(exe, [{ name: 'other_value', kind: 'padded', code: RETURN_42 }]);
const paddedPlan = (): PatchPlan => handPlan(exe, [{ name: 'padded_value', kind: 'padded', code: PADDED_FIX }]);

describe('fork', () => {
  it('patches, lists, recovers and unpatches a parent and children forked before and after independently', async () => {
    const t = await started();
    await applyPatch(t.pid, otherPlan(), { patchId: 'one' });
    const before = await fork(t); // has "one", not "fix"
    await applyPatch(t.pid, paddedPlan(), { patchId: 'fix' });
    const after = await fork(t); // has both

    // Each process reads its own view of the shared record, true to its code.
    expect(applied(t.pid)).toEqual(['one', 'fix']);
    expect(applied(before)).toEqual(['one']);
    expect(applied(after)).toEqual(['one', 'fix']);
    expect(listPatches(before).disagreements).toEqual([]);
    expect(await values(t, before)).toBe('padded=11 other=42');
    expect(await values(t, after)).toBe('padded=12 other=42');

    // A child forked while "fix" was applied removes it alone; its parent and sibling keep theirs.
    await removePatch(after, 'fix');
    expect(await values(t, after)).toBe('padded=11 other=42');
    expect(await values(t, t.pid)).toBe('padded=12 other=42');
    expect(applied(t.pid)).toEqual(['one', 'fix']);
    expect(applied(after)).toEqual(['one']);
    expect(applied(before)).toEqual(['one']);

    // The child forked before "fix" gets it on its own.
    await applyPatch(before, paddedPlan(), { patchId: 'fix' });
    expect(await values(t, before)).toBe('padded=12 other=42');
    expect(applied(before)).toEqual(['one', 'fix']);
    expect((await recoverProcess(before)).status).toBe('clean');
    expect((await recoverProcess(after)).status).toBe('clean');

    // The parent removes both: its children keep what they have.
    await removePatch(t.pid, 'fix');
    await removePatch(t.pid, 'one');
    expect(await values(t, t.pid)).toBe('padded=11 other=110');
    expect(applied(before)).toEqual(['one', 'fix']);
    expect(applied(after)).toEqual(['one']);
    expect(await values(t, before)).toBe('padded=12 other=42');
    expect(await values(t, after)).toBe('padded=11 other=42');
    // The last remove left the parent as it was: no arena, no record.
    expect(hotpatchMappings(t.pid)).toEqual([]);
    expect(listPatches(t.pid).record).toBeNull();

    for (const [pid, ids] of [[before, ['fix', 'one']], [after, ['one']]] as const) {
      for (const id of ids) await removePatch(pid, id);
      expect(await values(t, pid)).toBe('padded=11 other=110');
      expect(hotpatchMappings(pid)).toEqual([]);
    }
  });

  it('a parent that frees a patch first gives the children still running it their own record', async () => {
    const t = await started();
    await applyPatch(t.pid, paddedPlan(), { patchId: 'fix' });
    const child = await fork(t);
    await removePatch(t.pid, 'fix'); // frees the code and releases the parent's record
    expect(hotpatchMappings(t.pid)).toEqual([]);
    expect(applied(child)).toEqual(['fix']);
    expect(await values(t, child)).toBe('padded=12 other=110');
    expect(listPatches(child).record!.pid).toBe(child); // its own copy now
    await removePatch(child, 'fix');
    expect(await values(t, child)).toBe('padded=11 other=110');
    expect(hotpatchMappings(child)).toEqual([]);
  });

  it('apply --all and remove --all over a tree patched before and after forks; verify is clean for inherited patches and finds tampering', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'engine-fork-'));
    const key = writeKeyFiles(join(dir, 'ops.key'), { comment: 'ops' });
    const pkgOf = (name: string, plan: PatchPlan): { path: string; id: string } => {
      const pkg = signPackage(createPackage(plan), readFileSync(join(dir, 'ops.key'), 'utf8'));
      const path = join(dir, `${name}.hpk`);
      writeFileSync(path, encodePackage(pkg));
      return { path, id: pkg.id };
    };
    const one = pkgOf('one', otherPlan());
    const fix = pkgOf('fix', paddedPlan());
    const t = await started();
    const early = await fork(t); // forked before any patch: no record at all
    const r1 = await applyPackageFile(one.path, { all: true, trustFiles: [key.publicKeyFile] });
    expect(r1.results.map((r) => [r.pid, r.status]).sort()).toEqual([[t.pid, 'patched'], [early, 'patched']].sort());
    const mid = await fork(t); // inherits "one" from the parent
    const r2 = await applyPackageFile(fix.path, { all: true, trustFiles: [key.publicKeyFile] });
    expect(r2.results.map((r) => [r.pid, r.status]).sort()).toEqual([[t.pid, 'patched'], [early, 'patched'], [mid, 'patched']].sort());
    const late = await fork(t); // inherits both, and shares the parent's record

    const tree = [t.pid, early, mid, late];
    const caches = new VerifierCaches(); // the analysis of the files, shared by the processes of the tree
    for (const pid of tree) {
      expect(applied(pid), `process ${pid}`).toEqual([one.id, fix.id]);
      expect(await values(t, pid)).toBe('padded=12 other=42');
      const f = await findingsOf(pid, { caches, trustedKeys: [key.publicKeyFile] });
      expect(f, summary(f)).toEqual([]);
    }

    // Tampering with the inherited arena of the child is found in the child only.
    const code = listPatches(late).record!.patches.find((p) => p.id === fix.id)!.sites[0]!.newCode.start;
    pokeMemory(late, code, Uint8Array.of(0x8d, 0x47, 0x05, 0xc3)); // lea eax,[rdi+5]; ret
    expect(await values(t, late)).toBe('padded=15 other=42');
    const tampered = await findingsOf(late, { caches, trustedKeys: [key.publicKeyFile] });
    expect(tampered.some((x) => x.code === 10), summary(tampered)).toBe(true);
    expect(await findingsOf(t.pid, { caches, trustedKeys: [key.publicKeyFile] })).toEqual([]);
    pokeMemory(late, code, Uint8Array.from(PADDED_FIX));

    // remove --all takes both out of every process, those forked while patched included.
    for (const id of [fix.id, one.id]) {
      const r = await removeFromProcesses(id, { all: true });
      expect(r.results.map((x) => [x.pid, x.status]).sort(), JSON.stringify(r.results)).toEqual(tree.map((pid) => [pid, 'removed']).sort());
    }
    for (const pid of tree) {
      expect(await values(t, pid)).toBe('padded=11 other=110');
      expect(retired(pid)).toEqual([]);
      expect(hotpatchMappings(pid), `process ${pid}`).toEqual([]);
    }
  }, 300_000);
});
