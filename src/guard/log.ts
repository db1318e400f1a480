/**
 * Log levels of the guard's output: a `level` field in every JSON line and, when stderr is the
 * systemd journal, the sd-daemon priority prefix (`<3>` …) on every human line, so
 * `journalctl -p warning -u hotpatch-guard` shows exactly the findings worth a look.
 */
import { fstatSync } from 'node:fs';
import type { Severity } from './finding.js';

/** syslog(3) levels, as journald names them (`journalctl -p`). */
export type LogLevel = 'emerg' | 'alert' | 'crit' | 'err' | 'warning' | 'notice' | 'info' | 'debug';

/** sd-daemon(3) / syslog priorities: `<N>` at the start of a line sent to the journal. */
export const LOG_PRIORITIES: Readonly<Record<LogLevel, number>> = { emerg: 0, alert: 1, crit: 2, err: 3, warning: 4, notice: 5, info: 6, debug: 7 };

/** The level a finding of `severity` is logged at. */
export function levelOfSeverity(severity: Severity): LogLevel {
  switch (severity) {
    case 'critical':
      return 'crit';
    case 'high':
      return 'err';
    case 'medium':
      return 'warning';
    case 'low':
      return 'notice';
    default:
      return 'info';
  }
}

/**
 * Whether fd 2 is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for a service
 * whose stderr is the journal stream (systemd.exec(5)); it must match fd 2 itself (a child whose
 * stderr was redirected inherits the variable but not the stream).
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const js = env.JOURNAL_STREAM;
  if (js === undefined) return false;
  const m = /^(\d+):(\d+)$/.exec(js);
  if (!m) return false;
  try {
    const st = fstatSync(2, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}

/** A human line for stderr: with the priority prefix when `journal`. */
export function journalLine(level: LogLevel, text: string, journal: boolean): string {
  return journal ? `<${LOG_PRIORITIES[level]}>${text}` : text;
}
