/**
 * The guard's continuous cheap signal against time-of-check evasion (a hook that exists only
 * between two scheduled checks). Polled every `signalIntervalMs` (default 500 ms) for every
 * watched process; when it changes, the guard checks that process' code at once.
 *
 * The signal of a process: its executable mappings (start, end, perms, inode — a new executable
 * mapping changes it), and for each executable file mapping the pages that are no longer the
 * file's page cache — /proc/PID/pagemap entries present (bit 63) or swapped (bit 62) without the
 * "file page" bit 61: a private copy-on-write copy, which any write to code makes (/proc/PID/mem,
 * mprotect + store, ptrace POKETEXT, uprobes) — with a hash of those pages' current content, so a
 * second write to an already copied page changes it too. Only the page-table entries of the code
 * mappings are read (8 bytes per 4 KiB page), and only the few copied pages' bytes: much cheaper
 * than /proc/PID/smaps, which walks every mapping (smaps_rollup sums all mappings, heap included,
 * so it cannot tell code from data).
 *
 * Residual window: a hook written and removed (madvise(MADV_DONTNEED) drops the private copy;
 * writing the original bytes back leaves a copy whose hash changes back) entirely between two
 * polls is not seen by the signal; a scheduled check still compares every byte within the bound.
 * The baseline is re-taken after each triggered check, i.e. after the guard's own writes
 * (restore) and after sanctioned patches have been verified.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parseMapsLine, type Mapping } from '../process/index.js';

export const DEFAULT_SIGNAL_INTERVAL_MS = 500;

const PAGE = 4096;
/** /proc/PID/pagemap bits 63 (present), 62 (swapped), 61 (file page), as bits of the high word. */
const PM_PRESENT_HI = 1 << 31;
const PM_SWAPPED_HI = 1 << 30;
const PM_FILE_HI = 1 << 29;
/** Pagemap entries read per pread (32 KiB: 16 MiB of code). */
const PM_CHUNK = 4096;
/**
 * Pages of one mapping the signal covers (256 MiB of code; node's text is ~50 MiB): a huge
 * mapping (a 64 GiB sparse file mapped r-x) must not make every poll read megabytes of pagemap.
 * Beyond it, the scheduled checks are the only protection.
 */
const MAX_PAGES_PER_MAPPING = 65536;

/** What a poll saw: the signature and whether the set of executable mappings changed. */
export interface CodeSignalReading {
  signature: string;
  mappings: string;
}

let textBuf = Buffer.allocUnsafe(1 << 16);

/** A /proc text file read into a reused buffer (cheaper than readFileSync, which stats and grows). */
function readProcText(path: string): string {
  const fd = openSync(path, 'r');
  try {
    let n = 0;
    for (;;) {
      if (n === textBuf.length) {
        const bigger = Buffer.allocUnsafe(textBuf.length * 2);
        textBuf.copy(bigger, 0, 0, n);
        textBuf = bigger;
      }
      const r = readSync(fd, textBuf, n, textBuf.length - n, null);
      if (r <= 0) break;
      n += r;
    }
    return textBuf.toString('latin1', 0, n);
  } finally {
    closeSync(fd);
  }
}

function readInto(fd: number, buf: Uint8Array, pos: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n <= 0) break;
    done += n;
  }
  return done;
}

/** Reads the signal of one process; undefined when it is gone or not readable. */
export function readCodeSignal(pid: number): CodeSignalReading | undefined {
  let exec: Mapping[];
  try {
    // Only the executable lines are parsed ("start-end rwxp ..."): most lines of a big process
    // are data, and parsing is most of the cost of a poll.
    exec = [];
    for (const line of readProcText(`/proc/${pid}/maps`).split('\n')) {
      const sp = line.indexOf(' ');
      if (sp < 0 || line.charCodeAt(sp + 3) !== 0x78 /* x */ || line.endsWith('[vsyscall]')) continue;
      exec.push(parseMapsLine(line, pid));
    }
  } catch {
    return undefined;
  }
  const mappings = exec.map((m) => `${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.inode}`).join(',');
  let pm: number;
  let mem: number | undefined;
  try {
    pm = openSync(`/proc/${pid}/pagemap`, 'r');
  } catch {
    return undefined;
  }
  const hash = createHash('sha1');
  try {
    const buf = new Uint8Array(PM_CHUNK * 8);
    const words = new Uint32Array(buf.buffer);
    const page = new Uint8Array(PAGE);
    for (const m of exec) {
      if (!m.isFile) continue; // anonymous code: structure 5 sees it in the mapping list
      const first = Number(m.start / BigInt(PAGE));
      const pages = Math.min(MAX_PAGES_PER_MAPPING, Number((m.end - m.start) / BigInt(PAGE)));
      for (let p = 0; p < pages; p += PM_CHUNK) {
        const n = Math.min(PM_CHUNK, pages - p);
        const got = readInto(pm, buf.subarray(0, n * 8), (first + p) * 8) >> 3;
        for (let i = 0; i < got; i++) {
          // The flag bits are in the high 32-bit half (little-endian): no bigint in this loop.
          const hi = words[2 * i + 1]!;
          if ((hi & (PM_PRESENT_HI | PM_SWAPPED_HI)) === 0 || (hi & PM_FILE_HI) !== 0) continue;
          const addr = m.start + BigInt((p + i) * PAGE);
          hash.update(`${addr.toString(16)};`);
          mem ??= openSync(`/proc/${pid}/mem`, 'r');
          try {
            if (readInto(mem, page, Number(addr)) === PAGE) hash.update(page);
          } catch {
            hash.update('unreadable');
          }
        }
      }
    }
  } catch {
    return undefined;
  } finally {
    closeSync(pm);
    if (mem !== undefined) closeSync(mem);
  }
  return { signature: `${mappings}|${hash.digest('hex')}`, mappings };
}

/** Baselines of the signal per watched process (key: pid + start time). */
export class CodeWriteSignal {
  readonly #baselines = new Map<string, CodeSignalReading>();
  /** Polls and triggers so far, and the CPU time (user + system) the polls took (bench, metrics). */
  polls = 0;
  triggers = 0;
  pollCpuMicros = 0;

  /**
   * Reads the signal of `pid`. Returns what changed since the baseline ('code', 'mappings' — the
   * set of executable mappings — or null); the first reading becomes the baseline.
   */
  poll(key: string, pid: number): 'code' | 'mappings' | null {
    const c0 = process.cpuUsage();
    const now = readCodeSignal(pid);
    const c = process.cpuUsage(c0);
    this.polls++;
    this.pollCpuMicros += c.user + c.system;
    if (now === undefined) return null;
    const base = this.#baselines.get(key);
    if (base === undefined) {
      this.#baselines.set(key, now);
      return null;
    }
    if (base.signature === now.signature) return null;
    this.triggers++;
    return base.mappings !== now.mappings ? 'mappings' : 'code';
  }

  /** Takes a new baseline (after a triggered check, i.e. after the guard's own writes). */
  rebaseline(key: string, pid: number): void {
    const now = readCodeSignal(pid);
    if (now === undefined) this.#baselines.delete(key);
    else this.#baselines.set(key, now);
  }

  forget(key: string): void {
    this.#baselines.delete(key);
  }
}
