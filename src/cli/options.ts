/** Parsers for the options several commands share; bad values are usage errors (exit code 2). */
import { UsageError } from '../errors.js';

/** Parses a --pid value. */
export function parsePidOption(text: string): number {
  const pid = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid > 0x3fffffff) throw new UsageError('USAGE_BAD_PID', `--pid ${text} is not a valid process id`);
  return pid;
}

/** Parses a --timeout value in seconds into milliseconds. */
export function parseTimeoutOption(text: string, option = '--timeout'): number {
  const s = Number(text);
  if (!Number.isFinite(s) || s < 0 || s > 3600) throw new UsageError('USAGE_BAD_TIMEOUT', `${option} ${text} is not a number of seconds between 0 and 3600`);
  return Math.round(s * 1000);
}

/** Parses --concurrency. */
export function parseConcurrencyOption(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > 256) throw new UsageError('USAGE_BAD_CONCURRENCY', `--concurrency ${text} is not a number between 1 and 256`);
  return n;
}

/** Collects a repeatable option. */
export function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}
