import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createPackage, decodePackage, encodePackage, makeColdPayload } from '../../src/patch/index.js';
import { REPO_ROOT } from '../helpers/native.js';
import { samplePlan } from './sample-plan.js';

const execFileP = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-cli-pkg-'));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI with an environment free of HOTPATCH_TRUSTED_KEYS unless given. */
async function hotpatch(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const base = { ...process.env };
  delete base.HOTPATCH_TRUSTED_KEYS;
  try {
    const { stdout, stderr } = await execFileP('node', [CLI, ...args], { env: { ...base, ...env } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout: string; stderr: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout, stderr: err.stderr };
  }
}

function writePackage(name: string, withCold = false): string {
  const path = join(dir, name);
  const cold = withCold ? makeColdPayload(new TextEncoder().encode('x'.repeat(5000)), { buildId: 'aabb', mode: 0o755 }) : undefined;
  writeFileSync(path, encodePackage(createPackage(samplePlan(), { createdAt: '2026-11-25T12:00:00.000Z', description: 'fix the parser', ...(cold ? { cold } : {}) })));
  return path;
}

describe('hotpatch keygen / sign / inspect', () => {
  const key = join(dir, 'release.key');

  it('keygen writes KEYFILE (0600) and KEYFILE.pub, refuses to overwrite, usage errors exit 2', async () => {
    const r = await hotpatch(['keygen', '-o', key, '--comment', 'Release team', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as { keyFile: string; publicKeyFile: string; keyId: string };
    expect(doc).toMatchObject({ keyFile: key, publicKeyFile: `${key}.pub` });
    expect(doc.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(statSync(key).mode & 0o777).toBe(0o600);
    expect(readFileSync(`${key}.pub`, 'utf8')).toContain('Release team');
    expect((await hotpatch(['keygen', '-o', key])).code).toBe(1);
    expect((await hotpatch(['keygen'])).code).toBe(2);
  });

  it('inspect --json has the documented shape; sign keeps the id and rewrites atomically', async () => {
    const pkgPath = writePackage('fix.hpk', true);
    const before = await hotpatch(['inspect', pkgPath, '--json']);
    expect(before.code).toBe(0);
    const doc = JSON.parse(before.stdout);
    expect(doc).toMatchObject({
      id: expect.stringMatching(/^[0-9a-f]{16}$/),
      target: { buildId: '3f1c0a9e5b7d22c4e8a1f0b6d93c7e5a1b2c3d4e', name: 'server' },
      functions: [
        { name: 'parse_request', offset: '0x401136', size: 96, newSize: 18, file: 'parser.c', relocations: 2 },
        { name: 'helper', offset: '0xffff800000001000', size: 32 },
      ],
      signer: null,
      signature: 'unsigned',
      cold: true,
      description: 'fix the parser',
    });

    const signed = await hotpatch(['sign', pkgPath, '--key', key, '--json']);
    expect(signed.code).toBe(0);
    expect(JSON.parse(signed.stdout)).toMatchObject({ id: doc.id, signer: 'Release team' });
    expect(readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
    expect(decodePackage(readFileSync(pkgPath)).signature).toBeDefined();

    const untrusted = JSON.parse((await hotpatch(['inspect', pkgPath, '--json'])).stdout);
    expect(untrusted).toMatchObject({ id: doc.id, signature: 'untrusted-signer', signer: { name: 'Release team', status: 'untrusted-signer' } });
    const viaFlag = JSON.parse((await hotpatch(['inspect', pkgPath, '--json', '--trust', `${key}.pub`])).stdout);
    expect(viaFlag).toMatchObject({ signature: 'trusted', signer: { keyId: untrusted.signer.keyId, status: 'trusted' } });
    const viaEnv = JSON.parse((await hotpatch(['inspect', pkgPath, '--json'], { HOTPATCH_TRUSTED_KEYS: `${key}.pub` })).stdout);
    expect(viaEnv.signature).toBe('trusted');
  });

  it('inspect prints readable text within 80 columns, with --code listing', async () => {
    const pkgPath = writePackage('text.hpk');
    const r = await hotpatch(['inspect', pkgPath, '--code']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('parse_request (parser.c)');
    expect(r.stdout).toMatch(/push\s+rbp/);
    expect(r.stdout).toContain('pc32 memcpy@GLIBC_2.14 - 0x4');
    expect(r.stdout).toContain('unsigned');
    for (const line of r.stdout.split('\n')) expect([...line].length).toBeLessThanOrEqual(80);
  });

  it('a tampered signed package shows bad-signature; a corrupt one exits 1; usage exits 2', async () => {
    const pkgPath = writePackage('tamper.hpk');
    expect((await hotpatch(['sign', pkgPath, '--key', key])).code).toBe(0);
    const bytes = readFileSync(pkgPath);
    // Change one byte of new code inside the content section (the first function's code).
    const at = bytes.indexOf(Buffer.from([0x55, 0x48, 0x89, 0xe5, 0xe8]));
    bytes[at] = 0x90;
    const tampered = join(dir, 'tampered.hpk');
    writeFileSync(tampered, bytes);
    const r = await hotpatch(['inspect', tampered, '--json', '--trust', `${key}.pub`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).signature).toBe('bad-signature');

    const corrupt = join(dir, 'corrupt.hpk');
    writeFileSync(corrupt, bytes.subarray(0, 40));
    const c = await hotpatch(['inspect', corrupt]);
    expect(c.code).toBe(1);
    expect(c.stderr).toContain('PACKAGE_TRUNCATED');
    const s = await hotpatch(['sign', corrupt, '--key', key]);
    expect(s.code).toBe(1);
    expect((await hotpatch(['inspect', join(dir, 'missing.hpk')])).code).toBe(1);
    expect((await hotpatch(['sign', pkgPath])).code).toBe(2);
    expect((await hotpatch(['inspect'])).code).toBe(2);
  });
});
