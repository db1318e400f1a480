/**
 * The patch store: the packages a host should have applied (`hotpatch store add|list|remove`),
 * read by `hotpatch agent` and `hotpatch status`. It is the *desired* state only; what is applied
 * is always read back from the processes' own records.
 *
 * Layout of the store directory (default /var/lib/hotpatch/store, or HOTPATCH_STORE, or --store):
 *   ID.hpk              a stored package, named by its patch id, mode 0644, owned by the writer
 *   withdrawn/ID.json   a tombstone: patch ID was removed from the store and must be taken out of
 *                       every process that still has it (a patch neither stored nor withdrawn —
 *                       e.g. applied by hand with `hotpatch apply` — is left alone)
 *   .lock               flock(2) held by a writer (add/remove): two writers never interleave
 *
 * Safety (root writes here):
 * - the store directory and `withdrawn/` must be real directories (not symlinks), owned by root or
 *   by the caller, and writable by nobody else; an ancestor writable by others must be sticky;
 * - a package is verified (decoded canonically, signature by a trusted key) *before* it is copied;
 * - a copy is written to a temporary file created with O_CREAT|O_EXCL|O_NOFOLLOW in the store
 *   directory itself, fchmod'ed and fsync'ed on its descriptor, then renamed over ID.hpk and the
 *   directory fsync'ed: a reader sees the old file or the whole new one, never half of one;
 * - every read opens with O_NOFOLLOW, requires a regular file, decodes, checks the file name against
 *   the id and verifies the signature again: a file damaged or replaced after `store add` is
 *   reported as invalid and never used.
 *
 * This file keeps its own small safe-file helpers so that they can be merged with the project's
 * safe-file module later.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync, constants, fchmodSync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, unlinkSync, writeSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { HotpatchError, PackageError, RefusedError, UsageError } from '../errors.js';
import { decodePackage, MAX_PACKAGE_SIZE, type PatchPackage } from '../patch/package/index.js';
import { loadTrustedKeySet, requireTrusted, type SignatureVerdict, type TrustOptions } from '../patch/trust/index.js';
import { flock, LOCK_EX, LOCK_NB } from '../process/index.js';

/** Default store directory. */
export const DEFAULT_STORE_DIR = '/var/lib/hotpatch/store';
/** Environment variable naming the store directory. */
export const STORE_ENV = 'HOTPATCH_STORE';
/** How long a writer waits for another writer's lock (ms). */
export const STORE_LOCK_WAIT_MS = 10_000;

const PATCH_ID = /^[0-9a-f]{16}$/;
const PACKAGE_FILE = /^([0-9a-f]{16})\.hpk$/;

/** The store directory: `explicit`, else $HOTPATCH_STORE, else {@link DEFAULT_STORE_DIR}. */
export function storeDir(explicit?: string, env: Readonly<Record<string, string | undefined>> = process.env): string {
  const d = explicit ?? env[STORE_ENV] ?? DEFAULT_STORE_DIR;
  return resolve(d === '' ? DEFAULT_STORE_DIR : d);
}

/** A package in the store that passed every check on this read. */
export interface StoredPackage {
  id: string;
  path: string;
  pkg: PatchPackage;
  bytes: Uint8Array;
  /** SHA-256 (hex) of the file. */
  sha256: string;
  verdict: SignatureVerdict;
  /** When it was added (the file's mtime, ms since the epoch); the agent applies in this order. */
  addedAt: number;
}

/** A file in the store that failed a check (never used). */
export interface InvalidStoreEntry {
  file: string;
  code: string;
  reason: string;
}

/** A withdrawn patch (tombstone). */
export interface WithdrawnPatch {
  id: string;
  withdrawnAt: string;
  target?: { name: string; buildId: string };
}

/** What a read of the store found. */
export interface StoreContents {
  dir: string;
  packages: StoredPackage[];
  invalid: InvalidStoreEntry[];
  withdrawn: WithdrawnPatch[];
}

// ---------------------------------------------------------------------------------------------
// Safe-file helpers (kept here on purpose; see the module comment).

/**
 * Refuses a directory an attacker could use: not a directory, a symlink, owned by someone other
 * than root or us, or group/other-writable; an ancestor that others may write without the sticky
 * bit. Throws HotpatchError STORE_UNSAFE.
 */
export function checkSafeDirectory(dir: string): void {
  const uid = process.geteuid?.() ?? 0;
  const st = lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new HotpatchError('STORE_UNSAFE', `${dir} is not a directory (a symlink or a file): refusing to use it as the store`);
  if (st.uid !== 0 && st.uid !== uid) throw new HotpatchError('STORE_UNSAFE', `${dir} is owned by uid ${st.uid}, not by root or by us: refusing to use it`);
  if ((st.mode & 0o022) !== 0) throw new HotpatchError('STORE_UNSAFE', `${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): chmod go-w it`);
  for (let d = dirname(dir); ; d = dirname(d)) {
    const a = lstatSync(d);
    if ((a.mode & 0o002) !== 0 && (a.mode & 0o1000) === 0) throw new HotpatchError('STORE_UNSAFE', `${d} (above the store) is writable by everyone without the sticky bit: refusing to use ${dir}`);
    if (d === dirname(d)) break;
  }
}

function ensureDirectory(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
  } catch (e) {
    throw new HotpatchError('STORE_UNSAFE', `cannot create the store directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  checkSafeDirectory(dir);
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `bytes` to `dir/name` atomically: a new temporary file in `dir` (O_CREAT|O_EXCL|
 * O_NOFOLLOW, so it can never be an existing file or a planted symlink), fchmod `mode`, write,
 * fsync, rename, fsync the directory.
 */
export function writeStoreFile(dir: string, name: string, bytes: Uint8Array, mode = 0o644): void {
  const tmp = join(dir, `.tmp-${name}-${randomBytes(6).toString('hex')}`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  let ok = false;
  try {
    fchmodSync(fd, mode);
    for (let off = 0; off < bytes.byteLength; ) off += writeSync(fd, bytes, off, bytes.byteLength - off);
    fsyncSync(fd);
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok) unlinkSilently(tmp);
  }
  try {
    renameSync(tmp, join(dir, name));
  } catch (e) {
    unlinkSilently(tmp);
    throw e;
  }
  fsyncDir(dir);
}

/** Reads a regular file without following a symlink, at most `max` bytes. */
export function readStoreFile(path: string, max: number): Uint8Array {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new HotpatchError('STORE_FILE_INVALID', `${path} is not a regular file`);
    if (st.size > max) throw new PackageError('PACKAGE_TOO_LARGE', `${path} is ${st.size} bytes, more than the ${max}-byte limit`);
    const buf = new Uint8Array(st.size);
    let off = 0;
    while (off < buf.byteLength) {
      const n = readSync(fd, buf, off, buf.byteLength - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

function unlinkSilently(p: string): void {
  try {
    unlinkSync(p);
  } catch {
    /* already gone */
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Runs `fn` holding the store's writer lock (flock on DIR/.lock; dropped by the kernel if we die). */
export function withStoreLock<T>(dir: string, fn: () => T, waitMs = STORE_LOCK_WAIT_MS): T {
  const path = join(dir, '.lock');
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  try {
    const deadline = Date.now() + waitMs;
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
      if (Date.now() >= deadline) throw new HotpatchError('STORE_LOCKED', `another hotpatch process is writing the store ${dir} (waited ${waitMs / 1000} s); try again`);
      sleepSync(20);
    }
    return fn();
  } finally {
    closeSync(fd); // releases the flock
  }
}

// ---------------------------------------------------------------------------------------------
// Verification

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Signature-policy codes that mean "refused, nothing changed". */
const POLICY_CODES = new Set(['PACKAGE_UNSIGNED', 'PACKAGE_UNTRUSTED', 'PACKAGE_BAD_SIGNATURE']);

/** Decodes `bytes` and requires a signature by a trusted key (the store never holds unsigned packages). */
export function verifyStoreBytes(bytes: Uint8Array, trust: TrustOptions): { pkg: PatchPackage; verdict: SignatureVerdict } {
  const pkg = decodePackage(bytes);
  const keys = loadTrustedKeySet(trust).keys;
  try {
    return { pkg, verdict: requireTrusted(pkg, keys) };
  } catch (e) {
    if (e instanceof PackageError && POLICY_CODES.has(e.code)) throw new RefusedError(e.code, `${e.message}; nothing was added`, { cause: e });
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Operations

/** Options of the store operations: the directory and the trusted keys. */
export interface StoreOptions extends TrustOptions {
  dir?: string;
}

/** What `store add` did. */
export interface StoreAddResult {
  id: string;
  path: string;
  status: 'added' | 'already-stored';
  target: { name: string; buildId: string };
  signer: string | null;
}

/**
 * Adds the package file `source` to the store: verifies it (trusted signature) first, then copies
 * it atomically as ID.hpk and clears a tombstone of the same id. Adding the same package again is
 * `already-stored`. RefusedError for an unsigned/untrusted/tampered package (nothing changed).
 */
export function storeAdd(source: string, options: StoreOptions = {}): StoreAddResult {
  const dir = storeDir(options.dir);
  let bytes: Uint8Array;
  try {
    bytes = readStoreFile(source, MAX_PACKAGE_SIZE);
  } catch (e) {
    if (e instanceof HotpatchError) throw e;
    throw new UsageError('STORE_SOURCE_UNREADABLE', `cannot read ${source}: ${(e as Error).message}`, { cause: e });
  }
  const { pkg, verdict } = verifyStoreBytes(bytes, options);
  ensureDirectory(dir);
  return withStoreLock(dir, () => {
    const name = `${pkg.id}.hpk`;
    const path = join(dir, name);
    let status: StoreAddResult['status'] = 'added';
    try {
      const cur = readStoreFile(path, MAX_PACKAGE_SIZE);
      if (sha256(cur) === sha256(bytes)) status = 'already-stored';
    } catch {
      /* absent or unreadable: (re)write it */
    }
    if (status === 'added') writeStoreFile(dir, name, bytes);
    const wd = join(dir, 'withdrawn');
    try {
      unlinkSync(join(wd, `${pkg.id}.json`));
      fsyncDir(wd);
    } catch {
      /* no tombstone */
    }
    const s = verdict.signer;
    return { id: pkg.id, path, status, target: { name: pkg.plan.target.name, buildId: pkg.plan.target.buildId }, signer: s ? (s.name ? `${s.name} (${s.keyId})` : s.keyId) : null };
  });
}

/**
 * Removes patch `id` from the store and leaves a tombstone, so that the agent takes it out of every
 * process. Throws HotpatchError STORE_NOT_FOUND when the id is neither stored nor withdrawn.
 */
export function storeRemove(id: string, options: StoreOptions = {}): { id: string; status: 'withdrawn' | 'already-withdrawn' } {
  if (!PATCH_ID.test(id)) throw new UsageError('USAGE', `not a patch id: ${id} (16 hex digits, see \`hotpatch store list\`)`);
  const dir = storeDir(options.dir);
  checkSafeDirectory(dir);
  return withStoreLock(dir, () => {
    const path = join(dir, `${id}.hpk`);
    let target: WithdrawnPatch['target'];
    let present = false;
    try {
      lstatSync(path);
      present = true;
      const pkg = decodePackage(readStoreFile(path, MAX_PACKAGE_SIZE));
      target = { name: pkg.plan.target.name, buildId: pkg.plan.target.buildId };
    } catch {
      /* absent or damaged: withdraw by id alone */
    }
    const wd = join(dir, 'withdrawn');
    const tomb = join(wd, `${id}.json`);
    let tombExists = false;
    try {
      lstatSync(tomb);
      tombExists = true;
    } catch {
      /* none */
    }
    if (!present && tombExists) return { id, status: 'already-withdrawn' as const };
    if (!present) throw new HotpatchError('STORE_NOT_FOUND', `patch ${id} is not in the store ${dir} (see \`hotpatch store list\`)`);
    ensureDirectory(wd);
    const w: WithdrawnPatch = { id, withdrawnAt: new Date().toISOString(), ...(target ? { target } : {}) };
    writeStoreFile(wd, `${id}.json`, new TextEncoder().encode(`${JSON.stringify(w)}\n`));
    unlinkSync(path);
    fsyncDir(dir);
    return { id, status: 'withdrawn' as const };
  });
}

/**
 * Reads the store, checking every package again (see the module comment). A missing store
 * directory is an empty store. Never throws for a bad file: it is listed in `invalid`.
 */
export function readStore(options: StoreOptions = {}): StoreContents {
  const dir = storeDir(options.dir);
  const out: StoreContents = { dir, packages: [], invalid: [], withdrawn: [] };
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return out;
    throw e;
  }
  checkSafeDirectory(dir);
  const keys = loadTrustedKeySet(options).keys;
  for (const n of names.sort()) {
    if (n.startsWith('.') || n === 'withdrawn') continue;
    const m = PACKAGE_FILE.exec(n);
    const path = join(dir, n);
    if (!m) {
      out.invalid.push({ file: path, code: 'STORE_FILE_INVALID', reason: 'not a package name (ID.hpk)' });
      continue;
    }
    try {
      const bytes = readStoreFile(path, MAX_PACKAGE_SIZE);
      const pkg = decodePackage(bytes);
      if (pkg.id !== m[1]) throw new HotpatchError('STORE_FILE_INVALID', `holds patch ${pkg.id}, not ${m[1]}`);
      const verdict = requireTrusted(pkg, keys);
      out.packages.push({ id: pkg.id, path, pkg, bytes, sha256: sha256(bytes), verdict, addedAt: lstatSync(path).mtimeMs });
    } catch (e) {
      const err = e as { code?: unknown; message?: string };
      out.invalid.push({ file: path, code: typeof err.code === 'string' ? err.code : 'STORE_FILE_INVALID', reason: err.message ?? String(e) });
    }
  }
  out.packages.sort((a, b) => a.addedAt - b.addedAt || (a.id < b.id ? -1 : 1));
  let tombs: string[] = [];
  try {
    tombs = readdirSync(join(dir, 'withdrawn'));
  } catch {
    /* none */
  }
  for (const t of tombs.sort()) {
    const m = /^([0-9a-f]{16})\.json$/.exec(t);
    if (!m) continue;
    try {
      const w = JSON.parse(new TextDecoder().decode(readStoreFile(join(dir, 'withdrawn', t), 1 << 16))) as Partial<WithdrawnPatch>;
      out.withdrawn.push({ id: m[1]!, withdrawnAt: typeof w.withdrawnAt === 'string' ? w.withdrawnAt : '', ...(w.target ? { target: w.target } : {}) });
    } catch {
      out.withdrawn.push({ id: m[1]!, withdrawnAt: '' });
    }
  }
  // A package stored again wins over an older tombstone.
  out.withdrawn = out.withdrawn.filter((w) => !out.packages.some((p) => p.id === w.id));
  return out;
}
