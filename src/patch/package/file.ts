/** Reading package files from disk (size-checked before reading) and replacing files atomically. */
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { PackageError } from '../../errors.js';
import { decodePackage, MAX_PACKAGE_SIZE, type PatchPackage } from './codec.js';

/**
 * Reads a package file: refuses a file over MAX_PACKAGE_SIZE before reading it, then decodes.
 * Returns the bytes too (signing and hashing need them). Throws PackageError (PACKAGE_NOT_FOUND
 * or a decode error).
 */
export function readPackageFile(path: string): { pkg: PatchPackage; bytes: Uint8Array } {
  // The package need not lie somewhere safe: it is trusted only through its signature, checked on
  // these very bytes (docs/security.md). One descriptor, checked with fstat, so a file swapped for
  // a FIFO or a huge file after a check is never read; O_NONBLOCK so opening a FIFO cannot hang.
  let bytes: Uint8Array;
  let fd: number | undefined;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PackageError('PACKAGE_NOT_FOUND', `${path} is not a regular file; pass the path of a .hpk package`);
    if (st.size > MAX_PACKAGE_SIZE) {
      throw new PackageError('PACKAGE_TOO_LARGE', `${path} is ${st.size} bytes, more than the ${MAX_PACKAGE_SIZE}-byte package limit`);
    }
    bytes = new Uint8Array(readFileSync(fd));
    if (bytes.byteLength > MAX_PACKAGE_SIZE) {
      throw new PackageError('PACKAGE_TOO_LARGE', `${path} grew past the ${MAX_PACKAGE_SIZE}-byte package limit while it was read`);
    }
  } catch (e) {
    if (e instanceof PackageError) throw e;
    throw new PackageError('PACKAGE_NOT_FOUND', `cannot read package ${path}: ${(e as Error).message}`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
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

/**
 * Atomic, link-safe replacement of a file (package output of `build -o` and `sign`, cold installs):
 * see src/fs/safe-write.ts.
 */
export { writeFileAtomic, fsyncDirectory, type AtomicWriteOptions } from '../../fs/index.js';
