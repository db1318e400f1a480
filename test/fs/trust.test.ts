/**
 * Trust material that another local user could change is refused (TRUST_UNSAFE), as sshd's
 * StrictModes refuses authorized_keys: key files, the trusted key directory, every directory above
 * them, links on the way, the guard policy and the keys it names. A root-owned 0644 key in
 * root-owned 0755 directories keeps working.
 */
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lchownSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { UnsafePathError } from '../../src/errors.js';
import { loadPolicy, loadVerifierTrust } from '../../src/guard/index.js';
import { generateKeyPair, loadTrustedKeySet } from '../../src/patch/trust/index.js';
import { REPO_ROOT } from '../helpers/native.js';
import { asAttacker, ATTACKER_GID, ATTACKER_UID, baseDir, cleanup, dirWithMode, thrown } from './helpers.js';

const run = promisify(execFile);
const base = baseDir('hotpatch-fs-trust-');
afterAll(() => cleanup(base));

/** A root-owned 0644 key `name`.pub in `dir` (created 0755 when missing); returns its path. */
function key(dir: string, name: string, comment = name): string {
  if (!existsSync(dir)) dirWithMode(dir, 0o755);
  const p = join(dir, `${name}.pub`);
  writeFileSync(p, generateKeyPair(comment).publicKeyText);
  chmodSync(p, 0o644);
  return p;
}

const ids = (files: string[]) => loadTrustedKeySet({ trustFiles: files }).keys.map((k) => k.comment);
const refusal = (fn: () => unknown) => {
  const e = thrown(fn);
  expect(e).toBeInstanceOf(UnsafePathError);
  expect(e.code).toBe('TRUST_UNSAFE');
  return e;
};

describe('trusted keys: owner and mode of the file and every directory up to /', () => {
  it('clean case: a root-owned 0644 key in root-owned 0755 directories loads (file, env, directory)', () => {
    const dir = join(base, 'clean', 'trusted.d');
    const pub = key(dir, 'ops');
    expect(ids([pub])).toEqual(['ops']);
    expect(loadTrustedKeySet({ env: { HOTPATCH_TRUSTED_KEYS: pub } }).keys).toHaveLength(1);
    expect(loadTrustedKeySet({ env: {}, trustDir: dir }).keys.map((k) => k.comment)).toEqual(['ops']);
  });

  it('a world-writable trusted key directory is refused (sticky or not), naming it and the fix', () => {
    const dir = join(base, 'ww', 'trusted.d');
    key(dir, 'ops');
    chmodSync(dir, 0o777);
    const e = refusal(() => loadTrustedKeySet({ env: {}, trustDir: dir }));
    expect(e.message).toContain(dir);
    expect(e.message).toContain('mode 0777');
    expect(e.message).toContain(`chmod go-w ${dir}`);
    chmodSync(dir, 0o1777); // sticky does not help: others could add a key of their own
    refusal(() => loadTrustedKeySet({ env: {}, trustDir: dir }));
  });

  it('a group-writable key file is refused', () => {
    const pub = key(join(base, 'gw'), 'ops');
    chmodSync(pub, 0o664);
    const e = refusal(() => ids([pub]));
    expect(e.path).toBe(pub);
    expect(e.message).toMatch(/writable by its group \(mode 0664\).*chmod go-w/);
  });

  it('a key file owned by another user is refused, even with mode 0644', () => {
    const pub = key(join(base, 'owner'), 'ops');
    chownSync(pub, ATTACKER_UID, ATTACKER_GID);
    const e = refusal(() => ids([pub]));
    expect(e.message).toContain(`owned by uid ${ATTACKER_UID}, not root`);
    expect(e.message).toContain(`chown root ${pub}`);
  });

  it('a directory above the key that others can write is refused (it names that directory)', () => {
    const open = dirWithMode(join(base, 'open'), 0o777);
    const pub = key(join(open, 'keys'), 'ops');
    const e = refusal(() => ids([pub]));
    expect(e.path).toBe(open);
    expect(e.message).toContain(`refusing trusted key ${pub} (via ${open})`);
    const other = dirWithMode(join(base, 'other-owner'), 0o755);
    const pub2 = key(join(other, 'keys'), 'ops');
    chownSync(other, ATTACKER_UID, ATTACKER_GID);
    expect(refusal(() => ids([pub2])).path).toBe(other);
  });

  it('sticky directories: a root-owned key (or 0700 subdirectory) in one is fine, another user\'s is not', () => {
    const sticky = dirWithMode(join(base, 'sticky'), 0o1777);
    expect(ids([key(sticky, 'direct')])).toEqual(['direct']);
    expect(ids([key(dirWithMode(join(sticky, 'priv'), 0o700), 'sub')])).toEqual(['sub']);
    asAttacker('sh', ['-c', `umask 022; cp ${join(sticky, 'direct.pub')} ${join(sticky, 'mine.pub')}`]);
    expect(refusal(() => ids([join(sticky, 'mine.pub')])).message).toContain(`owned by uid ${ATTACKER_UID}`);
  });

  it('a symbolic link planted by another user is not followed; a root-owned link in a safe directory is', () => {
    const good = key(join(base, 'link-target'), 'ops');
    const sticky = dirWithMode(join(base, 'sticky-links'), 0o1777);
    const planted = join(sticky, 'ops.pub');
    asAttacker('ln', ['-s', good, planted]);
    const e = refusal(() => ids([planted]));
    expect(e.path).toBe(planted);
    expect(e.message).toContain(`owned by uid ${ATTACKER_UID}`);
    // Decision (docs/security.md): a link owned by root in a safe directory is followed, and its
    // target is walked with the same rules.
    const safeDir = dirWithMode(join(base, 'safe-links'), 0o755);
    symlinkSync(good, join(safeDir, 'ops.pub'));
    expect(ids([join(safeDir, 'ops.pub')])).toEqual(['ops']);
    symlinkSync('../link-target/ops.pub', join(safeDir, 'relative.pub'));
    expect(ids([join(safeDir, 'relative.pub')])).toEqual(['ops']);
    // ...but not when the target is unsafe, nor a root-owned link to another user's key.
    const theirs = key(join(base, 'their-key'), 'theirs');
    chownSync(theirs, ATTACKER_UID, ATTACKER_GID);
    symlinkSync(theirs, join(safeDir, 'theirs.pub'));
    expect(refusal(() => ids([join(safeDir, 'theirs.pub')])).path).toBe(theirs);
    lchownSync(join(safeDir, 'ops.pub'), ATTACKER_UID, ATTACKER_GID);
    refusal(() => ids([join(safeDir, 'ops.pub')]));
  });

  it('a named key that does not exist is an error (KEY_NOT_FOUND), from --trust, the environment or a policy', () => {
    const missing = join(base, 'nope.pub');
    expect(thrown(() => ids([missing])).code).toBe('KEY_NOT_FOUND');
    expect(thrown(() => loadVerifierTrust({ policy: { ...loadPolicyFrom('{}'), trustedKeys: [missing] } })).code).toBe('KEY_NOT_FOUND');
  });
});

let policies = 0;
function loadPolicyFrom(text: string, mode = 0o644): ReturnType<typeof loadPolicy> {
  const dir = dirWithMode(join(base, 'policies'), 0o755);
  const p = join(dir, `p${policies++}.json`);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return loadPolicy(p);
}

describe('the guard policy and the keys it names', () => {
  it('a policy file others can write is refused; a safe one loads', () => {
    expect(loadPolicyFrom('{"actions": "log"}').actions.default).toBe('log');
    expect(refusal(() => loadPolicyFrom('{"allow": [{"code": 5}]}', 0o666)).message).toContain('refusing policy file');
  });

  it('an unsafe key named by a policy makes verify fail before checking anything', () => {
    const pub = key(join(base, 'policy-keys'), 'ops');
    chmodSync(pub, 0o666);
    const policy = loadPolicyFrom(JSON.stringify({ trustedKeys: [pub] }));
    refusal(() => loadVerifierTrust({ policy }));
  });
});

describe('the CLI refuses unsafe trust (exit 1, TRUST_UNSAFE)', () => {
  it('verify --trust with a group-writable key', async () => {
    const pub = key(join(base, 'cli'), 'ops');
    chmodSync(pub, 0o664);
    const r = await run('node', [join(REPO_ROOT, 'dist/src/cli/main.js'), 'verify', '--pid', String(process.pid), '--trust', pub]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[TRUST_UNSAFE]');
    expect(r.stderr).toContain(pub);
  });
});
