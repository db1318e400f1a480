/**
 * Loading a package for the updater: read it, enforce the signature policy (trusted keys from
 * `--trust`, else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub — see src/patch/trust),
 * and prepare what the engine records about the signer in every target.
 */
import { createHash } from 'node:crypto';
import { PackageError, RefusedError } from '../../errors.js';
import { packageSigningMessage, type PatchPackage } from '../package/index.js';
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

/**
 * The package's content section (CONT) body: the exact bytes whose SHA-256 the signature covers.
 * Layout (src/patch/package/codec.ts): 12-byte header, then "CONT" | u32 length | body first.
 * (Temporary: belongs in src/patch/package; the engine's CLI used the same reading.)
 */
export function packageContentSection(bytes: Uint8Array): Uint8Array | undefined {
  if (bytes.length < 20 || new TextDecoder().decode(bytes.subarray(12, 16)) !== 'CONT') return undefined;
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(16, true);
  return 20 + len <= bytes.length ? bytes.slice(20, 20 + len) : undefined;
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
  const content = packageContentSection(bytes);
  if (content) loaded.content = content;
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
