/**
 * Signing packages and checking signatures against trusted keys.
 *
 * A signature is a detached ed25519 signature over `packageSigningMessage` (hashes of the content
 * and the cold payload, plus the claimed signer name). Trust is decided by the public key alone:
 * the signer name shown is the comment of the trusted .pub file when there is one.
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import { PackageError } from '../../errors.js';
import {
  decodePackage,
  encodePackage,
  packageSigningMessage,
  type PackageSignature,
  type PatchPackage,
} from '../package/codec.js';
import { publicKeyObject, signingKeyFrom, type SigningKey, type TrustedKey } from './keys.js';

/** Result of checking a package's signature. */
export type SignatureStatus = 'trusted' | 'untrusted-signer' | 'unsigned' | 'bad-signature';

/** Who signed a package. */
export interface SignerInfo {
  keyId: string;
  /** The trusted .pub file's comment, else the name claimed in the package. */
  name?: string;
  /** The trusted key file that matched. */
  source?: string;
}

export interface SignatureVerdict {
  status: SignatureStatus;
  signer?: SignerInfo;
}

function toSigningKey(key: SigningKey | KeyObject | string): SigningKey {
  if (typeof key === 'object' && 'privateKey' in key && 'keyId' in key) return key;
  return signingKeyFrom(key as KeyObject | string);
}

/**
 * Signs a package (replacing any earlier signature). Given bytes, returns the signed package's
 * bytes; given a decoded package, returns a signed copy. The id does not change.
 * @param options.signer the signer name to embed (default: the comment of the key's .pub file)
 */
export function signPackage(pkg: Uint8Array, key: SigningKey | KeyObject | string, options?: { signer?: string }): Uint8Array;
export function signPackage(pkg: PatchPackage, key: SigningKey | KeyObject | string, options?: { signer?: string }): PatchPackage;
export function signPackage(
  input: Uint8Array | PatchPackage,
  key: SigningKey | KeyObject | string,
  options: { signer?: string } = {},
): Uint8Array | PatchPackage {
  const pkg = input instanceof Uint8Array ? decodePackage(input) : input;
  const k = toSigningKey(key);
  const signer = options.signer ?? k.comment;
  const message = packageSigningMessage(pkg, signer);
  const signature: PackageSignature = {
    algorithm: 'ed25519',
    publicKey: k.publicKey,
    keyId: k.keyId,
    signature: new Uint8Array(sign(null, message, k.privateKey)),
  };
  if (signer !== undefined) signature.signer = signer;
  const signed: PatchPackage = { ...pkg, signature };
  return input instanceof Uint8Array ? encodePackage(signed) : signed;
}

function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}

/**
 * Checks a package's signature: `bad-signature` when it does not verify (the package was changed
 * after signing, whoever the signer), `untrusted-signer` when it verifies with a key not in
 * `trustedKeys`, `trusted` when it verifies with one of them, `unsigned` without a signature.
 */
export function verifyPackageSignature(pkg: PatchPackage, trustedKeys: readonly TrustedKey[]): SignatureVerdict {
  const s = pkg.signature;
  if (!s) return { status: 'unsigned' };
  const claimed: SignerInfo = { keyId: s.keyId };
  if (s.signer !== undefined) claimed.name = s.signer;
  let ok: boolean;
  try {
    ok = s.algorithm === 'ed25519' && s.signature.byteLength === 64 &&
      verify(null, packageSigningMessage(pkg, s.signer), publicKeyObject(s.publicKey), s.signature);
  } catch {
    ok = false; // a key that is not a curve point, or a plan that no longer validates
  }
  if (!ok) return { status: 'bad-signature', signer: claimed };
  const trusted = trustedKeys.find((k) => sameKey(k.publicKey, s.publicKey));
  if (!trusted) return { status: 'untrusted-signer', signer: claimed };
  const signer: SignerInfo = { keyId: s.keyId };
  const name = trusted.comment ?? s.signer;
  if (name !== undefined) signer.name = name;
  if (trusted.source !== undefined) signer.source = trusted.source;
  return { status: 'trusted', signer };
}

const HOW_TO_TRUST =
  'sign it with `hotpatch sign PKG --key KEYFILE` and trust KEYFILE.pub with --trust, HOTPATCH_TRUSTED_KEYS ' +
  'or /etc/hotpatch/trusted.d/';

/**
 * The signature policy: returns the verdict when the package may be used, else throws PackageError
 * PACKAGE_BAD_SIGNATURE (always), PACKAGE_UNTRUSTED (unless `allowUntrusted`), PACKAGE_UNSIGNED
 * (unless `allowUnsigned`). `allowUntrusted` defaults to `allowUnsigned`: a signature by an unknown
 * key proves no more than none.
 */
export function requireTrusted(
  pkg: PatchPackage,
  trustedKeys: readonly TrustedKey[],
  options: { allowUnsigned?: boolean; allowUntrusted?: boolean } = {},
): SignatureVerdict {
  const verdict = verifyPackageSignature(pkg, trustedKeys);
  const allowUnsigned = options.allowUnsigned ?? false;
  const allowUntrusted = options.allowUntrusted ?? allowUnsigned;
  switch (verdict.status) {
    case 'trusted':
      return verdict;
    case 'bad-signature':
      throw new PackageError(
        'PACKAGE_BAD_SIGNATURE',
        `package ${pkg.id} has a signature (key ${verdict.signer?.keyId}) that does not match its content: it was changed after ` +
          'signing; do not use it, get the package again from its publisher',
      );
    case 'untrusted-signer':
      if (allowUntrusted) return verdict;
      throw new PackageError(
        'PACKAGE_UNTRUSTED',
        `package ${pkg.id} is signed by key ${verdict.signer?.keyId}${verdict.signer?.name ? ` (${verdict.signer.name})` : ''}, which is not trusted` +
          (trustedKeys.length === 0 ? ' (no trusted keys are configured)' : '') +
          `; trust its .pub file with --trust, HOTPATCH_TRUSTED_KEYS or /etc/hotpatch/trusted.d/, or pass --allow-unsigned`,
      );
    case 'unsigned':
      if (allowUnsigned) return verdict;
      throw new PackageError('PACKAGE_UNSIGNED', `package ${pkg.id} is not signed; ${HOW_TO_TRUST}, or pass --allow-unsigned`);
  }
}
