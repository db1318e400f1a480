/**
 * Helpers for file-system boundary tests: a root-owned 0755 base directory (not /tmp itself), and
 * acting as another local user (`nobody`, uid 65534) with setpriv.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The other local user: nobody. */
export const ATTACKER_UID = 65534;
export const ATTACKER_GID = 65534;

/** A fresh root-owned 0755 directory under /tmp (reachable by the attacker, not writable by them). */
export function baseDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, 0o755);
  return d;
}

/** Makes `dir` with exactly `mode` (umask ignored). */
export function dirWithMode(dir: string, mode: number): string {
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, mode);
  return dir;
}

/** Runs a command as the attacker (uid/gid 65534, no supplementary groups). */
export function asAttacker(cmd: string, args: string[]): void {
  execFileSync('setpriv', [`--reuid=${ATTACKER_UID}`, `--regid=${ATTACKER_GID}`, '--clear-groups', cmd, ...args], { stdio: 'pipe' });
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** The error a function throws (fails the test when it does not throw). */
export function thrown(fn: () => unknown): Error & { code?: string; path?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error & { code?: string; path?: string };
  }
  throw new Error('expected an error');
}
