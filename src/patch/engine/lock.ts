/**
 * One patcher per process: a lock file per target PID, created with O_EXCL. It holds the owner's
 * PID and start time; a lock whose owner no longer exists (killed patcher) is stale and taken over.
 * (Node has no flock(); O_EXCL + owner liveness is the portable equivalent for one machine.)
 * Locks live in HOTPATCH_LOCK_DIR, default /run/hotpatch.
 */
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { HotpatchError } from '../../errors.js';
import { readProcStat } from '../../process/index.js';

function lockDir(): string {
  return process.env.HOTPATCH_LOCK_DIR ?? '/run/hotpatch';
}

function startTimeOf(pid: number): bigint | undefined {
  try {
    const st = readProcStat(pid);
    return st.state === 'Z' || st.state === 'X' ? undefined : st.startTime;
  } catch {
    return undefined;
  }
}

/** Our own start time, read once (it never changes). */
let ownStart: bigint | undefined;

/** A held lock; release() it in a finally block. */
export interface ProcessLock {
  readonly path: string;
  release(): void;
}

/**
 * Takes the lock of target `pid` (and its start time, so a reused pid gets a fresh lock).
 * Throws HotpatchError(PROCESS_LOCKED) when another live hotpatch process holds it.
 */
export function lockProcess(pid: number, targetStartTime: bigint): ProcessLock {
  const dir = lockDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `${pid}-${targetStartTime}.lock`);
  ownStart ??= startTimeOf(process.pid) ?? 0n;
  const me = `${process.pid} ${ownStart}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o600);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EEXIST') throw e;
      let owner = '';
      try {
        owner = readFileSync(path, 'utf8');
      } catch {
        continue; // released meanwhile
      }
      const [ownerPid, ownerStart] = owner.trim().split(' ');
      const alive = ownerPid !== undefined && /^\d+$/.test(ownerPid) && startTimeOf(Number(ownerPid))?.toString() === ownerStart;
      if (alive) {
        throw new HotpatchError(
          'PROCESS_LOCKED',
          `another hotpatch process (pid ${ownerPid}) is working on process ${pid}; wait for it to finish (lock ${path})`,
        );
      }
      // Stale: move it aside atomically so two patchers cannot both break the same lock.
      try {
        renameSync(path, `${path}.stale.${process.pid}`);
        unlinkSync(`${path}.stale.${process.pid}`);
      } catch {
        /* another patcher broke it first */
      }
      continue;
    }
    try {
      writeSync(fd, me);
    } finally {
      closeSync(fd);
    }
    let released = false;
    return {
      path,
      release() {
        if (released) return;
        released = true;
        try {
          unlinkSync(path);
        } catch {
          /* already gone */
        }
      },
    };
  }
  throw new HotpatchError('PROCESS_LOCKED', `cannot take the hotpatch lock of process ${pid} (${path}); retry`);
}
