/**
 * Writing files as root without being redirected by another user's links.
 *
 * - {@link writeFileAtomic}: the directory is walked with {@link checkPath} (every component owned
 *   by root or us; only a sticky final directory may be writable by others, and only when not
 *   `privateDir`); the new content goes to a temporary file beside the target with an unpredictable
 *   name, created with O_CREAT|O_EXCL|O_NOFOLLOW (a planted link or file makes it fail, never
 *   write through), owner and mode are set on the descriptor (fchown/fchmod, never through a path),
 *   then it is renamed over the target (rename replaces a planted link, it does not follow it).
 *   A target that is a symbolic link, not a regular file, or (in a directory others can write)
 *   owned by another user is refused.
 * - {@link appendPrivateFile}: O_APPEND|O_CREAT|O_NOFOLLOW, then the opened file must be a regular
 *   file with one link, owned by root/us and not writable by others.
 * - {@link ensurePrivateDir}: creates missing components (the last one 0700) and checks the whole
 *   path; the state directory may not be writable by others at all.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fchmodSync, fchownSync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { HotpatchError } from '../errors.js';
import { checkPath, trustedOwners, unsafe, PATH_UNSAFE, TRUST_UNSAFE, type CheckedPath } from './path-check.js';

/** O_CREAT|O_EXCL|O_NOFOLLOW: create a new file, never open an existing one or follow a link. */
export const O_CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Append to a file, creating it; never through a final symbolic link nor blocking on a FIFO. */
export const O_APPEND_NOFOLLOW = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK;

const S_ISVTX = 0o1000;

/**
 * Opens `path` with `flags | O_NOFOLLOW` (a final symbolic link gives ELOOP instead of being
 * followed). Returns the descriptor.
 */
export function openNoFollow(path: string, flags: number, mode = 0o600): number {
  return openSync(path, flags | constants.O_NOFOLLOW, mode);
}

/** Options of {@link writeFileAtomic}. */
export interface AtomicWriteOptions {
  /** Permission bits (set-id bits included); default: those of the file replaced, else 0o644. */
  mode?: number;
  /** Owner; default: the owner of the file replaced (else the caller). */
  uid?: number;
  gid?: number;
  /** What the file is, for messages (default "output file"). */
  what?: string;
  /** Refuse a directory others can write even when sticky (keys, state). */
  privateDir?: boolean;
}

/** Checks the directory a file is written in; returns it resolved. Throws UnsafePathError PATH_UNSAFE. */
export function checkOutputDirectory(dir: string, what: string, privateDir = false): CheckedPath {
  return checkPath(dir, { code: PATH_UNSAFE, what: `directory of ${what}`, kind: 'directory', allowStickyFinal: !privateDir });
}

/** lstat of `path`, or undefined when nothing is there. */
export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/**
 * Checks what is at `path` before it is replaced: nothing, or a regular file that (in a directory
 * others can write) is ours. Returns its lstat.
 */
function checkReplaced(path: string, what: string, dirStat: Stats): Stats | undefined {
  const o = { code: PATH_UNSAFE, what } as const;
  const old = lstatOrUndefined(path);
  if (old === undefined) return undefined;
  if (old.isSymbolicLink()) throw unsafe(o, path, path, 'is a symbolic link', 'remove it, or pass the path of the file it points to');
  if (!old.isFile()) throw unsafe(o, path, path, 'is not a regular file', 'remove it or choose another path');
  if ((dirStat.mode & 0o022) !== 0 && (dirStat.mode & S_ISVTX) !== 0 && !trustedOwners().has(old.uid)) {
    throw unsafe(o, path, path, `is owned by uid ${old.uid} in a directory others can write`, 'remove it or choose another path');
  }
  return old;
}

/**
 * Replaces `path` atomically and safely (see the module comment): a crash leaves either the old or
 * the new file, another user's link never redirects the write. The new file keeps the old file's
 * permission bits and owner unless `options` say otherwise. Throws UnsafePathError PATH_UNSAFE.
 */
export function writeFileAtomic(path: string, bytes: Uint8Array, options: AtomicWriteOptions = {}): void {
  try {
    writeAtomically(path, bytes, options);
  } catch (e) {
    throw asOutputError(e, path, options.what ?? 'output file');
  }
}

/** A file-system error (ENOENT, EACCES, EROFS, ENOSPC, ...) as a typed error that says what to do; others unchanged. */
export function asOutputError(e: unknown, path: string, what: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (e instanceof HotpatchError || typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return e;
  const why: Record<string, string> = {
    ENOENT: 'its directory does not exist', ENOTDIR: 'a component of the path is not a directory', EACCES: 'permission denied',
    EPERM: 'operation not permitted', EROFS: 'the file system is read-only', ENOSPC: 'no space left on the device', EISDIR: 'it is a directory',
  };
  return new HotpatchError('OUTPUT_UNWRITABLE', `cannot write ${what} ${path}: ${why[code] ?? code}; choose a path in an existing directory you can write`, { cause: e });
}

function writeAtomically(path: string, bytes: Uint8Array, options: AtomicWriteOptions): void {
  const what = options.what ?? 'output file';
  const dir = checkOutputDirectory(dirname(resolve(path)), what, options.privateDir ?? false);
  const target = join(dir.path, basename(path));
  const old = checkReplaced(target, what, dir.stat);
  const mode = options.mode ?? (old ? old.mode & 0o7777 : 0o644);
  const uid = options.uid ?? old?.uid;
  const gid = options.gid ?? old?.gid;
  const tmp = join(dir.path, `.${basename(path)}.tmp-${randomBytes(12).toString('hex')}`);
  const fd = openSync(tmp, O_CREATE_NEW, 0o600);
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
    renameSync(tmp, target);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // Already renamed or never created.
    }
    throw e;
  }
  fsyncDirectory(dir.path);
}

/**
 * Appends `text` to a private file (a log or state journal), creating it with mode 0600. Refuses
 * (UnsafePathError PATH_UNSAFE, nothing written) a symbolic link, a file with more than one hard
 * link, one owned by another user or writable by others, or a directory others control.
 */
export function appendPrivateFile(path: string, text: string, what = 'log file'): void {
  const dir = checkOutputDirectory(dirname(resolve(path)), what);
  const target = join(dir.path, basename(path));
  const o = { code: PATH_UNSAFE, what } as const;
  if (lstatOrUndefined(target)?.isSymbolicLink()) throw unsafe(o, target, target, 'is a symbolic link', 'remove it; hotpatch never writes through links');
  let fd: number;
  try {
    fd = openSync(target, O_APPEND_NOFOLLOW, 0o600); // O_NOFOLLOW: a link planted after the check fails too
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw unsafe(o, target, target, 'is a symbolic link', 'remove it; hotpatch never writes through links');
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw unsafe(o, target, target, 'is not a regular file', 'remove it or choose another path');
    if (st.nlink !== 1) throw unsafe(o, target, target, `has ${st.nlink} hard links`, 'move it away (a hard link may point to another file)');
    if (!trustedOwners().has(st.uid)) throw unsafe(o, target, target, `is owned by uid ${st.uid}`, 'remove it or choose another path');
    if ((st.mode & 0o022) !== 0) throw unsafe(o, target, target, `is writable by others (mode 0${(st.mode & 0o777).toString(8)})`, `run \`chmod go-w ${target}\``);
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}

/**
 * Makes sure `dir` exists as a directory that only root and us can change (missing components are
 * created, the last with mode 0700) and returns its resolved path. Throws UnsafePathError
 * (TRUST_UNSAFE: what is kept there is trusted later) when another user could change it.
 */
export function ensurePrivateDir(dir: string, what: string): string {
  const abs = resolve(dir);
  const missing: string[] = [];
  for (let p = abs; lstatOrUndefined(p) === undefined; p = dirname(p)) missing.unshift(p);
  for (const p of missing) {
    try {
      mkdirSync(p, { mode: p === abs ? 0o700 : 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  return checkPath(abs, { code: TRUST_UNSAFE, what, kind: 'directory' }).path;
}

/** fsyncs a directory so a rename in it is durable; file systems that cannot are tolerated. */
export function fsyncDirectory(dir: string): void {
  try {
    const dfd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some file systems cannot fsync a directory; the rename itself is still atomic.
  }
}
