/**
 * Reading files whose content the tools trust (public keys, policy, guard state) only when no other
 * user can change them: the path is walked with {@link checkPath}, then opened without following a
 * symbolic link (O_NOFOLLOW) or blocking on a FIFO (O_NONBLOCK), and the opened file must be the
 * inode the walk checked (device and inode compared), so a component swapped after the walk is
 * never read.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, type Stats } from 'node:fs';
import { readFileRange } from '../process/inspect/memory.js';
import { checkPath, unsafe, PATH_UNSAFE, TRUST_UNSAFE } from './path-check.js';

/** Default size limit of a trusted file (keys and policies are small). */
export const MAX_TRUSTED_FILE_SIZE = 16 * 1024 * 1024;

/** Flags for reading a file without following a final symbolic link. */
export const O_READ_NOFOLLOW = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Options of {@link readTrustedFile}. */
export interface TrustedReadOptions {
  /** What the file is, for messages ("trusted key", "policy file"). */
  what: string;
  /** Error code when unsafe (default TRUST_UNSAFE). */
  code?: typeof TRUST_UNSAFE | typeof PATH_UNSAFE;
  /**
   * A private file (guard state): the final component must not be a symbolic link at all (even a
   * safe one) and must have exactly one hard link.
   */
  private?: boolean;
  /** Size limit in bytes (default MAX_TRUSTED_FILE_SIZE). */
  maxBytes?: number;
}

function readAll(fd: number, st: Stats, max: number, path: string): Buffer {
  if (st.size > max) throw Object.assign(new Error(`${path} is ${st.size} bytes, more than the ${max}-byte limit`), { code: 'EFBIG' });
  const bytes = readFileRange(fd, 0, st.size);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Reads a file that only root and the invoking user can change (see the module comment). Throws
 * UnsafePathError (TRUST_UNSAFE unless `code`) when another user could change it, and the file
 * system's error (ENOENT, EACCES, ...) when it cannot be read.
 */
export function readTrustedFile(path: string, options: TrustedReadOptions): Buffer {
  const o = { code: options.code ?? TRUST_UNSAFE, what: options.what, kind: 'file' as const };
  const checked = checkPath(path, o);
  if (options.private === true && checked.stat.nlink !== 1) {
    throw unsafe(o, path, checked.path, `has ${checked.stat.nlink} hard links`, `move it away (a hard link may point to another user's file)`);
  }
  let fd: number;
  try {
    // A private file is opened by the name given, so a final symbolic link fails (ELOOP).
    fd = openSync(options.private === true ? path : checked.path, O_READ_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw unsafe(o, path, path, 'is a symbolic link', 'remove it; hotpatch never creates one');
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (st.dev !== checked.stat.dev || st.ino !== checked.stat.ino || !st.isFile()) {
      throw unsafe(o, path, checked.path, 'changed while it was being checked', 'check who changes it');
    }
    return readAll(fd, st, options.maxBytes ?? MAX_TRUSTED_FILE_SIZE, checked.path);
  } finally {
    closeSync(fd);
  }
}

/**
 * Lists a directory of trust material: the directory and every directory above it must be safe
 * (a sticky directory others can write is not: they could add entries). Returns the resolved
 * directory and its entry names (sorted). Throws like {@link readTrustedFile}.
 */
export function listTrustedDirectory(dir: string, what: string): { path: string; names: string[] } {
  const checked = checkPath(dir, { code: TRUST_UNSAFE, what, kind: 'directory' });
  return { path: checked.path, names: readdirSync(checked.path).sort() };
}

/**
 * Reads a private file (guard state): like {@link readTrustedFile}, no final symbolic link and one
 * hard link only; undefined when it does not exist.
 */
export function readPrivateFile(path: string, what: string): Buffer | undefined {
  try {
    return readTrustedFile(path, { what, private: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
