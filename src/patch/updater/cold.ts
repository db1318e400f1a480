/**
 * Cold patching: install the package's fixed file on disk so that processes started afterwards run
 * the fixed code, and roll it back.
 *
 * Install (only when the file holds the package's target build, checked by build-id):
 * 1. the original is kept as a hard link `.NAME.hotpatch-PATCHID.orig` beside it (the very inode
 *    running processes map, so mode, owner and content are preserved by construction);
 * 2. a state file `.NAME.hotpatch-PATCHID.json` records both build-ids, so a rollback needs
 *    neither the package nor guesswork;
 * 3. the fixed file is written beside (`.NAME.hotpatch-tmp-*`), given the original's mode and
 *    owner, fsynced, renamed over NAME, and the directory fsynced.
 * A crash at any point leaves either the original or the fixed file at NAME, never a mix.
 * Rollback renames the backup over NAME (atomic), only while NAME still holds the fixed build.
 *
 * File-system boundaries (docs/security.md): NAME must not be a symbolic link and its directory,
 * all the way up, must be changeable only by root or us (a sticky directory such as /tmp is
 * accepted: others cannot touch entries they do not own). Nothing is written through a path that
 * could be a planted link: the fixed file and the state file are new inodes renamed into place
 * (src/fs/safe-write.ts), whatever is at the backup name is unlinked (never followed) before the
 * hard link is made, the backup restored must be a regular file, and the state file is read with
 * O_NOFOLLOW and must have one link and belong to root, us or NAME's owner. UnsafePathError
 * PATH_UNSAFE otherwise, before anything is changed.
 */
import { closeSync, fstatSync, linkSync, openSync, renameSync, unlinkSync, type Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { HotpatchError, PackageError, RefusedError } from '../../errors.js';
import { checkOutputDirectory, lstatOrUndefined, O_READ_NOFOLLOW, trustedOwners, unsafe, PATH_UNSAFE } from '../../fs/index.js';
import { parseElf } from '../../elf/index.js';
import { readElfSummaryFromFile, readFileRange } from '../../process/index.js';
import { extractColdFile, fsyncDirectory, writeFileAtomic, type PatchPackage } from '../package/index.js';

/** What a cold operation did to one file. */
export type ColdStatus = 'installed' | 'already-installed' | 'would-install' | 'restored' | 'not-installed' | 'would-restore';

/** Result of a cold operation on one file. */
export interface ColdResult {
  path: string;
  status: ColdStatus;
  /** Where the original file is kept while the cold patch is installed. */
  backupPath: string;
  /** The state file beside it (both build-ids, the patch id). */
  statePath: string;
}

/** Content of the state file kept beside a cold-patched file. */
export interface ColdState {
  patchId: string;
  path: string;
  /** Build-id of the original (the package's target build). */
  targetBuildId: string;
  /** Build-id of the installed fixed file. */
  fixedBuildId: string;
  backupPath: string;
  installedAt: string;
}

/** Build-id of the ELF file at `path` (headers and notes only are read), or null. */
export function readFileBuildId(path: string): string | null {
  return readElfSummaryFromFile(path)?.buildId ?? null;
}

/** Backup path of the original of `path` while cold patch `patchId` is installed. */
export function coldBackupPath(path: string, patchId: string): string {
  return join(dirname(path), `.${basename(path)}.hotpatch-${patchId}.orig`);
}

/** State file of cold patch `patchId` on `path`. */
export function coldStatePath(path: string, patchId: string): string {
  return join(dirname(path), `.${basename(path)}.hotpatch-${patchId}.json`);
}

/** Reads the state file of cold patch `patchId` on `path`, or undefined when there is none. */
export function readColdState(path: string, patchId: string): ColdState | undefined {
  const p = coldStatePath(path, patchId);
  const text = readStateText(path, p);
  if (text === undefined) return undefined;
  try {
    const s = JSON.parse(text) as Partial<ColdState>;
    if (typeof s.targetBuildId !== 'string' || typeof s.fixedBuildId !== 'string') throw new Error('missing build-ids');
    return s as ColdState;
  } catch (e) {
    throw new HotpatchError('COLD_STATE_INVALID', `${p} is damaged (${(e as Error).message}); pass the package with --package to roll back`, { cause: e });
  }
}

const WHAT = 'cold-patched file';

/**
 * Checks that the file to cold-patch is no symbolic link and lies in a directory only root and we
 * can change. Throws UnsafePathError PATH_UNSAFE; returns its lstat (undefined when missing).
 */
export function checkColdTarget(path: string): Stats | undefined {
  checkOutputDirectory(dirname(path), WHAT);
  const st = lstatOrUndefined(path);
  if (st?.isSymbolicLink()) throw unsafe({ code: PATH_UNSAFE, what: WHAT }, path, path, 'is a symbolic link', 'pass the path of the file it points to (`realpath` prints it)');
  return st;
}

/** Reads the state file without following links; it must have one link and a trusted owner. */
function readStateText(path: string, statePath: string): string | undefined {
  const o = { code: PATH_UNSAFE, what: 'cold patch state file' } as const;
  let fd: number;
  try {
    fd = openSync(statePath, O_READ_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw unsafe(o, statePath, statePath, 'is a symbolic link', 'remove it; hotpatch never creates one');
    throw e;
  }
  try {
    const st = fstatSync(fd);
    const owners = new Set([...trustedOwners(), lstatOrUndefined(path)?.uid ?? 0]);
    if (!st.isFile() || st.nlink !== 1) throw unsafe(o, statePath, statePath, st.isFile() ? `has ${st.nlink} hard links` : 'is not a regular file', 'remove it');
    if (!owners.has(st.uid)) throw unsafe(o, statePath, statePath, `is owned by uid ${st.uid}`, 'remove it');
    if (st.size > 1024 * 1024) throw unsafe(o, statePath, statePath, `is ${st.size} bytes`, 'remove it');
    return Buffer.from(readFileRange(fd, 0, st.size)).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Removes whatever is at `p` (a planted link is unlinked, never followed). */
function unlinkIfPresent(p: string): void {
  try {
    unlinkSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

function resultFor(path: string, patchId: string, status: ColdStatus): ColdResult {
  return { path, status, backupPath: coldBackupPath(path, patchId), statePath: coldStatePath(path, patchId) };
}

/**
 * Checks that the cold patch of `pkg` can be installed on `path`: returns 'target' (it holds the
 * target build) or 'fixed' (already installed); throws RefusedError COLD_WRONG_FILE otherwise and
 * HotpatchError COLD_NO_PAYLOAD when the package carries no fixed file.
 */
export function checkColdFile(path: string, pkg: PatchPackage): 'target' | 'fixed' {
  if (!pkg.cold) {
    throw new HotpatchError('COLD_NO_PAYLOAD', `package ${pkg.id} carries no fixed file: rebuild it with \`hotpatch build ... --cold\` to use --cold`);
  }
  if (checkColdTarget(path) === undefined) throw new RefusedError('COLD_WRONG_FILE', `${path} does not exist; pass the installed file with --file PATH; nothing was changed`);
  const current = readFileBuildId(path);
  if (current !== null && current === pkg.cold.buildId.toLowerCase()) return 'fixed';
  if (current === null || current !== pkg.plan.target.buildId.toLowerCase()) {
    throw new RefusedError(
      'COLD_WRONG_FILE',
      `${path} is not the build this patch was made for (build-id ${current ?? 'none'}, expected ${pkg.plan.target.buildId}); nothing was changed`,
    );
  }
  return 'target';
}

/**
 * Installs the fixed file of `pkg` at `path` (see the module comment). Idempotent:
 * 'already-installed' when `path` holds the fixed build. `dryRun` checks and reports 'would-install'.
 */
export function installCold(path: string, pkg: PatchPackage, options: { dryRun?: boolean } = {}): ColdResult {
  const state = checkColdFile(path, pkg);
  if (state === 'fixed') return resultFor(path, pkg.id, 'already-installed');
  const cold = pkg.cold!;
  const bytes = extractColdFile(cold);
  let fixedId: string | null | undefined;
  try {
    fixedId = parseElf(bytes).buildId;
  } catch (e) {
    throw new PackageError('PACKAGE_CORRUPT', `the fixed file in package ${pkg.id} is not a valid ELF file; the package is damaged`, { cause: e });
  }
  if (fixedId !== cold.buildId.toLowerCase()) {
    throw new PackageError('PACKAGE_CORRUPT', `the fixed file in package ${pkg.id} has build-id ${fixedId ?? 'none'}, but the package declares ${cold.buildId}`);
  }
  if (options.dryRun) return resultFor(path, pkg.id, 'would-install');
  const st = checkColdTarget(path);
  if (st === undefined || !st.isFile()) throw new RefusedError('COLD_WRONG_FILE', `${path} is not a regular file; nothing was changed`);
  const backup = coldBackupPath(path, pkg.id);
  unlinkIfPresent(backup); // left by an interrupted install (or planted): re-link the current original
  try {
    linkSync(path, backup); // link(2) never follows a symbolic link at either name
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw unsafe({ code: PATH_UNSAFE, what: 'cold patch backup' }, backup, backup, 'was created by someone else during the install', 'check who writes in this directory');
    }
    throw e;
  }
  const info: ColdState = {
    patchId: pkg.id, path, targetBuildId: pkg.plan.target.buildId.toLowerCase(), fixedBuildId: cold.buildId.toLowerCase(),
    backupPath: backup, installedAt: new Date().toISOString(),
  };
  writeFileAtomic(coldStatePath(path, pkg.id), new TextEncoder().encode(`${JSON.stringify(info, null, 2)}\n`), { mode: 0o600, uid: st.uid, gid: st.gid });
  writeFileAtomic(path, bytes, { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid });
  return resultFor(path, pkg.id, 'installed');
}

/**
 * Rolls cold patch `patchId` back on `path`: the kept original is renamed over it, only while
 * `path` holds the fixed build. The build-ids come from `pkg` when given, else from the state file.
 * 'not-installed' when `path` already holds the original (leftovers are cleaned up).
 */
export function removeCold(path: string, patchId: string, options: { pkg?: PatchPackage; dryRun?: boolean } = {}): ColdResult {
  const statePath = coldStatePath(path, patchId);
  const backup = coldBackupPath(path, patchId);
  const here = checkColdTarget(path);
  let targetId: string;
  let fixedId: string;
  if (options.pkg) {
    if (!options.pkg.cold) throw new HotpatchError('COLD_NO_PAYLOAD', `package ${options.pkg.id} carries no fixed file, so it never installed one`);
    targetId = options.pkg.plan.target.buildId.toLowerCase();
    fixedId = options.pkg.cold.buildId.toLowerCase();
  } else {
    const s = readColdState(path, patchId);
    if (!s) {
      throw new HotpatchError(
        'COLD_NOT_FOUND',
        `no cold patch ${patchId} is recorded for ${path} (no ${statePath}); pass the installed file with --file PATH, or the package with --package PKG`,
      );
    }
    targetId = s.targetBuildId;
    fixedId = s.fixedBuildId;
  }
  const current = here !== undefined ? readFileBuildId(path) : null;
  if (current === targetId) {
    if (!options.dryRun) for (const p of [backup, statePath]) unlinkIfPresent(p);
    return resultFor(path, patchId, 'not-installed');
  }
  if (current !== fixedId) {
    throw new RefusedError(
      'COLD_WRONG_FILE',
      `${path} holds neither the fixed build ${fixedId} nor the original ${targetId} (build-id ${current ?? 'none'}): it was replaced since; nothing was changed`,
    );
  }
  const kept = lstatOrUndefined(backup);
  if (kept?.isSymbolicLink()) throw unsafe({ code: PATH_UNSAFE, what: 'cold patch backup' }, backup, backup, 'is a symbolic link', 'remove it and reinstall the original from your package manager');
  if (kept === undefined || !kept.isFile() || readFileBuildId(backup) !== targetId) {
    throw new HotpatchError('COLD_BACKUP_MISSING', `the original of ${path} is gone or changed (expected it at ${backup}); reinstall it from your package manager`);
  }
  if (options.dryRun) return resultFor(path, patchId, 'would-restore');
  renameSync(backup, path);
  fsyncDirectory(dirname(path));
  unlinkIfPresent(statePath);
  return resultFor(path, patchId, 'restored');
}
