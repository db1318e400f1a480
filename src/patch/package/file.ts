/** Reading package files from disk (size-checked before reading) and replacing files atomically. */
import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, fchownSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { PackageError } from '../../errors.js';
import { decodePackage, MAX_PACKAGE_SIZE, type PatchPackage } from './codec.js';

/**
 * Reads a package file: refuses a file over MAX_PACKAGE_SIZE before reading it, then decodes.
 * Returns the bytes too (signing and hashing need them). Throws PackageError (PACKAGE_NOT_FOUND
 * or a decode error).
 */
export function readPackageFile(path: string): { pkg: PatchPackage; bytes: Uint8Array } {
  let bytes: Uint8Array;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new PackageError('PACKAGE_NOT_FOUND', `${path} is not a regular file; pass the path of a .hpk package`);
    if (st.size > MAX_PACKAGE_SIZE) {
      throw new PackageError('PACKAGE_TOO_LARGE', `${path} is ${st.size} bytes, more than the ${MAX_PACKAGE_SIZE}-byte package limit`);
    }
    bytes = new Uint8Array(readFileSync(path));
  } catch (e) {
    if (e instanceof PackageError) throw e;
    throw new PackageError('PACKAGE_NOT_FOUND', `cannot read package ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return { pkg: decodePackage(bytes), bytes };
  } catch (e) {
    if (e instanceof PackageError) {
      throw new PackageError(e.code, `${path}: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/** Mode and owner of a file written by {@link writeFileAtomic}. */
export interface AtomicWriteOptions {
  /** Permission bits (set-id bits included); default: those of the file replaced, else 0o644. */
  mode?: number;
  /** Owner; default: the owner of the file replaced (else the caller). */
  uid?: number;
  gid?: number;
}

/**
 * Replaces `path` atomically: writes a temporary file beside it, fsyncs it, renames it over `path`
 * and fsyncs the directory, so a crash leaves either the old or the new file, never a mix.
 * The new file keeps the old file's permission bits and owner unless `options` say otherwise.
 */
export function writeFileAtomic(path: string, bytes: Uint8Array, options: AtomicWriteOptions = {}): void {
  let old: { mode: number; uid: number; gid: number } | undefined;
  try {
    old = statSync(path);
  } catch {
    // New file.
  }
  const mode = options.mode ?? (old ? old.mode & 0o7777 : 0o644);
  const uid = options.uid ?? old?.uid;
  const gid = options.gid ?? old?.gid;
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    try {
      let off = 0;
      while (off < bytes.byteLength) off += writeSync(fd, bytes, off, bytes.byteLength - off);
      if (uid !== undefined && gid !== undefined) fchownSync(fd, uid, gid);
      fchmodSync(fd, mode); // after chown: chown clears set-id bits
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // Already renamed or never created.
    }
    throw e;
  }
  fsyncDirectory(dirname(path));
}

/** fsyncs a directory so a rename in it is durable; file systems that cannot are tolerated. */
export function fsyncDirectory(dir: string): void {
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some file systems cannot fsync a directory; the rename itself is still atomic.
  }
}
