/**
 * Read-only view of a live process through /proc: mappings, threads, status, auxv, modules and
 * memory. No ptrace: as root, /proc/PID/mem can be read without stopping the target. Naming
 * follows Frida: getX throws when absent, findX returns undefined, enumerateX returns a list.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import {
  PROCESS_KERNEL_THREAD,
  PROCESS_MODULE_NOT_FOUND,
  PROCESS_NOT_FOUND,
  PROCESS_ZOMBIE,
  processErrorFromErrno,
} from './errors.js';
import { MemoryFile } from './memory.js';
import { buildModules, type Module } from './modules.js';
import {
  PF_KTHREAD,
  parseAuxv,
  parseMaps,
  parseSmaps,
  parseStat,
  parseStatus,
  type Auxv,
  type Mapping,
  type ProcStat,
  type ProcessStatus,
  type SmapsEntry,
} from './procfs.js';

/** One thread (task) of a process. */
export interface ThreadInfo {
  /** Thread id (the main thread's tid equals the pid). */
  tid: number;
  /** Thread name (comm). */
  name: string;
  /** Single state letter from /proc/PID/task/TID/stat. */
  state: string;
}

/** Lists the pids of every process visible in /proc (thread-group leaders), ascending. */
export function enumerateProcessIds(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .sort((a, b) => a - b);
}

function readProcText(pid: number, file: string, what: string): string {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'latin1');
  } catch (e) {
    throw processErrorFromErrno(e, pid, what);
  }
}

function checkPid(pid: number): void {
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid > 0x3fffffff) throw new RangeError(`not a process id: ${pid}`);
}

/** Reads /proc/PID/stat; throws PROCESS_NOT_FOUND when the process does not exist. */
export function readProcStat(pid: number): ProcStat {
  checkPid(pid);
  return parseStat(readProcText(pid, 'stat', 'reading /proc/PID/stat'));
}

/**
 * A live process opened for reading. Keeps /proc/PID/mem open; call close() when done.
 * Every method throws ProcessError with code PROCESS_NOT_FOUND once the process has exited
 * (detected by pid + start time, so a reused pid is not mistaken for the original process).
 */
export class Process {
  readonly pid: number;
  /** Start time (clock ticks since boot) when opened: identifies the process across pid reuse. */
  readonly startTime: bigint;
  #mem: MemoryFile | undefined;

  /** Use openProcess(). */
  constructor(pid: number, startTime: bigint) {
    this.pid = pid;
    this.startTime = startTime;
  }

  #memory(): MemoryFile {
    if (this.#mem === undefined) this.#mem = new MemoryFile(this.pid, () => this.assertAlive());
    return this.#mem;
  }

  /** True when the process still exists (same pid and start time) and is not a zombie. */
  isAlive(): boolean {
    try {
      const st = readProcStat(this.pid);
      return st.startTime === this.startTime && st.state !== 'Z' && st.state !== 'X';
    } catch {
      return false;
    }
  }

  /** Throws PROCESS_NOT_FOUND / PROCESS_ZOMBIE when the process exited since it was opened. */
  assertAlive(): void {
    let st: ProcStat;
    try {
      st = readProcStat(this.pid);
    } catch {
      throw new ProcessError(PROCESS_NOT_FOUND, `process ${this.pid} exited`);
    }
    if (st.startTime !== this.startTime) throw new ProcessError(PROCESS_NOT_FOUND, `process ${this.pid} exited (its pid was reused)`);
    if (st.state === 'Z' || st.state === 'X') throw new ProcessError(PROCESS_ZOMBIE, `process ${this.pid} exited (it is a zombie)`);
  }

  #read(file: string, what: string): string {
    try {
      return readProcText(this.pid, file, what);
    } catch (e) {
      this.assertAlive();
      throw e;
    }
  }

  /** Parsed /proc/PID/status. */
  getStatus(): ProcessStatus {
    return parseStatus(this.#read('status', 'reading /proc/PID/status'));
  }

  /** Parsed /proc/PID/stat. */
  getStat(): ProcStat {
    return parseStat(this.#read('stat', 'reading /proc/PID/stat'));
  }

  /** Every mapping of /proc/PID/maps, in address order. */
  enumerateMappings(): Mapping[] {
    const maps = parseMaps(this.#read('maps', 'reading /proc/PID/maps'), this.pid);
    // An empty map means the mm is gone: the process became a zombie or exited meanwhile.
    if (maps.length === 0) this.assertAlive();
    return maps;
  }

  /** /proc/PID/smaps: per-mapping memory accounting (Private_Dirty, Anonymous, ...). */
  enumerateSmaps(): SmapsEntry[] {
    const s = parseSmaps(this.#read('smaps', 'reading /proc/PID/smaps'), this.pid);
    if (s.length === 0) this.assertAlive();
    return s;
  }

  /** The mapping containing `address`, or undefined. */
  findMappingByAddress(address: bigint): Mapping | undefined {
    return this.enumerateMappings().find((m) => address >= m.start && address < m.end);
  }

  /** The threads of the process (threads that exit while listing are skipped). */
  enumerateThreads(): ThreadInfo[] {
    let tids: number[];
    try {
      tids = readdirSync(`/proc/${this.pid}/task`).filter((n) => /^\d+$/.test(n)).map(Number);
    } catch (e) {
      this.assertAlive();
      throw processErrorFromErrno(e, this.pid, 'listing /proc/PID/task');
    }
    const out: ThreadInfo[] = [];
    for (const tid of tids.sort((a, b) => a - b)) {
      let text: string;
      try {
        text = readFileSync(`/proc/${this.pid}/task/${tid}/stat`, 'latin1');
      } catch {
        continue; // the thread exited between readdir and read
      }
      const st = parseStat(text);
      out.push({ tid, name: st.comm, state: st.state });
    }
    if (out.length === 0) this.assertAlive();
    return out;
  }

  /** The auxiliary vector the kernel passed to the program at exec. */
  getAuxv(): Auxv {
    let bytes: Buffer;
    try {
      bytes = readFileSync(`/proc/${this.pid}/auxv`);
    } catch (e) {
      this.assertAlive();
      throw processErrorFromErrno(e, this.pid, 'reading /proc/PID/auxv');
    }
    return parseAuxv(bytes);
  }

  /** Path of the executable (/proc/PID/exe), with " (deleted)" removed; see getExeDeleted(). */
  getExePath(): string {
    return this.#exe().path;
  }

  /** True when the executable file was deleted or replaced after exec. */
  getExeDeleted(): boolean {
    return this.#exe().deleted;
  }

  #exe(): { path: string; deleted: boolean } {
    let link: string;
    try {
      link = readlinkSync(`/proc/${this.pid}/exe`);
    } catch (e) {
      this.assertAlive();
      throw processErrorFromErrno(e, this.pid, 'reading /proc/PID/exe');
    }
    return link.endsWith(' (deleted)') ? { path: link.slice(0, -10), deleted: true } : { path: link, deleted: false };
  }

  /** Command line arguments (argv) from /proc/PID/cmdline. */
  getCmdline(): string[] {
    const t = this.#read('cmdline', 'reading /proc/PID/cmdline');
    const parts = t.split('\0');
    if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
    return parts;
  }

  /** Reads `length` bytes at `address`; throws MemoryReadError (with the address) if unmapped. */
  readMemory(address: bigint, length: number): Uint8Array {
    return this.#memory().read(address, length);
  }

  /** Reads up to `length` bytes at `address`, returning the readable prefix (possibly empty). */
  readMemoryPartial(address: bigint, length: number): Uint8Array {
    return this.#memory().readPartial(address, length);
  }

  /**
   * Every mapped ELF image: main executable, shared libraries, the dynamic loader and the vDSO,
   * each with its load bias and build-id.
   */
  enumerateModules(): Module[] {
    const mappings = this.enumerateMappings();
    let auxv: Auxv | undefined;
    try {
      auxv = this.getAuxv();
    } catch {
      auxv = undefined;
    }
    return buildModules(this.pid, mappings, auxv, (a, n) => this.readMemoryPartial(a, n));
  }

  /** The module containing `address` (within one of its mappings), or undefined. */
  findModuleByAddress(address: bigint, modules: Module[] = this.enumerateModules()): Module | undefined {
    return modules.find((m) => m.mappings.some((mp) => address >= mp.start && address < mp.end));
  }

  /** Like findModuleByAddress but throws PROCESS_MODULE_NOT_FOUND. */
  getModuleByAddress(address: bigint, modules?: Module[]): Module {
    const m = this.findModuleByAddress(address, modules);
    if (!m) throw new ProcessError(PROCESS_MODULE_NOT_FOUND, `no module of process ${this.pid} contains 0x${address.toString(16)}`);
    return m;
  }

  /** The first module whose file name (basename) or full path equals `name`, or undefined. */
  findModuleByName(name: string, modules: Module[] = this.enumerateModules()): Module | undefined {
    return modules.find((m) => m.name === name || m.path === name);
  }

  /** Like findModuleByName but throws PROCESS_MODULE_NOT_FOUND. */
  getModuleByName(name: string, modules?: Module[]): Module {
    const m = this.findModuleByName(name, modules);
    if (!m) throw new ProcessError(PROCESS_MODULE_NOT_FOUND, `process ${this.pid} has no module named ${name}`);
    return m;
  }

  /** The main executable's module. */
  getMainModule(modules: Module[] = this.enumerateModules()): Module {
    const m = modules.find((x) => x.kind === 'executable');
    if (!m) throw new ProcessError(PROCESS_MODULE_NOT_FOUND, `cannot find the main executable of process ${this.pid}`);
    return m;
  }

  /** Closes /proc/PID/mem. The object must not be used afterwards. */
  close(): void {
    this.#mem?.close();
    this.#mem = undefined;
  }
}

/**
 * Opens a process for reading. Throws ProcessError: PROCESS_NOT_FOUND (no such pid),
 * PROCESS_ZOMBIE (exited, not reaped), PROCESS_KERNEL_THREAD (no user address space),
 * PROCESS_PERMISSION_DENIED (not root and not the same user with ptrace_scope 0).
 */
export function openProcess(pid: number): Process {
  const st = readProcStat(pid);
  if ((st.flags & PF_KTHREAD) !== 0) {
    throw new ProcessError(PROCESS_KERNEL_THREAD, `process ${pid} (${st.comm}) is a kernel thread: it has no user address space to inspect`);
  }
  if (st.state === 'Z' || st.state === 'X') {
    throw new ProcessError(PROCESS_ZOMBIE, `process ${pid} (${st.comm}) has exited (zombie, not yet reaped by its parent ${st.ppid})`);
  }
  const p = new Process(pid, st.startTime);
  // Open /proc/PID/mem now so permission problems surface at open time, not at the first read.
  try {
    p.readMemoryPartial(0n, 0);
  } catch (e) {
    p.close();
    throw e;
  }
  return p;
}

/** One-shot memory read (opens and closes /proc/PID/mem); prefer Process.readMemory for many reads. */
export function readMemory(pid: number, address: bigint, length: number): Uint8Array {
  const p = openProcess(pid);
  try {
    return p.readMemory(address, length);
  } finally {
    p.close();
  }
}
