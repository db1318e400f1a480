/**
 * The guard's persistent state (a directory, default /var/lib/hotpatch/guard):
 * - `identities.json`: identity of each module file the first time it was seen (build-id, sha256,
 *   size), so a file replaced or modified later is found even when memory equals the new file;
 * - `baselines.json`: credentials of each process the first time it was seen, keyed by
 *   pid + start time (a pid reused by a new process is a new key);
 * - `restores.jsonl`: one line per `restore` action (what was written back, where, when).
 * `verify` reads the state and never writes it unless asked to (`record: true`); the guard writes it.
 *
 * The state is trusted (a baseline decides what counts as tampering), so the directory must be
 * changeable only by root or the invoking user, all the way up (created 0700 when missing), and its
 * files are read and written without following links: a state file that is a symbolic link, has
 * more than one hard link or belongs to another user is refused (UnsafePathError TRUST_UNSAFE when
 * read, PATH_UNSAFE when written), see src/fs/ and docs/security.md.
 */
import { join } from 'node:path';
import { HotpatchError } from '../errors.js';
import { appendPrivateFile, ensurePrivateDir, readPrivateFile, writeFileAtomic } from '../fs/index.js';

export { DEFAULT_STATE_DIR } from './defaults.js';
export const GUARD_BAD_STATE = 'GUARD_BAD_STATE';

export interface RecordedIdentity {
  buildId: string | null;
  sha256: string;
  size: number;
  /** ISO time the file was first seen. */
  firstSeen: string;
}

/** Credentials snapshot (ids, capabilities, no_new_privs, seccomp). */
export interface CredentialBaseline {
  exe: string;
  uid: [number, number, number, number];
  gid: [number, number, number, number];
  groups: number[];
  capPrm: string;
  capEff: string;
  capBnd: string;
  capAmb: string;
  noNewPrivs: boolean;
  seccomp: number;
  firstSeen: string;
}

export interface RestoreRecord {
  time: string;
  pid: number;
  code: number;
  module: string | null;
  address: string;
  bytes: string;
  previous: string;
}

function readJson<T>(path: string, fallback: T): T {
  const bytes = readPrivateFile(path, 'guard state file');
  if (bytes === undefined) return fallback;
  const text = bytes.toString('utf8');
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new HotpatchError(GUARD_BAD_STATE, `guard state file ${path} is corrupt (${(e as Error).message}); move it away to start a fresh baseline`, { cause: e });
  }
}

function writeJsonAtomic(path: string, value: unknown): void {
  writeFileAtomic(path, new TextEncoder().encode(`${JSON.stringify(value, null, 1)}\n`), {
    mode: 0o600, uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0, what: 'guard state file', privateDir: true,
  });
}

const STATE_DIR_WHAT = 'guard state directory';

/** Loads and saves the guard state. Without a directory it keeps everything in memory. */
export class GuardState {
  readonly identities: Record<string, RecordedIdentity>;
  readonly baselines: Record<string, CredentialBaseline>;
  private dirty = false;

  constructor(
    readonly dir: string | null,
    private readonly writable: boolean,
  ) {
    this.identities = dir === null ? {} : readJson(join(dir, 'identities.json'), {});
    this.baselines = dir === null ? {} : readJson(join(dir, 'baselines.json'), {});
  }

  /** The identity recorded for `path`, recording `id` as first seen when there is none. */
  firstSeenIdentity(path: string, id: Omit<RecordedIdentity, 'firstSeen'>): RecordedIdentity {
    const known = this.identities[path];
    if (known !== undefined) return known;
    const rec = { ...id, firstSeen: new Date().toISOString() };
    this.identities[path] = rec;
    this.dirty = true;
    return rec;
  }

  /** The baseline of process `key` (pid:starttime), recording `now` when there is none. */
  firstSeenCredentials(key: string, now: Omit<CredentialBaseline, 'firstSeen'>): CredentialBaseline {
    const known = this.baselines[key];
    if (known !== undefined) return known;
    const rec = { ...now, firstSeen: new Date().toISOString() };
    this.baselines[key] = rec;
    this.dirty = true;
    return rec;
  }

  /** Forgets baselines of processes that no longer exist. */
  pruneBaselines(liveKeys: ReadonlySet<string>): void {
    for (const k of Object.keys(this.baselines)) {
      if (!liveKeys.has(k)) {
        delete this.baselines[k];
        this.dirty = true;
      }
    }
  }

  recordRestore(r: RestoreRecord): void {
    if (this.dir === null || !this.writable) return;
    const dir = ensurePrivateDir(this.dir, STATE_DIR_WHAT);
    appendPrivateFile(join(dir, 'restores.jsonl'), `${JSON.stringify(r)}\n`, 'guard restore log');
  }

  /** Writes changed state to disk (no-op for read-only or in-memory state). */
  save(): void {
    if (!this.dirty || this.dir === null || !this.writable) return;
    const dir = ensurePrivateDir(this.dir, STATE_DIR_WHAT);
    writeJsonAtomic(join(dir, 'identities.json'), this.identities);
    writeJsonAtomic(join(dir, 'baselines.json'), this.baselines);
    this.dirty = false;
  }
}
