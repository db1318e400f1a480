/**
 * Who can change a path: the StrictModes walk (as sshd does for authorized_keys), from / down to
 * the last component, resolving symbolic links by hand so that every link and every directory on
 * the way is checked too.
 *
 * The attacker is another local user (not root, not the invoking user). A path is *safe* when no
 * such user can change what it names:
 * - every component (directory, link, final file) is owned by root or the effective uid;
 * - the final component is not writable by group or others;
 * - a directory on the way is not writable by group or others, except a sticky one (/tmp): there
 *   others can add entries but cannot rename or remove entries they do not own, and the entry we
 *   go through is ours (checked above). A sticky directory does not make an entry owned by another
 *   user safe, and as the final directory it is accepted only when the caller says so
 *   (`allowStickyFinal`, for files written by atomic rename; never for trust material);
 * - a symbolic link is followed only when the link itself is owned by root/us and sits in a safe
 *   directory (others cannot plant or swap it); its target is then walked with the same rules.
 * Returns the resolved path and the final lstat; callers open that path with O_NOFOLLOW and
 * compare device and inode, so nothing is read through a component swapped after the walk.
 */
import { lstatSync, readlinkSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { UnsafePathError } from '../errors.js';

/** Trust material (keys, policy, guard state) that may be changed by others. */
export const TRUST_UNSAFE = 'TRUST_UNSAFE';
/** A file the tools write, or the directory it is written in, that others control. */
export const PATH_UNSAFE = 'PATH_UNSAFE';

/** S_ISVTX: the sticky bit (only an entry's owner, or the directory's, may rename or remove it). */
const S_ISVTX = 0o1000;
/** Write permission for group or others. */
const GROUP_OTHER_WRITE = 0o022;
/** Linux MAXSYMLINKS. */
const MAX_SYMLINKS = 40;

/** Options of {@link checkPath}. */
export interface PathCheckOptions {
  /** Error code when unsafe: TRUST_UNSAFE or PATH_UNSAFE. */
  code: typeof TRUST_UNSAFE | typeof PATH_UNSAFE;
  /** What the path is, for messages ("trusted key", "policy file", "guard state directory"). */
  what: string;
  /** The final component must be a regular file or a directory. */
  kind: 'file' | 'directory';
  /** Accept a final directory writable by others when it is sticky (see the module comment). */
  allowStickyFinal?: boolean;
}

/** Result of a safe walk. */
export interface CheckedPath {
  /** The path with every symbolic link resolved (each of them checked). */
  path: string;
  /** lstat of the final component. */
  stat: Stats;
}

/** Owners that may control trust material: root and the effective uid. */
export function trustedOwners(): ReadonlySet<number> {
  return new Set([0, process.geteuid?.() ?? 0]);
}

function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

function who(mode: number): string {
  const g = (mode & 0o020) !== 0;
  const o = (mode & 0o002) !== 0;
  return g && o ? 'group and others' : g ? 'its group' : 'others';
}

function ownerText(): string {
  const euid = process.geteuid?.() ?? 0;
  return euid === 0 ? 'root' : `root or uid ${euid}`;
}

/** The typed error for one unsafe component. */
export function unsafe(options: Pick<PathCheckOptions, 'code' | 'what'>, target: string, component: string, problem: string, fix: string): UnsafePathError {
  const via = component === target ? '' : ` (via ${component})`;
  return new UnsafePathError(
    options.code,
    `refusing ${options.what} ${target}${via}: ${component} ${problem}, so another user could change it; ${fix}`,
    component,
  );
}

/** Throws unless `st` (of `component`) is owned by root or us. */
function checkOwner(o: PathCheckOptions, target: string, component: string, st: Stats, owners: ReadonlySet<number>): void {
  if (!owners.has(st.uid)) {
    throw unsafe(o, target, component, `is owned by uid ${st.uid}, not ${ownerText()}`, `run \`chown root ${component}\` (or remove it if you did not put it there)`);
  }
}

/**
 * Walks `path` from / and throws UnsafePathError (code `options.code`) naming the first component
 * another user could change. Errors of the file system (ENOENT, ENOTDIR, ELOOP) are thrown as they
 * are (a NodeJS.ErrnoException), so callers can tell "missing" from "unsafe".
 */
export function checkPath(path: string, options: PathCheckOptions): CheckedPath {
  const owners = trustedOwners();
  const target = resolve(path);
  let cur = '/';
  let curStat = lstatSync('/');
  checkOwner(options, target, '/', curStat, owners);
  const pending = target.split('/').filter((c) => c !== '' && c !== '.');
  if (pending.length === 0) {
    finalChecks(options, target, '/', curStat);
    return { path: '/', stat: curStat };
  }
  let links = 0;
  for (;;) {
    const name = pending.shift()!;
    if (name === '..') {
      // cur is fully resolved, so its parent is its lexical parent (already checked on the way).
      cur = dirname(cur);
      curStat = lstatSync(cur);
      if (pending.length === 0) {
        finalChecks(options, target, cur, curStat);
        return { path: cur, stat: curStat };
      }
      continue;
    }
    const next = join(cur, name);
    const st = lstatSync(next);
    checkOwner(options, target, next, st, owners);
    if ((curStat.mode & GROUP_OTHER_WRITE) !== 0 && (curStat.mode & S_ISVTX) === 0) {
      throw unsafe(options, target, cur, `is writable by ${who(curStat.mode)} (mode ${octal(curStat.mode)})`, `run \`chmod go-w ${cur}\``);
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) {
        throw Object.assign(new Error(`too many levels of symbolic links in ${target}`), { code: 'ELOOP' });
      }
      const link = readlinkSync(next);
      if (link.startsWith('/')) {
        cur = '/';
        curStat = lstatSync('/');
      }
      pending.unshift(...link.split('/').filter((c) => c !== '' && c !== '.'));
      if (pending.length === 0) {
        finalChecks(options, target, cur, curStat);
        return { path: cur, stat: curStat };
      }
      continue;
    }
    if (pending.length === 0) {
      finalChecks(options, target, next, st);
      return { path: next, stat: st };
    }
    if (!st.isDirectory()) throw Object.assign(new Error(`${next} is not a directory (in ${target})`), { code: 'ENOTDIR' });
    cur = next;
    curStat = st;
  }
}

function finalChecks(o: PathCheckOptions, target: string, component: string, st: Stats): void {
  if (o.kind === 'file' && !st.isFile()) {
    throw unsafe(o, target, component, 'is not a regular file', 'pass the path of a regular file');
  }
  if (o.kind === 'directory' && !st.isDirectory()) {
    throw Object.assign(new Error(`${component} is not a directory`), { code: 'ENOTDIR' });
  }
  if ((st.mode & GROUP_OTHER_WRITE) !== 0 && !(o.kind === 'directory' && o.allowStickyFinal === true && (st.mode & S_ISVTX) !== 0)) {
    throw unsafe(o, target, component, `is writable by ${who(st.mode)} (mode ${octal(st.mode)})`, `run \`chmod go-w ${component}\``);
  }
}
