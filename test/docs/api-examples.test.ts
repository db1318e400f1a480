/**
 * The examples of docs/api.md, run as written against a real process: compile the old and fixed
 * builds of test/fixtures/docs/shop.c, start the old one, and go through the documented steps
 * with the library entry point (src/index.ts, the package's "hotpatch" export). Each step's code is
 * the doc's code; the asserts are added here. The target answers "price <price(3)>" per stdin line:
 * 30 with the running build, 36 with the fix.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  writeDebugSymbols,
  applyPackageFile,
  applyPatch,
  buildPatch,
  buildPatchAsync,
  BuildRefusedError,
  createPackage,
  encodePackage,
  listPatches,
  listPatchedProcesses,
  loadTrustedKeys,
  readPackageFile,
  readPrivateKeyFile,
  recoverProcesses,
  RefusedError,
  removeFromProcesses,
  removePatch,
  scanFile,
  signPackage,
  verifyPackageSignature,
  verifyProcess,
  writeFileAtomic,
  writeKeyFiles,
  type BuildResult,
  type PatchPackage,
} from '../../src/index.js';
import { compile, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';

killTargetsAfterAll();

/** The flags of docs/user-guide.md §1. */
const FLAGS = ['-O2', '-g', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];

/** Sends a line and returns the price the target prints for it. */
async function priceNow(t: Target): Promise<number> {
  const before = t.output().length;
  t.child.stdin!.write('\n');
  const deadline = Date.now() + 5000;
  for (;;) {
    const m = /price (\d+)\n/.exec(t.output().slice(before));
    if (m) return Number(m[1]);
    if (Date.now() > deadline) throw new Error(`no price line from ${t.pid}; output: ${t.output()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Lines of the doc's ```ts blocks (imports and illustrations aside), without declaration keywords. */
export function docExampleLines(markdown: string): string[] {
  const out: string[] = [];
  const re = /(<!-- illustration[^>]*-->\n)?```ts\n([\s\S]*?)```/g;
  for (let m = re.exec(markdown); m; m = re.exec(markdown)) {
    if (m[1]) continue;
    for (const raw of m[2]!.split('\n')) {
      const line = normalise(raw);
      if (line === '' || /^(import |\} from |\}$)/.test(line)) continue;
      out.push(line);
    }
  }
  return out;
}

function normalise(line: string): string {
  return line.trim().replace(/^(const|let) /, '').replace(/;$/, '');
}

describe('docs/api.md and this test hold the same code', () => {
  it('every line of the documented examples appears in this test', () => {
    const doc = readFileSync(join(REPO_ROOT, 'docs/api.md'), 'utf8');
    const mine = readFileSync(new URL(import.meta.url), 'utf8').split('\n').map(normalise).join('\n');
    const lines = docExampleLines(doc);
    expect(lines.length).toBeGreaterThan(30);
    expect(lines.filter((l) => !mine.includes(l))).toEqual([]);
    expect(mine.includes(['no', 'where = in', 'The', 'Doc()'].join(''))).toBe(false); // the check can fail
  });
});

describe('docs/api.md examples, on a running process', () => {
  let dir = '';
  let oldPath = '';
  let newPath = '';
  let target: Target;
  let pid = 0;
  // Shared between the steps, as in the doc.
  let keyFile = '';
  let publicKeyFile = '';
  let built: BuildResult;
  let pkg: PatchPackage;
  let pkgPath = '';

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hotpatch-docs-'));
    [oldPath, newPath] = await Promise.all([
      compile({ file: 'docs/shop.c', flags: FLAGS, name: 'shop' }),
      compile({ file: 'docs/shop.c', flags: [...FLAGS, '-DFIXED'], name: 'shop' }),
    ]);
    target = await startTarget(oldPath);
    pid = target.pid;
    pkgPath = join(dir, 'fix.hpk');
  }, 120_000);

  afterAll(async () => {
    await target?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('scan: the build is hotpatch-ready', () => {
    // --- docs/api.md: scan
    const scan = scanFile(oldPath);
    for (const m of scan.modules) console.log(`${m.path}: ${m.hotpatchable}/${m.total} hotpatchable, ${m.padded} padded`);
    const price = scan.modules[0]!.functions.find((f) => f.name === 'price');
    console.log(price?.entry, price?.form); // "padded" "patchable-function-entry"
    // ---
    expect(price?.entry).toBe('padded');
    expect(price?.form).toBe('patchable-function-entry');
  });

  it('keys, build, package, sign', async () => {
    expect(await priceNow(target)).toBe(30);
    // --- docs/api.md: keys
    ({ keyFile, publicKeyFile } = writeKeyFiles(join(dir, 'release.key'), { comment: 'Release team' }));
    // --- docs/api.md: build
    try {
      built = buildPatch(readFileSync(oldPath), readFileSync(newPath), { oldName: basename(oldPath), newName: basename(newPath) });
    } catch (e) {
      if (e instanceof BuildRefusedError) for (const r of e.refusals) console.error(`${r.code} ${r.symbol}: ${r.message}`);
      throw e;
    }
    for (const f of built.report.changed) console.log(`${f.name}: ${f.reason}, entry ${f.entry}`);
    for (const w of built.report.warnings) console.warn(`warning: ${w}`);
    // --- docs/api.md: build in a worker thread, abortable (the same plan)
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 30_000);
    const builtSync = built;
    built = await buildPatchAsync(readFileSync(oldPath), readFileSync(newPath), { signal: ac.signal });
    expect(built.plan.functions).toEqual(builtSync.plan.functions);
    // --- docs/api.md: package and sign
    pkg = signPackage(createPackage(built.plan, { description: 'price: 12 per item' }), readPrivateKeyFile(keyFile));
    writeFileAtomic(pkgPath, encodePackage(pkg));
    console.log(`patch ${pkg.id} for ${pkg.plan.target.name} (build-id ${pkg.plan.target.buildId})`);
    // ---
    expect(built.report.changed.map((f) => f.name)).toEqual(['price']);
    expect(built.report.changed[0]!.entry).toBe('padded');
    expect(built.report.warnings).toEqual([]);
    expect(pkg.id).toMatch(/^[0-9a-f]{16}$/);
    expect(pkg.signature?.signer).toBe('Release team');
  });

  it('inspect: read the package back and check its signer', () => {
    // --- docs/api.md: inspect
    const { pkg: read } = readPackageFile(pkgPath);
    const verdict = verifyPackageSignature(read, loadTrustedKeys({ trustFiles: [publicKeyFile] }));
    console.log(read.id, read.plan.functions.map((f) => f.name), verdict.status, verdict.signer?.name);
    // ---
    expect(read.id).toBe(pkg.id);
    expect(verdict.status).toBe('trusted');
    expect(verdict.signer?.name).toBe('Release team');
    // An untrusted reader sees the signature, not trust.
    expect(verifyPackageSignature(read, []).status).toBe('untrusted-signer');
  });

  it('apply: dry run, then live; the running process computes the fixed price', async () => {
    // --- docs/api.md: dry run
    const dry = await applyPackageFile(pkgPath, { pids: [pid], trustFiles: [publicKeyFile], dryRun: true });
    console.log(dry.results[0]?.status, dry.results[0]?.code); // "skipped" "DRY_RUN"
    // ---
    expect(dry.outcome).toBe('ok');
    expect(dry.results[0]).toMatchObject({ pid, status: 'skipped', code: 'DRY_RUN' });
    expect(await priceNow(target)).toBe(30);

    // --- docs/api.md: apply
    const applied = await applyPackageFile(pkgPath, { pids: [pid], trustFiles: [publicKeyFile], timeoutMs: 5000 });
    for (const r of applied.results) console.log(`pid ${r.pid}: ${r.status}, pause ${r.pauseMicros} µs${r.reason ? `: ${r.reason}` : ''}`);
    if (applied.outcome !== 'ok') throw new Error(`apply: ${applied.outcome}`);
    // ---
    expect(applied.results).toHaveLength(1);
    expect(applied.results[0]).toMatchObject({ pid, status: 'patched', patchId: pkg.id, functions: ['price'] });
    expect(applied.results[0]).toMatchObject({ protocol: 'live', pauseMicros: 0 });
    expect(await priceNow(target)).toBe(36);
    expect(applied.package.signature).toBe('trusted');
  });

  it('list and verify while patched', async () => {
    // --- docs/api.md: list
    for (const p of listPatchedProcesses([pid])) {
      for (const x of p.patches) console.log(`${p.pid} ${x.id} ${x.state} ${x.functions.join(',')} signer: ${x.signer ?? '(unsigned)'}`);
    }
    // --- docs/api.md: symbols
    const r = writeDebugSymbols(pid, { perf: true, gdb: dir }); // dir: e.g. /run/hotpatch/debug
    console.log(r.perf?.path, r.gdb?.path, r.gdb?.command.join(' '));
    // ---
    expect(r.functions).toBe(1);
    rmSync(r.perf!.path);
    // --- docs/api.md: verify
    const v = await verifyProcess(pid, { trustFiles: [publicKeyFile] });
    for (const f of v.findings) console.log(`[${f.code} ${f.structure}] ${f.severity} ${f.detail}`);
    console.log(`${v.bytes} bytes compared, ${v.findings.length} finding(s)`);
    // ---
    const listed = listPatchedProcesses([pid]);
    expect(listed).toHaveLength(1);
    expect(listed[0]!.patches).toEqual([expect.objectContaining({ id: pkg.id, state: 'applied', functions: ['price'], signer: `Release team (${pkg.signature!.keyId})` })]);
    expect(v.checked).toBe(true);
    expect(v.bytes).toBeGreaterThan(0);
    expect(v.findings).toEqual([]);
  });

  it('refused: an unsigned package is refused, nothing changes', async () => {
    // --- docs/api.md: refusals
    const unsignedPath = join(dir, 'unsigned.hpk');
    writeFileAtomic(unsignedPath, encodePackage(createPackage(built.plan)));
    try {
      await applyPackageFile(unsignedPath, { pids: [pid], trustFiles: [publicKeyFile] });
    } catch (e) {
      if (!(e instanceof RefusedError)) throw e;
      console.log(`refused: ${e.code}: ${e.message}`); // PACKAGE_UNSIGNED
    }
    // ---
    await expect(applyPackageFile(unsignedPath, { pids: [pid], trustFiles: [publicKeyFile] })).rejects.toMatchObject({ code: 'PACKAGE_UNSIGNED' });
    await expect(applyPackageFile(unsignedPath, { pids: [pid], trustFiles: [publicKeyFile] })).rejects.toBeInstanceOf(RefusedError);
    expect(listPatchedProcesses([pid])[0]!.patches.filter((x) => x.state === 'applied').map((x) => x.id)).toEqual([pkg.id]);
    expect(await priceNow(target)).toBe(36);
  });

  it('remove and recover: the original code is back', async () => {
    // --- docs/api.md: remove
    const removed = await removeFromProcesses(pkg.id, { pids: [pid] });
    for (const r of removed.results) console.log(`pid ${r.pid}: ${r.status}, pause ${r.pauseMicros} µs`);
    // --- docs/api.md: recover
    const recovered = await recoverProcesses({ pids: [pid] });
    console.log(recovered.results[0]?.status, recovered.results[0]?.code); // "skipped" "NOTHING_TO_RECOVER"
    // ---
    expect(removed.outcome).toBe('ok');
    expect(removed.results[0]).toMatchObject({ pid, status: 'removed', patchId: pkg.id });
    expect(await priceNow(target)).toBe(30);
    expect(recovered.results[0]).toMatchObject({ pid, status: 'skipped', code: 'NOTHING_TO_RECOVER' });
    expect(listPatchedProcesses([pid]).flatMap((p) => p.patches).filter((x) => x.state === 'applied')).toEqual([]);
  });

  it('engine level: apply a bare plan and remove it (no package, no signature policy)', async () => {
    // --- docs/api.md: engine
    const r = await applyPatch(pid, built.plan, { patchId: pkg.id, timeoutMs: 2000 });
    console.log(r.status, r.functions.map((f) => `${f.name} -> 0x${f.newCode.toString(16)}`), `pause ${r.pauseMicros} µs`);
    console.log(listPatches(pid).patches.map((p) => `${p.id} ${p.state}`));
    expect(await priceNow(target)).toBe(36); // (test only)
    expect(listPatches(pid).patches.filter((p) => p.state === 'applied').map((p) => p.id)).toEqual([pkg.id]); // (test only)
    const back = await removePatch(pid, pkg.id);
    console.log(back.status, `code freed: ${back.codeFreed}`);
    // ---
    expect(r.status).toBe('patched');
    expect(r.functions.map((f) => f.name)).toEqual(['price']);
    expect(back.status).toBe('removed');
    expect(await priceNow(target)).toBe(30);
  });
});
