/** One call for the applying side: read a package file and enforce the signature policy. */
import type { PatchPackage } from '../package/codec.js';
import { readPackageFile } from '../package/file.js';
import { loadTrustedKeySet, type TrustedKeySet, type TrustOptions } from './keys.js';
import { requireTrusted, type SignatureVerdict } from './signature.js';

/** Options of `readTrustedPackage`: where trusted keys come from, and what the policy allows. */
export interface TrustPolicyOptions extends TrustOptions {
  /** Accept a package without a signature (`--allow-unsigned`). */
  allowUnsigned?: boolean;
  /** Accept a valid signature by a key that is not trusted (default: same as allowUnsigned). */
  allowUntrusted?: boolean;
}

/**
 * Reads and decodes a package file, loads the trusted keys (`--trust`, else HOTPATCH_TRUSTED_KEYS,
 * else /etc/hotpatch/trusted.d) and applies `requireTrusted`. Throws PackageError when the file is
 * bad or the policy refuses it; the verdict's signer is what the engine records in the target.
 */
export function readTrustedPackage(
  path: string,
  options: TrustPolicyOptions = {},
): { pkg: PatchPackage; bytes: Uint8Array; verdict: SignatureVerdict; trust: TrustedKeySet } {
  const { pkg, bytes } = readPackageFile(path);
  const trust = loadTrustedKeySet(options);
  const policy: { allowUnsigned?: boolean; allowUntrusted?: boolean } = {};
  if (options.allowUnsigned !== undefined) policy.allowUnsigned = options.allowUnsigned;
  if (options.allowUntrusted !== undefined) policy.allowUntrusted = options.allowUntrusted;
  const verdict = requireTrusted(pkg, trust.keys, policy);
  return { pkg, bytes, verdict, trust };
}
