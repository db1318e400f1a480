/**
 * Loading a package for the updater: read it, enforce the signature policy (trusted keys from
 * `--trust`, else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub — see src/patch/trust),
 * and prepare what the engine records about the signer in every target.
 */
import { createHash } from 'node:crypto';
import { PackageError, RefusedError } from '../../errors.js';
import { packageContentOf, packageSigningMessage, type PatchPackage } from '../package/index.js';
import { readTrustedPackage, type SignatureVerdict, type TrustedKeySet, type TrustPolicyOptions } from '../trust/index.js';
import type { RecordSigning } from '../engine/index.js';

/** A package accepted by the signature policy. */
export interface LoadedPackage {
  path: string;
  pkg: PatchPackage;
  /** SHA-256 (hex) of the package file, recorded in every target. */
  packageHash: string;
  verdict: SignatureVerdict;
  trust: TrustedKeySet;
  /** Recorded as the patch's signer in each target: "NAME (KEYID)" or "KEYID", null when unsigned. */
  signer: string | null;
  /** The verified signature as the engine stores it (absent when unsigned). */
  signing?: RecordSigning;
  /** The package's signed content section, stored in the record for the guard. */
  content?: Uint8Array;
}

/** Signature-policy error codes that mean "refused, nothing changed" (exit 3). */
const POLICY_CODES = new Set(['PACKAGE_UNSIGNED', 'PACKAGE_UNTRUSTED', 'PACKAGE_BAD_SIGNATURE']);

/**
 * Reads `path` and applies the signature policy. An unsigned, untrusted or tampered package is a
 * RefusedError (code PACKAGE_UNSIGNED / PACKAGE_UNTRUSTED / PACKAGE_BAD_SIGNATURE) unless
 * `allowUnsigned` (which never admits a bad signature). Other problems stay PackageError.
 */
export function loadPackage(path: string, options: TrustPolicyOptions = {}): LoadedPackage {
  let read;
  try {
    read = readTrustedPackage(path, options);
  } catch (e) {
    if (e instanceof PackageError && POLICY_CODES.has(e.code)) throw new RefusedError(e.code, `${e.message}; nothing was changed`, { cause: e });
    throw e;
  }
  const { pkg, bytes, verdict, trust } = read;
  const loaded: LoadedPackage = {
    path, pkg, verdict, trust,
    packageHash: createHash('sha256').update(bytes).digest('hex'),
    signer: signerLabel(verdict),
  };
  loaded.content = packageContentOf(bytes);
  const s = pkg.signature;
  if (s && (verdict.status === 'trusted' || verdict.status === 'untrusted-signer')) {
    const signing: RecordSigning = {
      algorithm: s.algorithm, keyId: s.keyId, publicKey: s.publicKey, signature: s.signature,
      message: packageSigningMessage(pkg, s.signer),
    };
    if (s.signer !== undefined) signing.signer = s.signer;
    loaded.signing = signing;
  }
  return loaded;
}

/** The signer as recorded in targets: "NAME (KEYID)", "KEYID", or null for an unsigned package. */
export function signerLabel(verdict: SignatureVerdict): string | null {
  const s = verdict.signer;
  if (!s) return null;
  return s.name ? `${s.name} (${s.keyId})` : s.keyId;
}
