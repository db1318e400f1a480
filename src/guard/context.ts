/**
 * Per-process view used by the checks (read-only: /proc files and /proc/PID/mem, no ptrace), and the
 * caches shared by every check of every process.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import {
  openProcess,
  type Mapping,
  type Module,
  type Process,
  type ProcessStatus,
  type SmapsEntry,
} from '../process/index.js';
import { DpkgChecksums, IdentityCache } from './identity.js';
import { ImageCache, type ModuleImage } from './image.js';
import type { Policy, ProcessIdentity } from './policy.js';
import type { GuardState } from './state.js';
import type { TrustedKeySet } from '../patch/trust/index.js';

/** A registered uprobe: file path and file offset of the probed instruction. */
export interface Uprobe {
  path: string;
  offset: bigint;
}

/** Reads registered uprobes (needs tracefs; empty when not readable). */
export function readUprobes(): Uprobe[] {
  for (const f of ['/sys/kernel/tracing/uprobe_events', '/sys/kernel/debug/tracing/uprobe_events']) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    const out: Uprobe[] = [];
    // "p:uprobes/NAME /path/to/file:0x00000000000a45c0 [args]" (also r: for uretprobes)
    for (const line of text.split('\n')) {
      const m = /^[pr]:\S+\s+(\S+):(0x[0-9a-fA-F]+|\d+)/.exec(line);
      if (m) out.push({ path: m[1]!, offset: BigInt(m[2]!) });
    }
    return out;
  }
  return [];
}

/** Caches shared across processes and checks (one per verifier / guard). */
export class VerifierCaches {
  readonly images = new ImageCache();
  readonly identities = new IdentityCache();
  readonly dpkg = new DpkgChecksums();
  /**
   * Cheap-signal cache: mapping key (dev, inode, file key, build-id, bias, range) → time (ms) its
   * bytes were last fully compared and found equal.
   */
  readonly cleanMappings = new Map<string, number>();
  /**
   * Stat key (identity.ts statKey) of each module file when this verifier first saw it mapped,
   * by pid:starttime:base:dev:inode — a later different key means the file was written while mapped.
   */
  readonly mappedFileStats = new Map<string, { key: string; seen: number }>();
  /** The verifier's own vDSO bytes (reference for structure 9), read once. */
  ownVdso: Uint8Array | null | undefined;
  uprobes: Uprobe[] = [];
  uprobesReadAt = 0;

  /** Registered uprobes, re-read at most once per second. */
  currentUprobes(): Uprobe[] {
    const now = Date.now();
    if (now - this.uprobesReadAt > 1000) {
      this.uprobes = readUprobes();
      this.uprobesReadAt = now;
    }
    return this.uprobes;
  }
}

let bootTimeMs: number | undefined;

/** Boot time (ms since the epoch) from /proc/stat `btime` (1 s resolution). */
export function bootTime(): number {
  if (bootTimeMs === undefined) {
    const m = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'));
    bootTimeMs = m ? Number(m[1]) * 1000 : 0;
  }
  return bootTimeMs;
}

/** USER_HZ: /proc/PID/stat start times are in these ticks (100 on x86-64). */
const USER_HZ = 100;

/** Options every check sees. */
export interface CheckOptions {
  policy: Policy;
  state: GuardState;
  caches: VerifierCaches;
  /**
   * How long (ms) a mapping whose smaps shows no private copy may skip the byte comparison after
   * a full comparison found it clean. 0: always compare (the default for `verify`).
   */
  cleanCacheMs: number;
  /** Trusted signers of sanctioned patches, loaded once (a missing or bad key file is an error before any check). */
  trust: TrustedKeySet;
  /** Allow checks that briefly stop the target with ptrace (structure 7). */
  allowPtrace: boolean;
  /** How long a target may take to stop, and an injected call to return, for those checks (ms). */
  freezeTimeoutMs: number;
}

/** Default of CheckOptions.freezeTimeoutMs (`--timeout` of verify and guard). */
export const DEFAULT_FREEZE_TIMEOUT_MS = 2000;

/** Everything checks learn about one process, read lazily and at most once per context. */
export class ProcessContext {
  readonly pid: number;
  readonly proc: Process;
  readonly options: CheckOptions;
  /** Bytes of memory compared by the checks (reported in `checked.bytes`). */
  bytesVerified = 0;
  #mappings: Mapping[] | undefined;
  #smaps: Map<bigint, SmapsEntry> | undefined;
  #modules: Module[] | undefined;
  #status: ProcessStatus | undefined;
  #environ: Map<string, string> | undefined;
  #identity: ProcessIdentity | undefined;
  readonly #images = new Map<Module, ModuleImage | null>();
  readonly #imageProblems = new Map<Module, string>();
  readonly #memo = new Map<string, unknown>();

  constructor(pid: number, options: CheckOptions, proc?: Process) {
    this.pid = pid;
    this.options = options;
    this.proc = proc ?? openProcess(pid);
  }

  /** When the process started (ms since the epoch; ±1 s: btime has 1 s resolution). */
  get startedAtMs(): number {
    return bootTime() + Number(this.proc.startTime) * (1000 / USER_HZ);
  }

  get caches(): VerifierCaches {
    return this.options.caches;
  }

  get mappings(): Mapping[] {
    return (this.#mappings ??= this.proc.enumerateMappings());
  }

  /** smaps entries by mapping start. */
  get smaps(): Map<bigint, SmapsEntry> {
    if (!this.#smaps) {
      this.#smaps = new Map();
      for (const e of this.proc.enumerateSmaps()) this.#smaps.set(e.mapping.start, e);
    }
    return this.#smaps;
  }

  get modules(): Module[] {
    return (this.#modules ??= this.proc.enumerateModules());
  }

  get status(): ProcessStatus {
    return (this.#status ??= this.proc.getStatus());
  }

  /** The environment the process was started with (/proc/PID/environ). */
  get environ(): Map<string, string> {
    if (!this.#environ) {
      const m = new Map<string, string>();
      try {
        for (const kv of readFileSync(`/proc/${this.pid}/environ`, 'latin1').split('\0')) {
          const i = kv.indexOf('=');
          if (i > 0) m.set(kv.slice(0, i), kv.slice(i + 1));
        }
      } catch {
        // Exited or not readable: no environment.
      }
      this.#environ = m;
    }
    return this.#environ;
  }

  get identity(): ProcessIdentity {
    if (!this.#identity) {
      let exe = '';
      try {
        exe = this.proc.getExePath();
      } catch {
        exe = '';
      }
      let comm = '';
      try {
        comm = readFileSync(`/proc/${this.pid}/comm`, 'utf8').trim();
      } catch {
        comm = basename(exe);
      }
      const id: ProcessIdentity = { exe, comm };
      const main = this.modules.find((m) => m.kind === 'executable');
      if (main?.buildId !== undefined) id.buildId = main.buildId;
      this.#identity = id;
    }
    return this.#identity;
  }

  /** Computes a per-context value once (link_map, symbol scope, ...). */
  memo<T>(key: string, compute: () => T): T {
    if (this.#memo.has(key)) return this.#memo.get(key) as T;
    const v = compute();
    this.#memo.set(key, v);
    return v;
  }

  /** The parsed file of a module (through map_files), or null (vDSO, unreadable, not ELF). */
  image(mod: Module): ModuleImage | null {
    if (this.#images.has(mod)) return this.#images.get(mod)!;
    let img: ModuleImage | null = null;
    if (mod.kind !== 'vdso') {
      const cache = this.caches.images;
      if (mod.mapFilesPath !== undefined) {
        img = cache.load(mod.mapFilesPath, mod.path);
        if (img === null && cache.lastProblem !== undefined) this.#imageProblems.set(mod, cache.lastProblem);
      }
      // The path only when map_files cannot be opened (not root): a problem with the mapped file
      // itself (too big, not ELF) must not be sidestepped by whatever the name points to now.
      if (img === null && !mod.deleted && (mod.mapFilesPath === undefined || /^cannot open/.test(this.#imageProblems.get(mod) ?? ''))) {
        img = cache.load(mod.path);
        if (img === null && cache.lastProblem !== undefined && !this.#imageProblems.has(mod)) this.#imageProblems.set(mod, cache.lastProblem);
      }
      if (img !== null) this.#imageProblems.delete(mod);
    }
    this.#images.set(mod, img);
    return img;
  }

  /** Why `image(mod)` is null (after calling it), if known. */
  imageProblem(mod: Module): string | undefined {
    return this.#imageProblems.get(mod);
  }

  /** The module one of whose mappings contains `address`. */
  moduleAt(address: bigint): Module | undefined {
    return this.modules.find((m) => m.mappings.some((mp) => address >= mp.start && address < mp.end));
  }

  mappingAt(address: bigint): Mapping | undefined {
    return this.mappings.find((m) => address >= m.start && address < m.end);
  }

  /** True when `address` lies in an executable mapping of a module's file. */
  isModuleCode(address: bigint): boolean {
    const mod = this.moduleAt(address);
    if (mod === undefined) return false;
    const mp = mod.mappings.find((m) => address >= m.start && address < m.end);
    return mp !== undefined && mp.protection.execute;
  }

  /** Human description of where `address` points: "module+0xOFF (symbol)" or the mapping kind. */
  describeAddress(address: bigint): string {
    const mod = this.moduleAt(address);
    if (mod !== undefined) {
      const vaddr = address - mod.loadBias;
      const img = this.image(mod);
      const sym = img?.symbolize(vaddr);
      return `${mod.path}+0x${vaddr.toString(16)}${sym ? ` (${sym})` : ''}`;
    }
    const mp = this.mappingAt(address);
    if (mp === undefined) return `unmapped address 0x${address.toString(16)}`;
    const kind = mp.isFile ? `file mapping ${mp.path}${mp.deleted ? ' (deleted)' : ''}` : mp.path !== '' ? `${mp.path} mapping` : 'anonymous memory';
    return `${kind} at 0x${address.toString(16)} (${mp.perms} mapping 0x${mp.start.toString(16)}-0x${mp.end.toString(16)})`;
  }

  close(): void {
    this.proc.close();
  }
}
