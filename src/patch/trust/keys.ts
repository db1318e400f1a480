/**
 * Signing keys and trusted public keys.
 *
 * Files:
 * - private key (`hotpatch keygen -o KEYFILE`): PKCS#8 PEM of an ed25519 key, mode 0600.
 * - public key (`KEYFILE.pub`): one line `hotpatch-ed25519 <base64 of the raw 32-byte key> [comment]`.
 *   An SPKI PEM ed25519 public key (`openssl pkey -pubout`) is accepted too.
 *
 * Trusted signers are configured in one place, in this order of precedence (the first one given
 * wins, they are not merged):
 *   1. `--trust PUBFILE` (repeatable) — `trustFiles`
 *   2. the environment variable HOTPATCH_TRUSTED_KEYS — colon-separated public key files
 *   3. every `*.pub` file in /etc/hotpatch/trusted.d/ (`trustDir` overrides it, for tests)
 * Every trusted key file, and every directory above it, must be changeable only by root or the
 * invoking user (owner, no group/other write, links checked: see src/fs/path-check.ts and
 * docs/security.md); otherwise loading fails with UnsafePathError TRUST_UNSAFE, never silently.
 * `loadTrustedKeySet` is the one place trusted keys are loaded (apply, verify, guard, inspect).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { lstatSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { HotpatchError, PackageError } from '../../errors.js';
import { asOutputError, checkOutputDirectory, listTrustedDirectory, readTrustedFile, writeFileAtomic } from '../../fs/index.js';
import { keyIdOf } from '../package/codec.js';

/** The public key file's first word. */
export const PUBLIC_KEY_PREFIX = 'hotpatch-ed25519';
/** Environment variable naming trusted public key files (colon-separated). */
export const TRUSTED_KEYS_ENV = 'HOTPATCH_TRUSTED_KEYS';
/** Size limit of a public key file. */
export const MAX_KEY_FILE_SIZE = 64 * 1024;
/** Directory of trusted public keys used when neither --trust nor the environment names any. */
export const DEFAULT_TRUST_DIR = '/etc/hotpatch/trusted.d';

/** A public key a package may be signed with. */
export interface TrustedKey {
  /** Raw 32-byte ed25519 public key. */
  publicKey: Uint8Array;
  /** First 16 hex digits of SHA-256 of `publicKey`. */
  keyId: string;
  /** The comment of the .pub file (usually who the signer is). */
  comment?: string;
  /** The file it was read from. */
  source?: string;
}

/** A private key ready to sign, with its public half. */
export interface SigningKey {
  privateKey: KeyObject;
  publicKey: Uint8Array;
  keyId: string;
  /** Comment from the .pub file beside the key file, if any: the default signer name. */
  comment?: string;
}

/** Where the trusted keys came from (for messages). */
export type TrustSource = 'option' | 'env' | 'directory';

function rawPublicKey(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new TypeError('not an ed25519 key');
  return new Uint8Array(Buffer.from(jwk.x, 'base64url'));
}

/** Makes a KeyObject from a raw 32-byte ed25519 public key. */
export function publicKeyObject(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

/** Formats the one-line public key file text. */
export function formatPublicKey(publicKey: Uint8Array, comment?: string): string {
  const c = comment?.replace(/[\r\n]+/g, ' ').trim();
  return `${PUBLIC_KEY_PREFIX} ${Buffer.from(publicKey).toString('base64')}${c ? ` ${c}` : ''}\n`;
}

/** A new ed25519 key pair: the private key as PKCS#8 PEM, the public key file text, the key id. */
export function generateKeyPair(comment?: string): {
  privateKeyPem: string;
  publicKeyText: string;
  publicKey: Uint8Array;
  keyId: string;
} {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const raw = rawPublicKey(publicKey);
  return {
    privateKeyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicKeyText: formatPublicKey(raw, comment),
    publicKey: raw,
    keyId: keyIdOf(raw),
  };
}

function keyExists(path: string): boolean {
  try {
    lstatSync(path); // a dangling symbolic link counts: it is in the way
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

function writeKeyFile(path: string, text: string, mode: number): void {
  try {
    // A new inode (never one that may be readable by others), owned by us, written in a directory
    // only root and we can change: the .pub is trust material and the key a secret.
    writeFileAtomic(path, new TextEncoder().encode(text), {
      mode, uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0, what: mode === 0o600 ? 'private key' : 'public key', privateDir: true,
    });
  } catch (e) {
    if (e instanceof HotpatchError) throw e;
    throw new PackageError('KEY_WRITE_FAILED', `cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Generates a key pair and writes `keyFile` (private, mode 0600) and `keyFile.pub` (mode 0644),
 * each replaced atomically (never written through a link). Refuses to overwrite unless `force`
 * (KEY_EXISTS), and a directory another user could change (UnsafePathError PATH_UNSAFE).
 */
export function writeKeyFiles(
  keyFile: string,
  options: { comment?: string; force?: boolean } = {},
): { keyFile: string; publicKeyFile: string; keyId: string } {
  const pair = generateKeyPair(options.comment);
  const publicKeyFile = `${keyFile}.pub`;
  try {
    checkOutputDirectory(dirname(resolve(keyFile)), 'private key', true);
  } catch (e) {
    throw asOutputError(e, keyFile, 'private key');
  }
  if (!options.force) {
    for (const p of [keyFile, publicKeyFile]) {
      if (keyExists(p)) throw new PackageError('KEY_EXISTS', `${p} already exists; choose another name or pass --force to overwrite it`);
    }
  }
  writeKeyFile(keyFile, pair.privateKeyPem, 0o600);
  writeKeyFile(publicKeyFile, pair.publicKeyText, 0o644);
  return { keyFile, publicKeyFile, keyId: pair.keyId };
}

/** Parses public key file text (one-line hotpatch format or SPKI PEM). Throws PackageError KEY_INVALID. */
export function parsePublicKey(text: string, source?: string): TrustedKey {
  const where = source ?? 'public key';
  const bad = (why: string): never => {
    throw new PackageError('KEY_INVALID', `${where} is not an ed25519 public key (${why}); use a KEYFILE.pub written by \`hotpatch keygen\``);
  };
  const trimmed = text.trim();
  let publicKey: Uint8Array;
  let comment: string | undefined;
  if (trimmed.startsWith('-----BEGIN')) {
    try {
      publicKey = rawPublicKey(createPublicKey({ key: trimmed, format: 'pem' }));
    } catch (e) {
      return bad((e as Error).message);
    }
  } else {
    const line = trimmed.split('\n').find((l) => l.trim() !== '' && !l.trim().startsWith('#')) ?? '';
    const m = /^(\S+)\s+([A-Za-z0-9+/=]+)(?:\s+(.*))?$/.exec(line.trim());
    if (!m) return bad('expected "hotpatch-ed25519 BASE64 [comment]"');
    if (m[1] !== PUBLIC_KEY_PREFIX) return bad(`unknown key type "${m[1]}"`);
    publicKey = new Uint8Array(Buffer.from(m[2]!, 'base64'));
    if (publicKey.byteLength !== 32) return bad(`key is ${publicKey.byteLength} bytes, expected 32`);
    try {
      publicKeyObject(publicKey);
    } catch (e) {
      return bad((e as Error).message);
    }
    comment = m[3]?.trim() || undefined;
  }
  const key: TrustedKey = { publicKey, keyId: keyIdOf(publicKey) };
  if (comment !== undefined) key.comment = comment;
  if (source !== undefined) key.source = source;
  return key;
}

/**
 * Reads a trusted public key file. The file and every directory above it must be safe from other
 * users (src/fs/path-check.ts): else UnsafePathError TRUST_UNSAFE. Throws PackageError
 * KEY_NOT_FOUND / KEY_INVALID.
 */
export function readPublicKeyFile(path: string): TrustedKey {
  let text: string;
  try {
    text = readTrustedFile(path, { what: 'trusted key', maxBytes: MAX_KEY_FILE_SIZE }).toString('utf8');
  } catch (e) {
    if (e instanceof HotpatchError) throw e;
    throw new PackageError('KEY_NOT_FOUND', `cannot read trusted key ${path}: ${(e as Error).message}; check the path given to --trust or ${TRUSTED_KEYS_ENV}`, { cause: e });
  }
  return parsePublicKey(text, path);
}

/**
 * Reads a private key file (PKCS#8 PEM ed25519) and, when present, the comment of `path.pub`.
 * Throws PackageError KEY_NOT_FOUND / KEY_INVALID.
 */
export function readPrivateKeyFile(path: string): SigningKey {
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PackageError('KEY_NOT_FOUND', `cannot read key ${path}: ${(e as Error).message}; create one with \`hotpatch keygen -o ${path}\``, { cause: e });
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: pem, format: 'pem' });
  } catch (e) {
    throw new PackageError('KEY_INVALID', `${path} is not a PEM private key; create one with \`hotpatch keygen\``, { cause: e });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new PackageError('KEY_INVALID', `${path} is a ${String(privateKey.asymmetricKeyType)} key; hotpatch signs with ed25519 keys from \`hotpatch keygen\``);
  }
  const publicKey = rawPublicKey(createPublicKey(privateKey));
  const key: SigningKey = { privateKey, publicKey, keyId: keyIdOf(publicKey) };
  try {
    const pub = parsePublicKey(readFileSync(`${path}.pub`, 'utf8'), `${path}.pub`);
    if (pub.keyId === key.keyId && pub.comment !== undefined) key.comment = pub.comment;
  } catch {
    // No (matching) .pub beside the key: no default signer name.
  }
  return key;
}

/** Makes a SigningKey from a KeyObject or PEM text. */
export function signingKeyFrom(key: KeyObject | string): SigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = typeof key === 'string' ? createPrivateKey({ key, format: 'pem' }) : key;
  } catch (e) {
    throw new PackageError('KEY_INVALID', 'the signing key is not a PEM private key', { cause: e });
  }
  if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'ed25519') {
    throw new PackageError('KEY_INVALID', 'the signing key is not an ed25519 private key; create one with `hotpatch keygen`');
  }
  const publicKey = rawPublicKey(createPublicKey(privateKey));
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

/** Options of `loadTrustedKeys`. */
export interface TrustOptions {
  /** Files given with `--trust` (highest precedence when non-empty). */
  trustFiles?: readonly string[];
  /** Environment to read HOTPATCH_TRUSTED_KEYS from (default `process.env`). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Directory of `*.pub` files used last (default /etc/hotpatch/trusted.d). */
  trustDir?: string;
}

/** Trusted keys and where they came from. */
export interface TrustedKeySet {
  source: TrustSource;
  /** The files or directory consulted. */
  origin: string[];
  keys: TrustedKey[];
}

/**
 * Loads the trusted public keys: `--trust` files, else the files in HOTPATCH_TRUSTED_KEYS
 * (colon-separated; empty means unset), else `*.pub` in the trust directory (a missing directory
 * means no trusted keys). A named file that cannot be read or parsed is an error (PackageError
 * KEY_NOT_FOUND / KEY_INVALID): a typo must not silently leave a package untrusted. A key file or
 * directory another user could change is an error too (UnsafePathError TRUST_UNSAFE).
 */
export function loadTrustedKeySet(options: TrustOptions = {}): TrustedKeySet {
  const files = options.trustFiles?.filter((f) => f !== '') ?? [];
  if (files.length > 0) return { source: 'option', origin: [...files], keys: files.map(readPublicKeyFile) };
  const envValue = (options.env ?? process.env)[TRUSTED_KEYS_ENV];
  if (envValue !== undefined && envValue.trim() !== '') {
    const envFiles = envValue.split(':').filter((f) => f !== '');
    return { source: 'env', origin: envFiles, keys: envFiles.map(readPublicKeyFile) };
  }
  const dir = options.trustDir ?? DEFAULT_TRUST_DIR;
  let names: string[];
  let realDir: string;
  try {
    const listed = listTrustedDirectory(dir, 'trusted key directory');
    realDir = listed.path;
    names = listed.names.filter((n) => n.endsWith('.pub'));
  } catch (e) {
    if (e instanceof HotpatchError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { source: 'directory', origin: [dir], keys: [] };
    throw new PackageError('KEY_NOT_FOUND', `cannot read trusted key directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return { source: 'directory', origin: [dir], keys: names.map((n) => readPublicKeyFile(join(realDir, n))) };
}

/** The trusted public keys (see `loadTrustedKeySet` for the precedence). */
export function loadTrustedKeys(options: TrustOptions = {}): TrustedKey[] {
  return loadTrustedKeySet(options).keys;
}
