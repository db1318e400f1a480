/**
 * Cold patching on real ELF files: atomic install only over the target build, original kept (same
 * inode), mode and owner preserved, idempotent, rollback from the state file or the package,
 * refusals that change nothing, leftovers of an interrupted install.
 */
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { createPackage, makeColdPayload, type PatchPackage } from '../../src/patch/package/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { checkColdFile, coldBackupPath, coldStatePath, installCold, readColdState, removeCold } from '../../src/patch/updater/index.js';
import { FIXTURES } from '../helpers/native.js';

const run = promisify(execFile);
const FLAGS = ['-O2', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs', '-shared', '-fPIC'];
let dir: string;
let oldBytes: Uint8Array;
let otherBytes: Uint8Array;
let pkg: PatchPackage;
let fixedId: string;
let n = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-cold-'));
  const src = join(FIXTURES, 'updater/libfix.c');
  await Promise.all([
    run('gcc', [...FLAGS, '-o', join(dir, 'old.so'), src]),
    run('gcc', [...FLAGS, '-DLIBFIX_FIXED', '-o', join(dir, 'fixed.so'), src]),
    run('gcc', [...FLAGS, '-DLIBFIX_OTHER', '-o', join(dir, 'other.so'), src]),
  ]);
  oldBytes = new Uint8Array(readFileSync(join(dir, 'old.so')));
  otherBytes = new Uint8Array(readFileSync(join(dir, 'other.so')));
  const fixed = new Uint8Array(readFileSync(join(dir, 'fixed.so')));
  fixedId = parseElf(fixed).buildId!;
  pkg = createPackage(buildPatch(oldBytes, fixed, { oldName: 'libfix.so' }).plan, { cold: makeColdPayload(fixed, { buildId: fixedId, mode: 0o755 }) });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fresh directory holding libfix.so = `bytes`. */
function installed(bytes: Uint8Array, mode = 0o755): string {
  const d = join(dir, `case${n++}`);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d);
  const p = join(d, 'libfix.so');
  writeFileSync(p, bytes);
  chmodSync(p, mode);
  return p;
}

const idOf = (p: string) => parseElf(new Uint8Array(readFileSync(p))).buildId;

describe('installCold / removeCold', () => {
  it('installs atomically over the target build, keeps the original inode, preserves mode and owner; rolls back', () => {
    const p = installed(oldBytes, 0o4751);
    chownSync(p, 1234, 2345);
    chmodSync(p, 0o4751); // chown clears set-id bits
    const before = statSync(p);
    const r = installCold(p, pkg);
    expect(r).toMatchObject({ path: p, status: 'installed', backupPath: coldBackupPath(p, pkg.id), statePath: coldStatePath(p, pkg.id) });
    const after = statSync(p);
    expect(idOf(p)).toBe(fixedId);
    expect(after.mode & 0o7777).toBe(0o4751);
    expect([after.uid, after.gid]).toEqual([1234, 2345]);
    expect(statSync(r.backupPath).ino).toBe(before.ino);
    expect(readColdState(p, pkg.id)).toMatchObject({ patchId: pkg.id, targetBuildId: pkg.plan.target.buildId, fixedBuildId: fixedId });
    expect(readdirSync(join(p, '..')).filter((x) => x.includes('tmp'))).toEqual([]);
    expect(installCold(p, pkg).status).toBe('already-installed');

    expect(removeCold(p, pkg.id, { dryRun: true }).status).toBe('would-restore');
    expect(idOf(p)).toBe(fixedId);
    const back = removeCold(p, pkg.id);
    expect(back.status).toBe('restored');
    expect(statSync(p).ino).toBe(before.ino);
    expect(Buffer.compare(readFileSync(p), Buffer.from(oldBytes))).toBe(0);
    expect(existsSync(back.backupPath) || existsSync(back.statePath)).toBe(false);
    expect(removeCold(p, pkg.id, { pkg }).status).toBe('not-installed');
  });

  it('refuses a file of another build and changes nothing; --dry-run writes nothing', () => {
    const p = installed(otherBytes);
    expect(() => installCold(p, pkg)).toThrow(expect.objectContaining({ code: 'COLD_WRONG_FILE' }));
    expect(() => checkColdFile(join(dir, 'nope.so'), pkg)).toThrow(expect.objectContaining({ code: 'COLD_WRONG_FILE' }));
    expect(readdirSync(join(p, '..'))).toEqual(['libfix.so']);
    const q = installed(oldBytes);
    expect(installCold(q, pkg, { dryRun: true }).status).toBe('would-install');
    expect(readdirSync(join(q, '..'))).toEqual(['libfix.so']);
    const { cold: _cold, ...noCold } = pkg;
    expect(() => installCold(q, noCold as PatchPackage)).toThrow(expect.objectContaining({ code: 'COLD_NO_PAYLOAD' }));
  });

  it('rollback refuses when the file was replaced since, and needs the state file or the package', () => {
    const p = installed(oldBytes);
    installCold(p, pkg);
    writeFileSync(p, otherBytes); // someone installed yet another build
    expect(() => removeCold(p, pkg.id)).toThrow(expect.objectContaining({ code: 'COLD_WRONG_FILE' }));
    expect(idOf(p)).toBe(parseElf(otherBytes).buildId);
    const q = installed(oldBytes);
    installCold(q, pkg);
    rmSync(coldStatePath(q, pkg.id));
    expect(() => removeCold(q, pkg.id)).toThrow(expect.objectContaining({ code: 'COLD_NOT_FOUND' }));
    expect(removeCold(q, pkg.id, { pkg }).status).toBe('restored');
    const r = installed(oldBytes);
    installCold(r, pkg);
    rmSync(coldBackupPath(r, pkg.id));
    expect(() => removeCold(r, pkg.id)).toThrow(expect.objectContaining({ code: 'COLD_BACKUP_MISSING' }));
    expect(idOf(r)).toBe(fixedId);
  });

  it('an install interrupted after the backup was made is completed by the next install', () => {
    const p = installed(oldBytes);
    linkSync(p, coldBackupPath(p, pkg.id)); // crash right after step 1
    expect(installCold(p, pkg).status).toBe('installed');
    expect(removeCold(p, pkg.id).status).toBe('restored');
    expect(Buffer.compare(readFileSync(p), Buffer.from(oldBytes))).toBe(0);
  });
});
