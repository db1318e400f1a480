/**
 * Package metadata (issue #11.1): description, CVE ids and severity round-trip through the codec,
 * are covered by the signature (changing any of them after signing is a bad signature, never
 * trusted), and a package written before metadata existed (fixtures/pre-metadata.hpk, made by the
 * codec of commit 03c8a5b and signed with fixtures/pre-metadata.pub) still decodes, verifies and
 * goes into the store.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PackageError } from '../../src/errors.js';
import { createPackage, decodePackage, encodePackage, type PatchPackage } from '../../src/patch/package/index.js';
import { generateKeyPair, signPackage, verifyPackageSignature, type TrustedKey } from '../../src/patch/trust/index.js';
import { samplePlan } from '../package/sample-plan.js';
import { cli } from './helpers.js';

const FIXTURES = join(import.meta.dirname, 'fixtures');
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-meta-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const META = { description: 'parser: bounds check on the header length', cves: ['CVE-2024-3094', 'CVE-2023-44487'], severity: 'critical' as const };

function signed(): { bytes: Uint8Array; trusted: TrustedKey[] } {
  const kp = generateKeyPair('Release');
  const bytes = encodePackage(signPackage(createPackage(samplePlan(), { createdAt: '2026-12-01T00:00:00.000Z', ...META }), kp.privateKeyPem));
  return { bytes, trusted: [{ publicKey: kp.publicKey, keyId: kp.keyId, comment: 'Release' }] };
}

describe('package metadata', () => {
  it('round-trips description, CVE ids and severity; the id depends on them', () => {
    const p = createPackage(samplePlan(), { createdAt: '2026-12-01T00:00:00.000Z', ...META });
    const back = decodePackage(encodePackage(p));
    expect(back).toEqual(p);
    expect(back.meta).toMatchObject(META);
    const other = createPackage(samplePlan(), { createdAt: '2026-12-01T00:00:00.000Z', ...META, severity: 'low' });
    expect(other.id).not.toBe(p.id);
  });

  it('every metadata field is signed: changed after signing is a bad signature', () => {
    const { bytes, trusted } = signed();
    expect(verifyPackageSignature(decodePackage(bytes), trusted).status).toBe('trusted');
    const edits: Array<(p: PatchPackage) => void> = [
      (p) => (p.meta.description = 'harmless'),
      (p) => (p.meta.cves = ['CVE-2024-3094']),
      (p) => (p.meta.cves = [...META.cves, 'CVE-2025-0001']),
      (p) => (p.meta.severity = 'low'),
      (p) => delete p.meta.severity,
    ];
    for (const edit of edits) {
      const p = decodePackage(bytes);
      edit(p);
      expect(verifyPackageSignature(p, trusted).status).toBe('bad-signature');
    }
    // In the bytes: a CVE digit or the severity changed in the file is never trusted.
    const text = Buffer.from(bytes);
    for (const needle of ['CVE-2024-3094', 'critical']) {
      const at = text.indexOf(needle);
      expect(at).toBeGreaterThan(0);
      const m = bytes.slice();
      m[at + needle.length - 1] ^= 0x01;
      let status: string;
      try {
        status = verifyPackageSignature(decodePackage(m), trusted).status;
      } catch (e) {
        expect(e).toBeInstanceOf(PackageError);
        continue;
      }
      expect(status).toBe('bad-signature');
    }
  });

  it('refuses invalid metadata at creation and at decoding, with a typed error', () => {
    expect(() => encodePackage(createPackage(samplePlan(), { cves: ['CVE-24-1'] }))).toThrow(PackageError);
    const ok = encodePackage(createPackage(samplePlan(), META));
    const m = ok.slice();
    const at = Buffer.from(m).indexOf('CVE-2024-3094');
    m[at] = 'X'.charCodeAt(0); // "XVE-...": not a CVE id
    expect(() => decodePackage(m)).toThrow(PackageError);
    for (let cut = 0; cut < ok.byteLength; cut += 37) expect(() => decodePackage(ok.subarray(0, cut))).toThrow(PackageError);
  });

  it('a package from before metadata decodes, verifies, and is accepted by the store', async () => {
    const bytes = new Uint8Array(readFileSync(join(FIXTURES, 'pre-metadata.hpk')));
    const p = decodePackage(bytes);
    expect(p.id).toBe('4485d78855952816');
    expect(p.meta.description).toBe('a package from before CVE ids and severity');
    expect(p.meta.cves).toBeUndefined();
    expect(p.meta.severity).toBeUndefined();
    // Re-encoding gives the same bytes: packages without CVE ids or severity keep the old form.
    expect(Buffer.from(encodePackage(p)).equals(Buffer.from(bytes))).toBe(true);
    const store = join(dir, 'store');
    const pub = join(FIXTURES, 'pre-metadata.pub');
    const add = await cli(['store', 'add', join(FIXTURES, 'pre-metadata.hpk'), '--store', store, '--trust', pub]);
    expect(add.code, add.stderr).toBe(0);
    const list = await cli(['store', 'list', '--json', '--store', store, '--trust', pub]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toContain('4485d78855952816');
    expect(list.stdout).not.toMatch(/CVE-/);
  });
});
