/**
 * One patcher per process: an flock(2) on a lock file per target (PID + start time, so a reused
 * PID gets a fresh lock). The kernel drops an flock when its holder dies, so a killed patcher can
 * never leave a process locked, and two patchers can never both hold it (no stale-lock breaking).
 * The file holds the owner's PID for messages only. Locks live in HOTPATCH_LOCK_DIR, default
 * /run/hotpatch.
 */
import { closeSync, fstatSync, ftruncateSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { HotpatchError } from '../../errors.js';
import { flock, LOCK_EX, LOCK_NB } from '../../process/index.js';

function lockDir(): string {
  return process.env.HOTPATCH_LOCK_DIR ?? '/run/hotpatch';
}

/** A held lock; release() it in a finally block. */
export interface ProcessLock {
  readonly path: string;
  release(): void;
}

/** Whether `path` still names the file open as `fd` (a releasing holder unlinks it). */
function sameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = statSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

/**
 * Takes the lock of target `pid` started at `targetStartTime`. Throws HotpatchError
 * (PROCESS_LOCKED) when another live hotpatch process holds it.
 */
export function lockProcess(pid: number, targetStartTime: bigint): ProcessLock {
  const dir = lockDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `${pid}-${targetStartTime}.lock`);
  for (let attempt = 0; attempt < 10; attempt++) {
    const fd = openSync(path, 'a+', 0o600);
    const r = flock(fd, LOCK_EX | LOCK_NB);
    if (r < 0) {
      closeSync(fd);
      let owner = '';
      try {
        owner = readFileSync(path, 'utf8').trim();
      } catch {
        continue; // released meanwhile
      }
      throw new HotpatchError(
        'PROCESS_LOCKED',
        `another hotpatch process${owner ? ` (pid ${owner})` : ''} is working on process ${pid}; wait for it to finish (lock ${path})`,
      );
    }
    // The previous holder may have unlinked the file between our open and our flock: then we
    // locked an orphan inode, and must start over on the current file.
    if (!sameFile(fd, path)) {
      closeSync(fd);
      continue;
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`);
    let released = false;
    return {
      path,
      release() {
        if (released) return;
        released = true;
        // Unlink while still holding the lock, then drop it: whoever opened the old file retries.
        try {
          unlinkSync(path);
        } catch {
          /* already gone */
        }
        closeSync(fd);
      },
    };
  }
  throw new HotpatchError('PROCESS_LOCKED', `cannot take the hotpatch lock of process ${pid} (${path}); retry`);
}
