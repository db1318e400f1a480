import { chmodSync, mkdtempSync, mkdirSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PackageError } from '../../src/errors.js';
import {
  createPackage,
  decodePackage,
  encodePackage,
  generateKeyPair,
  loadTrustedKeySet,
  loadTrustedKeys,
  makeColdPayload,
  parsePublicKey,
  readPrivateKeyFile,
  readTrustedPackage,
  readPublicKeyFile,
  requireTrusted,
  signPackage,
  verifyPackageSignature,
  writeKeyFiles,
} from '../../src/patch/index.js';
import { samplePlan } from './sample-plan.js';

const CREATED = '2026-11-25T12:00:00.000Z';
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-trust-'));

function keyFiles(name: string, comment?: string): { key: string; pub: string } {
  const key = join(dir, name);
  writeKeyFiles(key, comment === undefined ? {} : { comment });
  return { key, pub: `${key}.pub` };
}

describe('keys', () => {
  it('writes a private key with mode 0600 and a one-line .pub, refuses to overwrite', () => {
    const { key, pub } = keyFiles('alice', 'Alice <alice@example.org>');
    expect(statSync(key).mode & 0o777).toBe(0o600);
    const text = readFileSync(pub, 'utf8');
    expect(text).toMatch(/^hotpatch-ed25519 [A-Za-z0-9+/=]{44} Alice <alice@example.org>\n$/);
    const sk = readPrivateKeyFile(key);
    const pk = readPublicKeyFile(pub);
    expect(sk.keyId).toBe(pk.keyId);
    expect(sk.comment).toBe('Alice <alice@example.org>');
    expect(() => writeKeyFiles(key)).toThrow(PackageError);
    chmodSync(key, 0o644);
    writeKeyFiles(key, { force: true });
    expect(readPrivateKeyFile(key).keyId).not.toBe(pk.keyId);
    expect(statSync(key).mode & 0o777).toBe(0o600);
  });

  it('parses SPKI PEM public keys and rejects garbage', () => {
    const pair = generateKeyPair();
    const { createPrivateKey, createPublicKey } = require_crypto();
    const pem = createPublicKey(createPrivateKey(pair.privateKeyPem)).export({ format: 'pem', type: 'spki' }).toString();
    expect(parsePublicKey(pem).keyId).toBe(pair.keyId);
    for (const bad of ['', 'ssh-ed25519 AAAA', 'hotpatch-ed25519 AAAA', 'hotpatch-ed25519 !!!', '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----']) {
      expect(() => parsePublicKey(bad)).toThrow(PackageError);
    }
  });
});

import * as nodeCrypto from 'node:crypto';
function require_crypto(): typeof nodeCrypto {
  return nodeCrypto;
}

describe('signatures', () => {
  const alice = keyFiles('sig-alice', 'Alice');
  const mallory = keyFiles('sig-mallory', 'Mallory');
  const cold = makeColdPayload(new TextEncoder().encode('fixed file '.repeat(30)), { buildId: 'abcd', mode: 0o755 });
  const unsigned = encodePackage(createPackage(samplePlan(), { createdAt: CREATED, cold }));

  it('signs without changing the id; trusted / untrusted / unsigned', () => {
    const signed = signPackage(unsigned, readPrivateKeyFile(alice.key));
    const pkg = decodePackage(signed);
    expect(pkg.id).toBe(decodePackage(unsigned).id);
    expect(pkg.signature!.signer).toBe('Alice');
    const trusted = loadTrustedKeys({ trustFiles: [alice.pub] });
    expect(verifyPackageSignature(pkg, trusted)).toMatchObject({ status: 'trusted', signer: { keyId: pkg.signature!.keyId, name: 'Alice', source: alice.pub } });
    expect(verifyPackageSignature(pkg, loadTrustedKeys({ trustFiles: [mallory.pub] })).status).toBe('untrusted-signer');
    expect(verifyPackageSignature(pkg, []).status).toBe('untrusted-signer');
    expect(verifyPackageSignature(decodePackage(unsigned), trusted).status).toBe('unsigned');
    // Signing the decoded object gives the same result as signing bytes; re-signing replaces.
    const again = signPackage(decodePackage(signed), readPrivateKeyFile(mallory.key));
    expect(again.signature!.keyId).not.toBe(pkg.signature!.keyId);
    expect(verifyPackageSignature(again, loadTrustedKeys({ trustFiles: [mallory.pub] })).status).toBe('trusted');
  });

  it('detects tampering: every single-bit flip anywhere is bad-signature or a PackageError', () => {
    const signed = signPackage(unsigned, readPrivateKeyFile(alice.key));
    const trusted = loadTrustedKeys({ trustFiles: [alice.pub] });
    // Flipping the case bit of the "SIGN" tag turns it into an ancillary section: the package reads
    // as unsigned (as if the signature had been cut off, which anyone can do) — never as trusted.
    const signTagAt = Buffer.from(signed).lastIndexOf('SIGN');
    const counts = { packageError: 0, badSignature: 0, strippedSignature: 0, other: 0 };
    for (let bit = 0; bit < signed.byteLength * 8; bit++) {
      const m = signed.slice();
      m[bit >> 3]! ^= 1 << (bit & 7);
      let status: string;
      try {
        status = verifyPackageSignature(decodePackage(m), trusted).status;
      } catch (e) {
        if (!(e instanceof PackageError)) throw e;
        counts.packageError++;
        continue;
      }
      if (status === 'bad-signature') counts.badSignature++;
      else if (status === 'unsigned' && (bit >> 3) === signTagAt) counts.strippedSignature++;
      else counts.other++;
    }
    console.log(`tamper: ${signed.byteLength * 8} single-bit flips:`, counts);
    expect(counts.other).toBe(0);
    expect(counts.strippedSignature).toBe(1);
    expect(counts.badSignature).toBeGreaterThan(100);
  });

  it('changing the decoded content after signing gives bad-signature', () => {
    const pkg = decodePackage(signPackage(unsigned, readPrivateKeyFile(alice.key)));
    const trusted = loadTrustedKeys({ trustFiles: [alice.pub] });
    pkg.plan.functions[0]!.code[0] = 0xcc;
    expect(verifyPackageSignature(pkg, trusted).status).toBe('bad-signature');
  });

  it('requireTrusted enforces the policy with actionable messages', () => {
    const trusted = loadTrustedKeys({ trustFiles: [alice.pub] });
    const good = decodePackage(signPackage(unsigned, readPrivateKeyFile(alice.key)));
    const strange = decodePackage(signPackage(unsigned, readPrivateKeyFile(mallory.key)));
    const none = decodePackage(unsigned);
    const tampered = decodePackage(signPackage(unsigned, readPrivateKeyFile(alice.key)));
    tampered.meta.description = 'evil';
    expect(requireTrusted(good, trusted).status).toBe('trusted');
    expect(() => requireTrusted(none, trusted)).toThrow(expect.objectContaining({ code: 'PACKAGE_UNSIGNED', message: expect.stringContaining('--allow-unsigned') }));
    expect(() => requireTrusted(strange, trusted)).toThrow(expect.objectContaining({ code: 'PACKAGE_UNTRUSTED', message: expect.stringContaining('--trust') }));
    expect(() => requireTrusted(tampered, trusted, { allowUnsigned: true })).toThrow(expect.objectContaining({ code: 'PACKAGE_BAD_SIGNATURE' }));
    expect(requireTrusted(none, trusted, { allowUnsigned: true }).status).toBe('unsigned');
    expect(requireTrusted(strange, trusted, { allowUnsigned: true }).status).toBe('untrusted-signer');
    expect(() => requireTrusted(strange, trusted, { allowUnsigned: true, allowUntrusted: false })).toThrow(expect.objectContaining({ code: 'PACKAGE_UNTRUSTED' }));
  });
});

describe('trusted key configuration', () => {
  const a = keyFiles('cfg-a', 'A');
  const b = keyFiles('cfg-b', 'B');
  const c = keyFiles('cfg-c', 'C');
  const trustDir = join(dir, 'trusted.d');
  mkdirSync(trustDir);
  writeFileSync(join(trustDir, 'c.pub'), readFileSync(c.pub));
  writeFileSync(join(trustDir, 'ignored.txt'), 'not a key');
  const ids = (o: Parameters<typeof loadTrustedKeys>[0]): string[] => loadTrustedKeys(o).map((k) => k.comment ?? '?');

  it('--trust wins over the environment, which wins over the directory', () => {
    const env = { HOTPATCH_TRUSTED_KEYS: `${b.pub}::${a.pub}` };
    expect(ids({ trustFiles: [a.pub], env, trustDir })).toEqual(['A']);
    expect(loadTrustedKeySet({ trustFiles: [a.pub], env, trustDir }).source).toBe('option');
    expect(ids({ trustFiles: [], env, trustDir })).toEqual(['B', 'A']);
    expect(loadTrustedKeySet({ env, trustDir }).source).toBe('env');
    expect(ids({ env: {}, trustDir })).toEqual(['C']);
    expect(ids({ env: { HOTPATCH_TRUSTED_KEYS: '' }, trustDir })).toEqual(['C']);
    expect(loadTrustedKeySet({ env: {}, trustDir }).source).toBe('directory');
    expect(ids({ env: {}, trustDir: join(dir, 'no-such-dir') })).toEqual([]);
  });

  it('a named key file that is missing or invalid is an error, not silently untrusted', () => {
    expect(() => loadTrustedKeys({ trustFiles: [join(dir, 'missing.pub')] })).toThrow(expect.objectContaining({ code: 'KEY_NOT_FOUND' }));
    expect(() => loadTrustedKeys({ env: { HOTPATCH_TRUSTED_KEYS: join(dir, 'missing.pub') } })).toThrow(expect.objectContaining({ code: 'KEY_NOT_FOUND' }));
    writeFileSync(join(dir, 'bad.pub'), 'hotpatch-ed25519 Zm9v\n');
    expect(() => loadTrustedKeys({ trustFiles: [join(dir, 'bad.pub')] })).toThrow(expect.objectContaining({ code: 'KEY_INVALID' }));
  });
});

describe('readTrustedPackage', () => {
  it('reads a file and applies the policy with the configured keys', () => {
    const k = keyFiles('policy', 'Policy');
    const path = join(dir, 'policy.hpk');
    writeFileSync(path, encodePackage(createPackage(samplePlan(), { createdAt: CREATED })));
    expect(() => readTrustedPackage(path, { env: {}, trustDir: join(dir, 'none') })).toThrow(expect.objectContaining({ code: 'PACKAGE_UNSIGNED' }));
    expect(readTrustedPackage(path, { env: {}, trustDir: join(dir, 'none'), allowUnsigned: true }).verdict.status).toBe('unsigned');
    writeFileSync(path, signPackage(readFileSync(path), readPrivateKeyFile(k.key)));
    const r = readTrustedPackage(path, { env: { HOTPATCH_TRUSTED_KEYS: k.pub } });
    expect(r.verdict).toMatchObject({ status: 'trusted', signer: { name: 'Policy' } });
    expect(r.trust.source).toBe('env');
    writeFileSync(path, readFileSync(path).subarray(0, 30));
    expect(() => readTrustedPackage(path, { env: { HOTPATCH_TRUSTED_KEYS: k.pub } })).toThrow(expect.objectContaining({ code: 'PACKAGE_TRUNCATED' }));
  });
});
