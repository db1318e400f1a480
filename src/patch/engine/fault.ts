/**
 * Fault injection for crash-safety tests: when the environment variable HOTPATCH_FAULT names a
 * step, the patcher kills itself with SIGKILL when it reaches that step — exactly what an operator's
 * `kill -9`, the OOM killer or a power-cut of the patcher would do. Nothing else changes behaviour.
 * Honoured only in a development checkout (src/internal/fault-gate.ts).
 */
import { readFileSync } from 'node:fs';
import { faultInjectionAllowed } from '../../internal/fault-gate.js';

/** Every named step of apply, in order. */
export const APPLY_FAULT_STEPS = [
  'apply:locked',
  'apply:arena-mapped',
  'apply:code-written',
  'apply:record-pending',
  'apply:frozen',
  'apply:padding-written',
  'apply:first-site-switched',
  'apply:sites-written',
  'apply:thawed',
  'apply:committed',
] as const;

/** Every named step of remove, in order. */
export const REMOVE_FAULT_STEPS = [
  'remove:locked',
  'remove:record-removing',
  'remove:frozen',
  'remove:first-site-restored',
  'remove:sites-restored',
  'remove:thawed',
  'remove:committed',
] as const;

export type FaultStep = (typeof APPLY_FAULT_STEPS)[number] | (typeof REMOVE_FAULT_STEPS)[number];

/** Name of the environment variable read by {@link faultPoint}: kill the patcher at that step. */
export const FAULT_ENV = 'HOTPATCH_FAULT';
/** Kill the TARGET at that step instead (tests of a process that dies mid-way). */
export const FAULT_TARGET_ENV = 'HOTPATCH_FAULT_TARGET';

/**
 * Kills this process with SIGKILL when HOTPATCH_FAULT equals `step`, or the target `pid` when
 * HOTPATCH_FAULT_TARGET equals `step`.
 */
export function faultPoint(step: FaultStep, pid: number): void {
  if (process.env[FAULT_ENV] === undefined && process.env[FAULT_TARGET_ENV] === undefined) return;
  if (!faultInjectionAllowed()) return;
  if (process.env[FAULT_ENV] === step) process.kill(process.pid, 'SIGKILL');
  if (process.env[FAULT_TARGET_ENV] === step) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    // Let the exit finish (zombie or gone), so the step after sees a dead process, not a dying one.
    const deadline = Date.now() + 2000;
    while (Date.now() < deadline) {
      let state: string | undefined;
      try {
        state = /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'latin1'))?.[1];
      } catch {
        break;
      }
      if (state === 'Z' || state === 'X') break;
    }
  }
}
