/**
 * Files hotpatch writes as root are never written through a link another user planted: the guard
 * state directory and its files, the keygen output, package output, the JSON log, cold-install
 * backup / state / temporary files. Each case plants the link or hard link, runs the write and
 * checks that the victim file is untouched and the error is PATH_UNSAFE / TRUST_UNSAFE.
 */
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, lchownSync, linkSync, lstatSync, readdirSync, readFileSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnsafePathError } from '../../src/errors.js';
import { parseElf } from '../../src/elf/index.js';
import { appendPrivateFile, writeFileAtomic } from '../../src/fs/index.js';
import { GuardState, type RestoreRecord } from '../../src/guard/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { createPackage, makeColdPayload, type PatchPackage } from '../../src/patch/package/index.js';
import { writeKeyFiles } from '../../src/patch/trust/index.js';
import { coldBackupPath, coldStatePath, installCold, readColdState, removeCold } from '../../src/patch/updater/index.js';
import { FIXTURES } from '../helpers/native.js';
import { asAttacker, ATTACKER_GID, ATTACKER_UID, baseDir, cleanup, dirWithMode, thrown } from './helpers.js';

const run = promisify(execFile);
const base = baseDir('hotpatch-fs-writes-');
afterAll(() => cleanup(base));

let n = 0;
/** A root-owned 0644 file with known content, outside the directories written to. */
function victim(): string {
  const d = dirWithMode(join(base, 'victims'), 0o755);
  const p = join(d, `victim${n++}`);
  writeFileSync(p, 'precious\n');
  chmodSync(p, 0o644);
  return p;
}
const untouched = (p: string) => expect(readFileSync(p, 'utf8')).toBe('precious\n');
const unsafeError = (fn: () => unknown, code: 'PATH_UNSAFE' | 'TRUST_UNSAFE') => {
  const e = thrown(fn);
  expect(e, e.message).toBeInstanceOf(UnsafePathError);
  expect(e.code).toBe(code);
  return e;
};

const restore: RestoreRecord = { time: '2024-01-01T00:00:00Z', pid: 1, code: 0, module: null, address: '0x0', bytes: '90', previous: 'cc' };
const identity = { buildId: null, sha256: '00', size: 1 };

describe('guard state', () => {
  it('clean case: a missing state directory is created 0700 with 0600 files, and read back', () => {
    const dir = join(base, 'state-clean', 'guard');
    const s = new GuardState(dir, true);
    s.firstSeenIdentity('/bin/x', identity);
    s.save();
    s.recordRestore(restore);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(['baselines.json', 'identities.json', 'restores.jsonl']);
    expect(new GuardState(dir, false).identities['/bin/x']).toMatchObject({ sha256: '00' });
  });

  it('a state directory that is a symbolic link planted by another user is refused (read and write)', () => {
    const sticky = dirWithMode(join(base, 'state-sticky'), 0o1777);
    const theirs = dirWithMode(join(base, 'state-target'), 0o700);
    const link = join(sticky, 'guard');
    asAttacker('ln', ['-s', theirs, link]);
    unsafeError(() => new GuardState(link, true), 'TRUST_UNSAFE');
    const s = new GuardState(null, true);
    expect(s.dir).toBeNull();
    expect(readdirSync(theirs)).toEqual([]);
  });

  it('a state directory others can write is refused when saving', () => {
    const dir = dirWithMode(join(base, 'state-ww'), 0o777);
    const s = new GuardState(dir, true);
    s.firstSeenIdentity('/bin/x', identity);
    expect(unsafeError(() => s.save(), 'TRUST_UNSAFE').message).toContain('chmod go-w');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a symbolic link at a state file is neither read nor written through', () => {
    const dir = dirWithMode(join(base, 'state-link'), 0o700);
    const v = victim();
    symlinkSync(v, join(dir, 'restores.jsonl'));
    lchownSync(join(dir, 'restores.jsonl'), ATTACKER_UID, ATTACKER_GID);
    const s = new GuardState(dir, true);
    expect(unsafeError(() => s.recordRestore(restore), 'PATH_UNSAFE').message).toContain('symbolic link');
    untouched(v);
    // A root-owned link at a state file is refused too: state files are never links.
    const forged = victim();
    writeFileSync(forged, JSON.stringify({ '/bin/x': { ...identity, firstSeen: 'forged' } }));
    symlinkSync(forged, join(dir, 'identities.json'));
    unsafeError(() => new GuardState(dir, false), 'TRUST_UNSAFE');
  });

  it('the temporary file of a save has an unpredictable name: a link at the old name is not followed', () => {
    const dir = dirWithMode(join(base, 'state-tmp'), 0o700);
    const v = victim();
    symlinkSync(v, join(dir, `identities.json.tmp${process.pid}`));
    const s = new GuardState(dir, true);
    s.firstSeenIdentity('/bin/x', identity);
    s.save();
    untouched(v);
    expect(lstatSync(join(dir, 'identities.json')).isFile()).toBe(true);
  });

  it('a hard link planted at a state file is refused (append and read)', () => {
    const dir = dirWithMode(join(base, 'state-hard'), 0o700);
    const v = victim();
    linkSync(v, join(dir, 'restores.jsonl'));
    const s = new GuardState(dir, true);
    expect(unsafeError(() => s.recordRestore(restore), 'PATH_UNSAFE').message).toContain('2 hard links');
    untouched(v);
    const w = victim();
    linkSync(w, join(dir, 'baselines.json'));
    unsafeError(() => new GuardState(dir, false), 'TRUST_UNSAFE');
  });
});

describe('keygen output', () => {
  it('clean case: KEYFILE 0600 and KEYFILE.pub 0644, owned by root', () => {
    const dir = dirWithMode(join(base, 'keys-clean'), 0o700);
    const { keyFile, publicKeyFile } = writeKeyFiles(join(dir, 'k'));
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(statSync(publicKeyFile).mode & 0o777).toBe(0o644);
    expect(statSync(keyFile).uid).toBe(0);
  });

  it('a link planted by another user in a sticky directory: refused, with and without --force', () => {
    const sticky = dirWithMode(join(base, 'keys-sticky'), 0o1777);
    const target = join(base, 'victims', 'new-file');
    asAttacker('ln', ['-s', target, join(sticky, 'k.pub')]);
    for (const force of [false, true]) {
      unsafeError(() => writeKeyFiles(join(sticky, 'k'), { force }), 'PATH_UNSAFE');
      expect(existsSync(target)).toBe(false);
      expect(existsSync(join(sticky, 'k'))).toBe(false);
    }
  });

  it('a directory owned by another user is refused; --force over a link replaces nothing through it', () => {
    const theirs = dirWithMode(join(base, 'keys-theirs'), 0o755);
    giveToAttacker(theirs);
    unsafeError(() => writeKeyFiles(join(theirs, 'k')), 'PATH_UNSAFE');
    const dir = dirWithMode(join(base, 'keys-force'), 0o700);
    const v = victim();
    symlinkSync(v, join(dir, 'k'));
    unsafeError(() => writeKeyFiles(join(dir, 'k'), { force: true }), 'PATH_UNSAFE');
    untouched(v);
  });
});

/** The directory now belongs to the attacker, who could swap its entries at any time. */
function giveToAttacker(p: string): void {
  lchownSync(p, ATTACKER_UID, ATTACKER_GID);
}

describe('package output and logs', () => {
  it('writeFileAtomic (build -o, sign) refuses a planted link and another user\'s file in a sticky directory', () => {
    const sticky = dirWithMode(join(base, 'out-sticky'), 0o1777);
    const v = victim();
    asAttacker('ln', ['-s', v, join(sticky, 'fix.hpk')]);
    unsafeError(() => writeFileAtomic(join(sticky, 'fix.hpk'), new Uint8Array([1, 2, 3])), 'PATH_UNSAFE');
    untouched(v);
    asAttacker('touch', [join(sticky, 'theirs.hpk')]);
    unsafeError(() => writeFileAtomic(join(sticky, 'theirs.hpk'), new Uint8Array([1])), 'PATH_UNSAFE');
    writeFileAtomic(join(sticky, 'mine.hpk'), new Uint8Array([7]));
    expect(statSync(join(sticky, 'mine.hpk'))).toMatchObject({ uid: 0, size: 1 });
  });

  it('appendPrivateFile (guard --json-log) refuses a link, a hard link and another user\'s file', () => {
    const sticky = dirWithMode(join(base, 'log-sticky'), 0o1777);
    const v = victim();
    asAttacker('ln', ['-s', v, join(sticky, 'a.jsonl')]);
    unsafeError(() => appendPrivateFile(join(sticky, 'a.jsonl'), 'x\n'), 'PATH_UNSAFE');
    const dir = dirWithMode(join(base, 'log-dir'), 0o755);
    linkSync(v, join(dir, 'b.jsonl'));
    unsafeError(() => appendPrivateFile(join(dir, 'b.jsonl'), 'x\n'), 'PATH_UNSAFE');
    asAttacker('touch', [join(sticky, 'c.jsonl')]);
    unsafeError(() => appendPrivateFile(join(sticky, 'c.jsonl'), 'x\n'), 'PATH_UNSAFE');
    untouched(v);
    appendPrivateFile(join(dir, 'ok.jsonl'), 'x\n');
    appendPrivateFile(join(dir, 'ok.jsonl'), 'y\n');
    expect(readFileSync(join(dir, 'ok.jsonl'), 'utf8')).toBe('x\ny\n');
  });
});

describe('cold install paths', () => {
  const FLAGS = ['-O2', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs', '-shared', '-fPIC'];
  let oldBytes: Uint8Array;
  let pkg: PatchPackage;
  beforeAll(async () => {
    const build = dirWithMode(join(base, 'cold-build'), 0o755);
    const src = join(FIXTURES, 'updater/libfix.c');
    await Promise.all([run('gcc', [...FLAGS, '-o', join(build, 'old.so'), src]), run('gcc', [...FLAGS, '-DLIBFIX_FIXED', '-o', join(build, 'fixed.so'), src])]);
    oldBytes = new Uint8Array(readFileSync(join(build, 'old.so')));
    const fixed = new Uint8Array(readFileSync(join(build, 'fixed.so')));
    pkg = createPackage(buildPatch(oldBytes, fixed, { oldName: 'libfix.so' }).plan, { cold: makeColdPayload(fixed, { buildId: parseElf(fixed).buildId!, mode: 0o755 }) });
  });

  function installed(dir: string): string {
    const p = join(dir, 'libfix.so');
    writeFileSync(p, oldBytes);
    chmodSync(p, 0o755);
    return p;
  }

  it('a link planted at the backup path by another user is replaced, never followed', () => {
    const sticky = dirWithMode(join(base, 'cold-sticky'), 0o1777);
    const p = installed(sticky);
    const ino = statSync(p).ino;
    const target = join(base, 'victims', 'cold-new');
    asAttacker('ln', ['-s', target, coldBackupPath(p, pkg.id)]);
    expect(installCold(p, pkg).status).toBe('installed');
    expect(existsSync(target)).toBe(false);
    expect(lstatSync(coldBackupPath(p, pkg.id))).toMatchObject({ ino });
    expect(removeCold(p, pkg.id).status).toBe('restored');
    expect(statSync(p).ino).toBe(ino);
  });

  it('a symbolic link at the state file is not read; a link at the backup is not restored', () => {
    const dir = dirWithMode(join(base, 'cold-state'), 0o755);
    const p = installed(dir);
    installCold(p, pkg);
    const forged = victim();
    writeFileSync(forged, readFileSync(coldStatePath(p, pkg.id)));
    const state = coldStatePath(p, pkg.id);
    symlinkRename(forged, state);
    unsafeError(() => readColdState(p, pkg.id), 'PATH_UNSAFE');
    unsafeError(() => removeCold(p, pkg.id), 'PATH_UNSAFE');
    const backup = coldBackupPath(p, pkg.id);
    const kept = join(dir, 'kept.so');
    linkSync(backup, kept);
    symlinkRename(kept, backup);
    unsafeError(() => removeCold(p, pkg.id, { pkg }), 'PATH_UNSAFE');
    expect(lstatSync(p).isFile()).toBe(true);
  });

  it('a target in a directory owned by another user, or given as a symbolic link, is refused; nothing changes', () => {
    const theirs = dirWithMode(join(base, 'cold-theirs'), 0o755);
    const p = installed(theirs);
    giveToAttacker(theirs);
    const before = readFileSync(p);
    unsafeError(() => installCold(p, pkg), 'PATH_UNSAFE');
    unsafeError(() => installCold(p, pkg, { dryRun: true }), 'PATH_UNSAFE');
    expect(Buffer.compare(readFileSync(p), before)).toBe(0);
    expect(readdirSync(theirs)).toEqual(['libfix.so']);
    const dir = dirWithMode(join(base, 'cold-link'), 0o755);
    const real = installed(dir);
    symlinkSync(real, join(dir, 'alias.so'));
    expect(unsafeError(() => installCold(join(dir, 'alias.so'), pkg), 'PATH_UNSAFE').message).toContain('realpath');
  });
});

/** Atomically replaces `at` with a symbolic link to `to` (rename replaces the name, not the file). */
function symlinkRename(to: string, at: string): void {
  const tmp = `${at}.link`;
  symlinkSync(to, tmp);
  renameSync(tmp, at);
}
