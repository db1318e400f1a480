/**
 * The few /proc reads process control needs, on top of the inspector's pure parsers
 * (src/process/inspect/procfs.ts).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import { PROCESS_NOT_FOUND } from '../inspect/errors.js';
import { parseMaps, parseStatus, type Mapping, type ProcessStatus } from '../inspect/procfs.js';

/** /proc/PID/status, or undefined when the process (or thread) does not exist. */
export function readStatusOrUndefined(path: string): ProcessStatus | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  return parseStatus(text);
}

/** Thread ids listed in /proc/PID/task (undefined when the process is gone). */
export function listTaskIds(pid: number): number[] | undefined {
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  const out: number[] = [];
  for (const n of names) {
    const tid = Number(n);
    if (Number.isSafeInteger(tid) && tid > 0) out.push(tid);
  }
  return out;
}

/** The mappings of a process (/proc/PID/maps); throws PROCESS_NOT_FOUND when it is gone. */
export function readMappings(pid: number): Mapping[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch (e) {
    throw new ProcessError(PROCESS_NOT_FOUND, `process ${pid} does not exist (or exited while reading its maps)`, { cause: e });
  }
  return parseMaps(text, pid);
}

/** Field 22 of /proc/PID/stat (start time in clock ticks): with the pid it names one process. */
export function readStartTime(pid: number): bigint | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const fields = text.slice(close + 2).split(' ');
  const st = fields[19];
  return st !== undefined && /^\d+$/.test(st) ? BigInt(st) : undefined;
}

/** State letter of one thread (R, S, D, T, t, Z, X...) or undefined when it is gone. */
export function readThreadState(pid: number, tid: number): string | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
}

/** The wait channel of a thread (kernel function it sleeps in), for diagnostics. */
export function readThreadWchan(pid: number, tid: number): string {
  try {
    return readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8').trim();
  } catch {
    return '?';
  }
}
