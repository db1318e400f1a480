/** Reading package files from disk (size-checked before reading) and replacing files atomically. */
import { readFileSync, statSync } from 'node:fs';
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

/**
 * Atomic, link-safe replacement of a file (package output of `build -o` and `sign`, cold installs):
 * see src/fs/safe-write.ts.
 */
export { writeFileAtomic, fsyncDirectory, type AtomicWriteOptions } from '../../fs/index.js';
